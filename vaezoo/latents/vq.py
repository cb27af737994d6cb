"""A discrete code of codebook vectors: the quantiser of the VQ-VAE (van den Oord et al. 2017).

"Neural Discrete Representation Learning", NeurIPS 2017, with the codebook learnt by exponential
moving averages (the paper's appendix A.1; Sonnet's ``VectorQuantizerEMA``). Shapes, for a batch of
B images and a code of L = ``code_dim`` numbers cut into M = L / d vectors of d = ``code_size``:

    h   = encoder(x)                    # (B, 2L): the net contract of every latent
    z_e = pre_quant(h)                  # (B, L): a learned linear map (taming-transformers' quant_conv)
    i_m = argmin_k ||z_e,m - e_k||^2    # (B, M): the nearest of the K codebook vectors e_k, each (d,)
    z_q = z_e + sg(e_i - z_e)           # (B, L): the values of e_i, the gradient of z_e (straight-through)

``sg`` is stop-gradient (``.detach()``): the decoder sees the codebook vectors, and the
reconstruction's gradient with respect to z_q is passed to z_e unchanged.

Terms per image:

- KL(q || p) = M log K nats, exactly: q(z | x) is a point mass on one code per vector and the prior
  is uniform over the K codes of each of the M vectors (a learned prior over codes comes later);
- ``commitment`` = beta * ||z_e - sg(e_i)||^2, summed over the L numbers of the code: squared code
  units (not nats), the paper's third term, which keeps the encoder close to its codes.

The paper's second term, ||sg(z_e) - e||^2, is replaced by the EMA update below: the codebook gets no
gradient. Per training step, with the B * M pre-quantisation vectors x_j of the batch (all processes'):

    n_k = #{j : i_j = k}                 s_k = sum_{j : i_j = k} x_j
    N_k <- decay * N_k + (1 - decay) * n_k               (``cluster_size``, vectors per batch)
    S_k <- decay * S_k + (1 - decay) * s_k               (``embed_sum``)
    e_k <- S_k / N~_k,    N~_k = (N_k + eps) / (sum_k N_k + K eps) * sum_k N_k   (Laplace smoothing)

Dead codes (Dhariwal et al. 2020, "Jukebox", random restarts): after the update, every code with
N_k < ``dead_code_threshold`` is moved to an encoder output drawn at random (uniformly, with
replacement) from the step's B * M vectors; its N_k and S_k are left as they are, so it moves to a new
random vector at every step until enough vectors choose it to lift N_k above the threshold. The EMA
starts at N = 0, S = 0, so the first training step puts every code on an encoder output: the
codebook is initialised from the data.

All of this happens only in training mode (``model.train()``); evaluation only reads the codebook.
The statistics, updated in fp32, are buffers: they travel in checkpoints. A batch holding a non-finite
vector (on any process) leaves them as they were, so a batch the non-finite guard skips cannot poison
the codebook for every later one.

Several processes (DDP): every process adds its n_k and s_k to the others' with one
``torch.distributed.all_reduce`` per training step (when ``torch.distributed`` is initialised with
more than one process), together with rank 0's restart candidates, so every process makes the same
update and keeps the same codebook, learnt from the whole global batch. (DDP's own
``broadcast_buffers`` would copy rank 0's codebook to the others, learnt from its share alone.)
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.latents.base import Latent, LatentSample

IW_REASON = (
    "a point-mass posterior has no density log q(z | x) to importance-weight; -elbo = recon + M log K bounds "
    "-log p(x) under the uniform prior over codes"
)


class VQLatent(Latent):
    """``code_dim`` numbers as ``code_dim / code_size`` vectors, each replaced by its nearest codebook vector.

    See the module docstring for the maths, the EMA codebook and the restart of dead codes.

    Args:
        code_dim: Numbers per code, L; the encoder gives 2L features (pre-quantised by a linear layer).
        codes: Codebook vectors, K.
        code_size: Numbers per codebook vector, d; must divide ``code_dim``.
        commitment: beta, the weight of the commitment loss ||z_e - sg(e)||^2 (0.25 in the paper).
        decay: The EMA's decay in [0, 1) (0.99 in the paper's appendix).
        dead_code_threshold: A code whose EMA cluster size (vectors per global batch that choose it, averaged
            over about 1 / (1 - decay) steps) is below this is restarted on an encoder output: 0.05, a code
            chosen less than once in 20 batches. 0 turns restarts off (codes nothing ever chose then sit at
            the origin, as with the paper's EMA alone).
        eps: The Laplace smoothing of the cluster sizes.
    """

    def __init__(
        self,
        code_dim: int,
        codes: int = 512,
        code_size: int = 2,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 0.05,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if codes <= 0 or code_size <= 0:
            raise VAEZooError(f"codes and code_size must be positive integers, got {codes} and {code_size}; "
                              "e.g. --model.codes 512 --model.code_size 2.")
        if code_dim % code_size:
            raise VAEZooError(
                f"latent_dim {code_dim} is not divisible by code_size {code_size}: the code is cut into latent_dim / "
                f"code_size vectors. Use e.g. --model.latent_dim {code_size * max(1, round(code_dim / code_size))} "
                f"or a code_size that divides {code_dim}."
            )
        if commitment < 0 or not 0 <= decay < 1 or dead_code_threshold < 0 or eps <= 0:
            raise VAEZooError(
                f"vqvae needs commitment >= 0, 0 <= decay < 1, dead_code_threshold >= 0 and eps > 0; got "
                f"{commitment}, {decay}, {dead_code_threshold} and {eps}. The paper's values: --model.commitment 0.25 "
                "--model.decay 0.99."
            )
        self.code_dim = self.activity_dim = code_dim
        self.codes, self.code_size, self.vectors = codes, code_size, code_dim // code_size  # K, d, M
        self.commitment = commitment
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.eps = eps
        self.terms = ("commitment", "perplexity", "used_codes")
        self.iw_reason = IW_REASON
        self.pre_quant = nn.Linear(2 * code_dim, code_dim)  # (B, 2L) -> (B, L): z_e
        # N(0, 1) until the first training step puts every code on an encoder output (N = 0: all dead).
        self.register_buffer("codebook", torch.randn(codes, code_size))  # (K, d): e_k
        self.register_buffer("cluster_size", torch.zeros(codes))  # (K,): N_k, EMA of vectors per batch
        self.register_buffer("embed_sum", torch.zeros(codes, code_size))  # (K, d): S_k

    # ----- the code -----------------------------------------------------------------------------------

    def nearest(self, vectors: Tensor) -> Tensor:
        """The index of the nearest codebook vector (squared Euclidean distance; ties: the lowest index) of
        each row of ``vectors`` ``(N, d)``: ``(N,)`` int64. Computed in fp32."""
        x, e = vectors.float(), self.codebook.float()
        # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every code and does not change the argmin.
        distances = e.pow(2).sum(1) - 2 * x @ e.T  # (N, K)
        return distances.argmin(1)

    def quantise(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Codebook indices ``(B, M)`` and the quantised code ``(B, L)`` (the codebook vectors, fp32) of ``z_e``."""
        indices = self.nearest(z_e.reshape(-1, self.code_size))  # (B * M,)
        e = self.codebook.float()[indices].view(z_e.shape[0], self.code_dim)  # (B, L)
        return indices.view(z_e.shape[0], self.vectors), e

    def forward(self, h: Tensor, k: int = 1, log_weights: bool = False) -> LatentSample:
        z_e = self.pre_quant(h)  # (B, L)
        indices, e = self.quantise(z_e)
        z_q = z_e + (e.to(z_e.dtype) - z_e).detach()  # the values of e, the gradient of z_e
        batch = z_e.shape[0]
        counts = torch.bincount(indices.flatten(), minlength=self.codes)  # (K,): this process's batch
        if self.training:
            self.update_codebook(z_e.detach().reshape(-1, self.code_size), indices.flatten(), counts)
        commitment = self.commitment * (z_e.float() - e).pow(2).sum(1)  # (B,), squared code units
        kl = z_e.new_full((batch,), self.vectors * math.log(self.codes), dtype=torch.float32)  # M log K
        # The KL of each code vector, log K, spread evenly over its d numbers (for the per-dimension plot).
        kl_per_dim = kl.new_full((), math.log(self.codes) / self.code_size).expand(batch, self.code_dim)
        return LatentSample(
            z=z_q.unsqueeze(0).expand(k, -1, -1),  # deterministic: the same code k times, (k, B, L)
            kl=kl, kl_analytic=True, log_q=None, log_p=None, point=e.to(z_e.dtype), activity=z_e,
            kl_per_dim=kl_per_dim, extra={"commitment": commitment}, stats=usage_stats(counts),
            posterior={"indices": indices}, finite_parts={"pre-quantisation code": z_e},
        )

    def point(self, h: Tensor) -> Tensor:
        z_e = self.pre_quant(h)
        return self.quantise(z_e)[1].to(z_e.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``(n, L)`` from the prior, which is uniform for now: M code indices drawn uniformly from
        the K codes, and their codebook vectors side by side (a learned prior over codes comes later).

        Args:
            n: How many.
            generator: A CPU generator: the indices are then drawn on the CPU (the same codes on any device).
        """
        device = self.codebook.device
        if generator is not None:
            indices = torch.randint(self.codes, (n, self.vectors), generator=generator).to(device)
        else:
            indices = torch.randint(self.codes, (n, self.vectors), device=device)
        return self.codebook.float()[indices].view(n, self.code_dim)

    def describe(self) -> dict[str, int]:
        return {"codes": self.codes, "vectors": self.vectors, "code_size": self.code_size}

    # ----- the codebook -----------------------------------------------------------------------------

    @torch.no_grad()
    def update_codebook(self, vectors: Tensor, indices: Tensor, counts: Tensor) -> None:
        """One EMA step of the codebook and the restart of dead codes (see the module docstring).

        Args:
            vectors: This process's pre-quantisation vectors ``(N, d)``.
            indices: Their nearest codes ``(N,)``.
            counts: How many chose each code ``(K,)``.
        """
        x = vectors.float()
        sums = torch.zeros_like(self.embed_sum, dtype=torch.float32).index_add_(0, indices, x)  # (K, d): s_k
        candidates = x[torch.randint(len(x), (self.codes,), device=x.device)]  # (K, d): restart points
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1:  # one collective: the sums over processes, and rank 0's candidates for everyone
            if dist.get_rank() != 0:
                candidates.zero_()
            packed = torch.cat([counts.float(), sums.flatten(), candidates.flatten()])
            dist.all_reduce(packed)
            counts_all, sums, candidates = packed.split([self.codes, sums.numel(), candidates.numel()])
            sums, candidates = sums.view_as(self.embed_sum), candidates.view_as(self.embed_sum)
        else:
            counts_all = counts.float()
        d = self.decay
        cluster_size = self.cluster_size.float() * d + (1 - d) * counts_all  # (K,): N_k
        embed_sum = self.embed_sum.float() * d + (1 - d) * sums  # (K, d): S_k
        total = cluster_size.sum()
        smoothed = (cluster_size + self.eps) / (total + self.codes * self.eps) * total  # Laplace smoothing
        codebook = embed_sum / smoothed.unsqueeze(1)
        dead = (cluster_size < self.dead_code_threshold).unsqueeze(1)  # (K, 1)
        codebook = torch.where(dead, candidates, codebook)
        # A non-finite batch (on any process) leaves the codebook as it was: the non-finite guard then stops
        # the run or skips the batch, and a skipped batch must not poison the EMA for every later one.
        finite = torch.isfinite(sums).all() & torch.isfinite(candidates).all()
        self.cluster_size.copy_(torch.where(finite, cluster_size, self.cluster_size.float()))
        self.embed_sum.copy_(torch.where(finite, embed_sum, self.embed_sum.float()))
        self.codebook.copy_(torch.where(finite, codebook, self.codebook.float()))


def usage_stats(counts: Tensor) -> dict[str, Tensor]:
    """The batch's code usage: ``perplexity`` exp(H(p)) of p_k = n_k / sum n (K when every code is used
    equally, 1 when one code takes everything) and ``used_codes``, how many codes any vector chose."""
    p = counts.float() / counts.sum().clamp(min=1)
    entropy = -torch.special.xlogy(p, p).sum()  # nats; 0 log 0 = 0
    return {"perplexity": entropy.exp(), "used_codes": (counts > 0).sum().float()}
