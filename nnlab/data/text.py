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

from nnlab.errors import DataError

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


# -- cleaning and reading -----------------------------------------------------------------------
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


# -- SWORD zText ----------------------------------------------------------------------------------
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


# -- words and vocabularies -----------------------------------------------------------------------
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


# -- splits ---------------------------------------------------------------------------------------
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


# -- tensors on the device ------------------------------------------------------------------------
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
    import torch

    cut = [t[:max_length] for t in texts]
    lengths = torch.tensor([max(1, len(t)) for t in cut], dtype=torch.int64)
    codes = torch.zeros(len(cut), int(lengths.max()) if len(cut) else 1, dtype=torch.int64)
    for row, text in enumerate(cut):
        codes[row, : len(text)] = torch.tensor([table.get(c, 0) for c in text], dtype=torch.int64)
    return codes, lengths


def one_hot(codes, size: int):
    """(B, T) codes -> (B, T, size) float one-hot rows; code 0 (unknown or padding) -> zeros,
    code k -> a 1 in column k-1."""
    import torch

    return torch.nn.functional.one_hot(codes, size + 1)[..., 1:].float()


def pad_ids(seqs: Sequence[Sequence[int]], pad: int = 0):
    """Lists of ids -> (LongTensor (N, Lmax) padded with `pad`, lengths (N,) int64)."""
    import torch

    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), pad, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out, lengths
