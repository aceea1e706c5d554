"""Text corpora read offline from their real formats, vocabularies and seeded splits.

Readers (each returns plain Python strings; nothing here touches torch until encoding):

    fortunes   Debian's `fortunes` package: files of fortunes separated by lines holding only
               "%" (/usr/share/games/fortunes/<file>); the file name is a real label (computers,
               science, ...).
    zText      a SWORD Bible module (Debian's sword-text-kjv, sword-text-sparv): `<t>.bzs` 12-byte
               block records (offset, compressed size, size; little-endian uint32), `<t>.bzz` the
               compressed blocks, `<t>.bzv` 10-byte entry records (block uint32, offset uint32,
               size uint16), one entry per verse, chapter and book heading in the module's
               versification, for the old (t=ot) and the new (t=nt) testament. The verse text is
               OSIS XML: the notes (<note> footnotes) and non-canonical titles are dropped, every
               other tag is stripped.
    plain      any UTF-8 text file (`dataset=text dataset.path=FILE`).

Two modules in the same versification align entry by entry: entry i of the King James Version and
entry i of the Reina-Valera 1909 are the same verse, about 31,000 English-Spanish pairs.

Splits are seeded and independent of the training seed: the language model's stream is cut into
contiguous blocks that are dealt to train/val/test (`block_split`), items (fortunes, verse pairs)
are dealt one by one (`item_split`, stratified by class when labels are given).
"""

from __future__ import annotations

import bz2
import html
import lzma
import random
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from nnlab.data.batches import TensorBatches
from nnlab.data.datamodule import ResidentDataModule
from nnlab.errors import ConfigError, DataError

# Debian's packages and the folders they install (versions recorded in the Makefile's data target).
FORTUNES_DIR = Path("/usr/share/games/fortunes")
SWORD_DIR = Path("/usr/share/sword")
# module name -> (its SWORD module id, the Debian package that installs it)
SWORD_MODULES = {
    "kjv": ("engKJV2006eb", "sword-text-kjv"),
    "sparv": ("spaRV1909eb", "sword-text-sparv"),
}
UNK_CHAR = "\ufffd"  # stands for the characters a character vocabulary leaves out
# Zhang, Zhao & LeCun (2015), section 2.2: lower-case letters, digits, 33 other characters and the
# new line; the paper's list repeats '-', so 69 distinct. Anything else (space included) is a zero
# vector.
ZHANG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+=<>()[]{}\n"


# -- cleaning and reading --------------------------------------------------------------------------
def clean(text: str) -> str:
    """Normalise line ends, undo typewriter overstrikes ("_\\bA" is an underlined A) and drop the
    other control characters except tabs and new lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[^\n]\x08", "", text)
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


def read_utf8(path: str | Path, what: str = "text file") -> str:
    """A whole UTF-8 file, cleaned; one DataError when it is missing, empty or not UTF-8."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"Cannot read the {what} {path}: {err.strerror or err}. Check the path "
            "(dataset.path=FILE takes any UTF-8 text file)."
        ) from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"The {what} {path} is not UTF-8: byte {raw[err.start]:#04x} at offset {err.start} "
            f"(line {line}) cannot be decoded. Convert it first, e.g. `iconv -f latin1 -t utf-8 "
            f"{path.name} > {path.stem}.utf8.txt`, and point dataset.path at the result."
        ) from err
    text = clean(text)
    if not text.strip():
        raise DataError(
            f"The {what} {path} is empty (or holds only white space). Point dataset.path at a "
            "file with text in it."
        )
    return text


def split_fortunes(text: str) -> list[str]:
    """The fortunes of one `%`-separated file, without the separators and surrounding new lines."""
    parts = re.split(r"^%[ \t]*$", text, flags=re.M)
    return [p.strip("\n") for p in parts if p.strip()]


def fortune_files(folder: Path) -> list[Path]:
    """The fortune files of a folder: regular files, not the strfile indexes (.dat) or the .u8
    links Debian adds."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and not p.name.startswith(".")
    )


def read_fortunes(folder: str | Path, files: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{file name: its fortunes} for every fortune file in `folder` (or the `files` named)."""
    folder = Path(folder)
    if files is None:
        paths = fortune_files(folder)
    else:
        paths = [folder / f for f in files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            have = ", ".join(p.name for p in fortune_files(folder)) or "none"
            raise DataError(
                f"No fortune file {', '.join(missing)} in {folder}. The files there are: {have}. "
                "Fix dataset.files (or leave it null for all of them)."
            )
    out = {p.name: split_fortunes(read_utf8(p, "fortune file")) for p in paths}
    return {name: items for name, items in out.items() if items}


# -- SWORD zText -----------------------------------------------------------------------------------
_NOTE = re.compile(r"<note\b[^>]*?(?:/>|>.*?</note\s*>)", re.S)
_TITLE = re.compile(r"<title\b(?![^>]*\bcanonical=\"true\")[^>]*?(?:/>|>.*?</title\s*>)", re.S)
_TAG = re.compile(r"<[^>]*>")
_CHAPTER = re.compile(r"<chapter\b[^>]*>")
_BOOK = re.compile(r"<div\b[^>]*\btype=\"book\"[^>]*>")
_ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")


def osis_to_text(markup: str) -> str:
    """One verse of OSIS XML -> its plain text: footnotes and headings dropped, tags stripped,
    entities decoded, the pilcrow (a paragraph mark) dropped and white space collapsed."""
    text = _TAG.sub(" ", _TITLE.sub(" ", _NOTE.sub(" ", markup)))
    text = html.unescape(text).replace("\u00b6", " ")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([,.;:!?)\u2019])", r"\1", text)  # "word ," left by stripped tags


