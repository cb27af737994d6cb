"""vaezoo: train, compare and extend variational autoencoders on PyTorch Lightning.

The public names below load on first use (PEP 562), so that ``vaezoo --help`` and ``vaezoo
--version`` answer without importing torch and Lightning (several seconds on a small machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "VAEZooError": "vaezoo.errors",
    "Bernoulli": "vaezoo.likelihoods",
    "DiscretizedLogistic": "vaezoo.likelihoods",
    "Gaussian": "vaezoo.likelihoods",
    "Likelihood": "vaezoo.likelihoods",
    "VAE": "vaezoo.models",
    "BetaVAE": "vaezoo.models",
    "HVAE": "vaezoo.models",
    "BetaTCVAE": "vaezoo.models",
    "IWAE": "vaezoo.models",
    "VQVAE": "vaezoo.models",
    "DiagonalGaussian": "vaezoo.models",
    "VAEOutput": "vaezoo.models",
    "ConvNet": "vaezoo.nets",
    "MLPNet": "vaezoo.nets",
    "Net": "vaezoo.nets",
    "ResNet": "vaezoo.nets",
    "register_dataset": "vaezoo.registry",
    "register_likelihood": "vaezoo.registry",
    "register_net": "vaezoo.registry",
    "register_variant": "vaezoo.registry",
}

__all__ = [
    "VAE",
    "Bernoulli",
    "BetaTCVAE",
    "BetaVAE",
    "ConvNet",
    "DiagonalGaussian",
    "DiscretizedLogistic",
    "Gaussian",
    "HVAE",
    "IWAE",
    "Likelihood",
    "MLPNet",
    "Net",
    "ResNet",
    "VAEOutput",
    "VAEZooError",
    "VQVAE",
    "__version__",
    "register_dataset",
    "register_likelihood",
    "register_net",
    "register_variant",
]

if TYPE_CHECKING:
    from vaezoo.errors import VAEZooError
    from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, Likelihood
    from vaezoo.models import VAE, BetaTCVAE, BetaVAE, DiagonalGaussian, HVAE, IWAE, VAEOutput, VQVAE
    from vaezoo.nets import ConvNet, MLPNet, Net, ResNet
    from vaezoo.registry import register_dataset, register_likelihood, register_net, register_variant


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vaezoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
