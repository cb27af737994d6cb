"""VAE variants. ``base.py`` holds the ELBO machinery; each other file registers a family of variants."""

from vaezoo.models.base import VAE, DiagonalGaussian, VAEOutput
from vaezoo.models.beta import BetaVAE
from vaezoo.models.betatc import BetaTCVAE
from vaezoo.models.hierarchical import HVAE
from vaezoo.models.iwae import IWAE
from vaezoo.models.vqvae import VQVAE

__all__ = ["VAE", "BetaVAE", "BetaTCVAE", "IWAE", "HVAE", "VQVAE", "DiagonalGaussian", "VAEOutput"]
