"""RatingsDataModule: user x item ratings for collaborative filtering (MovieLens, synthetic).

The ratings live on the training device as a few flat tensors (one entry per rating, sorted by
user, with per-user offsets: a CSR matrix). A batch is a set of users: their ratings are
gathered from the CSR arrays and scattered into a dense (users, items) uint8 matrix on the
device, whose entries are rating levels 1..K (0 = not rated). Each batch is a pair

    (inputs, targets)   inputs: the users' training ratings (what the model conditions on)
                        targets: the ratings of the split being served (train: the inputs again;
                                 val/test: each user's held-out ratings)

Formats read from `dataset.data_dir` (or a sub-folder of it, such as ml-100k/):
    u.data       MovieLens 100k: tab-separated `user item rating timestamp`, no header
    ratings.csv  the newer MovieLens sets: `userId,movieId,rating,timestamp` with a header line
Ids are remapped to 0..n-1; a rating is mapped to the nearest of `levels` (ties to the lower).

The split is per user and seeded: of each user's ratings, `test_fraction` are held out for test
and `val_fraction` for validation (rounded, never leaving the user without a training rating).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnlab.data.batches import TensorBatches
from nnlab.data.datamodule import SPLITS, ResidentDataModule
from nnlab.errors import ConfigError, DataError, check_choice

FORMATS = ("movielens", "synthetic")
FILES = ("u.data", "ratings.csv")  # in the order they are looked for


# -- the real formats ------------------------------------------------------------------------------
def read_ratings_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, item ids, ratings) from a MovieLens u.data or ratings.csv file."""
    path = Path(path)
    try:
        if path.name.endswith(".csv"):
            with open(path) as fh:
                header = fh.readline().strip().lower().split(",")
            if header[:3] != ["userid", "movieid", "rating"]:
                raise DataError(
                    f"{path}: the first line is {','.join(header)!r}, expected the MovieLens "
                    "header 'userId,movieId,rating,timestamp'. Point dataset.data_dir at an "
                    "unmodified MovieLens folder."
                )
            table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2), ndmin=2)
        else:
            table = np.loadtxt(path, delimiter="\t", usecols=(0, 1, 2), ndmin=2)
    except (OSError, ValueError, IndexError) as err:
        raise DataError(
            f"Cannot read {path}: {err}. MovieLens u.data is tab-separated `user item rating "
            "timestamp`; ratings.csv is `userId,movieId,rating,timestamp` with a header. Replace "
            "the file with the original."
        ) from err
    if len(table) == 0:
        raise DataError(f"{path} holds no ratings. Replace it with the original MovieLens file.")
    return (
        table[:, 0].astype(np.int64),
        table[:, 1].astype(np.int64),
        table[:, 2].astype(np.float32),
    )


def find_ratings_file(data_dir: str | Path) -> Path:
    """u.data or ratings.csv in data_dir, or in one of its sub-folders (ml-100k/, ml-latest-small/
    ...)."""
    data_dir = Path(data_dir).expanduser()
    folders = [data_dir] + (
        sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
    )
    for folder in folders:
        for name in FILES:
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"No MovieLens ratings found in dataset.data_dir={data_dir.resolve()} (looked for "
        f"{' or '.join(FILES)} there and in its sub-folders). Download a MovieLens set from "
        "https://grouplens.org/datasets/movielens/ (ml-100k has u.data; ml-latest-small and the "
        "newer sets have ratings.csv), unpack it, and pass dataset.data_dir=/path/to/folder (or "
        "set NNLAB_DATA_DIR). For an offline demo use dataset=synthetic_ratings."
    )


