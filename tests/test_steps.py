"""Several optimizer steps per Lightning step (steps_per_execution, nnlab/lean.py and
nnlab/models/steps.py): the same numbers as one step per call.

Each model trains twice on tiny synthetic data with one seed: steps_per_execution=1 (Lightning's
own loop) and 4 (7 batches an epoch: 4 does not divide it; chunks also end at validation,
checkpoints and max_steps). Compared: every checkpoint written (weights, optimizer and scheduler
states, Lightning's loop counters, the RNG states), the logged scalars row by row (CSV logger) and
the run's record. The runs with several steps also check that the step loop never reads a tensor
on the host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import read_metrics

from nnlab.data.batches import Chunk, TensorBatches

# the images (a model's own "dataset=..." replaces these three)
TINY_DATA = (
    "dataset=synthetic",
    "dataset.n_train=256",  # 230 training images: 7 batches of 32
    "dataset.batch_size=32",
)
TINY = (
    "accelerator=cpu",
    "threads=1",
    "logger=csv",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=2",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.checkpoint.every_n_steps=5",
    "test_after_fit=false",
    "seed=3",
)
# each model with the features whose meaning must not change
MODELS = {
    # trainer-level clipping, validation every 3 batches
    "ae": ("model=ae", "model.hidden_dims=[32]", "model.latent_dim=4",
           "trainer.gradient_clip_val=0.5", "+trainer.val_check_interval=3"),
    # gradient accumulation (7 batches: the epoch ends inside a window) and a cosine schedule
    "lenet": ("model=lenet", "+trainer.accumulate_grad_batches=2",
              "model.scheduler={_target_: torch.optim.lr_scheduler.CosineAnnealingLR, T_max: 2}"),
    # the lstm's default clipping, and OneCycle stepped per optimizer step
    "lstm": ("model=lstm", "model.hidden_size=16",
             "model.scheduler={_target_: torch.optim.lr_scheduler.OneCycleLR, max_lr: 3e-3, "
             "total_steps: auto, interval: step}"),
    # KL warm-up (the objective and the weight are logged per step), stopped by max_steps
    "vae": ("model=vae", "model.hidden_dims=[32]", "model.latent_dim=4",
            "model.kl_warmup_epochs=1", "trainer.max_steps=11"),
    # two optimisers, G every 2nd batch, a moving average of G
    "dcgan": ("model=dcgan", "model.g_dims=[16,8]", "model.d_dims=[8,16]",
              "model.latent_dim=8", "model.d_steps=2", "model.ema=0.9"),
    # a linear learning-rate decay stepped by the GAN's own loop (total_iters: auto)
    "dcgan_sched": ("model=dcgan", "model.g_dims=[16,8]", "model.d_dims=[8,16]",
                    "model.latent_dim=8", "model.scheduler={_target_: "
                    "torch.optim.lr_scheduler.LinearLR, end_factor: 0.1, total_iters: auto}"),
    # random shifts and flips of each training batch, seeded by the batch's place in the fit
    "lenet_aug": ("model=lenet", "dataset.augment.pad=1", "dataset.augment.hflip=true"),
    # dynamically binarised images (a fresh Bernoulli draw per training batch)
    "vae_binary": ("model=vae", "model.hidden_dims=[32]", "model.latent_dim=4",
                   "model.binarize=dynamic"),
    # contrastive divergence with persistent chains (they run on across calls), stochastic pixels
    "rbm": ("model=rbm", "model.n_hidden=16", "model.binarize=stochastic"),
    # adversarial training (PGD with a random start inside every step, mixed with the clean loss)
    "lenet_pgd": ("model=lenet", "model.adversarial.kind=pgd", "model.adversarial.steps=2",
                  "model.adversarial.clean_weight=0.5"),
    # variable-length sequences (x, lengths, y) in length buckets, a GRU with truncated BPTT, the
    # learning rate logged per step under OneCycle
    "lstm_seq": ("dataset=uea", "dataset.format=synthetic", "dataset.shape=[2]",
                 "dataset.num_classes=3", "dataset.n_train=256", "dataset.batch_size=32",
                 "model=lstm", "model.hidden_size=8", "model.cell=gru", "model.tbptt_steps=4",
                 "model.scheduler={_target_: torch.optim.lr_scheduler.OneCycleLR, max_lr: 3e-3, "
                 "total_steps: auto, interval: step}",
                 "callbacks.lr_monitor.logging_interval=step"),
    # forecasting windows of a series (a tiny Airline.csv: 5 batches an epoch), OneCycle per step
    "forecaster": ("experiment=airline", "dataset.data_dir={data}", "dataset.horizon=6",
                   "dataset.window=12", "dataset.test_size=12", "dataset.val_size=6",
                   "model.hidden_size=8", "trainer.check_val_every_n_epoch=1",
                   "trainer.max_epochs=3"),
}  # fmt: skip


class Recorder:
    """Keeps a copy of every checkpoint file the run writes (last.ckpt is rewritten in place), read
    back at the next hook, and the chunk sizes of the run."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self.saved, self.calls = folder, {}, [], []

    def look(self, *args, **kwargs):
        for path in sorted(self.folder.glob("*.ckpt")):
            stamp = (path.stat().st_mtime_ns, path.stat().st_size)
            if self.seen.get(path.name) != stamp:
                self.seen[path.name] = stamp
                self.saved.append((path.name, torch.load(path, weights_only=True)))

    def callback(self):
        import pytorch_lightning as pl

        recorder = self

        class Look(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                recorder.calls.append(len(batch) if isinstance(batch, Chunk) else 1)
                recorder.look()

            on_validation_start = on_fit_end = on_exception = recorder.look

        return Look()


def train(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, Recorder]:
    from nnlab.train import main

    run = tmp_path / name
    recorder = Recorder(run / "checkpoints")
    if any("{data}" in o for o in overrides):
        from test_sequences import write_airline

        data = write_airline(tmp_path / "data")
        overrides = tuple(o.replace("{data}", str(data)) for o in overrides)
    own_data = any(o.startswith(("dataset=", "experiment=")) for o in overrides)
    argv = sys.argv
    data = () if own_data else TINY_DATA
    sys.argv = ["nnlab train", *data, *TINY, *overrides, f"hydra.run.dir={run}"]
    try:
        main(callbacks=[recorder.callback()])
    finally:
        sys.argv = argv
    return run, recorder


def csv_rows(run: Path) -> list[dict]:
    import csv

    (path,) = run.glob("csv/**/metrics.csv")
    with open(path) as fh:
        return list(csv.DictReader(fh))


def assert_same(a, b, where="checkpoint"):
    """Equal, tensors bit for bit, down every dict and list."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max diff {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class NoHostReads:
    """Inside the step loop (between the first and the last step of a call), any read of a tensor
    on the host fails the test: .item(), .tolist(), bool(), float(), int()."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
    # reads of tensors that live on the host by design: packed sequences keep their lengths on the
    # CPU (pack_padded_sequence wants them there; SequenceBatches crops a batch to its longest)
    HOST_SIDE = ("torch/nn/modules/rnn.py", "torch/nn/utils/rnn.py", "nnlab/data/sequences.py")

    def __init__(self, monkeypatch):
        import traceback

        from nnlab.models import steps

        self.inside, self.reads = False, []
        detector = self

        def host_side() -> bool:
            frames = traceback.extract_stack(limit=4)[:-2]
            return any(f.filename.endswith(self.HOST_SIDE) for f in frames)

        for method in self.METHODS:
            original = getattr(torch.Tensor, method)

            def read(tensor, *args, _original=original, _method=method, **kwargs):
                if detector.inside and not (tensor.device.type == "cpu" and host_side()):
                    detector.reads.append(_method)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, read)
        begin, count = steps.StepLoop.begin, steps.StepLoop.count

        def begin_(loop, j):
            detector.inside = True
            begin(loop, j)

        def count_(loop, n):
            detector.inside = False
            count(loop, n)

        monkeypatch.setattr(steps.StepLoop, "begin", begin_)
        monkeypatch.setattr(steps.StepLoop, "count", count_)


