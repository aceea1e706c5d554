"""The text family: readers of the real formats (fortune files, a SWORD zText module written here
byte by byte, plain UTF-8), vocabularies, splits, the Kneser-Ney baseline, the nets and figures."""

from __future__ import annotations

import math
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlab.data import text as T
from nnlab.errors import DataError
from nnlab.metrics.ngram import KneserNeyLM
from nnlab.nets import text as N

# -- tiny corpora in the real formats -------------------------------------------------------------
FORTUNES = {
    "computers": ["Real programmers don't comment.\nIt was hard to write.", "RAM\x08M is cheap."],
    "science": ["E = mc^2\n\t-- Einstein", "Gravity: it's the law.", "Entropy wins."],
}


def write_fortunes(folder: Path, files=FORTUNES) -> Path:
    """Fortune files as Debian ships them: '%' lines between fortunes, plus strfile's .dat
    index and the .u8 link, which are not fortunes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in files.items():
        (folder / name).write_text("\n%\n".join(items) + "\n%\n", encoding="utf-8")
        (folder / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02binary index")
        (folder / f"{name}.u8").symlink_to(name)
    return folder


# One testament: the module heading, the testament heading, a book, its chapters and verses.
KJV = [
    "",
    '<milestone type="x-importer" n="osis2mod"/>',
    '<div osisID="Gen" sID="b1" type="book"/><title type="main">Genesis</title>',
    '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
    'In the <w lemma="strong:H7225">beginning</w> <w lemma="x">God</w> created the heaven.',
    "\u00b6 And God said, Let there be light: and there was light."
    '<note placement="foot"><reference>1.3</reference>Heb. <hi>be</hi> light</note>',
    '<chapter eID="Gen.1"/><chapter n="2" osisID="Gen.2" sID="Gen.2"/>'
    '<title type="x-heading">Not a verse</title>',
    '<title canonical="true" type="psalm">A Psalm.</title> Thus the heavens &amp; the earth.',
    '<div canonical="true" eID="b1" osisID="Gen" type="book"/>',  # an empty verse, then a book
    '<div osisID="Exod" sID="b2" type="book"/>',
    '<chapter n="1" osisID="Exod.1" sID="Exod.1"/>',
    "Now these are the names.",
]
SPARV = [
    "",
    "",
    "<title>Génesis</title>",
    '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
    '<w lemma="strong:H7225">EN el principio</w> crió Dios los cielos.',
    "Y dijo Dios: Sea la luz: y fué la luz.",
    '<chapter n="2" osisID="Gen.2" sID="Gen.2"/>',
    "Y fueron acabados los cielos y la tierra.",
    "Y acabó Dios en el día séptimo.",
    '<div osisID="Exod" sID="b2" type="book"/>',
    '<chapter n="1" osisID="Exod.1" sID="Exod.1"/>',
    "Estos son los nombres.",
]


def write_ztext(folder: Path, entries: list[str], testament: str = "ot", per_block: int = 5):
    """A zText testament exactly as SWORD stores it: zlib blocks (.bzz) of `per_block` entries,
    12-byte block records (.bzs) and 10-byte entry records (.bzv)."""
    folder.mkdir(parents=True, exist_ok=True)
    bzs, bzv, bzz = bytearray(), bytearray(), bytearray()
    for first in range(0, len(entries), per_block):
        block_no, raw = first // per_block, bytearray()
        for text in entries[first : first + per_block]:
            data = text.encode("utf-8")
            bzv += struct.pack("<IIH", block_no if data else 0, len(raw) if data else 0, len(data))
            raw += data
        packed = zlib.compress(bytes(raw))
        bzs += struct.pack("<III", len(bzz), len(packed), len(raw))
        bzz += packed
    for ext, data in (("bzs", bzs), ("bzv", bzv), ("bzz", bzz)):
        (folder / f"{testament}.{ext}").write_bytes(bytes(data))
    return folder


def write_sword_library(root: Path) -> Path:
    """A SWORD library with the two modules (mods.d/*.conf + modules/texts/ztext/<id>/)."""
    for key, entries in (("kjv", KJV), ("sparv", SPARV)):
        module_id = T.SWORD_MODULES[key][0]
        write_ztext(root / "modules" / "texts" / "ztext" / module_id.lower(), entries)
        (root / "mods.d").mkdir(parents=True, exist_ok=True)
        (root / "mods.d" / f"{module_id.lower()}.conf").write_text(
            f"[{module_id}]\nDataPath=./modules/texts/ztext/{module_id.lower()}/\n"
            "ModDrv=zText\nCompressType=ZIP\nEncoding=UTF-8\nVersification=KJV\n"
        )
    return root


# -- readers --------------------------------------------------------------------------------------
def test_fortunes_reader_splits_on_percent_lines_and_skips_indexes(tmp_path):
    got = T.read_fortunes(write_fortunes(tmp_path / "f"))
    assert sorted(got) == ["computers", "science"]
    assert got["computers"][0] == "Real programmers don't comment.\nIt was hard to write."
    assert got["computers"][1] == "RAM is cheap."  # the typewriter overstrike "M\bM" undone
    assert got["science"][0] == "E = mc^2\n\t-- Einstein"
    assert T.read_fortunes(tmp_path / "f", ["science"]).keys() == {"science"}
    with pytest.raises(DataError, match="No fortune file poems.*computers, science"):
        T.read_fortunes(tmp_path / "f", ["poems"])


def test_plain_reader_errors_name_the_problem(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes("\ufeffhola\r\nmundo".encode())
    assert T.read_utf8(good) == "hola\nmundo"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="is empty"):
        T.read_utf8(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("año\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8: byte 0xf1 at offset 1 \(line 1\).*iconv"):
        T.read_utf8(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="Cannot read"):
        T.read_utf8(tmp_path / "missing.txt")


def test_osis_markup_is_stripped_with_notes_and_headings():
    assert T.osis_to_text(KJV[5]) == "And God said, Let there be light: and there was light."
    assert T.osis_to_text(KJV[7]) == "A Psalm. Thus the heavens & the earth."
    assert T.osis_to_text(KJV[6]) == ""


def test_ztext_module_decodes_verses_with_their_references(tmp_path):
    lib = write_sword_library(tmp_path / "sword")
    texts, refs = T.read_bible("kjv", data_dir=lib)
    assert [r for r in refs if r] == ["Gen.1.1", "Gen.1.2", "Gen.2.1", "Gen.2.2", "Exod.1.1"]
    assert texts[refs.index("Gen.1.1")] == "In the beginning God created the heaven."
    assert texts[refs.index("Gen.2.2")] == ""  # the entry held only the book's end marker
    pairs = T.parallel_verses("kjv", "sparv", data_dir=lib)
    assert [p[0] for p in pairs] == ["Gen.1.1", "Gen.1.2", "Gen.2.1", "Exod.1.1"]
    assert pairs[0][2] == "EN el principio crió Dios los cielos."
    # the module folder itself also works as dataset.data_dir
    folder = lib / "modules" / "texts" / "ztext" / "engkjv2006eb"
    assert T.read_bible("engKJV2006eb", data_dir=folder)[1] == refs


def test_ztext_errors(tmp_path):
    with pytest.raises(DataError) as err:
        T.find_sword_module("kjv", data_dir=tmp_path / "nowhere", sword_dir=tmp_path / "none")
    assert "apt-get install sword-text-kjv" in str(err.value)
    assert "dataset.data_dir=" in str(err.value)
    lib = write_sword_library(tmp_path / "lib")
    bad = lib / "modules" / "texts" / "ztext" / "sparv1909eb"
    (lib / "modules" / "texts" / "ztext" / "sparv1909eb" / "ot.bzs").write_bytes(b"\x00" * 13)
    with pytest.raises(DataError, match="truncated"):
        T.read_ztext_entries(bad)
    write_ztext(bad, SPARV[:-1])  # one verse short: no longer the same versification
    with pytest.raises(DataError, match="do not align"):
        T.parallel_verses("kjv", "sparv", data_dir=lib)


# -- vocabularies and splits ----------------------------------------------------------------------
def test_vocab_orders_by_frequency_and_maps_unknowns():
    voc = T.Vocab.build(Counter("aaabbc"), specials=["<unk>"], unk="<unk>", min_count=2)
    assert voc.itos == ["<unk>", "a", "b"]
    assert voc.encode("abcz") == [1, 2, 0, 0]
    assert voc.decode([2, 1]) == ["b", "a"] and voc.missing("abzcz") == ["z", "c"]
    chars = T.char_vocab("hello", min_count=2)
    assert chars.itos == [T.UNK_CHAR, "l"] and chars.encode("lo") == [1, 0]
    assert T.words("And God said, Let") == ["and", "god", "said", ",", "let"]


def test_block_split_deals_contiguous_blocks_once():
    sp = T.block_split(1050, 100, 0.2, 0.1, seed=3)
    spans = sorted(s for blocks in sp.values() for s in blocks)
    assert spans[0] == (0, 100) and spans[-1] == (1000, 1050)
    assert sum(b - a for a, b in spans) == 1050 and len(sp["val"]) == 2 and len(sp["test"]) == 1
    assert sp == T.block_split(1050, 100, 0.2, 0.1, seed=3) != T.block_split(1050, 100, 0.2, 0.1, 4)
    with pytest.raises(DataError, match="too few"):
        T.block_split(250, 100, 0.5, 0.5, seed=0)


def test_item_split_is_stratified_and_seeded():
    labels = [0] * 50 + [1] * 10
    sp = T.item_split(60, 0.2, 0.1, seed=0, labels=labels)
    assert sorted(sp["train"] + sp["val"] + sp["test"]) == list(range(60))
    assert sum(labels[i] for i in sp["val"]) == 2 and len(sp["val"]) == 12
    assert sp == T.item_split(60, 0.2, 0.1, seed=0, labels=labels)
    with pytest.raises(DataError, match="test split is empty"):
        T.item_split(3, 0.3, 0.0, seed=0)


# -- the n-gram baseline --------------------------------------------------------------------------
def test_kneser_ney_is_a_distribution_and_learns_structure():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 4, 3000)
    train[::7] = 1
    lm = KneserNeyLM(train, vocab_size=6, max_order=4)  # symbols 4 and 5 never seen
    for history in ([0, 1, 2], [5, 5, 5], [3]):
        totals = [sum(lm.probs(np.array(history + [w]))[n][-1] for w in range(6)) for n in (1, 4)]
        assert totals == pytest.approx([1.0, 1.0])
    period = np.tile(np.array([0, 1, 2, 3, 2, 1]), 200)  # predictable from 2 characters
    lm = KneserNeyLM(period, vocab_size=4, max_order=3)
    bpc = lm.bits_per_char(period[:120])
    assert bpc[1] == pytest.approx(
        -np.log2(np.array([1, 2, 2, 1])[period[:120]] / 6).mean(), abs=0.01
    )
    assert bpc[3] < 0.2 < bpc[1]


# -- nets -----------------------------------------------------------------------------------------
def test_char_rnn_shapes_and_seeded_generation():
    net = N.CharRNN(20, "gru", embed_dim=8, hidden_size=16, num_layers=2)
    logits, state = net(torch.randint(0, 20, (3, 7)))
    assert logits.shape == (3, 7, 20) and state.shape == (2, 3, 16)
    prompt = torch.tensor([1, 2, 3])
    a = N.generate(net, prompt, 30, 0.7, torch.Generator().manual_seed(1))
    b = N.generate(net, prompt, 30, 0.7, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (30,) and net.training
    with pytest.raises(ValueError, match="temperature"):
        N.generate(net, prompt, 3, 0.0)


def test_char_classifiers_read_padded_one_hot_batches():
    x = torch.nn.functional.one_hot(torch.randint(0, 5, (3, 6)), 5).float()
    lengths = torch.tensor([6, 4, 1])
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    rev = N.reverse_padded(x, lengths)
    assert torch.equal(rev[1, :4], x[1, :4].flip(0)) and rev[1, 4:].abs().sum() == 0
    assert N.CharCNN(70, 4, block_length=1014, features=8, fc=8).frame == 34  # the paper's 34
    cnn = N.CharCNN(5, 3, block_length=140, features=8, fc=16)
    assert cnn(x, lengths).shape == (3, 3)
    with pytest.raises(ValueError, match="too short"):
        N.CharCNN(5, 3, block_length=100)
    bag = N.BagOfChars(5, 3, ngrams=2)
    feats = bag.features(x, lengths)
    assert feats.shape == (3, 30) and torch.allclose(feats[:, :5].sum(1), torch.ones(3))
    assert bag(x, lengths).shape == (3, 3)


@pytest.mark.parametrize("attention,cell", [("additive", "gru"), ("dot", "lstm"), ("none", "gru")])
def test_seq2seq_masks_padding_and_beam_search_agrees_with_greedy(attention, cell):
    torch.manual_seed(0)
    net = N.Seq2Seq(30, 40, 8, 8, attention, 8, cell).eval()
    src = torch.randint(4, 30, (4, 7))
    lengths = torch.tensor([7, 3, 5, 1])
    for i, n in enumerate(lengths):
        src[i, n:] = N.PAD
    tgt = torch.randint(4, 40, (4, 5))
    tgt[:, 0] = N.BOS
    logits, alpha = net(src, lengths, tgt, teacher_forcing=0.5)
    assert logits.shape == (4, 5, 40) and alpha.shape == (4, 5, 7)
    if attention != "none":
        assert torch.allclose(alpha.sum(-1), torch.ones(4, 5))
        assert alpha[1, :, 3:].abs().max() < 1e-6  # no weight on padding
    tokens, _ = net.greedy(src, lengths, 10)
    greedy = [row[: row.index(N.EOS)] if N.EOS in row else row for row in tokens.tolist()]
    assert net.beam_search(src, lengths, 10, beam=1) == [[t for t in r if t] for r in greedy]

    def logprob(seq, i):  # log P(seq + </s> | source i), or P(seq) when it hit max_len
        full = [N.BOS] + seq + ([N.EOS] if len(seq) < 10 else [])
        out, _ = net(src[i : i + 1], lengths[i : i + 1], torch.tensor([full[:-1]]))
        return torch.log_softmax(out[0], -1).gather(1, torch.tensor(full[1:]).view(-1, 1)).sum()

    beams = net.beam_search(src, lengths, 10, beam=5, length_penalty=0.0)
    for i in range(4):  # a wider beam never finds a worse sequence than the greedy one
        assert logprob(beams[i], i) >= logprob(greedy[i], i) - 1e-4


def test_attention_image_and_markdown():
    from nnlab.viz.text import attention_image, code_block, markdown_table

    img = attention_image(torch.eye(3), ["god", "said", "."], ["dijo", "dios", "."], "Gen.1.3")
    assert img.shape[0] == 3 and img.min() >= 0 and img.max() <= 1
    assert markdown_table(["a", "b"], [["x|y", "1\n2"]]).splitlines()[2] == "| x\\|y | 1 \u21b5 2 |"
    assert code_block("a\nb") == "    a\n    b"
    assert math.isfinite(float(img.mean()))


def test_device_tensors_streams_chunks_codes():
    codes = torch.arange(23)
    rows = T.stream_rows(codes, 4, offset=2)
    assert rows.shape == (4, 5) and rows[1, 0] == rows[0, -1] + 1 == 7
    assert T.chunks(5, 3) == [(0, 3), (3, 4)]  # inputs 0..3 predict 1..4
    with pytest.raises(DataError, match="streams"):
        T.stream_rows(codes, 20)
    table = {c: i + 1 for i, c in enumerate(T.ZHANG_ALPHABET)}
    c, n = T.encode_texts(["ab c", "", "xyz!"], table, max_length=3)
    assert n.tolist() == [3, 1, 3] and c[0].tolist() == [1, 2, 0] and c[1].tolist() == [0, 0, 0]
    x = T.one_hot(c, len(T.ZHANG_ALPHABET))
    assert x.shape == (3, 3, 69) and x[0, 2].sum() == 0 and x[0, 0, 0] == 1
    ids, lengths = T.pad_ids([[5, 6], [7]])
    assert ids.tolist() == [[5, 6], [7, 0]] and lengths.tolist() == [2, 1]


def test_unwrap_instantiation_survives_a_self_caused_error():
    from nnlab.errors import unwrap_instantiation

    err = TypeError("a constructor's own error")
    err.__cause__ = err  # what `raise err from err` leaves behind
    assert unwrap_instantiation(err) is err


# -- whole runs on tiny corpora -------------------------------------------------------------------
FASTER = ("debug=fast", "accelerator=cpu", "threads=1")
WORDS = "the a cat dog sat ran on under mat log and then it was big small red".split()


def tiny_text(path: Path, n: int = 6000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = [
        " ".join(rng.choice(WORDS, rng.integers(3, 9))).capitalize() + "." for _ in range(n // 30)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def resume(run: Path, *extra: str) -> dict:
    """`nnlab train resume=RUN <extra>` in this process; the run's record afterwards."""
    from conftest import read_metrics

    from nnlab.train import main

    argv = sys.argv
    sys.argv = ["nnlab train", f"resume={run}", *extra]
    try:
        main()
    finally:
        sys.argv = argv
    return read_metrics(run)


def sample_out(capsys, *argv: str) -> str:
    """`nnlab sample <argv>`'s printed text (exit 0)."""
    from nnlab.sample import main as sample_main

    capsys.readouterr()
    assert sample_main(list(argv)) == 0
    return capsys.readouterr().out


LM = (
    "model=char_rnn",
    "dataset=text",
    "dataset.vocab_size=40",
    "dataset.batch_size=4",
    "dataset.bptt=16",
    "dataset.eval_batch_size=2",
    "dataset.eval_bptt=64",
    "dataset.split_block=400",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.embed_dim=8",
    "model.sample_chars=20",
    "model.ngram_order=3",
)


def test_char_rnn_run_bpc_baseline_samples_eval_and_sample(tmp_path, capsys, monkeypatch):
    from conftest import event_tags, read_metrics, run_train

    from nnlab.evaluate import main as eval_main
    from nnlab.sample import main as sample_main

    corpus = tiny_text(tmp_path / "corpus.txt")
    run = run_train(tmp_path, *LM, f"dataset.path={corpus}", *FASTER)
    metrics = read_metrics(run)["metrics"]
    assert {"test/bpc", "test/bpc_ngram", "test/bpc_ngram3", "val/bpc"} <= set(metrics)
    assert metrics["test/bpc_ngram3"] < metrics["test/bpc_ngram1"] < math.log2(40)
    samples = event_tags(run).Tensors("vis/samples/text_summary")
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert "temperature 0.5" in text and "    The " in text
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert sample_main([str(run), "prompt=The cat", "temperature=0.8", "n=30", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The cat") and len(out.rstrip("\n")) == len("The cat") + 30
    assert sample_main([str(run), "prompt=The cat", "temperature=0.8", "n=30", "seed=3"]) == 0
    assert capsys.readouterr().out == out  # seeded
    for argv, says in (
        (["prompt=Ωmega"], "never saw in training: 'Ω' (U+03A9)"),
        (["temperature=0"], "must be a number > 0"),
        (["prompt=x", "out=x.png"], "no text suffix"),
    ):
        with pytest.raises(SystemExit) as exc:
            sample_main([str(run), *argv])
        err = " ".join(capsys.readouterr().err.split())
        assert exc.value.code == 2 and says in err and "Traceback" not in err
    assert eval_main([str(run)]) == 0
    assert "test/bpc_ngram" in capsys.readouterr().out
    assert sample_out(capsys, str(run), "n=12").startswith("The ")  # the model's own prompt
    record = resume(run, "trainer.max_epochs=2")  # trains a second epoch, state carried
    assert record["status"] == "finished" and record["epochs"] == 2


def test_lm_data_errors_are_paragraphs(tmp_path, capsys, monkeypatch):
    from conftest import run_fails

    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "latin1.txt").write_bytes("caña\n".encode("latin-1"))
    short = tiny_text(tmp_path / "short.txt", n=300)
    for i, (extra, says) in enumerate(
        (
            (["dataset.path=" + str(tmp_path / "empty.txt")], "is empty"),
            (["dataset.path=" + str(tmp_path / "latin1.txt")], "is not UTF-8"),
            (["dataset.path=" + str(short), "dataset.bptt=500"], "too short"),
        )
    ):
        err, _ = run_fails(tmp_path, capsys, *LM, *extra, *FASTER, name=f"run{i}")
        assert says in " ".join(err.split())
    monkeypatch.setattr(T, "FORTUNES_DIR", tmp_path / "no-fortunes")
    err, _ = run_fails(
        tmp_path,
        capsys,
        "model=char_rnn",
        "dataset=fortunes",
        f"dataset.data_dir={tmp_path / 'nothing'}",
        *FASTER,
        name="fortunes",
    )
    err = " ".join(err.split())
    assert "apt-get install fortunes" in err and "dataset=text dataset.path=FILE" in err


def many_fortunes(folder: Path) -> Path:
    """Three files whose fortunes differ in their words (and so in their characters)."""
    rng = np.random.default_rng(1)
    topics = {
        "computers": "bug code unix lisp byte",
        "science": "atom gravity entropy law mass",
        "zippy": "yow pinhead zippy disco are we having fun yet",
    }
    files = {}
    for name, words in topics.items():
        vocab = words.split() + ["the", "is", "of"]
        files[name] = [" ".join(rng.choice(vocab, rng.integers(4, 14))) for _ in range(40)]
    return write_fortunes(folder, files)


@pytest.mark.parametrize("model", ["char_cnn", "bag_of_chars"])
def test_text_classifiers_on_fortune_files(model, tmp_path, capsys):
    from conftest import event_tags, read_metrics, run_train

    folder = many_fortunes(tmp_path / "fortunes")
    extra = (
        ["model.block_length=140", "model.features=8", "model.fc=16"] if model == "char_cnn" else []
    )
    run = run_train(
        tmp_path,
        f"model={model}",
        "dataset=fortunes_files",
        f"dataset.path={folder}",
        "dataset.files=[computers,science,zippy]",
        "dataset.num_classes=3",
        "dataset.max_length=64",
        "dataset.batch_size=16",
        *extra,
        *FASTER,
    )
    metrics = read_metrics(run)["metrics"]
    assert 0 <= metrics["test/acc"] <= 1 and "test/acc_class/zippy" in metrics
    tags = event_tags(run)
    images = tags.Tags()["images"]
    assert "vis/confusion_matrix" in images and "vis/errors" not in images
    errors = tags.Tensors("vis/errors/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| true | predicted | text |" in errors
    if model == "char_cnn":  # nnlab sample, eval and resume (one model is enough: same path)
        from nnlab.evaluate import main as eval_main

        listed = sample_out(capsys, str(run), "n=2")
        assert listed.startswith("The first ") and " -> " in listed
        top = sample_out(capsys, str(run), "prompt=Yow! Are we having fun yet? \u00e9", "n=2")
        lines = top.splitlines()
        assert lines[0].split()[0] in ("computers", "science", "zippy") and "'\u00e9'" in lines[2]
        with pytest.raises(SystemExit) as exc:
            sample_out(capsys, str(run), "temperature=0.5")
        assert exc.value.code == 2
        assert "language models" in capsys.readouterr().err
        assert eval_main([str(run)]) == 0 and "test/acc" in capsys.readouterr().out
        assert resume(run, "trainer.max_epochs=2")["epochs"] == 2


def sword_pairs(root: Path, n: int = 80) -> Path:
    """A SWORD library whose two modules say the same 80 short verses in 'English' and
    'Spanish' (a word-for-word code): one book, two chapters."""
    rng = np.random.default_rng(2)
    en = "god said let there be light and the earth was good".split()
    es = dict(zip(en, "dios dijo sea ahí haya luz y la tierra era buena".split()))
    kjv, sparv = ["", "", '<div osisID="Gen" sID="b1" type="book"/>'], ["", "", ""]
    for chapter in (1, 2):
        tag = f'<chapter n="{chapter}" osisID="Gen.{chapter}" sID="Gen.{chapter}"/>'
        kjv.append(tag)
        sparv.append(tag)
        for _ in range(n // 2):
            words = list(rng.choice(en, rng.integers(3, 8)))
            kjv.append(" ".join(words).capitalize() + ".")
            sparv.append(" ".join(es[w] for w in words).capitalize() + ".")
    for key, entries in (("kjv", kjv), ("sparv", sparv)):
        module_id = T.SWORD_MODULES[key][0].lower()
        write_ztext(root / "modules" / "texts" / "ztext" / module_id, entries, per_block=17)
    return root


def test_seq2seq_run_bleu_attention_and_translations(tmp_path, capsys):
    from conftest import event_tags, read_metrics, run_train

    lib = sword_pairs(tmp_path / "sword")
    run = run_train(
        tmp_path,
        "model=seq2seq",
        "dataset=bible_en_es",
        f"dataset.data_dir={lib}",
        "dataset.src_vocab_size=20",
        "dataset.tgt_vocab_size=24",
        "dataset.min_count=1",
        "dataset.val_fraction=0.1",
        "dataset.test_fraction=0.1",
        "dataset.batch_size=8",
        "model.embed_dim=8",
        "model.hidden_size=8",
        "model.attn_dim=8",
        "model.beam_size=2",
        "model.n_heatmaps=2",
        "model.heatmap_refs=[Gen.2.5]",
        *FASTER,
    )
    metrics = read_metrics(run)["metrics"]
    assert {"test/bleu", "test/bleu_greedy", "test/loss", "val/bleu"} <= set(metrics)
    tags = event_tags(run)
    assert "vis/attention" in tags.Tags()["images"]
    table = tags.Tensors("vis/translations/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| verse | source | reference | translation (greedy) |")
    from nnlab.evaluate import main as eval_main

    said = sample_out(capsys, str(run), "prompt=God said let there be zebras.")
    assert said.startswith("god said let there be zebras .\n-> ") and "<unk>: zebras)" in said
    verses = sample_out(capsys, str(run), "n=2")
    assert verses.count("translation: ") == 2 and verses.startswith("Gen.")
    assert eval_main([str(run)]) == 0 and "test/bleu" in capsys.readouterr().out
    assert resume(run, "trainer.max_epochs=2")["epochs"] == 2