def read_conf(conf: Path) -> dict[str, str]:
    """A SWORD module's .conf (key=value lines; the first value of a repeated key wins)."""
    values: dict[str, str] = {}
    for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values.setdefault(key.strip(), value.strip())
    return values


def _decompressor(kind: str, where: Path):
    kinds = {"ZIP": zlib.decompress, "BZIP2": bz2.decompress, "XZ": lzma.decompress}
    if kind.upper() not in kinds:
        raise DataError(
            f"The SWORD module in {where} is compressed with {kind}; nnlab reads ZIP, BZIP2 and XZ "
            "modules. Use a module in one of those (Debian's sword-text-* packages are ZIP)."
        )
    return kinds[kind.upper()]


def read_ztext_entries(
    module_dir: str | Path, compress: str = "ZIP", encoding: str = "UTF-8"
) -> list[str]:
    """Every entry of a zText module (old testament, then new), as raw markup; "" when empty."""
    module_dir = Path(module_dir)
    decompress = _decompressor(compress, module_dir)
    codec = "utf-8" if encoding.upper().replace("-", "") == "UTF8" else "latin-1"
    entries: list[str] = []
    found = False
    for testament in ("ot", "nt"):
        paths = [module_dir / f"{testament}.{ext}" for ext in ("bzs", "bzv", "bzz")]
        if not all(p.is_file() for p in paths):
            continue
        found = True
        bzs, bzv, bzz = (p.read_bytes() for p in paths)
        if len(bzs) % 12 or len(bzv) % 10:
            raise DataError(
                f"{module_dir}/{testament}.bzs/.bzv have {len(bzs)} and {len(bzv)} bytes, not "
                "whole 12- and 10-byte records: the module is truncated. Reinstall its package."
            )
        blocks = list(struct.iter_unpack("<III", bzs))
        cache: dict[int, bytes] = {}
        for block, offset, size in struct.iter_unpack("<IIH", bzv):
            if size == 0:
                entries.append("")
                continue
            if block not in cache:
                if block >= len(blocks):
                    raise DataError(
                        f"{module_dir}/{testament}.bzv points at block {block}, but .bzs lists "
                        f"{len(blocks)}: the module is corrupt. Reinstall its package."
                    )
                start, length, usize = blocks[block]
                try:
                    cache = {block: decompress(bzz[start : start + length])}
                except (zlib.error, OSError, lzma.LZMAError, ValueError) as err:
                    raise DataError(
                        f"{module_dir}/{testament}.bzz: block {block} does not decompress ({err}); "
                        "the module is corrupt. Reinstall its package."
                    ) from err
                if len(cache[block]) != usize:
                    raise DataError(
                        f"{module_dir}/{testament}.bzz: block {block} holds {len(cache[block])} "
                        f"bytes, .bzs says {usize}: the module is corrupt. Reinstall its package."
                    )
            entries.append(cache[block][offset : offset + size].decode(codec, errors="replace"))
    if not found:
        raise DataError(
            f"{module_dir} holds no SWORD zText module (no ot.bzs/.bzv/.bzz or nt.bzs/.bzv/.bzz)."
        )
    return entries


def verse_refs(entries: Sequence[str]) -> list[str | None]:
    """The OSIS reference of each entry ("Gen.1.1"), or None for headings (testament, book,
    chapter entries). Chapters are recognised by their <chapter sID> milestone, books by their
    <div type="book"> start; the verses of a chapter follow its heading entry."""
    refs: list[str | None] = []
    chapter, verse = None, 0
    for markup in entries:
        chapters = [dict(_ATTR.findall(tag)) for tag in _CHAPTER.findall(markup)]
        starts = [a["osisID"] for a in chapters if "sID" in a and "osisID" in a]
        if starts:  # a chapter's heading entry
            chapter, verse = starts[-1], 0
            refs.append(None)
        elif any("sID" in dict(_ATTR.findall(tag)) for tag in _BOOK.findall(markup)):
            chapter = None  # a book's heading entry
            refs.append(None)
        elif chapter is None:  # the module's and the testament's heading entries
            refs.append(None)
        else:
            verse += 1
            refs.append(f"{chapter}.{verse}")
    return refs


def _module_in(folder: Path) -> bool:
    return (folder / "ot.bzv").is_file() or (folder / "nt.bzv").is_file()


