"""VAE variants. ``base.py`` holds the ELBO machinery; each other file registers a family of variants."""

from vaezoo.models.base import VAE, DiagonalGaussian, VAEOutput
from vaezoo.models.beta import BetaVAE

__all__ = ["VAE", "BetaVAE", "DiagonalGaussian", "VAEOutput"]
