"""Several optimizer steps per Lightning step (steps_per_execution, nnlab/lean.py and
nnlab/models/steps.py): the same numbers as one step per call.

Each model trains twice on tiny synthetic data with one seed: steps_per_execution=1 (Lightning's own
loop) and 4 (7 batches an epoch: 4 does not divide it; chunks also end at validation, checkpoints and
max_steps). Compared: every checkpoint written (weights, optimizer and scheduler states, Lightning's
loop counters, the RNG states), the logged scalars row by row (CSV logger) and the run's record.
The runs with several steps also check that the step loop never reads a tensor on the host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import read_metrics

from nnlab.data.batches import Chunk, TensorBatches

TINY = (
    "dataset=synthetic",
    "accelerator=cpu",
    "threads=1",
    "logger=csv",
    "dataset.n_train=256",  # 230 training images: 7 batches of 32
    "dataset.batch_size=32",
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
    argv = sys.argv
    sys.argv = ["nnlab train", *TINY, *overrides, f"hydra.run.dir={run}"]
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

    def __init__(self, monkeypatch):
        from nnlab.models import steps

        self.inside, self.reads = False, []
        detector = self

        for method in self.METHODS:
            original = getattr(torch.Tensor, method)

            def read(tensor, *args, _original=original, _method=method, **kwargs):
                if detector.inside:
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
