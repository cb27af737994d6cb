"""VQ-VAE: the quantiser against hand computations, its EMA codebook and restarts, DDP, the recipe through the CLI."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.utils.data import DataLoader, TensorDataset

from tests.test_bad_input import fails
from tests.test_cli import REPO, SMALL, run_cli
from vaezoo.errors import VAEZooError
from vaezoo.latents.vq import VQLatent, usage_stats
from vaezoo.models import VQVAE
from vaezoo.registry import VARIANTS

RECIPE = str(REPO / "configs" / "mnist_vqvae.yaml")


def latent_with(codebook: list[list[float]], code_dim: int, **kwargs) -> VQLatent:
    """A quantiser whose z_e is the first half of h (pre_quant = [I 0], no bias) and whose codebook is given."""
    book = torch.tensor(codebook)
    latent = VQLatent(code_dim, codes=len(book), code_size=book.shape[1], **kwargs)
    with torch.no_grad():
        latent.pre_quant.weight.copy_(torch.cat([torch.eye(code_dim), torch.zeros(code_dim, code_dim)], 1))
        latent.pre_quant.bias.zero_()
        latent.codebook.copy_(book)
    return latent


def h_of(z_e: list[list[float]]) -> torch.Tensor:
    """Encoder features (B, 2L) whose z_e is ``z_e``: the second half is ignored by ``latent_with``'s pre_quant."""
    z = torch.tensor(z_e)
    return torch.cat([z, torch.full_like(z, 7.0)], 1)


def test_registered_and_named_in_the_variants_list() -> None:
    assert VARIANTS.get("vqvae") is VQVAE


# ----- the quantiser ----------------------------------------------------------------------------------


def test_nearest_code_is_the_brute_force_argmin() -> None:
    torch.manual_seed(0)
    latent = VQLatent(12, codes=7, code_size=3)
    vectors = torch.randn(40, 3)
    got = latent.nearest(vectors)
    book = latent.codebook.tolist()
    for row, index in zip(vectors.tolist(), got.tolist()):
        distances = [sum((a - b) ** 2 for a, b in zip(row, code)) for code in book]
        assert index == distances.index(min(distances))


def test_straight_through_passes_the_gradient_of_z_q_to_z_e() -> None:
    # Codes (0, 0), (1, 1), (-2, 0); z_e of one image: the vectors (0.9, 1.2) -> code 1, (-1.5, 0.1) -> code 2.
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4).eval()
    h = h_of([[0.9, 1.2, -1.5, 0.1]]).requires_grad_()
    z_q = latent(h).z[0]  # (1, 4)
    torch.testing.assert_close(z_q, torch.tensor([[1.0, 1.0, -2.0, 0.0]]))  # the codebook vectors' values
    w = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    (w * z_q + z_q**2).sum().backward()
    # d/dz_q (w z_q + z_q^2) = w + 2 z_q at z_q = (1, 1, -2, 0): (5, 1, -3.5, 2), passed to z_e = h[:, :4] unchanged.
    torch.testing.assert_close(h.grad, torch.tensor([[5.0, 1.0, -3.5, 2.0, 0.0, 0.0, 0.0, 0.0]]))


def test_commitment_is_beta_times_the_squared_distance_to_the_codes() -> None:
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4, commitment=0.25).eval()
    out = latent(h_of([[0.9, 1.2, -1.5, 0.1], [0.0, 0.0, 0.0, 0.0]]))
    first = 0.25 * ((0.9 - 1) ** 2 + (1.2 - 1) ** 2 + (-1.5 + 2) ** 2 + 0.1**2)
    torch.testing.assert_close(out.extra["commitment"], torch.tensor([first, 0.0]))
    assert out.posterior["indices"].tolist() == [[1, 2], [0, 0]]


def test_usage_stats_of_known_counts() -> None:
    for counts, perplexity, used in [([2, 2, 0, 0], 2.0, 2), ([1, 1, 1, 1], 4.0, 4), ([4, 0, 0, 0], 1.0, 1)]:
        stats = usage_stats(torch.tensor(counts))
        assert stats["perplexity"].item() == pytest.approx(perplexity) and stats["used_codes"].item() == used
    # Through the quantiser: vectors 1, 1, 1 and 0 of the 3 codes -> p = (1/4, 3/4, 0).
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4).eval()
    stats = latent(h_of([[0.9, 1.2, 1.0, 0.8], [0.1, 0.0, 1.1, 1.0]])).stats
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert stats["perplexity"].item() == pytest.approx(math.exp(entropy)) and stats["used_codes"].item() == 2