def find_sword_module(name: str, data_dir: str | Path | None = None, sword_dir=SWORD_DIR):
    """(module folder, its .conf values) for `name` (kjv, sparv, or a module id): in
    dataset.data_dir (a SWORD library, or a folder holding the module's folder or files), then in
    Debian's /usr/share/sword."""
    module_id, package = SWORD_MODULES.get(name, (name, None))
    mid = module_id.lower()
    libraries = ([Path(data_dir).expanduser()] if data_dir else []) + [Path(sword_dir)]
    for root in libraries:
        for conf_path in sorted((root / "mods.d").glob("*.conf")):
            if conf_path.stem.lower() == mid:
                conf = read_conf(conf_path)
                folder = (root / conf.get("DataPath", f"modules/texts/ztext/{mid}")).resolve()
                if _module_in(folder):
                    return folder, conf
        plain = [root / "modules" / "texts" / "ztext" / mid, root / mid]
        if data_dir and root == libraries[0]:
            plain.append(root)
        for folder in plain:
            if _module_in(folder):
                return folder, {}
    how = (
        f"install it with `apt-get install {package}` (as root; `make data` does this)"
        if package
        else "install the module into that SWORD library"
    )
    first = (
        f"(1) dataset.data_dir={Path(data_dir).expanduser().resolve()}: no mods.d/{mid}.conf, "
        f"modules/texts/ztext/{mid}/, {mid}/ or zText files (ot.bzv, nt.bzv) there - point it "
        "at a SWORD library or the module's folder; "
        if data_dir
        else "(1) dataset.data_dir: not set (it may name a SWORD library or the module's folder); "
    )
    raise DataError(
        f"The SWORD module {module_id} ('{name}') was not found. Tried, in order: {first}"
        f"(2) Debian's SWORD library {sword_dir}: no {mid} module there - {how}."
    )


def read_bible(name: str, data_dir=None, sword_dir=SWORD_DIR) -> tuple[list[str], list[str]]:
    """(entry texts, entry refs) of a SWORD Bible module; headings have ref None and text ""."""
    folder, conf = find_sword_module(name, data_dir, sword_dir)
    if conf.get("CipherKey"):
        raise DataError(f"The SWORD module in {folder} is enciphered; use an unlocked module.")
    if conf.get("ModDrv", "zText").lower() not in ("ztext", "ztext4"):
        raise DataError(
            f"The SWORD module in {folder} uses the {conf['ModDrv']} driver; nnlab reads zText."
        )
    entries = read_ztext_entries(
        folder, conf.get("CompressType", "ZIP"), conf.get("Encoding", "UTF-8")
    )
    refs = verse_refs(entries)
    texts = [osis_to_text(m) if r is not None else "" for m, r in zip(entries, refs)]
    return texts, refs


def parallel_verses(source: str, target: str, data_dir=None, sword_dir=SWORD_DIR):
    """[(ref, source verse, target verse)] for the verses both modules hold, in canonical order."""
    src, refs = read_bible(source, data_dir, sword_dir)
    tgt, tgt_refs = read_bible(target, data_dir, sword_dir)
    if len(src) != len(tgt):
        raise DataError(
            f"The SWORD modules {source} and {target} have {len(src)} and {len(tgt)} entries: "
            "they do not share a versification, so their verses do not align. Pick two modules "
            "with the same Versification= in their .conf."
        )
    return [
        (r or t, s, g)
        for r, t, s, g in zip(refs, tgt_refs, src, tgt)
        if (r or t) is not None and s and g
    ]


# -- words and vocabularies ------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: "And God said," -> [and, god, said, ,]."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


