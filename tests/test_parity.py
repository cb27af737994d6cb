"""Parity with an independent bare-PyTorch VAE on real MNIST (slow: about 2 minutes on 2 cores).

The Burda et al. (2015) MLP VAE, trained 10 epochs with the shipped config, must reach the same test
ELBO as a plain PyTorch loop of the same model on the same data, within 2 nats: a larger gap means
a bug in the objective, the data scaling or the binarisation.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.data_files import copy_real_mnist
from vaezoo.cli import main
from vaezoo.data import MNISTDataModule

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 10


def bare_pytorch_test_elbo(train: torch.Tensor, test: torch.Tensor, epochs: int) -> float:
    """784-200-200-z50 tanh VAE, Bernoulli likelihood, batch 100, Adam 1e-3, written out by hand.

    Args:
        train: grey training images in [0, 1], ``(N, 784)``; re-binarised every step.
        test: binarised test images, ``(M, 784)``.
    """
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 100))
    dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)

    def elbo(x: torch.Tensor) -> torch.Tensor:
        mu, logvar = enc(x).chunk(2, 1)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        log_px = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(1)
        return log_px - 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)

    for _ in range(epochs):
        for idx in torch.randperm(len(train)).split(100):
            loss = -elbo(torch.bernoulli(train[idx])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return elbo(test).mean().item()


@pytest.mark.slow
def test_mnist_mlp_matches_a_bare_pytorch_vae(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_real_mnist(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "mnist_mlp.yaml")
    common = ["--config", config, "--data.root", str(root), "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.max_epochs", str(EPOCHS)])
    main(["test", *common, "--ckpt_path", "runs/mnist_mlp/version_0/checkpoints/last.ckpt"])
    rows = list(csv.DictReader(open("runs/mnist_mlp/version_1/metrics.csv")))
    ours = float(next(r["test/elbo"] for r in rows if r.get("test/elbo")))

    # The same training images (the DataModule's split) and the same binarised test set.
    dm = MNISTDataModule(root=str(root))
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    train = dm._splits["train"][0].float().div(255).flatten(1)
    test = dm._to_float(dm._splits["test"][0], training=False).flatten(1)
    bare = bare_pytorch_test_elbo(train, test, EPOCHS)

    print(f"test ELBO after {EPOCHS} epochs: vaezoo {ours:.2f}, bare PyTorch {bare:.2f} nats per image")
    assert -125 < ours < -100  # about -110 on this machine
    assert abs(ours - bare) < 2.0