# ----- the EMA codebook and dead codes ----------------------------------------------------------------


def test_one_ema_update_matches_a_hand_computation() -> None:
    decay, eps = 0.9, 1e-5
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4, decay=decay, dead_code_threshold=0.0)
    with torch.no_grad():
        latent.cluster_size.copy_(torch.tensor([2.0, 1.0, 0.5]))
        latent.embed_sum.copy_(torch.tensor([[0.2, -0.2], [1.0, 0.8], [-1.0, 0.1]]))
    # Vectors (0.9, 1.2) -> 1, (-1.5, 0.1) -> 2, (0.1, -0.1) -> 0, (1.1, 0.7) -> 1.
    out = latent.train()(h_of([[0.9, 1.2, -1.5, 0.1], [0.1, -0.1, 1.1, 0.7]]))
    assert out.posterior["indices"].tolist() == [[1, 2], [0, 1]]
    n = [1, 2, 1]
    s = [[0.1, -0.1], [0.9 + 1.1, 1.2 + 0.7], [-1.5, 0.1]]
    old_n, old_s = [2.0, 1.0, 0.5], [[0.2, -0.2], [1.0, 0.8], [-1.0, 0.1]]
    new_n = [decay * a + (1 - decay) * b for a, b in zip(old_n, n)]
    new_s = [[decay * a + (1 - decay) * b for a, b in zip(ra, rb)] for ra, rb in zip(old_s, s)]
    total = sum(new_n)
    smoothed = [(c + eps) / (total + 3 * eps) * total for c in new_n]
    book = [[v / c for v in row] for row, c in zip(new_s, smoothed)]
    torch.testing.assert_close(latent.cluster_size, torch.tensor(new_n))
    torch.testing.assert_close(latent.embed_sum, torch.tensor(new_s))
    torch.testing.assert_close(latent.codebook, torch.tensor(book))
    # The decoder saw the codebook before the update.
    assert out.z[0].tolist() == [[1.0, 1.0, -2.0, 0.0], [0.0, 0.0, 1.0, 1.0]]


def test_evaluation_leaves_the_codebook_and_its_statistics_alone() -> None:
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4).eval()
    before = {k: v.clone() for k, v in latent.state_dict().items()}
    latent(h_of([[0.9, 1.2, -1.5, 0.1]]))
    latent.point(h_of([[0.9, 1.2, -1.5, 0.1]]))
    assert all(torch.equal(before[k], v) for k, v in latent.state_dict().items())
    assert {"codebook", "cluster_size", "embed_sum"} <= set(before)  # buffers: they travel in checkpoints


def test_a_dead_code_restarts_on_an_encoder_output_and_keeps_its_statistics() -> None:
    decay = 0.9
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4, decay=decay, dead_code_threshold=0.5)
    with torch.no_grad():
        latent.cluster_size.copy_(torch.tensor([2.0, 2.0, 0.5]))
        latent.embed_sum.copy_(torch.tensor([[0.0, 0.0], [2.0, 2.0], [-1.0, 0.0]]))
    z_e = [[0.9, 1.2, 0.1, -0.1], [0.2, 0.3, 1.1, 0.7]]  # codes 1, 0, 0, 1: nothing chooses code 2
    torch.manual_seed(0)
    latent.train()(h_of(z_e))
    # Code 2: N = 0.9 * 0.5 = 0.45 < 0.5, so it is dead and sits on one of the four vectors of the batch.
    vectors = [row[i:i + 2] for row in z_e for i in (0, 2)]
    assert [round(v, 6) for v in latent.codebook[2].tolist()] in [[round(v, 6) for v in vec] for vec in vectors]
    assert latent.cluster_size[2].item() == pytest.approx(decay * 0.5)
    torch.testing.assert_close(latent.embed_sum[2], torch.tensor([decay * -1.0, 0.0]))
    # Codes 0 and 1 (two vectors each) are alive, N = 0.9 * 2 + 0.1 * 2 = 2, and follow the EMA.
    new_n = torch.tensor([decay * 2 + 0.1 * 2, decay * 2 + 0.1 * 2, decay * 0.5])
    torch.testing.assert_close(latent.cluster_size, new_n)
    total = new_n.sum()
    smoothed = (new_n[:2] + 1e-5) / (total + 3e-5) * total
    sums = torch.tensor([[0.1 * (0.1 + 0.2), 0.1 * (-0.1 + 0.3)], [decay * 2 + 0.1 * 2.0, decay * 2 + 0.1 * 1.9]])
    torch.testing.assert_close(latent.codebook[:2], sums / smoothed[:, None])


