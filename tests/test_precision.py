"""Mixed precision keeps the loss terms in fp32; torch.compile is an opt-in that trains."""

import lightning as L
import pytest
import torch

from vaezoo import VAE
from vaezoo.data import MNISTDataModule
from vaezoo.likelihoods import DiscretizedLogistic
from vaezoo.nets import ConvNet
from vaezoo.registry import NETS


def test_loss_terms_are_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=8, likelihood=DiscretizedLogistic(), image_shape=(3, 32, 32),
                net=ConvNet)
    x = torch.randint(0, 256, (4, 3, 32, 32)).float() / 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = model.loss(out)
    assert out.params.dtype == torch.bfloat16  # the net did run in bf16
    for term in (out.recon, out.kl_per_dim, out.elbo, loss):
        assert term.dtype == torch.float32
    with torch.no_grad():
        full = model(x)
    # The bound moves by a small fraction only: the likelihood's sum ran in fp32.
    assert (out.elbo - full.elbo).abs().max() / full.elbo.abs().max() < 0.01


def _fit(tiny_mnist, tmp_path, **trainer_kwargs) -> tuple[L.Trainer, VAE]:
    torch.manual_seed(0)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    model = VAE(latent_dim=4, iw_samples=4, **trainer_kwargs.pop("model", {}))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=5, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(model, dm)
    return trainer, model


def test_bf16_mixed_on_cpu_trains_with_a_finite_loss(tiny_mnist, tmp_path) -> None:
    trainer, model = _fit(tiny_mnist, tmp_path, precision="bf16-mixed")
    loss = trainer.callback_metrics["train/loss_step"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(trainer.callback_metrics["val/elbo"])
    assert next(model.parameters()).dtype == torch.float32  # mixed: the weights stay fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a CUDA GPU (on CPU Lightning uses bf16)")
def test_16_mixed_on_gpu_trains_with_a_finite_loss(tiny_mnist, tmp_path) -> None:
    trainer, _ = _fit(tiny_mnist, tmp_path, precision="16-mixed", accelerator="gpu", devices=1)
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])


@pytest.mark.slow
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_compiled_net_trains_and_keeps_plain_checkpoint_keys(net: str, tiny_mnist, tmp_path) -> None:
    net_cls = NETS.get(net)
    trainer, model = _fit(tiny_mnist, tmp_path, model={"compile": True, "net": net_cls})
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])
    assert not any("_orig_mod" in key for key in model.state_dict())
    plain = VAE(latent_dim=4, iw_samples=4, net=net_cls).eval()
    plain.load_state_dict(model.state_dict())  # strict: the same names, in an uncompiled model
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():  # the same weights: the same codes and reconstructions
        torch.testing.assert_close(plain.code(x), model.eval().code(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain.reconstruct(x), model.reconstruct(x), rtol=1e-4, atol=1e-5)
