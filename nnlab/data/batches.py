"""The tensor-resident batch loader: the whole split lives on the training device as uint8,
and batches are drawn by indexing a shuffled permutation on that device.

No per-sample transforms, no worker processes, no host round-trips per step. Under DDP each
rank takes its own shard of the same permutation (rank::world_size), all of equal length.
The order depends only on (seed, epoch), so a resumed run sees the same batches; the position
within the epoch is the loader's state (state_dict/load_state_dict, which Lightning saves in every
checkpoint and restores on a mid-epoch resume), so a run resumed mid-epoch continues where it
stopped.

Several steps per call (`steps_per_execution`, nnlab/lean.py): with a `plan`, the loader yields
`Chunk`s instead of batches, each the next few batches of the same order, so that one Lightning
training step runs several optimizer steps. A chunk holds a view of the epoch's permutation and
draws each batch only when the step loop asks for it (`chunk.batch(j)`): no copy, the same batches
in the same order as one at a time. The plan says how many batches the next chunk takes (it ends
chunks where Lightning must look: validation, checkpoints, max_steps, the epoch's end) and keeps
Lightning's batch counters in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch


class ChunkPlan(Protocol):
    """What the loader asks a plan (nnlab.lean.StepPlan) while it serves an epoch."""

    def next_chunk(self, position: int, length: int) -> int:
        """How many batches the chunk that starts at batch `position` of the epoch takes."""

    def served(self, chunk: Chunk) -> None:
        """Called as a chunk is handed to Lightning."""


class Chunk:
    """The next `n` batches of an epoch, drawn one at a time by the step loop: batch j is
    (items[order[(start + j) * bs : ...]], labels[...]), exactly what the loader would have yielded
    for batch start + j. `start`/`stop` are positions in the epoch (batches)."""

    __slots__ = ("source", "order", "start", "stop")

    def __init__(self, source: TensorBatches, order: torch.Tensor, start: int, stop: int):
        self.source, self.order, self.start, self.stop = source, order, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def batch(self, j: int):
        return self.source.draw(self.order, self.start + j)

    @property
    def samples(self) -> int:
        """The examples in the chunk (all its batches together)."""
        bs = self.source.batch_size
        return min(self.stop * bs, len(self.order)) - self.start * bs

    def __repr__(self) -> str:
        return f"Chunk(batches {self.start}..{self.stop - 1} of the epoch)"


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
        self.plan: ChunkPlan | None = None  # set by nnlab.lean on the training loader
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
        length, plan = len(self), self.plan
        if plan is None:
            for i in range(start, length):
                self._position = i + 1
                yield self.draw(order, i)
            return
        i = start
        while i < length:
            n = plan.next_chunk(i, length)
            if n <= 0:
                return
            chunk = Chunk(self, order, i, i + n)
            self._position = i = i + n
            plan.served(chunk)
            yield chunk

    def draw(self, order: torch.Tensor, i: int):
        """Batch i of an epoch's order."""
        return self.batch(order[i * self.batch_size : (i + 1) * self.batch_size])

    def batch(self, idx: torch.Tensor):
        """The batch of these indices (subclasses serve other batch shapes, e.g. sequences)."""
        return self.images[idx], self.labels[idx]
