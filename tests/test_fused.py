"""torch's fused optimiser kernel where the config leaves the kernel open (vaezoo.models.fused).

The fused step must be the same optimiser: its hyperparameters and parameter groups are those of the config's,
and its update agrees with the foreach path's to fp32 rounding, checked here against the foreach step and against
Adam's update written out. Where the config chose a kernel, or the setting cannot take a fused step, the
config's optimiser is kept untouched.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import MixedPrecision

from tests.test_cli import run_cli
import vaezoo.models.base
from vaezoo.models import VAE
from vaezoo.models.fused import prefer_fused

REPO = Path(__file__).resolve().parents[1]


def params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]


def test_an_open_kernel_becomes_fused_with_the_configs_hyperparameters() -> None:
    ps = params()
    groups = [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}]  # a group of its own keeps its own lr
    built = torch.optim.AdamW(groups, lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, amsgrad=True)
    chosen = prefer_fused(built)
    assert chosen is not built and type(chosen) is torch.optim.AdamW
    assert chosen.defaults["fused"] is True and chosen.defaults["foreach"] is None
    for old, new in zip(built.param_groups, chosen.param_groups, strict=True):
        assert new["fused"] is True
        assert {k: v for k, v in new.items() if k not in ("fused", "foreach")} == \
               {k: v for k, v in old.items() if k not in ("fused", "foreach")}
    assert [g["lr"] for g in chosen.param_groups] == [0.01, 0.5]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_step_is_the_configs_step(cls: type[torch.optim.Optimizer], dtype: torch.dtype) -> None:
    kwargs = {"lr": 0.1, "weight_decay": 0.01}
    a, b = ([p.to(dtype).detach().requires_grad_() for p in params()] for _ in range(2))
    foreach, fused = cls(a, **kwargs, foreach=True), prefer_fused(cls(b, **kwargs))
    assert fused.defaults["fused"] is True
    for step in range(3):
        for x, y in zip(a, b, strict=True):
            x.grad = y.grad = torch.full_like(x, 0.3 * (step + 1)) + x.detach() ** 2
        foreach.step()
        fused.step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)


def test_the_fused_adam_step_is_adams_update_written_out() -> None:
    (p,) = params()[:1]
    start = p.detach().clone()
    opt = prefer_fused(torch.optim.Adam([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8))
    g = torch.linspace(-1, 1, p.numel()).reshape(p.shape)
    m = v = torch.zeros_like(p)
    expected = start.clone()
    for t in (1, 2):
        p.grad = g * t
        opt.step()
        m = 0.9 * m + 0.1 * g * t
        v = 0.99 * v + 0.01 * (g * t) ** 2
        expected -= 0.01 * (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-8)
    assert opt.defaults["fused"] is True
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("build", [
    functools.partial(torch.optim.Adam, foreach=True),  # the config chose the kernel
    functools.partial(torch.optim.Adam, foreach=False),
    functools.partial(torch.optim.Adam, fused=False),
    functools.partial(torch.optim.Adam, differentiable=True),  # no fused kernel for it
    functools.partial(torch.optim.Adam, capturable=True),  # set up for CUDA graphs: the config's kernel choice
    type("MyAdam", (torch.optim.Adam,), {}),  # a subclass may change step()
    torch.optim.SGD,  # its fused kernel refuses sparse gradients, which its default takes
    torch.optim.RMSprop,  # no fused kernel in torch
])
def test_a_chosen_kernel_or_another_optimiser_stays_as_built(build) -> None:  # noqa: ANN001
    built = build(params(), lr=0.1)
    assert prefer_fused(built) is built


def test_an_optimiser_that_has_stepped_stays_as_built() -> None:
    ps = params()
    built = torch.optim.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    built.step()
    assert prefer_fused(built) is built


@pytest.mark.parametrize("param", [
    torch.nn.Parameter(torch.randn(3, dtype=torch.complex64)),  # torch's fused kernel takes real floats only
    torch.nn.Parameter(torch.randn(3, device="meta")),  # and CPU or CUDA tensors (of those vaezoo vouches for)
])
def test_parameters_without_a_fused_kernel_keep_the_configs_optimiser(param: torch.nn.Parameter) -> None:
    built = torch.optim.Adam([param])
    assert prefer_fused(built) is built
    # torch would have accepted fused=True here and failed only at the first step:
    fused = torch.optim.Adam([param], fused=True)
    param.grad = torch.ones_like(param)
    if param.device.type == "cpu":
        with pytest.raises(RuntimeError, match="fused=True"):
            fused.step()


def test_a_gradient_scaler_keeps_the_configs_kernel() -> None:
    # Lightning cannot clip the gradients of an optimiser that unscales them itself (16-mixed's GradScaler on a
    # GPU; Lightning's 16-mixed on a CPU has no scaler, so one is given here).
    built = torch.optim.Adam(params())
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    assert prefer_fused(built, L.Trainer(accelerator="cpu", plugins=[scaler], logger=False)) is built
    for precision in ("32-true", "bf16-mixed"):
        assert prefer_fused(built, L.Trainer(accelerator="cpu", precision=precision, logger=False)) is not built


def test_strategies_that_manage_the_optimiser_keep_the_configs_kernel() -> None:
    built = torch.optim.Adam(params())
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert prefer_fused(built, ddp) is not built

    class OwnStrategy(L.pytorch.strategies.SingleDeviceStrategy):  # e.g. a plugin's: it may wrap the optimiser
        pass

    own = L.Trainer(accelerator="cpu", strategy=OwnStrategy(device=torch.device("cpu")), logger=False)
    assert prefer_fused(built, own) is built


def test_the_model_on_its_own_builds_the_fused_optimiser() -> None:
    opt = VAE(latent_dim=2).configure_optimizers()
    assert type(opt) is torch.optim.Adam and opt.defaults["fused"] is True
    opt = VAE(latent_dim=2, optimizer=functools.partial(torch.optim.Adam, foreach=True)).configure_optimizers()
    assert opt.defaults["fused"] is None and opt.defaults["foreach"] is True


def fit(root: Path, out: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *extra: str) -> tuple[str, dict]:
    said: list[str] = []
    monkeypatch.setattr(vaezoo.models.base, "rank_zero_info", said.append)
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(root),
        "--data.batch_size", "8", "--data.val_size", "16", "--trainer.max_epochs", "1",
        "--trainer.logger.init_args.save_dir", str(out), "--images.every_n_epochs", "0",
        "--model.iw_samples", "null", "--trainer.enable_progress_bar", "false", *extra, capsys=capsys,
    )
    assert code == 0, err
    run = out / "mnist_mlp" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return "\n".join(said), state


def test_a_fit_trains_with_the_fused_kernel_and_says_so(tiny_mnist, tmp_path: Path, capsys, monkeypatch) -> None:
    said, state = fit(tiny_mnist[0], tmp_path / "a", capsys, monkeypatch)
    assert "optimizer: Adam with torch's fused kernel" in said
    (group,) = state["optimizer_states"][0]["param_groups"]
    assert group["fused"] is True and state["global_step"] > 0
    # The config's kernel, where it names one; the run's config keeps what the user wrote.
    said, state = fit(tiny_mnist[0], tmp_path / "b", capsys, monkeypatch, "--model.optimizer.init_args.foreach", "true")
    assert "fused kernel" not in said
    (group,) = state["optimizer_states"][0]["param_groups"]
    assert group["fused"] is None and group["foreach"] is True
    saved = yaml.safe_load((tmp_path / "b" / "mnist_mlp" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["optimizer"]["init_args"]["foreach"] is True


def test_a_checkpoint_goes_on_with_the_kernel_it_was_trained_with() -> None:
    # An older vaezoo's checkpoint holds the multi-tensor kernel's state; resumed, its param groups say foreach.
    a, b = params(), params()
    old, new = torch.optim.Adam(a, lr=0.1), prefer_fused(torch.optim.Adam(b, lr=0.1))
    for p in a:
        p.grad = torch.ones_like(p)
    old.step()
    with torch.no_grad():
        for x, y in zip(a, b, strict=True):
            y.copy_(x)
    new.load_state_dict(copy.deepcopy(old.state_dict()))  # as from a file: no tensor shared with `old`
    assert [g["fused"] for g in new.param_groups] == [None]
    for x, y in zip(a, b, strict=True):
        x.grad, y.grad = torch.full_like(x, 0.5), torch.full_like(y, 0.5)
    old.step()
    new.step()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)  # the same kernel: bit for bit
