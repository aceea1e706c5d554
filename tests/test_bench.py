"""scripts/bench.py: runs end to end at tiny sizes and writes its table as JSON; its hand-written
reference computes the same loss as the nnlab model; the per-step logging shortcut keeps the
logged steps."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import FAST, event_tags, run_train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench"]


def test_bench_runs_end_to_end_and_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(
        [
            "--models",
            "ae",
            "--reps",
            "2",
            "--epochs",
            "1",
            "--limit-batches",
            "3",
            "--workers",
            "0",
            "--threads",
            "1",
            "--no-cli",
            "--set",
            "dataset=synthetic",
            "--set",
            "steps_per_execution=1",  # one batch per call: two calls paired after the first
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    (row,) = report["table"]
    assert row["model"] == "ae" and row["batch"] == 64
    for path in ("nnlab", "hand", "dataloader"):
        runs = row["runs"][path]
        assert len(runs) == 2 and all(
            r["images"] == 3 * 64 for r in runs
        )  # 3 batches of 64, every repetition
        assert row[path] > 0 and math.isfinite(row[path])
    assert row["nnlab/hand"] == pytest.approx(row["nnlab"] / row["hand"])
    assert row["nnlab/dataloader"] == pytest.approx(row["nnlab"] / row["dataloader"])
    assert row["nnlab/hand paired"] > 0 and row["nnlab/hand cpu"] > 0
    (paired,) = row["runs"][
        "interleaved"
    ]  # once, not every repetition; each epoch's first batch left out
    assert paired["steps"] == 2 and paired["images"] == 2 * 64 and paired["ratio"] > 0
    assert row["nnlab/hand step-paired"] == paired["ratio"] and row["steps/call"] == 1
    printed = capsys.readouterr().out
    assert "nnlab/hand" in printed and "nnlab/DataLoader" in printed
    bench.main(["--from-json", str(out)])  # the table again, from the file
    assert capsys.readouterr().out.strip() in printed


def test_cli_timers_measure_a_child(bench):
    timed = bench.wall([sys.executable, "-c", "pass"], reps=2)
    assert len(timed["runs_s"]) == 2 and timed["median_s"] > 0
    mem = bench.peak_memory([sys.executable, "-c", "x = bytearray(200 * 2**20)"])
    assert mem["max_rss_mb"] >= 200  # the child's own peak...
    small = bench.peak_memory([sys.executable, "-c", "pass"])
    assert (
        small["max_rss_mb"] < 150
    )  # ...not this (torch-sized) process's, which a forked child inherits
    with pytest.raises(RuntimeError):
        bench.wall([sys.executable, "-c", "raise SystemExit(3)"], reps=1)


@pytest.mark.parametrize("name", ["ae", "lenet", "lstm", "dcgan"])
def test_hand_written_loss_is_the_models_loss(bench, name):
    if name not in bench.MODELS:
        pytest.skip(f"{name} is not in this branch yet")
    entry = bench.MODELS[name]
    cfg, dm, model, opts = bench.build([*entry.overrides, "dataset=synthetic", "accelerator=cpu"])
    images, labels = dm.raw("train")
    x, y = images[:16].float() / 255.0, labels[:16]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        model_loss = (
            entry.model_loss(model, x, y) if entry.model_loss else model.training_step((x, y), 0)
        )
    if isinstance(model_loss, dict):
        model_loss = model_loss["loss"]
    torch.manual_seed(0)
    hand_loss = entry.loss(model, x, y)
    assert torch.allclose(hand_loss, model_loss, rtol=1e-6, atol=1e-7)
    # and one hand-written step with the module's own optimiser changes the weights and lowers
    # nothing to NaN
    before = [p.detach().clone() for p in model.parameters()]
    loss = bench.entry_step(entry)(model, opts, x, y)
    assert torch.isfinite(loss) and any(
        not torch.equal(a, b) for a, b in zip(before, model.parameters())
    )


def test_per_step_scalars_still_logged_at_the_logging_cadence(tmp_path):
    run = run_train(
        tmp_path,
        *FAST,
        "trainer.limit_train_batches=6",
        "trainer.log_every_n_steps=2",
        "test_after_fit=false",
    )
    steps = [e.step for e in event_tags(run).Scalars("train/loss")]
    assert steps == [
        1,
        3,
        5,
    ]  # Lightning writes steps 2, 4, 6 (global_step 1, 3, 5): none lost, none extra


def test_compile_pairs_time_a_compiled_copy_against_a_plain_one(bench):
    """--compile's step-paired figure: model.compile=true's nets (compiled in place) against plain
    ones, in turn."""
    entry = bench.MODELS["ae"]
    result = bench.run_compile_pairs(
        entry,
        [*entry.overrides, "dataset=synthetic", "accelerator=cpu"],
        3,
        torch.device("cpu"),
        warmup=1,
    )
    assert (
        result["steps"] == 3
        and result["images"] == 3 * 64
        and result["pair"] == ("compiled", "plain")
    )
    assert result["ratio"] > 0 and all(ms > 0 for ms in result["ms_per_step"])


def test_sequence_entry_trains_the_same_packed_batches(bench):
    """lstm_seq: the hand-written loss is the model's on a packed batch, and the hand side draws
    bucketed batches cropped to their longest sequence, as SequenceBatches does."""
    entry = bench.MODELS["lstm_seq"]
    overrides = [*entry.overrides, "dataset.format=synthetic", "dataset.shape=[3]"]
    hand = bench.hand_side(entry, [*overrides, "accelerator=cpu"], torch.device("cpu"))
    idx = hand.order(0)[: hand.bs]
    lengths = hand.lengths[idx]
    assert (lengths.diff() >= 0).all()  # sorted within the bucket
    x, y = (hand.images[idx, : int(lengths.max())], lengths), hand.labels[idx]
    torch.manual_seed(0)
    model_loss = hand.model.step((*x, y), "train")["loss"]
    torch.manual_seed(0)  # the same dropout mask
    assert torch.allclose(entry.loss(hand.model, x, y), model_loss)
    assert torch.isfinite(hand.train_step(hand.order(1), 0))
