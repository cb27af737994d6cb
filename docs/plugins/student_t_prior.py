"""A new prior in one file: a heavy-tailed Student-t p(z), for --model.prior student_t."""

import torch
from torch import Tensor

from vaezoo.priors import Prior
from vaezoo.registry import register_prior


@register_prior("student_t")
class StudentTPrior(Prior):
    """p(z) = prod_l StudentT(z_l; nu, 0, 1). No closed-form KL from a Gaussian: vaezoo estimates it by sampling.

    Args:
        nu: Degrees of freedom (large nu tends to N(0, 1)).
    """

    def __init__(self, nu: float = 3.0) -> None:
        super().__init__()
        self.nu = nu

    def log_prob(self, z: Tensor) -> Tensor:  # (..., L) -> (...)
        return torch.distributions.StudentT(self.nu).log_prob(z.float()).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:  # (n, L)
        # StudentT draws from the global RNG; a generator fixes it for the pictures' samples.
        seed = None if generator is None else int(torch.randint(2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return torch.distributions.StudentT(self.nu).sample((n, self.latent_dim))
