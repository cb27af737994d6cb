"""torch's fused Adam kernel, where the config leaves the choice of kernel open.

torch.optim's Adam and AdamW can update every parameter in one fused kernel (``fused=True``: on CPUs since
torch 2.4, and on CUDA); left to themselves they take the multi-tensor ("foreach") path, a dozen kernels over
every parameter per step. It is the same algorithm: the weights agree with the foreach path's to the last bits
of fp32 (about 1e-7 after a step). On the MNIST MLPs the fused step takes 0.2 ms against 0.7 ms at 2 threads: a
tenth of a training step (docs/performance.md).

So vaezoo builds the optimiser the config names and, where the config sets none of ``fused``, ``foreach``,
``capturable`` and ``differentiable``, builds it again with ``fused=True`` when:

- its class is torch's Adam or AdamW (exactly: a subclass may change ``step``). SGD and Adagrad have fused
  kernels too, but those refuse sparse gradients, which the config's kernel takes; Adam takes none anyway;
- every parameter is a floating-point tensor on a CPU or a CUDA GPU (torch checks that only at the first
  step, so it is checked here, before);
- nothing scales the gradients (16-mixed's GradScaler): Lightning cannot clip the gradients of an optimiser
  that unscales them inside its step;
- the strategy is one device or DDP (FSDP and DeepSpeed manage the optimiser themselves).

``--model.optimizer.init_args.foreach true`` (or ``fused false``) keeps torch's default kernel.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch.optim import Optimizer

if TYPE_CHECKING:
    import lightning as L

# The optimisers built again with fused=True, and the devices whose parameters they take it on (torch 2.4+ for CPUs).
FUSABLE: tuple[type[Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW)
DEVICES = ("cpu", "cuda")


def kernel_left_open(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` is one of :data:`FUSABLE`, has taken no step, its config chose no kernel (fused,
    foreach, capturable, differentiable), and its parameters are floating-point tensors on :data:`DEVICES`."""
    return (
        type(optimizer) in FUSABLE
        and not optimizer.state
        and all(group.get("fused") is None and group.get("foreach") is None for group in optimizer.param_groups)
        and not optimizer.defaults.get("differentiable", False)
        and not optimizer.defaults.get("capturable", False)  # tuned for CUDA graphs: the config's choice
        and all(p.device.type in DEVICES and p.is_floating_point() for g in optimizer.param_groups for p in g["params"])
    )


def trainer_allows(trainer: L.Trainer | None) -> bool:
    """Whether the Trainer leaves the optimiser's step to torch: no gradient scaler, one device or DDP."""
    if trainer is None:  # the model used on its own
        return True
    return getattr(trainer.precision_plugin, "scaler", None) is None and type(trainer.strategy) in (
        SingleDeviceStrategy, DDPStrategy)


def prefer_fused(optimizer: Optimizer, trainer: L.Trainer | None = None) -> Optimizer:
    """``optimizer`` built again with ``fused=True`` where that is the same optimiser, faster (module docstring);
    else ``optimizer`` itself.

    Args:
        optimizer: Fresh from the config (no step taken yet), over the model's parameters.
        trainer: The Trainer that will step it, or None for a model used on its own.
    """
    if not (kernel_left_open(optimizer) and trainer_allows(trainer)):
        return optimizer
    cls = type(optimizer)
    accepted = inspect.signature(cls).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    try:
        return cls(groups, **{**defaults, "fused": True, "foreach": None})
    except (RuntimeError, ValueError, TypeError):  # torch refuses the combination: the config's optimiser stays
        return optimizer