@pytest.mark.parametrize("model", list(MODELS))
def test_several_steps_per_call_give_the_same_run(model, tmp_path, monkeypatch):
    one, one_rec = train(tmp_path, "one", *MODELS[model], "steps_per_execution=1")
    detector = NoHostReads(monkeypatch)
    four, four_rec = train(tmp_path, "four", *MODELS[model], "steps_per_execution=4")
    assert detector.reads == [], f"host reads inside the step loop: {set(detector.reads)}"

    assert set(one_rec.calls) == {1} and 1 < max(four_rec.calls) <= 4  # the loop really ran
    assert len(four_rec.calls) < len(one_rec.calls)
    steps_of = [(name, c["global_step"]) for name, c in one_rec.saved]
    assert steps_of == [(name, c["global_step"]) for name, c in four_rec.saved]
    assert len(one_rec.saved) >= 3
    for (name, a), (_, b) in zip(one_rec.saved, four_rec.saved):
        assert_same(a, b, f"{name} at step {a['global_step']}")
    rows_one, rows_four = csv_rows(one), csv_rows(four)
    assert any(v for r in rows_one for k, v in r.items() if k.startswith("train/"))
    assert rows_one == rows_four
    record_one, record_four = read_metrics(one), read_metrics(four)
    for key in ("metrics", "global_step", "epochs", "status"):
        assert record_one[key] == record_four[key], key