class Vocab:
    """A list of symbols (characters or words) and its inverse; unknown symbols map to `unk`."""

    def __init__(self, symbols: Iterable[str], unk: str | None = None):
        self.itos = list(symbols)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("a vocabulary's symbols must be distinct")
        self.unk = unk
        self.unk_index = self.stoi[unk] if unk is not None else None

    @classmethod
    def build(
        cls,
        counts: Counter,
        specials: Sequence[str] = (),
        unk: str | None = None,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Vocab:
        """The specials first, then the symbols seen >= min_count times, most frequent first (ties
        in symbol order), at most max_size symbols in all."""
        kept = sorted(
            (s for s, c in counts.items() if c >= min_count and s not in specials),
            key=lambda s: (-counts[s], s),
        )
        symbols = list(specials) + kept
        if max_size is not None:
            symbols = symbols[: max(max_size, len(specials))]
        return cls(symbols, unk)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.stoi

    def encode(self, symbols: Iterable[str]) -> list[int]:
        if self.unk_index is None:
            return [self.stoi[s] for s in symbols]
        return [self.stoi.get(s, self.unk_index) for s in symbols]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def missing(self, symbols: Iterable[str]) -> list[str]:
        """The distinct symbols not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(s for s in symbols if s not in self.stoi))


def char_vocab(text: str, min_count: int = 1) -> Vocab:
    """The characters of `text` seen >= min_count times, plus UNK_CHAR for the rest."""
    return Vocab.build(Counter(text), specials=[UNK_CHAR], unk=UNK_CHAR, min_count=min_count)


# -- splits ----------------------------------------------------------------------------------------
def block_split(
    n: int, block: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[int, int]]]:
    """Cut positions 0..n into contiguous blocks of `block` characters and deal them, seeded, to
    val, test and train; each split's blocks in corpus order, as (start, end) pairs."""
    starts = list(range(0, n, block))
    order = list(range(len(starts)))
    random.Random(seed).shuffle(order)
    n_val, n_test = (
        max(1, round(f * len(starts))) if f > 0 else 0 for f in (val_fraction, test_fraction)
    )
    if n_val + n_test >= len(starts):
        raise DataError(
            f"The corpus has {n} characters, {len(starts)} blocks of {block}: too few to hold "
            f"out {n_val} for validation and {n_test} for testing and still train. Use a longer "
            "corpus or a smaller dataset.split_block."
        )
    chosen = {"val": order[:n_val], "test": order[n_val : n_val + n_test]}
    chosen["train"] = order[n_val + n_test :]
    return {
        split: [(starts[i], min(starts[i] + block, n)) for i in sorted(idx)]
        for split, idx in chosen.items()
    }


def item_split(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    labels: Sequence[int] | None = None,
) -> dict[str, list[int]]:
    """Deal item indices 0..n to train/val/test, seeded; within each class when labels are given
    (every class keeps its share in every split). Each split's indices sorted."""
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(0 if labels is None else int(labels[i]), []).append(i)
    rng = random.Random(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        n_val, n_test = round(val_fraction * len(idx)), round(test_fraction * len(idx))
        out["val"] += idx[:n_val]
        out["test"] += idx[n_val : n_val + n_test]
        out["train"] += idx[n_val + n_test :]
    for split, idx in out.items():
        if not idx:
            raise DataError(
                f"The {split} split is empty: {n} items are too few for val_fraction="
                f"{val_fraction} and test_fraction={test_fraction}. Use more data or other "
                "fractions."
            )
        idx.sort()
    return out


# -- tensors on the device -------------------------------------------------------------------------
def stream_rows(codes, rows: int, offset: int = 0):
    """A coded text (1-D) from `offset` on, cut into `rows` consecutive equal rows (rows, L); the
    tail that fills no row is dropped. Row r continues where row r-1 stopped, so a batch of rows
    is `rows` parallel streams (the layout of truncated BPTT with a carried hidden state)."""
    length = (len(codes) - offset) // rows
    if length < 2:
        raise DataError(
            f"{len(codes)} characters cannot make {rows} streams of 2 or more; use a smaller "
            "batch size (dataset.batch_size / eval_streams) or a longer text."
        )
    return codes[offset : offset + rows * length].view(rows, length)


def chunks(length: int, bptt: int) -> list[tuple[int, int]]:
    """(start, end) of the consecutive input chunks of a row of `length` codes: inputs
    row[:, start:end], targets row[:, start + 1:end + 1]."""
    return [(s, min(s + bptt, length - 1)) for s in range(0, length - 1, bptt)]


def encode_texts(texts: Sequence[str], table: dict[str, int], max_length: int):
    """Texts -> (codes (N, L) int64, 0 for a character outside `table`, padded with 0 after each
    text's length; lengths (N,) int64), each text cut at max_length characters (>= 1 long)."""
    cut = [t[:max_length] for t in texts]
    lengths = torch.tensor([max(1, len(t)) for t in cut], dtype=torch.int64)
    codes = torch.zeros(len(cut), int(lengths.max()) if len(cut) else 1, dtype=torch.int64)
    for row, text in enumerate(cut):
        codes[row, : len(text)] = torch.tensor([table.get(c, 0) for c in text], dtype=torch.int64)
    return codes, lengths


def one_hot(codes, size: int):
    """(B, T) codes -> (B, T, size) float one-hot rows; code 0 (unknown or padding) -> zeros,
    code k -> a 1 in column k-1."""
    return torch.nn.functional.one_hot(codes, size + 1)[..., 1:].float()


def pad_ids(seqs: Sequence[Sequence[int]], pad: int = 0):
    """Lists of ids -> (LongTensor (N, Lmax) padded with `pad`, lengths (N,) int64)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), pad, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out, lengths


def symbols_tensor(symbols: Sequence[str | None], width: int):
    """A vocabulary as a uint8 tensor (V, width): each symbol's UTF-8 bytes, zero-padded; None
    (an unused slot) is a row of zeros. A model keeps its vocabulary this way, as a buffer in its
    state_dict, so a checkpoint alone can encode a prompt and decode an output."""
    out = torch.zeros(len(symbols), width, dtype=torch.uint8)
    for row, symbol in enumerate(symbols):
        if symbol is not None:
            data = symbol.encode("utf-8")[:width]
            out[row, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    return out


def tensor_symbols(table) -> list[str | None]:
    """symbols_tensor's inverse: a row of zeros is None."""
    rows = table.cpu().tolist()
    return [
        bytes(b for b in row if b).decode("utf-8", errors="replace") if any(row) else None
        for row in rows
    ]


# -- batches ---------------------------------------------------------------------------------------
class StreamBatches:
    """The language model's batches: `rows` parallel streams of a coded split, cut into
    consecutive chunks of `bptt` characters; yields (x (B, T), y (B, T), chunk number), y being
    x shifted by one character. A model carries its hidden state from chunk to chunk and starts
    afresh at chunk 0. With shuffle (training) epoch e starts at a seeded offset in [0, bptt), so
    the chunk boundaries move from epoch to epoch; every epoch has the same number of chunks.
    Resumable mid-epoch like TensorBatches (state_dict); under DDP each rank takes every
    world_size-th stream."""

    def __init__(
        self, codes, rows, bptt, shuffle=False, seed=0, rank=0, world_size=1, epoch_fn=None
    ):
        self.codes, self.rows, self.bptt, self.shuffle = codes, int(rows), int(bptt), shuffle
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch_fn, self._calls = epoch_fn, 0
        self._epoch, self._position, self._resume_at = 0, 0, None
        spare = self.bptt if shuffle else 0  # room for the offset
        self.length = (len(codes) - spare) // (self.rows * world_size)
        if self.length < 2:
            raise DataError(
                f"The split has {len(codes)} characters: too few for {self.rows * world_size} "
                f"streams{' and an offset of up to ' + str(spare) if spare else ''} (each needs 2 "
                "or more). Use a smaller dataset.batch_size (or dataset.eval_streams), a smaller "
                "dataset.bptt, or a longer text."
            )
        self.spans = chunks(self.length, self.bptt)

    def __len__(self) -> int:
        return len(self.spans)

    def streams(self, epoch: int) -> torch.Tensor:
        offset = 0
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            offset = int(torch.randint(self.bptt, (1,), generator=g))
        rows = self.codes[offset : offset + self.rows * self.world * self.length]
        return rows.view(self.rows * self.world, self.length)[self.rank :: self.world]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["position"]))

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._calls
        self._calls += 1
        start = 0
        if self._resume_at is not None:
            (at_epoch, at), self._resume_at = self._resume_at, None
            start = at if at_epoch == epoch else 0
        self._epoch, self._position = epoch, start
        rows = self.streams(epoch)
        for i in range(start, len(self.spans)):
            a, b = self.spans[i]
            self._position = i + 1
            yield rows[:, a:b], rows[:, a + 1 : b + 1], i


