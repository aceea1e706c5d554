"""The tensor-resident batch loader: the whole split lives on the training device as uint8,
and batches are drawn by indexing a shuffled permutation on that device.

No per-sample transforms, no worker processes, no host round-trips per step. Under DDP each
rank takes its own shard of the same permutation (rank::world_size), all of equal length.
The order depends only on (seed, epoch), so a resumed run sees the same batches; the position
within the epoch is the loader's state (state_dict/load_state_dict, which Lightning saves in every
checkpoint and restores on a mid-epoch resume), so a run resumed mid-epoch continues where it
stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


class TensorBatches:
    """Iterate (images, labels) batches over tensors already on the device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
    ):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_fn = epoch_fn
        self._calls = 0
        self._epoch, self._position = 0, 0  # the epoch being served and the batches yielded so far
        self._resume_at: tuple[int, int] | None = None
        # Every rank gets the same number of samples: the permutation is cut to a multiple of
        # world_size.
        self.per_rank = len(images) // world_size if world_size > 1 else len(images)

    def __len__(self) -> int:
        n = self.per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for one epoch (on the data's device)."""
        n, device = len(self.images), self.images.device
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).to(device)
        else:
            order = torch.arange(n, device=device)
        if self.world_size > 1:
            order = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        return order

    # Lightning treats a loader with these two methods as stateful (its `_Stateful` protocol):
    # the state goes into each checkpoint, and a mid-epoch resume hands it back before iterating.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["position"]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the epoch is read when the first batch is drawn (the generator runs lazily)
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._calls
        self._calls += 1
        start = 0
        if self._resume_at is not None:
            resume_epoch, resume_position = self._resume_at
            self._resume_at = None
            start = resume_position if resume_epoch == epoch else 0
        self._epoch, self._position = epoch, start
        order = self.indices(epoch)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            self._position = i + 1
            yield self.batch(idx)

    def batch(self, idx: torch.Tensor):
        """The batch of these indices (subclasses serve other batch shapes, e.g. sequences)."""
        return self.images[idx], self.labels[idx]