def test_tensor_batches_serve_chunks_that_the_plan_sizes():
    images, labels = torch.arange(40).view(40, 1, 1, 1), torch.arange(40)
    loader = TensorBatches(images, labels, 4, shuffle=True, seed=1, epoch_fn=lambda: 2)
    batches = [y.tolist() for _, y in loader]

    class Plan:
        def __init__(self):
            self.chunks = []

        def next_chunk(self, position, length):
            return min(3, length - position)

        def served(self, chunk):
            self.chunks.append((chunk.start, len(chunk), chunk.samples))

    loader.plan = plan = Plan()
    chunks = list(loader)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [c.batch(j)[1].tolist() for c in chunks for j in range(len(c))] == batches
    assert plan.chunks == [(0, 3, 12), (3, 3, 12), (6, 3, 12), (9, 1, 4)]
    assert loader.state_dict() == {"epoch": 2, "position": 10}


class Killed(BaseException):
    """The process dies (nothing is written after it, as with kill -9)."""


def test_a_run_killed_inside_a_call_resumes_to_the_same_run(tmp_path, monkeypatch):
    """lstm_fashion's recipe (OneCycle per step, clipping) at 4 steps per call, killed at batch 12
    (the third step of the call 10..13, mid-epoch): resumed from its last checkpoint (step 10,
    every_n_steps), it ends where the uninterrupted run ends. (The preset, not a scheduler on the
    command line: a resume never replays a _target_ from the run folder.)"""
    from nnlab.models import steps
    from nnlab.train import main

    args = ("experiment=lstm_fashion", "dataset=synthetic", "model.hidden_size=16")
    args = (*args, "steps_per_execution=4")
    whole, _ = train(tmp_path, "whole", *args)
    end = steps.StepLoop.end

    def dies_at_12(loop):
        if loop.index == 12:
            raise Killed
        end(loop)

    monkeypatch.setattr(steps.StepLoop, "end", dies_at_12)
    with pytest.raises(Killed):
        train(tmp_path, "killed", *args)
    monkeypatch.setattr(steps.StepLoop, "end", end)
    killed = tmp_path / "killed"
    last = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10 and last["epoch"] == 1  # mid-epoch, before the kill

    argv = sys.argv
    sys.argv = ["nnlab train", f"resume={killed}"]
    try:
        main()
    finally:
        sys.argv = argv
    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch"):
        assert_same(a[key], b[key], key)
    resumed, reference = read_metrics(killed)["metrics"], read_metrics(whole)["metrics"]
    assert resumed == {k: v for k, v in reference.items() if not k.startswith("lr/")}


