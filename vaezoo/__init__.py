"""vaezoo: train, compare and extend variational autoencoders on PyTorch Lightning."""

from vaezoo.errors import VAEZooError
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, Likelihood
from vaezoo.models import VAE, BetaVAE, DiagonalGaussian, VAEOutput
from vaezoo.nets import ConvNet, MLPNet, Net
from vaezoo.registry import register_dataset, register_likelihood, register_net, register_variant

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "Bernoulli",
    "BetaVAE",
    "ConvNet",
    "DiagonalGaussian",
    "DiscretizedLogistic",
    "Gaussian",
    "Likelihood",
    "MLPNet",
    "Net",
    "VAEOutput",
    "VAEZooError",
    "__version__",
    "register_dataset",
    "register_likelihood",
    "register_net",
    "register_variant",
]