def test_the_first_training_step_puts_every_code_on_an_encoder_output() -> None:
    torch.manual_seed(0)
    latent = VQLatent(6, codes=5, code_size=3).train()
    h = torch.randn(4, 12)
    latent(h)
    vectors = latent.pre_quant(h).detach().reshape(-1, 3)  # (8, 3)
    # The EMA starts at N = 0 < threshold: every code is dead, so every code is one of the batch's vectors.
    for code in latent.codebook:
        assert torch.isclose(vectors, code).all(1).any()


def test_a_non_finite_batch_leaves_the_codebook_as_it_was() -> None:
    latent = latent_with([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], code_dim=4).train()
    latent(h_of([[0.9, 1.2, -1.5, 0.1]]))
    before = {name: buffer.clone() for name, buffer in latent.named_buffers()}
    latent(h_of([[float("nan"), 1.2, -1.5, 0.1]]))
    assert all(torch.equal(before[name], buffer) for name, buffer in latent.named_buffers())


def test_ddp_processes_keep_one_codebook_learnt_from_every_process(tmp_path: Path) -> None:
    """Two gloo processes with different batches make the update one process makes with both batches."""
    script = tmp_path / "vq_ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import torch, torch.distributed as dist, torch.multiprocessing as mp
        sys.path.insert(0, {str(REPO)!r})
        from vaezoo.latents.vq import VQLatent

        def make(threshold):
            torch.manual_seed(0)
            latent = VQLatent(8, codes=6, code_size=2, decay=0.8, dead_code_threshold=threshold)
            with torch.no_grad():  # every code alive but code 5, far from every vector: N = 0.008 < 0.05, dead
                latent.codebook[5] = 100.0
                latent.cluster_size.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.01]))
                latent.embed_sum.copy_(latent.codebook * latent.cluster_size[:, None])
            return latent.train()

        def batches():
            torch.manual_seed(1)
            return torch.randn(3, 16), torch.randn(5, 16)  # rank 0's, rank 1's: unequal shares

        def run(rank, path, out):
            dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=2)
            for threshold in (0.0, 0.05):
                latent = make(threshold)
                torch.manual_seed(100 + rank)  # different random streams, as in training
                latent(batches()[rank])
                torch.save(latent.state_dict(), f"{{out}}/rank{{rank}}-{{threshold}}.pt")
            dist.destroy_process_group()

        if __name__ == "__main__":
            mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
            latent = make(0.0)
            latent(torch.cat(batches()))
            torch.save(latent.state_dict(), sys.argv[2] + "/single.pt")
    """))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "rendezvous"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    load = lambda name: torch.load(tmp_path / name)  # noqa: E731
    single, ranks = load("single.pt"), [load(f"rank{r}-0.0.pt") for r in (0, 1)]
    for key in ("codebook", "cluster_size", "embed_sum"):
        torch.testing.assert_close(ranks[0][key], single[key])
        torch.testing.assert_close(ranks[1][key], single[key])
    restarted = [load(f"rank{r}-0.05.pt") for r in (0, 1)]
    assert torch.equal(restarted[0]["codebook"], restarted[1]["codebook"])  # rank 0's restart points, everywhere
    assert restarted[0]["codebook"][5].abs().max() < 10  # code 5 was restarted on an encoder output


# ----- the model -------------------------------------------------------------------------------------------


def test_kl_is_m_log_k_and_the_elbo_an_independent_bound() -> None:
    torch.manual_seed(0)
    model = VQVAE(latent_dim=8, code_size=2, codes=16).eval()
    x = torch.rand(5, 1, 28, 28).bernoulli()
    out = model(x)
    m_log_k = 4 * math.log(16)
    assert out.latent.kl_analytic and out.latent.log_q is None and out.latent.log_p is None
    torch.testing.assert_close(out.kl, torch.full((5,), m_log_k))
    z_e = model.latent.pre_quant(model.net.encoder(x))
    codes = model.latent.codebook
    e = torch.stack([codes[((codes - v) ** 2).sum(1).argmin()] for v in z_e.reshape(-1, 2)]).reshape(5, 8)
    log_px = TorchBernoulli(logits=model.net.decoder(e)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.elbo, log_px - m_log_k)
    assert out.kl_per_dim.sum(1).allclose(out.kl)
    torch.testing.assert_close(model.code(x), e)


# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates (vaezoo.cli filters it too).
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")
def test_the_loss_is_recon_plus_commitment(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VQVAE(latent_dim=8, code_size=2, codes=16)
    x = torch.rand(4, 1, 28, 28).bernoulli()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(model, DataLoader(TensorDataset(x, torch.zeros(4)), batch_size=4))  # eval: the codebook stays
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(trainer.callback_metrics["val/loss"], (out.recon + out.latent.extra["commitment"]).mean())


def test_k_codes_per_image_are_the_one_deterministic_code() -> None:
    model = VQVAE(latent_dim=8, code_size=2, codes=16).eval()
    x = torch.rand(3, 1, 28, 28).bernoulli()
    z = model(x, 4).latent.z
    assert z.shape == (4, 3, 8) and all(torch.equal(z[0], zi) for zi in z)


def test_samples_are_uniform_codebook_vectors() -> None:
    model = VQVAE(latent_dim=8, code_size=2, codes=16)
    z = model.sample_codes(50, torch.Generator().manual_seed(3))
    assert z.shape == (50, 8)
    assert torch.equal(z, model.sample_codes(50, torch.Generator().manual_seed(3)))  # the pictures' fixed samples
    book = model.latent.codebook
    for vector in z.reshape(-1, 2):
        assert (book == vector).all(1).any()
    assert model.sample(6).shape == (6, 1, 28, 28)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"latent_dim": 30, "code_size": 4}, "latent_dim 30 is not divisible by code_size 4"),
        ({"iw_samples": 1000}, "vqvae has no importance-weighted NLL, but iw_samples is 1000"),
        ({"val_iw_samples": 5}, "but val_iw_samples is 5"),
        ({"codes": 0}, "codes and code_size must be positive integers"),
        ({"decay": 1.0}, "0 <= decay < 1"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, expected: str) -> None:
    with pytest.raises(VAEZooError, match=expected):
        VQVAE(**kwargs)


# ----- the recipe through the CLI --------------------------------------------------------------------------


def test_recipe_fits_validates_tests_and_predicts(data: Path, capsys) -> None:
    common = ["--config", RECIPE, "--data.root", str(data), *SMALL, "--trainer.enable_progress_bar", "false"]
    code, _, err = run_cli("fit", *common, "--trainer.max_epochs", "1", capsys=capsys)
    assert code == 0, err
    code, out, err = run_cli("validate", *common, "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert "val/perplexity" in out and "val/used_codes" in out and "test/nll" not in out
    code, out, err = run_cli("test", *common, "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert "test/kl  " in out and f"{8 * math.log(512):.2f}" in out  # M log K with M = 32 / 4
    assert "test/nll  n/a  (vqvae: a point-mass posterior has no density log q(z | x)" in out
    code, out, err = run_cli("predict", *common, "--ckpt_path", "last", "--predict_writer.output_dir", "out",
                             capsys=capsys)  # the recipe's tasks: generate and reconstruct
    assert code == 0, err
    assert Path("out/samples.pt").is_file() and Path("out/reconstructions.pt").is_file()
    code, _, err = run_cli("predict", *common, "--ckpt_path", "last", "--predict_writer.output_dir", "codes",
                           "--predict_writer.tasks", "[encode]", capsys=capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("vaezoo: error: the encode task writes a one-layer Gaussian posterior (mean, logvar), "
                                "but this model's latent is a VQLatent (VQVAE). Drop encode from --predict_writer.tasks")
    assert not Path("codes/codes.npz").exists()  # refused before the first batch


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.iw_samples", "1000"], "vqvae has no importance-weighted NLL, but iw_samples is 1000"),
        (["--model.latent_dim", "30"], "latent_dim 30 is not divisible by code_size 4"),
        (["--model.prior", "mog"], "vqvae's prior is over codes"),
    ],
)
def test_bad_input_through_the_cli_is_one_line(args: list[str], expected: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *SMALL, *args)
    assert expected in err