def test_the_nan_guard_stops_at_the_same_step(tmp_path, monkeypatch):
    """A NaN in the generator's loss at batch 9: at 4 steps per call it is found after the call,
    and the run stops with the same message and the same last checkpoint as at 1."""
    from nnlab.models import gans

    real_loss = gans.generator_loss
    records, checkpoints = [], []
    for n in (1, 4):
        calls = []

        def poisoned(logits, kind="non_saturating", calls=calls):
            calls.append(1)
            loss = real_loss(logits, kind)
            return loss * float("nan") if len(calls) == 5 else loss  # batch 9 (G every 2nd)

        monkeypatch.setattr(gans, "generator_loss", poisoned)
        with pytest.raises(SystemExit):
            train(tmp_path, f"n{n}", *MODELS["dcgan"], f"steps_per_execution={n}")
        records.append(read_metrics(tmp_path / f"n{n}"))
        checkpoints.append(torch.load(tmp_path / f"n{n}/checkpoints/last.ckpt", weights_only=True))
    assert records[0]["status"] == records[1]["status"] == "failed"
    assert "training step 10 (epoch 1, batch 2 of the epoch)" in records[0]["error"]
    assert records[0]["error"].replace("n1", "n4") == records[1]["error"]
    assert_same(checkpoints[0], checkpoints[1])


def test_auto_times_the_step_and_keeps_the_numbers(tmp_path):
    from nnlab import lean

    assert lean.steps_for(1e-3, 0.5e-3) == 50  # a 0.5 ms call against 1% of 1 ms steps
    assert lean.steps_for(0.1, 1e-3) == 1 and lean.steps_for(1e-6, 1e-3) == lean.MAX_STEPS_PER_CALL
    assert lean.steps_for(1e-2, 1e-3) == 10 and lean.steps_for(0.1, 1e-2) == 2  # at most 0.25 s
    assert 0 < lean.python_probe(1000) < 1
    run, recorder = train(tmp_path, "auto", *MODELS["ae"], "steps_per_execution=auto")
    assert max(recorder.calls) > 1
    one, _ = train(tmp_path, "one", *MODELS["ae"], "steps_per_execution=1")
    assert csv_rows(run) == csv_rows(one)


def test_explicit_steps_that_cannot_apply_are_a_config_error(tmp_path, capsys):
    from conftest import run_fails

    err, record = run_fails(
        tmp_path,
        capsys,
        *TINY_DATA,
        *TINY,
        "model=ae",
        "steps_per_execution=4",
        "+trainer.fast_dev_run=2",
    )
    assert "steps_per_execution=4 cannot be used here: trainer.fast_dev_run" in err
    assert "steps_per_execution=1" in err
    err, _ = run_fails(tmp_path, capsys, *TINY_DATA, *TINY, "steps_per_execution=0", name="zero")
    assert "steps_per_execution=0 is not valid" in err


def test_compiled_nets_compile_once_and_keep_the_numbers(tmp_path, monkeypatch):
    """model.compile=true: the nets are compiled once (their forward and backward graphs), before
    the first step, and every step of every call reuses them; auto times an eager copy. The
    backend is dynamo's counting one over aot_eager (AOTAutograd's graphs, no code generation), so
    the test takes seconds."""
    from torch._dynamo.testing import CompileCounterWithBackend

    original = torch.nn.Module.compile
    counters = []

    def counted_compile(module, *args, mode=None, **kwargs):
        counters[-1].append(mode)
        return original(module, *args, backend=counters[-1][0], **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", counted_compile)
    runs = {}
    for setting in ("1", "auto"):
        torch._dynamo.reset()
        counters.append([CompileCounterWithBackend("aot_eager")])
        runs[setting] = train(
            tmp_path, setting, *MODELS["ae"], "model.compile=true", f"steps_per_execution={setting}"
        )
    (one, _), (auto, recorder) = runs["1"], runs["auto"]
    assert max(recorder.calls) > 1
    assert counters[0][1:] == counters[1][1:] == [None, None]  # encoder and decoder, default mode
    frames = [c[0].frame_count for c in counters]
    assert frames[0] == frames[1] and frames[0] <= 4  # train and eval batch shapes, per net
    assert csv_rows(one) == csv_rows(auto)
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (one, auto))
    assert_same(a["state_dict"], b["state_dict"])


def test_auto_falls_back_to_one_step_per_call_when_the_copy_cannot_run(tmp_path, monkeypatch):
    """A model whose step cannot run on a detached copy still trains (one step per call)."""
    from nnlab import lean

    def cannot(self, trainer, module):
        raise RuntimeError("needs its trainer")

    monkeypatch.setattr(lean.StepPlan, "time_step", cannot)
    run, recorder = train(tmp_path, "auto", *MODELS["ae"], "trainer.max_epochs=1")
    assert set(recorder.calls) == {1} and read_metrics(run)["status"] == "finished"
