"""Batches cut straight from one in-memory uint8 tensor, sharded across DDP ranks.

A whole split fits in memory as uint8 (MNIST ~47 MB, CIFAR-10 ~150 MB), so a batch is one
tensor index: no per-sample ``__getitem__``, no PIL, no collate, no worker processes. Lightning
accepts any iterable as a dataloader but only injects a ``DistributedSampler`` into real
``torch.utils.data.DataLoader`` objects, so :class:`EpochBatchSampler` shards by itself.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from vaezoo.errors import VAEZooError


class EpochBatchSampler:
    """Yields one index tensor per batch: this rank's share of the epoch's (shuffled) order.

    Every rank draws the same permutation (seeded with ``seed + epoch``) and takes a disjoint
    share of it:

    * ``drop_last=True`` (training): the permutation is cut to a multiple of
      ``world_size * batch_size``, so every rank yields the same number of full batches and no
      rank waits on a collective the others never reach.
    * ``drop_last=False`` (evaluation): rank ``r`` takes positions ``r::world_size``, the last
      partial batch is kept, so every sample is seen exactly once over all ranks. Ranks may then
      differ by one batch: do no per-step collectives in evaluation steps.

    Args:
        num_samples: How many samples the split holds (indices run over ``0..num_samples-1``).
        batch_size: Samples per batch on each rank.
        shuffle: Draw a fresh permutation every epoch; otherwise keep the stored order.
        drop_last: Drop the samples that cannot fill a whole batch on every rank.
        seed: Base seed of the per-epoch permutation (epoch ``e`` uses ``seed + e``).
        rank: This process's rank. None reads ``torch.distributed`` when iterating (0 without it).
        world_size: Number of processes. None reads ``torch.distributed`` (1 without it).
        group: Batches handed over as one (their indices concatenated, in order): what a model with
            ``steps_per_call = group`` takes per training step. The last group may hold fewer; the
            batches inside are exactly those of ``group = 1``. Positions (``state_dict``) count groups.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        group: int = 1,
    ) -> None:
        if group < 1:
            raise VAEZooError(f"group must be >= 1 batches, got {group}.")
        if num_samples < 0:
            raise VAEZooError(f"num_samples must be >= 0, got {num_samples}.")
        if batch_size <= 0:
            raise VAEZooError(f"batch_size must be a positive number of samples, got {batch_size}.")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.epoch = 0
        # Batches of this epoch already handed out; a restored value is skipped by the next
        # __iter__ so that a mid-epoch resume continues where the checkpoint was taken.
        self._yielded = 0
        self._skip = 0

    def rank_world(self) -> tuple[int, int]:
        """This process's (rank, world size), read now: DDP initialises after construction."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world = self.world_size
        if world is None:
            world = torch.distributed.get_world_size() if distributed else 1
        rank = self.rank
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if not 0 <= rank < world:
            raise VAEZooError(f"rank must lie in [0, world_size={world}), got {rank}.")
        return rank, world

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next ``__iter__`` yields (Lightning calls it)."""
        if epoch != self.epoch:
            # A restored position belongs to the restored epoch only.
            self._skip = self._yielded = 0
        self.epoch = epoch

    def _rank_indices(self) -> Tensor:
        """This rank's indices for the current epoch, in yield order: ``(n_rank,)`` int64."""
        rank, world = self.rank_world()
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        if self.drop_last:
            order = order[: self.num_samples // (world * self.batch_size) * world * self.batch_size]
        return order[rank::world]

    def __iter__(self) -> Iterator[Tensor]:
        # A generator: the permutation is drawn at the first next(), after Lightning's set_epoch.
        indices = self._rank_indices()
        # split() of an empty tensor gives one empty batch, not none.
        batches = indices.split(self.batch_size * self.group) if len(indices) else ()
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for batch in batches[skip:]:
            self._yielded += 1
            yield batch

    @property
    def batches(self) -> int:
        """Number of batches (not groups) this rank takes per epoch (for the current world size)."""
        rank, world = self.rank_world()
        if self.drop_last:
            return self.num_samples // (world * self.batch_size)
        return -(-len(range(rank, self.num_samples, world)) // self.batch_size)

    def __len__(self) -> int:
        """Number of groups of batches (of batches, with ``group = 1``) this rank yields per epoch."""
        return -(-self.batches // self.group)

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were already yielded."""
        return {"epoch": self.epoch, "batches_yielded": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume: the next ``__iter__`` of the same epoch skips the batches already yielded."""
        self.epoch = state_dict["epoch"]
        self._yielded = self._skip = state_dict["batches_yielded"]


class TensorBatchLoader:
    """An iterable of ``(images, labels)`` batches indexed out of two in-memory tensors.

    Lightning takes it as a dataloader: it calls ``sampler.set_epoch`` every epoch, and saves
    and restores ``state_dict`` in checkpoints so a mid-epoch resume skips the batches done.

    Args:
        images: The whole split, uint8 ``(N, C, H, W)``.
        labels: Class labels, int64 ``(N,)``.
        sampler: Yields the index tensor of each batch; ``sampler.num_samples`` must equal N.
    """

    # Lightning's shuffle check reads `batch_sampler` on anything with a `sampler` attribute (vaezoo.compat, 5).
    batch_sampler = None

    def __init__(self, images: Tensor, labels: Tensor, sampler: EpochBatchSampler) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise VAEZooError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != images.shape[:1]:
            raise VAEZooError(f"labels must be ({len(images)},) to match the images, got {tuple(labels.shape)}.")
        if sampler.num_samples != len(images):
            raise VAEZooError(f"sampler covers {sampler.num_samples} samples but there are {len(images)} images.")
        self.images = images
        self.labels = labels
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in self.sampler:
            yield self.images[idx], self.labels[idx]  # uint8 (B, C, H, W), int64 (B,)

    def __len__(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position (Lightning stores it in checkpoints)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the sampler's position."""
        self.sampler.load_state_dict(state_dict)