def synthetic_ratings(
    n_users: int, n_items: int, rank: int, density: float, noise: float, seed: int
):
    """Ratings 1..5 from a low-rank model: r = round(3 + user_bias + item_bias + u.v / sqrt(rank) +
    noise), observed for a random `density` share of the (user, item) pairs (popular items more
    often)."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(n_users, rank, generator=g), torch.randn(n_items, rank, generator=g)
    user_bias, item_bias = (
        0.3 * torch.randn(n_users, 1, generator=g),
        0.5 * torch.randn(1, n_items, generator=g),
    )
    score = (
        3.0
        + user_bias
        + item_bias
        + u @ v.T / rank**0.5
        + noise * torch.randn(n_users, n_items, generator=g)
    )
    popularity = (
        torch.rand(1, n_items, generator=g) + 0.5
    )  # mean 1: items differ in how often they are rated
    observed = torch.rand(n_users, n_items, generator=g) < density * popularity
    users, items = observed.nonzero(as_tuple=True)
    ratings = score[users, items].round().clamp(1, 5)
    return users.numpy(), items.numpy(), ratings.numpy()


# -- the batches -------------------------------------------------------------------------------
class CSR:
    """One split's ratings as a compressed sparse row matrix (users x items), on one device."""

    def __init__(
        self, users: torch.Tensor, items: torch.Tensor, levels: torch.Tensor, n_users: int
    ):
        order = torch.argsort(users, stable=True)
        self.items, self.levels = items[order], levels[order]
        counts = torch.bincount(users, minlength=n_users)
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device) -> CSR:
        for key in ("items", "levels", "counts", "offsets"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    def dense(self, user_ids: torch.Tensor, n_items: int) -> torch.Tensor:
        """(len(user_ids), n_items) uint8 matrix of levels 1..K, 0 where the user has no rating."""
        counts, starts = self.counts[user_ids], self.offsets[user_ids]
        rows = torch.repeat_interleave(torch.arange(len(user_ids), device=counts.device), counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        index = (
            torch.repeat_interleave(starts, counts)
            + torch.arange(len(rows), device=counts.device)
            - first
        )
        out = torch.zeros(len(user_ids), n_items, dtype=torch.uint8, device=counts.device)
        out[rows, self.items[index]] = self.levels[index]
        return out


class UserBatches:
    """Batches of users (TensorBatches over user ids) turned into dense (inputs, targets)
    matrices."""

    def __init__(self, users: TensorBatches, inputs: CSR, targets: CSR, n_items: int):
        self.users, self.inputs, self.targets, self.n_items = users, inputs, targets, n_items

    def __len__(self) -> int:
        return len(self.users)

    # the position within the epoch (TensorBatches' state): a mid-epoch resume continues where it
    # stopped
    def state_dict(self) -> dict:
        return self.users.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.users.load_state_dict(state)

    def __iter__(self):
        for ids, _ in self.users:
            yield self.inputs.dense(ids, self.n_items), self.targets.dense(ids, self.n_items)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    """The validation and test fractions of each user's ratings leave some for training."""
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"dataset.val_fraction={val_fraction} and dataset.test_fraction={test_fraction} "
            "must be fractions of each user's ratings that leave some for training, e.g. "
            "val_fraction=0.1 test_fraction=0.1."
        )


class RatingsDataModule(ResidentDataModule):
    def __init__(
        self,
        name: str,
        format: str = "movielens",
        data_dir: str = "data",
        levels=(1, 2, 3, 4, 5),
        batch_size: int = 32,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        n_users: int = 1000,
        n_items: int = 200,
        rank: int = 5,
        density: float = 0.15,
        noise: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        check_choice("dataset.format", format, FORMATS)
        _check_fractions(val_fraction, test_fraction)
        self.name, self.format, self.data_dir = name, format, Path(data_dir)
        self.levels = [float(x) for x in levels]
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed, self.seed = int(split_seed), int(seed)
        self.synthetic = dict(
            n_users=int(n_users),
            n_items=int(n_items),
            rank=int(rank),
            density=float(density),
            noise=float(noise),
        )
        self.file: Path | None = None
        self.n_users = self.n_items = 0
        self._ratings: dict[str, CSR] = {}  # one CSR matrix per split
        # the mean training rating of each item (rating units)
        self.item_means: torch.Tensor | None = None

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def prepare_data(self) -> None:
        if self.format == "movielens" and self.file is None:
            self.file = find_ratings_file(self.data_dir)

    def _load(self):
        if self.format == "synthetic":
            return synthetic_ratings(**self.synthetic, seed=self.split_seed)
        self.prepare_data()
        return read_ratings_file(self.file)

    def setup(self, stage: str | None = None) -> None:
        if self._ratings:
            return
        users, items, ratings = self._load()
        users = torch.from_numpy(np.unique(users, return_inverse=True)[1].reshape(-1))
        item_ids, items = np.unique(items, return_inverse=True)
        items = torch.from_numpy(items.reshape(-1))
        self.n_users, self.n_items = int(users.max()) + 1, len(item_ids)
        levels = torch.tensor(self.levels)
        level = (torch.from_numpy(ratings)[:, None] - levels).abs().argmin(1).to(
            torch.uint8
        ) + 1  # 1..K
        split = self.split_per_user(users, self.val_fraction, self.test_fraction, self.split_seed)
        device = self.device
        self._ratings = {
            name: CSR(users[split == i], items[split == i], level[split == i], self.n_users).to(
                device
            )
            for i, name in enumerate(("train", "val", "test"))
        }
        # the item-mean baseline: each item's mean training rating (the global mean for unseen
        # items)
        train = split == 0
        values = levels[level[train].long() - 1]
        sums = torch.zeros(self.n_items).index_add_(0, items[train], values)
        counts = torch.bincount(items[train], minlength=self.n_items).float()
        self.item_means = torch.where(counts > 0, sums / counts.clamp(min=1), values.mean()).to(
            device
        )

    @staticmethod
    def split_per_user(
        users: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
    ) -> torch.Tensor:
        """0 (train), 1 (val) or 2 (test) for each rating: a seeded random share of each user's
        ratings."""
        g = torch.Generator().manual_seed(seed)
        order = torch.argsort(torch.rand(len(users), generator=g))
        order = order[
            torch.argsort(users[order], stable=True)
        ]  # grouped by user, shuffled within a user
        counts = torch.bincount(users)
        rank = torch.empty_like(users)
        rank[order] = torch.arange(len(users)) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        n = counts[users].float()
        n_test = (n * test_fraction).round()
        n_val = torch.minimum((n * val_fraction).round(), n - 1 - n_test).clamp(min=0)
        n_test = torch.minimum(n_test, n - 1)  # every user keeps at least one training rating
        return torch.where(rank < n_test, 2, torch.where(rank < n_test + n_val, 1, 0))

    def _batches(self, split: str, shuffle: bool) -> UserBatches:
        """Batches of users: each user's training ratings as input, the split's ratings as
        targets."""
        user_ids = torch.arange(self.n_users, device=self.device)
        users = self.resident_batches(user_ids, user_ids, shuffle)
        return UserBatches(users, self.ratings("train"), self.ratings(split), self.n_items)

    # -- the data face -----------------------------------------------------------------------
    def ratings(self, split: str) -> CSR:
        """The ratings of a split as a CSR matrix on the device (read-only): `items` and `levels`
        (1..K) per rating, grouped by user; len() is the number of ratings."""
        check_choice("split", split, SPLITS)
        self.setup()
        return self._ratings[split]