class CharBatches(TensorBatches):
    """(one-hot x (B, T, F), lengths (B,) int64 on the CPU, labels (B,)) from coded texts: the
    sequence-classification batch, T being the longest text of the batch."""

    def __init__(self, codes, labels, batch_size, lengths=None, size: int = 0, **kwargs):
        super().__init__(codes, labels, batch_size, **kwargs)
        self.lengths, self.lengths_cpu, self.size = lengths, lengths.cpu(), size

    def batch(self, idx: torch.Tensor):
        lengths = self.lengths_cpu[idx.cpu()]
        codes = self.images[idx, : int(lengths.max())].long()
        return one_hot(codes, self.size), lengths, self.labels[idx]


class PairBatches(TensorBatches):
    """(source ids (B, S), source lengths (B,) on the CPU, target ids (B, T), item indices (B,)):
    a translation batch, cut to its longest source and target."""

    def __init__(self, src, tgt, batch_size, lengths=None, **kwargs):
        super().__init__(src, tgt, batch_size, **kwargs)
        self.lengths_cpu = lengths.cpu()
        self.tgt_lengths = (tgt != 0).sum(1).cpu()

    def batch(self, idx: torch.Tensor):
        cpu = idx.cpu()
        lengths = self.lengths_cpu[cpu]
        src = self.images[idx, : int(lengths.max())]
        return src, lengths, self.labels[idx, : int(self.tgt_lengths[cpu].max())], idx


class _TextData(ResidentDataModule):
    """What the text datamodules share: batches already on the device pass through."""

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int = 0):
        return batch  # drawn on the device by indexing


def _fortune_folder(name: str, path, data_dir) -> Path:
    """Where fortune files are: dataset.path, dataset.data_dir, then Debian's folder."""
    tried = []
    for key, folder in (("dataset.path", path), ("dataset.data_dir", data_dir)):
        if folder in (None, ""):
            tried.append(f"{key}: not set")
            continue
        folder = Path(str(folder)).expanduser()
        if folder.is_dir() and fortune_files(folder):
            return folder
        tried.append(f"{key}={folder.resolve()}: no fortune files there")
    if FORTUNES_DIR.is_dir() and fortune_files(FORTUNES_DIR):
        return FORTUNES_DIR
    tried.append(
        f"Debian's {FORTUNES_DIR}: not there - install it with `apt-get install fortunes` (as "
        "root; `make data` does this)"
    )
    listed = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
    raise DataError(
        f"Dataset '{name}': no fortune files found. Tried, in order: {listed}. Or train on any "
        "UTF-8 text file with dataset=text dataset.path=FILE."
    )


