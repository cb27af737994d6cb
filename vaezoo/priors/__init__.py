"""Priors p(z) over Gaussian latent codes, chosen with ``--model.prior normal|mog|vamp`` (or a plugin's,
entry-point group ``vaezoo.priors``)."""

from vaezoo.priors.base import Prior, kl
from vaezoo.priors.mog import MixturePrior
from vaezoo.priors.normal import NormalPrior
from vaezoo.priors.vamp import VampPrior

__all__ = ["MixturePrior", "NormalPrior", "Prior", "VampPrior", "kl"]