# -- the language model's data ---------------------------------------------------------------------
class CharLMDataModule(_TextData):
    """A character corpus for `char_rnn`: the Debian fortunes (source=fortunes: every fortune file,
    each fortune followed by its "%" line, as in the files) or any UTF-8 file (source=file, path).
    The text is cut into contiguous blocks dealt to train/val/test (block_split); the vocabulary is
    the training split's characters seen >= min_count times, most frequent first, at most
    vocab_size with UNK_CHAR (the rest read as UNK_CHAR), padded with unused slots to vocab_size
    (the nets' size comes from the config).

    The data face: `vocab` (vocab_size symbols, None for an unused slot), `codes(split)` (the
    coded split, 1-D int64 on the device), `eval_rows(split)` (the streams val/test score),
    `encode(text)`, `decode(codes)`, `use_vocab(symbols)` (re-code with a trained model's)."""

    def __init__(
        self,
        name: str,
        source: str = "fortunes",
        path: str | None = None,
        data_dir: str = "data",
        files: Sequence[str] | None = None,
        vocab_size: int = 128,
        min_count: int = 1,
        split_block: int = 10_000,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        batch_size: int = 64,
        bptt: int = 128,
        eval_batch_size: int = 16,
        eval_bptt: int = 512,
        seed: int = 0,
        **_: object,  # descriptive keys of the YAML (inputs, shape)
    ):
        super().__init__()
        if source not in ("fortunes", "file"):
            raise ConfigError(f"dataset.source={source!r} is unknown; use fortunes or file.")
        if source == "file" and not path:
            raise ConfigError(
                f"dataset={name} reads a text file: pass it as dataset.path=FILE (any UTF-8 text)."
            )
        self.name, self.source, self.path, self.data_dir = name, source, path, data_dir
        self.files = list(files) if files else None
        self.vocab_size, self.min_count = int(vocab_size), int(min_count)
        if self.vocab_size < 2:
            raise ConfigError("dataset.vocab_size must be at least 2 (UNK and one character).")
        self.split_block, self.val_fraction = int(split_block), float(val_fraction)
        self.test_fraction, self.split_seed = float(test_fraction), int(split_seed)
        self.batch_size, self.bptt = int(batch_size), int(bptt)
        self.eval_batch_size, self.eval_bptt, self.seed = int(eval_batch_size), int(eval_bptt), seed
        self._text: str | None = None
        self._split_text: dict[str, str] = {}
        self._codes: dict[str, torch.Tensor] = {}
        self.vocab: list[str | None] = []

    def prepare_data(self) -> None:
        if self._text is not None:
            return
        if self.source == "file":
            self._text = read_utf8(self.path, "text file")
        else:
            folder = _fortune_folder(self.name, self.path, self.data_dir)
            found = read_fortunes(folder, self.files)
            self._text = "".join(f + "\n%\n" for name in sorted(found) for f in found[name])
        need = self.batch_size * (self.bptt + 1) * 4
        if len(self._text) < need:
            raise DataError(
                f"The corpus of dataset '{self.name}' has {len(self._text)} characters: too short "
                f"for dataset.batch_size={self.batch_size} streams of dataset.bptt={self.bptt} "
                f"characters (a training split of at least {need} characters would do). Use a "
                "longer text, or a smaller batch_size or bptt."
            )

    def setup(self, stage: str | None = None) -> None:
        if self._codes:
            return
        self.prepare_data()
        text = self._text
        block = min(self.split_block, max(1, len(text) // 20))  # >= 20 blocks to deal
        spans = block_split(
            len(text), block, self.val_fraction, self.test_fraction, self.split_seed
        )
        self._split_text = {k: "".join(text[a:b] for a, b in v) for k, v in spans.items()}
        train = Counter(self._split_text["train"])
        kept = [
            c
            for c, n in sorted(train.items(), key=lambda kv: (-kv[1], kv[0]))
            if n >= self.min_count
        ]
        symbols = [UNK_CHAR] + [c for c in kept if c != UNK_CHAR][: self.vocab_size - 1]
        self.use_vocab(symbols + [None] * (self.vocab_size - len(symbols)))

    def use_vocab(self, symbols: Sequence[str | None]) -> None:
        """Code the splits with this vocabulary (a trained model's; None: an unused slot)."""
        if len(symbols) != self.vocab_size:
            raise DataError(
                f"The model's vocabulary has {len(symbols)} slots but dataset.vocab_size is "
                f"{self.vocab_size}; evaluate with the dataset settings it was trained with."
            )
        self.vocab = list(symbols)
        self._table = Vocab([s for s in self.vocab if s is not None], UNK_CHAR)
        device = self.device
        self._codes = {
            k: torch.tensor(self._table.encode(t), device=device)
            for k, t in self._split_text.items()
        }

    # -- batches -------------------------------------------------------------------------
    def _streams(self, split: str, train: bool) -> StreamBatches:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return StreamBatches(
            self.codes(split),
            self.batch_size if train else self.eval_batch_size,
            self.bptt if train else self.eval_bptt,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def train_dataloader(self):
        return self._streams("train", True)

    def val_dataloader(self):
        return self._streams("val", False)

    def test_dataloader(self):
        return self._streams("test", False)

    # -- the data face -----------------------------------------------------------------------
    def codes(self, split: str) -> torch.Tensor:
        self.setup()
        return self._codes[split]

    def eval_rows(self, split: str) -> torch.Tensor:
        """The (rows, L) streams that val/test score: position j + 1 of each row is predicted
        from positions 0..j (the n-gram baseline scores the same positions)."""
        return self._streams(split, False).streams(0)

    def encode(self, text: str) -> torch.Tensor:
        self.setup()
        return torch.tensor(self._table.encode(text), dtype=torch.int64)

    def decode(self, codes) -> str:
        return "".join(self.vocab[int(c)] or "" for c in codes)


# -- text classification: which fortune file a fortune comes from ----------------------------------
class FortuneFilesDataModule(_TextData):
    """Fortunes labelled with their file of origin (computers, science, ...): a real topic label.
    Each fortune is lower-cased (with `lowercase`), cut at max_length characters and coded over
    Zhang et al.'s alphabet of 69 characters (anything else, space included, is a zero vector);
    split by fortune, stratified by file, seeded. Batches are the sequence-classification batch
    (one-hot x (B, T, 69), lengths, y), so char_cnn, bag_of_chars and lstm all read it.

    The data face: `sequences(split, n=None) -> (x, lengths, y)`, `texts(split)` (the fortunes as
    read, in the same order), `classes`, `num_classes`, `shape` ([69])."""

    def __init__(
        self,
        name: str,
        files: Sequence[str],
        path: str | None = None,
        data_dir: str = "data",
        max_length: int = 512,
        lowercase: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        shape: Sequence[int] = (len(ZHANG_ALPHABET),),
        seed: int = 0,
        **_: object,
    ):
        super().__init__()
        self.name, self.files, self.path, self.data_dir = name, list(files or []), path, data_dir
        if len(self.files) < 2:
            raise ConfigError(
                "dataset.files must name at least two fortune files (the classes), e.g. "
                "dataset.files=[computers,science]."
            )
        self.classes = list(classes) if classes else list(self.files)
        self.num_classes = len(self.files)
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ConfigError(
                f"dataset.num_classes={num_classes} but dataset.files names {len(self.files)} "
                "files (one class each); make them agree."
            )
        if list(shape) != [len(ZHANG_ALPHABET)]:
            raise ConfigError(
                f"dataset.shape={list(shape)}: the characters are one-hot over Zhang et al.'s "
                f"alphabet, so the shape is [{len(ZHANG_ALPHABET)}]."
            )
        self.shape = (len(ZHANG_ALPHABET),)
        self.max_length, self.lowercase = int(max_length), bool(lowercase)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed, self.seed = int(split_seed), seed
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self._items: list[tuple[str, int]] | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._texts: dict[str, list[str]] = {}

    def prepare_data(self) -> None:
        if self._items is None:
            folder = _fortune_folder(self.name, self.path, self.data_dir)
            found = read_fortunes(folder, self.files)
            self._items = [(f, k) for k, name in enumerate(self.files) for f in found.get(name, [])]

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        self.prepare_data()
        labels = [k for _, k in self._items]
        parts = item_split(
            len(labels), self.val_fraction, self.test_fraction, self.split_seed, labels
        )
        device = self.device
        for split, idx in parts.items():
            texts = [self._items[i][0] for i in idx]
            codes, lengths = self._code(texts)
            y = torch.tensor([labels[i] for i in idx])
            self._texts[split] = texts
            self._splits[split] = (codes.to(torch.uint8).to(device), lengths, y.to(device))

    def _code(self, texts: Sequence[str]):
        seen = [t.lower() if self.lowercase else t for t in texts]
        return encode_texts(seen, {c: i + 1 for i, c in enumerate(ZHANG_ALPHABET)}, self.max_length)

    def _batches(self, split: str, shuffle: bool) -> CharBatches:
        codes, lengths, y = self._stored(split)
        return self.resident_batches(
            codes, y, shuffle, cls=CharBatches, lengths=lengths, size=len(ZHANG_ALPHABET)
        )

    def _stored(self, split: str):
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}")
        self.setup()
        return self._splits[split]

    # -- the data face -----------------------------------------------------------------------
    def sequences(self, split: str, n: int | None = None, start: int = 0):
        """n items of a split from `start` on (all when n is None): (one-hot x (n, T, 69) on the
        device, lengths (n,) on the CPU, labels (n,)), T the longest of them."""
        codes, lengths, y = self._stored(split)
        part = slice(start, None if n is None else start + n)
        lengths = lengths[part]
        x = one_hot(codes[part, : int(lengths.max())].long(), self.shape[0])
        return x, lengths, y[part]

    def texts(self, split: str) -> list[str]:
        self.setup()
        return self._texts[split]

    def encode(self, text: str):
        """A text of yours as a batch of one: (one-hot x (1, T, 69), lengths (1,)), and the
        characters outside the alphabet (read as zero vectors, as in training; space is one)."""
        codes, lengths = self._code([text])
        seen = text.lower() if self.lowercase else text
        skipped = [c for c in seen[: self.max_length] if c not in ZHANG_ALPHABET and c != " "]
        return one_hot(codes, self.shape[0]).to(self.device), lengths, skipped


# -- translation: aligned verses of two Bibles -----------------------------------------------------
class ParallelVersesDataModule(_TextData):
    """Verse pairs of two SWORD Bibles in the same versification (KJV -> Reina-Valera 1909 by
    default), lower-cased words and punctuation (`words`), pairs whose both sides have at most
    max_tokens tokens, split by verse (seeded). Vocabularies from the training pairs: <pad>,
    <unk>, <s>, </s>, then the words seen >= min_count times, most frequent first, at most
    src_vocab_size / tgt_vocab_size slots (padded with unused ones: the nets' size comes from the
    config). Batches: (source ids, source lengths, target ids <s> ... </s>, item indices).

    The data face: `pairs(split)` ([(ref, source words, target words)], the references of BLEU),
    `src_vocab`, `tgt_vocab` (None: an unused slot), `encode_source(list of word lists)`,
    `use_vocab(src, tgt)` (re-code with a trained model's vocabularies)."""

    SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0..3, as nets.text PAD, UNK, BOS, EOS

    def __init__(
        self,
        name: str,
        source: str = "kjv",
        target: str = "sparv",
        data_dir: str = "data",
        max_tokens: int = 20,
        src_vocab_size: int = 4000,
        tgt_vocab_size: int = 5000,
        min_count: int = 2,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
        **_: object,
    ):
        super().__init__()
        self.name, self.source, self.target, self.data_dir = name, source, target, data_dir
        self.max_tokens, self.min_count = int(max_tokens), int(min_count)
        self.src_vocab_size, self.tgt_vocab_size = int(src_vocab_size), int(tgt_vocab_size)
        if min(self.src_vocab_size, self.tgt_vocab_size) <= len(self.SPECIALS):
            raise ConfigError("dataset.src_vocab_size and tgt_vocab_size must be above 4.")
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed, self.seed = int(split_seed), seed
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self._pairs: dict[str, list[tuple[str, list[str], list[str]]]] = {}
        self._all: list | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.src_vocab: list[str | None] = []
        self.tgt_vocab: list[str | None] = []

    def prepare_data(self) -> None:
        if self._all is None:
            data_dir = Path(str(self.data_dir)).expanduser()
            verses = parallel_verses(
                self.source, self.target, data_dir if data_dir.is_dir() else None
            )
            pairs = [(r, words(s), words(t)) for r, s, t in verses]
            self._all = [
                p for p in pairs if len(p[1]) <= self.max_tokens and len(p[2]) <= self.max_tokens
            ]
            if len(self._all) < 20:
                raise DataError(
                    f"Only {len(self._all)} verse pairs have at most dataset.max_tokens="
                    f"{self.max_tokens} tokens on both sides; raise max_tokens."
                )

    def _vocab(self, counts: Counter, size: int) -> list[str | None]:
        symbols = Vocab.build(counts, self.SPECIALS, min_count=self.min_count, max_size=size).itos
        return symbols + [None] * (size - len(symbols))

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        self.prepare_data()
        parts = item_split(len(self._all), self.val_fraction, self.test_fraction, self.split_seed)
        self._pairs = {k: [self._all[i] for i in idx] for k, idx in parts.items()}
        train = self._pairs["train"]
        self.use_vocab(
            self._vocab(Counter(w for p in train for w in p[1]), self.src_vocab_size),
            self._vocab(Counter(w for p in train for w in p[2]), self.tgt_vocab_size),
        )

    def use_vocab(self, src: Sequence[str | None], tgt: Sequence[str | None]) -> None:
        """Code the pairs with these vocabularies (a trained model's)."""
        if len(src) != self.src_vocab_size or len(tgt) != self.tgt_vocab_size:
            raise DataError(
                f"The model's vocabularies have {len(src)} and {len(tgt)} slots but "
                f"dataset.src_vocab_size/tgt_vocab_size are {self.src_vocab_size}/"
                f"{self.tgt_vocab_size}; evaluate with the dataset settings it was trained with."
            )
        self.src_vocab, self.tgt_vocab = list(src), list(tgt)
        self._src = Vocab([s for s in src if s is not None], "<unk>")
        self._tgt = Vocab([s for s in tgt if s is not None], "<unk>")
        device = self.device
        for split, pairs in self._pairs.items():
            src_ids, src_len = self.encode_source([p[1] for p in pairs])
            bos, eos = self._tgt.stoi["<s>"], self._tgt.stoi["</s>"]
            tgt_ids, _ = pad_ids([[bos] + self._tgt.encode(p[2]) + [eos] for p in pairs])
            self._splits[split] = (src_ids.to(device), src_len, tgt_ids.to(device))

    def _batches(self, split: str, shuffle: bool) -> PairBatches:
        self.setup()
        src, lengths, tgt = self._splits[split]
        return self.resident_batches(src, tgt, shuffle, cls=PairBatches, lengths=lengths)

    # -- the data face -----------------------------------------------------------------------
    def pairs(self, split: str) -> list[tuple[str, list[str], list[str]]]:
        self.setup()
        return self._pairs[split]

    def encode_source(self, sentences: Sequence[Sequence[str]]):
        """Word lists -> (ids (N, S) padded with <pad>, lengths (N,)); unknown words -> <unk>;
        an empty sentence is one <unk>."""
        return pad_ids([self._src.encode(s) or [self._src.unk_index] for s in sentences])
