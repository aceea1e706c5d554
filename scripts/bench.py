"""`make bench`: how fast nnlab trains, against a hand-written PyTorch loop and the usual
DataLoader pipeline.

For each model (ae, lenet, lstm, dcgan) at its default batch size, three ways of training the same
nn.Module with the same optimiser, batch size and loss on Fashion-MNIST, and the first two in turn
(lstm_seq: the LSTM on JapaneseVowels' variable-length sequences, nnlab against the hand-written
loop over the same packed, bucketed batches; its img/s are sequences/s):

  nnlab       the real `nnlab train` path, in this process: the entry point `nnlab.train.main`
              with the default callbacks (checkpoint, lr monitor, progress bar on), TensorBoard
              logger and logging cadence; only `test_after_fit=false` and a timing callback
              (passed to `main(callbacks=...)`) are added. Its img/s = training images / time from
              on_train_epoch_start to the end of the epoch's last training batch, so validation,
              checkpointing, start-up and data loading are not counted.
  hand        a plain loop: the same nets (taken from the LightningModule built from the same
              config), optimiser (the module's configure_optimizers), the train split as resident
              uint8 tensors (the datamodule's own), a shuffled permutation per epoch,
              x = images[idx].float() / 255, zero_grad / loss / backward / step (lstm: with the
              model's gradient clipping; dcgan: a D step then a G step, as the model does). Its
              img/s = images / loop time. It runs with the environment of a process that never
              imported Lightning (see _ENV_BEFORE_LIGHTNING).
  dataloader  the torchvision way: a FashionMNIST-style Dataset over the same uint8 tensors that
              turns each sample into a PIL image and back with ToTensor (as
              torchvision.datasets.FashionMNIST does), DataLoader(batch_size, shuffle=True,
              num_workers=--workers), and the hand loop above.
  interleaved one more nnlab run, in which a callback runs one hand-written step (as above, on a
              second copy of the model) after each nnlab step: the `step-paired` column is
              hand-written time / nnlab time over those pairs. Both paths meet the machine at the
              same moment, so it holds where the machine's speed drifts between runs (this 2-core
              VM's swings by 20-40%); it runs once, not every repetition.

--compile adds the nnlab path with model.compile=true (`compile/nnlab`: epochs after the first,
which compiles) and `compile step-paired`: a compiled and a plain copy of the model taking
hand-written steps in turn, plain time / compiled time, torch.compile's own gain without the
framework in it.

ae, lenet and lstm time whole epochs; on the CPU dcgan times only the first 40 batches of each
epoch (see MODELS; the `batches/epoch` column), unless --limit-batches is given; on a GPU every
model runs whole epochs. Repetitions are interleaved (nnlab, hand, dataloader, nnlab, ...) so the
load of a shared machine hits all three alike; the table shows medians (over repetitions of the
img/s of all measured epochs of a repetition) and the ratios nnlab/hand and nnlab/dataloader. The
JSON also has each run's img/s of this process's CPU time (cpu_img_s; not for the dataloader,
whose workers are other processes): on a loaded machine it shows the overhead without the waits
for a core. It also times `nnlab --help`, `nnlab train --cfg job`, and (--full-train) the whole
default `nnlab train`, the peak memory of a one-epoch `nnlab train` subprocess (ru_maxrss;
torch.cuda.max_memory_allocated of the in-process nnlab runs on a GPU), and the time and peak
memory of `nnlab sample` on that finished run.

    python scripts/bench.py --threads 1           # everything: ~20 min on a loaded 2-core CPU
    python scripts/bench.py --quick --models ae   # seconds: 1 rep, 1 epoch, 50 batches
    python scripts/bench.py --json bench.json     # the table as JSON, to compare commits
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

# a hand-written script does not import Lightning, which sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (see
# nnlab/device.py):
# the hand-written paths run with the environment as it was before that import
_ENV_BEFORE_LIGHTNING = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

_ENV_AFTER_LIGHTNING = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# -- the models: config overrides, and the hand-written step over the LightningModule's own nets ---
@dataclass
class Entry:
    name: str
    overrides: list[str]
    # loss(module, x, y) -> the training loss, written out by hand from the module's nets
    loss: Callable
    step: Callable | None = (
        None  # step(module, optimizers, x, y); default: one optimiser, zero_grad/backward/step
    )
    note: str = ""
    model_loss: Callable | None = (
        None  # the model's own loss on a batch (tests); default: its training_step
    )
    max_batches: int | None = (
        None  # training batches per epoch when --limit-batches is not given (slow models)
    )
    # the paths that apply (None: all); variable-length sequences have no torchvision-style
    # Dataset to compare with, so lstm_seq leaves `dataloader` out
    paths: tuple[str, ...] | None = None


def ae_loss(m, x, y):
    """Undercomplete AE with the default mse loss: mean (sigmoid(g(f(x))) - x)^2."""
    return F.mse_loss(torch.sigmoid(m.decoder(m.encoder(x))), x)


def lenet_loss(m, x, y):
    """LeNet-5: cross-entropy of the net's logits (in the memory format the model asks for)."""
    return F.cross_entropy(
        m.net(x.contiguous(memory_format=torch.channels_last) if m.channels_last else x), y
    )


def rnn_loss(m, x, y):
    """Row-by-row LSTM: cross-entropy of the net's logits."""
    return F.cross_entropy(m.net(x), y)


def seq_loss(m, x, y):
    """LSTM on variable-length sequences: x is (padded steps, lengths), packed by the net."""
    return F.cross_entropy(m.net(*x), y)


def clipped_step(entry_loss):
    """One Adam step with the gradient norm clipped at the model's default (lstm: 1.0), as nnlab
    does."""

    def step(m, opts, x, y):
        (opt,) = opts
        opt.zero_grad(set_to_none=True)
        loss = entry_loss(m, x, y)
        loss.backward()
        if m.default_clip:
            torch.nn.utils.clip_grad_norm_(m.parameters(), m.default_clip)
        opt.step()
        return loss

    return step


def gan_d_loss(m, x, y, fake=None):
    """DCGAN discriminator loss -[log D(x) + log(1 - D(G(z)))], written out as two BCEs on
    logits."""
    real = x * 2 - 1
    fake = (
        m.generator(torch.randn(len(real), m.latent_dim, device=x.device), None)
        if fake is None
        else fake
    )
    real_logits, fake_logits = m.discriminator(real, None), m.discriminator(fake.detach(), None)
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, m.real_target)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def gan_model_d_loss(m, x, y):
    """The same, through the model's own functions (for the test)."""
    from nnlab.models.gans import discriminator_loss

    real, fake = x * 2 - 1, m.generator(m.noise(len(x)), None)
    return discriminator_loss(
        m.discriminator(real, None), m.discriminator(fake.detach(), None), m.real_target
    )


def gan_step(m, opts, x, y):
    """One D step, then one G step (non-saturating: softplus(-l)) judged by the updated D on the
    same fakes."""
    opt_g, opt_d = opts
    fake = m.generator(torch.randn(len(x), m.latent_dim, device=x.device), None)
    d_loss = gan_d_loss(m, x, y, fake)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    m.discriminator.requires_grad_(False)
    g_loss = F.softplus(-m.discriminator(fake, None)).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    m.discriminator.requires_grad_(True)
    return d_loss


def single_optimizer_step(entry: Entry):
    def step(m, opts, x, y):
        (opt,) = opts
        opt.zero_grad(set_to_none=True)
        loss = entry.loss(m, x, y)
        loss.backward()
        opt.step()
        return loss

    return step


MODELS: dict[str, Entry] = {
    "ae": Entry("ae", ["model=ae"], ae_loss, note="MLP 784-256-32, mse"),
    "lenet": Entry("lenet", ["model=lenet"], lenet_loss, note="LeNet-5 modern, channels_last"),
    "lstm": Entry(
        "lstm",
        ["model=lstm"],
        rnn_loss,
        clipped_step(rnn_loss),
        note="LSTM 128 over 28 rows, clip 1.0",
    ),
    # JapaneseVowels (make data): packed, bucketed batches of 16 sequences of 7-29 steps; the
    # preset without its one-cycle schedule (a scheduler needs the trainer's step count)
    "lstm_seq": Entry(
        "lstm_seq",
        ["experiment=japanese_vowels", "model.scheduler=null"],
        seq_loss,
        clipped_step(seq_loss),
        note="LSTM 64, JapaneseVowels, packed, clip 1.0 (img/s = sequences/s)",
        paths=("nnlab", "hand", "interleaved"),
    ),
    "dcgan": Entry(
        "dcgan",
        ["model=dcgan"],
        gan_d_loss,
        gan_step,
        model_loss=gan_model_d_loss,
        note="D then G step",
        max_batches=40,
    ),
}


def entry_step(entry: Entry):
    return entry.step or single_optimizer_step(entry)


# -- building the same things nnlab builds ---------------------------------------------------------
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("nnlab.configs", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def build(overrides: list[str]):
    """(cfg, datamodule set up on the CPU, LightningModule, [optimisers]) from the composed
    config."""
    from hydra.utils import instantiate

    cfg = compose(overrides)
    torch.manual_seed(cfg.seed)
    data_dir = str(Path(cfg.dataset.data_dir).expanduser().resolve())
    dm = instantiate(cfg.dataset, data_dir=data_dir, seed=cfg.seed)
    dm.setup()
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    opts = model.configure_optimizers()
    if isinstance(opts, dict):
        opts = opts["optimizer"]
    if isinstance(opts, tuple) and len(opts) == 2 and isinstance(opts[0], list):
        opts = opts[0]  # ([optimizers], [schedulers])
    opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
    opts = [o["optimizer"] if isinstance(o, dict) else o for o in opts]
    return cfg, dm, model, opts


@contextlib.contextmanager
def cuda_probe_env(lightning: bool):
    """The CUDA-probe setting of a fresh process that did (nnlab) or did not (hand-written) import
    Lightning."""
    saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    _set_env(
        "PYTORCH_NVML_BASED_CUDA_CHECK",
        _ENV_AFTER_LIGHTNING if lightning else _ENV_BEFORE_LIGHTNING,
    )
    try:
        yield
    finally:
        _set_env("PYTORCH_NVML_BASED_CUDA_CHECK", saved)


def _set_env(key, value):
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _sync(device):

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the three ways of training --------------------------------------------------------------------
@dataclass
class HandSide:
    """What a hand-written path trains: the module built from the config, its optimisers, the train
    split resident on the device (the datamodule's own uint8 tensors), the batch size, the step
    function, and the number of full batches of an epoch (drop_last, as nnlab's training batches; at
    most `limit`)."""

    model: torch.nn.Module
    opts: list
    images: torch.Tensor
    labels: torch.Tensor
    bs: int
    step: Callable
    n_batches: int
    lengths: torch.Tensor | None = None  # sequences: the lengths (CPU), and the bucket size
    bucket: int = 1

    def order(self, seed: int) -> torch.Tensor:
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))
        order = order.to(self.images.device)
        if self.lengths is not None and self.bucket > 1:  # as SequenceBatches buckets them
            from nnlab.data.sequences import bucket_order

            order = bucket_order(order, self.lengths.to(order.device), self.bucket * self.bs)
        return order

    def train_step(self, order: torch.Tensor, i: int):
        """One step on the i-th batch of `order`: x = images[idx].float() / 255; sequences:
        x = (steps[idx] cropped to the batch's longest, lengths[idx])."""
        idx = order[i * self.bs : (i + 1) * self.bs]
        if self.lengths is None:
            x = self.images[idx].float().div_(255.0)
        else:
            lengths = self.lengths[idx.cpu()]
            x = (self.images[idx, : int(lengths.max())], lengths)
        return self.step(self.model, self.opts, x, self.labels[idx])


def hand_side(entry: Entry, overrides: list[str], device, limit: int | None = None) -> HandSide:
    cfg, dm, model, opts = build(overrides)
    lengths, bucket = None, 1
    if hasattr(dm, "sequences"):  # the datamodule's own standardised, padded training split
        images, lengths, labels = dm.sequences("train")
        bucket = dm.bucket
    else:
        images, labels = dm.raw("train")
    images, labels = images.to(device), labels.to(device)
    bs = int(cfg.dataset.batch_size)
    n_batches = max(1, len(images) // bs)
    return HandSide(
        model.to(device).train(),
        opts,
        images,
        labels,
        bs,
        entry_step(entry),
        min(n_batches, limit) if limit else n_batches,
        lengths,
        bucket,
    )


def run_hand(entry: Entry, overrides: list[str], epochs: int, limit: int | None, device) -> dict:
    hand = hand_side(entry, overrides, device, limit)
    n_img, seconds, cpu = 0, 0.0, 0.0
    for epoch in range(epochs):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        order = hand.order(epoch)
        for i in range(hand.n_batches):
            hand.train_step(order, i)
        _sync(device)
        seconds, cpu = seconds + time.perf_counter() - t0, cpu + time.process_time() - c0
        n_img += hand.n_batches * hand.bs
    return {"img_s": n_img / seconds, "images": n_img, "seconds": seconds, "cpu_img_s": n_img / cpu}


class FashionMNISTStyle:
    """torchvision.datasets.FashionMNIST's __getitem__ over uint8 tensors: PIL image -> ToTensor
    per sample."""

    def __init__(self, images, labels):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.ToTensor()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = self.images[i]
        img = (
            Image.fromarray(img[0].numpy(), mode="L")
            if img.shape[0] == 1
            else Image.fromarray(img.permute(1, 2, 0).numpy())
        )
        return self.transform(img), int(self.labels[i])


def run_dataloader(
    entry: Entry, overrides: list[str], epochs: int, limit: int | None, device, workers: int
) -> dict:
    from torch.utils.data import DataLoader

    cfg, dm, model, opts = build(overrides)
    model.to(device).train()
    images, labels = dm.raw("train")
    bs, step = int(cfg.dataset.batch_size), entry_step(entry)
    loader = DataLoader(
        FashionMNISTStyle(images, labels),
        batch_size=bs,
        shuffle=True,
        drop_last=len(images) > bs,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    n_img, seconds = 0, 0.0
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if limit and i >= limit:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            step(model, opts, x, y)
            n_img += len(x)
        _sync(device)
        seconds += time.perf_counter() - t0
    return {"img_s": n_img / seconds, "images": n_img, "seconds": seconds}


def batches_and_images(batch) -> tuple[int, int]:
    """(batches, images) of what one Lightning training step got: a batch, or a Chunk of them
    (several optimizer steps per call, steps_per_execution)."""
    from nnlab.data.batches import Chunk

    if isinstance(batch, Chunk):
        return len(batch), batch.samples
    return 1, len(batch[0])


def steps_per_call(trainer) -> int | None:
    """The optimizer steps per Lightning step of an nnlab run (auto's choice, or the setting)."""
    from nnlab.lean import StepPlan

    plans = [c for c in trainer.callbacks if isinstance(c, StepPlan)]
    return plans[0].n if plans else None


class EpochTimer(pl.Callback):
    """Passed to the nnlab run as an extra callback: the time of each training epoch (without
    validation), in `results`, and the steps per call the run took."""

    def __init__(self):
        self.results: list[dict] = []
        self.steps_per_call: int | None = None

    def on_train_start(self, trainer, pl_module):
        self.steps_per_call = steps_per_call(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        _sync(pl_module.device)
        self.images, self.t0, self.c0 = 0, time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += batches_and_images(batch)[1]
        if batch_idx + 1 == trainer.num_training_batches:  # one sync per epoch, at its last batch
            _sync(pl_module.device)
            self.results.append(
                {
                    "images": self.images,
                    "seconds": time.perf_counter() - self.t0,
                    "cpu_seconds": time.process_time() - self.c0,
                }
            )

    def on_fit_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(pl_module.device)
            self.results.append({"cuda_max_memory_allocated": memory})


def run_nnlab(
    entry: Entry,
    overrides: list[str],
    epochs: int,
    limit: int | None,
    device,
    extra=(),
    warmup_epochs: int = 0,
    callbacks: tuple = (),
) -> dict:
    from nnlab.train import main

    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="nnlab-bench-") as tmp:
        argv = sys.argv
        sys.argv = [
            "nnlab train",
            *overrides,
            f"trainer.max_epochs={epochs}",
            "test_after_fit=false",
            f"hydra.run.dir={tmp}/run",
            *extra,
        ]
        if limit:
            sys.argv += [
                f"trainer.limit_train_batches={limit}",
                f"trainer.limit_val_batches={max(1, limit // 10)}",
            ]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sink = io.StringIO()
        try:
            with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
                main(callbacks=[timer, *callbacks])
        except SystemExit as err:  # a config error: show what nnlab said
            raise RuntimeError(
                f"nnlab train {' '.join(sys.argv[1:])} failed ({err}):\n{sink.getvalue()[-2000:]}"
            ) from err
        finally:
            sys.argv = argv
    epochs_run = [r for r in timer.results if "seconds" in r]
    if warmup_epochs and len(epochs_run) > warmup_epochs:
        epochs_run = epochs_run[warmup_epochs:]  # torch.compile: leave the compiling epoch out
    n_img, seconds = sum(r["images"] for r in epochs_run), sum(r["seconds"] for r in epochs_run)
    cpu = sum(r["cpu_seconds"] for r in epochs_run)
    out = {
        "img_s": n_img / seconds if seconds else float("nan"),
        "images": n_img,
        "seconds": seconds,
        "epoch_img_s": [r["images"] / r["seconds"] for r in timer.results if "seconds" in r],
        "cpu_img_s": n_img / cpu if cpu else float("nan"),
        "steps_per_call": timer.steps_per_call,
    }
    mem = [
        r["cuda_max_memory_allocated"] for r in timer.results if "cuda_max_memory_allocated" in r
    ]
    if mem:
        out["cuda_max_memory_allocated_mb"] = max(mem) / 2**20
    return out


class StepPairs(pl.Callback):
    """The `interleaved` path: one nnlab run with this callback, which after each nnlab training
    step runs as many hand-written steps (run_hand's, on a second copy of the model and its
    optimisers built the same way) as the nnlab step took batches (one, or a Chunk's: several
    optimizer steps per call). Each pair meets the machine at the same moment, so the ratio holds
    on a machine whose speed drifts by tens of percent between epochs. An nnlab step is timed from
    the end of the previous hand-written steps to the end of its own batches: fetch, transfer,
    hooks, logging and all. The first call of each epoch is left out (its gap holds the validation
    and the epoch's start)."""

    def __init__(self, hand: HandSide):
        self.hand = hand
        self.pairs: list[tuple[float, float, int, int]] = []  # (nnlab s, hand s, images, batches)
        self.steps_per_call: int | None = None

    def on_train_start(self, trainer, pl_module):
        self.order, self.i, self.t = self.hand.order(0), 0, None
        self.steps_per_call = steps_per_call(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        self.first = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        hand = self.hand
        _sync(hand.images.device)
        now = time.perf_counter()
        nnlab_s = now - self.t if self.t is not None and not self.first else None
        self.first = False
        batches, images = batches_and_images(batch)
        for _ in range(batches):
            hand.train_step(self.order, self.i % hand.n_batches)
            self.i += 1
        _sync(hand.images.device)
        self.t = time.perf_counter()
        if nnlab_s is not None:
            self.pairs.append((nnlab_s, self.t - now, images, batches))


def run_interleaved(
    entry: Entry, overrides: list[str], epochs: int, limit: int | None, device
) -> dict:
    stepper = StepPairs(hand_side(entry, overrides, device))  # built as run_hand builds it
    run_nnlab(entry, overrides, epochs, limit, device, callbacks=(stepper,))
    pairs = stepper.pairs
    n_img, nnlab_s, hand_s = (
        sum(p[2] for p in pairs),
        sum(p[0] for p in pairs),
        sum(p[1] for p in pairs),
    )
    return {
        "img_s": n_img / nnlab_s if nnlab_s else float("nan"),
        "hand_img_s": n_img / hand_s if hand_s else float("nan"),
        "images": n_img,
        "seconds": nnlab_s,
        "steps": sum(p[3] for p in pairs),
        "ratio": hand_s / nnlab_s if nnlab_s else float("nan"),
        "pair": ("nnlab", "hand-written"),
        "ms_per_step": tuple(
            1e3 * statistics.median(p[k] / p[3] for p in pairs) if pairs else float("nan")
            for k in (0, 1)
        ),
        "steps_per_call": stepper.steps_per_call,
    }


def run_compile_pairs(
    entry: Entry, overrides: list[str], limit: int | None, device, warmup: int = 20
) -> dict:
    """--compile: torch.compile's own gain, step by step. A plain and a compiled copy of the model
    (compiled as nnlab's model.compile=true does it: each child net in place) take hand-written
    steps in turn on the same batches; the first `warmup` pairs (which compile) are left out. The
    ratio is plain time / compiled time: above 1, compiling pays. The framework is not in it: that
    is the interleaved path's job."""
    plain = hand_side(entry, overrides, device, limit)
    compiled = hand_side(entry, [*overrides, "model.compile=true"], device, limit)
    compiled.model.configure_model()
    n, order = plain.n_batches, plain.order(0)

    def timed(side: HandSide, i: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        side.train_step(order, i)
        _sync(device)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    for i in range(warmup):
        timed(compiled, i % n), timed(plain, i % n)
    warmup_s = time.perf_counter() - t0
    pairs = [(timed(plain, i), timed(compiled, i)) for i in range(n)]
    plain_s, compiled_s = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return {
        "img_s": n * plain.bs / compiled_s,
        "images": n * plain.bs,
        "seconds": compiled_s,
        "steps": n,
        "warmup_s": warmup_s,
        "ratio": plain_s / compiled_s,
        "pair": ("compiled", "plain"),
        "ms_per_step": (
            1e3 * statistics.median(p[1] for p in pairs),
            1e3 * statistics.median(p[0] for p in pairs),
        ),
    }


# -- command-line wall times and peak memory -------------------------------------------------------
# A child forked from this (large) process would inherit its peak RSS: Linux keeps ru_maxrss across
# exec.
# So a small launcher process starts the command and reports the command's own rusage.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read().decode(errors="replace")
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "maxrss": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status),
                  "err": err[-2000:]}))
"""


def _run_child(cmd: list[str], env=None) -> dict:
    """Run cmd (through the launcher): its wall time, CPU time (user + system) and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"the launcher of {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["rc"]:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r['rc']}):\n{r['err']}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "max_rss_mb": r["maxrss"] * scale / 2**20}


def wall(cmd: list[str], reps: int, env=None) -> dict:
    """Median wall time of a command (and its CPU time: on a loaded machine the wall time waits for
    a core)."""
    runs = [_run_child(cmd, env) for _ in range(reps)]
    return {
        "cmd": " ".join(cmd),
        "median_s": statistics.median(r["wall_s"] for r in runs),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "runs_s": [r["wall_s"] for r in runs],
    }


def peak_memory(cmd: list[str], env=None) -> dict:
    """The peak resident set of a child (its own ru_maxrss, not this process's)."""
    return {"cmd": " ".join(cmd), **_run_child(cmd, env)}


# -- the run ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated, of: {', '.join(MODELS)} (default: all)",
    )
    p.add_argument(
        "--epochs", type=int, default=1, help="training epochs per repetition (default 1)"
    )
    p.add_argument(
        "--reps",
        type=int,
        default=3,
        help="interleaved repetitions of each path; medians are reported (default 3)",
    )
    p.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="at most this many training batches per epoch (default: all)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader num_workers (default: min(4, cores))",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for every path (default: torch's, passed to nnlab as threads=)",
    )
    p.add_argument(
        "--paths",
        default="nnlab,hand,dataloader,interleaved",
        help="which of nnlab,hand,dataloader,interleaved to run (interleaved: once, not every "
        "repetition)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the nnlab path with model.compile=true (with --epochs > 1 the first, "
        "compiling, epoch is left out), and a compiled against a plain copy of the model, step by "
        "step (`compile step-paired`)",
    )
    p.add_argument(
        "--full-train",
        action="store_true",
        help="also time the whole default `nnlab train` (minutes)",
    )
    p.add_argument(
        "--no-cli",
        action="store_true",
        help="skip the --help / --cfg job / peak-memory subprocesses",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 rep, 1 epoch, 50 batches, 1 CLI timing: a smoke run in seconds",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="extra Hydra override for every model (repeatable), e.g. dataset=synthetic",
    )
    p.add_argument(
        "--json", default=None, help="write the table and the settings to this JSON file"
    )
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="print the table of an earlier --json file and exit",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.epochs, args.limit_batches = 1, 1, args.limit_batches or 50
    return args


def summarise(row: dict, epochs: int) -> dict:
    """Medians and ratios of one model's runs (row["runs"]: path -> one result per repetition)."""
    runs = row["runs"]
    for path, results in runs.items():
        row[path] = statistics.median(r["img_s"] for r in results)
    chosen = [
        r["steps_per_call"]
        for p in ("interleaved", "nnlab")
        for r in runs.get(p, [])
        if r.get("steps_per_call")
    ]
    if chosen:  # optimizer steps per Lightning step (steps_per_execution; auto's choice)
        row["steps/call"] = chosen[0]
    for a, b in (("nnlab", "hand"), ("nnlab", "dataloader")):
        if not (runs.get(a) and runs.get(b)):
            continue
        row[f"{a}/{b}"] = row[a] / row[b]
        # the same ratio within each repetition (runs next to each other share the machine's load),
        # then the median
        row[f"{a}/{b} paired"] = statistics.median(
            x["img_s"] / y["img_s"] for x, y in zip(runs[a], runs[b])
        )
    if runs.get("interleaved"):  # hand-written / nnlab time over steps run in turn, in one run
        row["nnlab/hand step-paired"] = statistics.median(r["ratio"] for r in runs["interleaved"])
    if runs.get("compile-paired"):  # plain / compiled time over hand-written steps run in turn
        row["compile step-paired"] = statistics.median(r["ratio"] for r in runs["compile-paired"])
    if runs.get("nnlab") and runs.get(
        "hand"
    ):  # this process's CPU time: the overhead without waiting for a core
        row["nnlab/hand cpu"] = statistics.median(
            r["cpu_img_s"] for r in runs["nnlab"]
        ) / statistics.median(r["cpu_img_s"] for r in runs["hand"])
    if runs.get("nnlab+compile") and runs.get("nnlab") and epochs > 1:
        # epochs after the first of both (the first compiles): like for like
        after = {
            p: statistics.median(x for r in runs[p] for x in r["epoch_img_s"][1:])
            for p in ("nnlab", "nnlab+compile")
        }
        row["nnlab+compile"], row["compile/nnlab"] = (
            after["nnlab+compile"],
            after["nnlab+compile"] / after["nnlab"],
        )
    elif row.get("nnlab+compile") and row.get("nnlab"):
        row["compile/nnlab"] = (
            row["nnlab+compile"] / row["nnlab"]
        )  # one epoch: the compile time included
    return row


def fmt_table(rows: list[dict]) -> str:
    cols = [
        ("model", "model", "{}"),
        ("batch", "batch", "{}"),
        ("batches/epoch", "batches", "{}"),
        ("steps/call", "steps/call", "{}"),
        ("nnlab img/s", "nnlab", "{:.0f}"),
        ("hand img/s", "hand", "{:.0f}"),
        ("DataLoader img/s", "dataloader", "{:.0f}"),
        ("nnlab/hand", "nnlab/hand", "{:.2f}"),
        ("paired", "nnlab/hand paired", "{:.2f}"),
        ("CPU time", "nnlab/hand cpu", "{:.2f}"),
        ("step-paired", "nnlab/hand step-paired", "{:.2f}"),
        ("nnlab/DataLoader", "nnlab/dataloader", "{:.2f}"),
        ("paired", "nnlab/dataloader paired", "{:.2f}"),
    ]
    if any("nnlab+compile" in r for r in rows):
        cols += [
            ("nnlab+compile img/s", "nnlab+compile", "{:.0f}"),
            ("compile/nnlab", "compile/nnlab", "{:.2f}"),
            ("compile step-paired", "compile step-paired", "{:.2f}"),
        ]
    cells = [[h for h, _, _ in cols]] + [
        [f.format(r[k]) if r.get(k) is not None else "-" for _, k, f in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _paired_text(result: dict) -> str:
    nnlab_ms, hand_ms = result["ms_per_step"]
    return (
        f"{result['steps']} steps in turn, median {nnlab_ms:.2f} ms a step {result['pair'][0]} "
        f"against {hand_ms:.2f} {result['pair'][1]}: ratio {result['ratio']:.2f})"
    )


def _cpu_text(result: dict) -> str:
    return f"{result.get('cpu_img_s', float('nan')):.0f} img/s of this process's CPU time)"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        rows = [summarise(row, report["settings"]["epochs"]) for row in report["table"]]
        print(fmt_table(rows))
        return report

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench: unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    threads = args.threads or torch.get_num_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accel = "accelerator=gpu" if device.type == "cuda" else "accelerator=cpu"
    load0 = os.getloadavg()
    print(
        f"bench: {platform.node()} torch {torch.__version__} device={device} threads={threads} "
        f"cores={os.cpu_count()} load={load0[0]:.1f} reps={args.reps} epochs={args.epochs} "
        f"limit_batches={args.limit_batches}",
        flush=True,
    )

    # one-time costs that any training process pays once (torch._dynamo is imported by the first
    # optimiser
    # step or self.log), paid here so that the first timed path does not carry them alone
    __import__("torch._dynamo")

    rows = []
    for name in names:
        entry = MODELS[name]
        overrides = [*entry.overrides, accel, f"threads={threads}", *args.set]
        limit = args.limit_batches or (entry.max_batches if device.type == "cpu" else None)
        common = (entry, overrides, args.epochs, limit, device)  # bound now: no late binding
        jobs = {
            "nnlab": partial(run_nnlab, *common),
            "hand": partial(run_hand, *common),
            "dataloader": partial(run_dataloader, *common, args.workers),
            "interleaved": partial(run_interleaved, *common),
        }
        runs = {p: [] for p in paths if entry.paths is None or p in entry.paths}
        if args.compile:
            jobs["nnlab+compile"] = partial(
                run_nnlab, *common, ["model.compile=true"], warmup_epochs=1
            )
            jobs["compile-paired"] = partial(run_compile_pairs, entry, overrides, limit, device)
            runs["nnlab+compile"], runs["compile-paired"] = [], []
        for rep in range(args.reps):  # interleaved: A B C A B C ...
            for path in runs:
                if (
                    path in ("interleaved", "compile-paired") and rep
                ):  # paired step by step: one run is enough
                    continue
                torch.set_num_threads(threads)
                with cuda_probe_env(lightning=path in ("nnlab", "nnlab+compile", "interleaved")):
                    result = jobs[path]()
                runs[path].append(result)
                print(
                    f"  {name} rep {rep + 1}/{args.reps} {path:14s} {result['img_s']:8.0f} img/s "
                    f"({result['images']} images in {result['seconds']:.2f} s; "
                    + (_paired_text(result) if "steps" in result else _cpu_text(result)),
                    flush=True,
                )
        cfg = compose(overrides)
        row = {
            "model": name,
            "batch": int(cfg.dataset.batch_size),
            "batches": limit or "all",
            "note": entry.note,
            "runs": runs,
        }
        summarise(row, args.epochs)
        mem = [
            r.get("cuda_max_memory_allocated_mb")
            for r in runs.get("nnlab", [])
            if r.get("cuda_max_memory_allocated_mb")
        ]
        if mem:
            row["cuda_max_memory_allocated_mb"] = max(mem)
        rows.append(row)

    cli = {}
    if not args.no_cli:
        nnlab, cli_reps = str(BIN / "nnlab"), 1 if args.quick else 3
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        cli["nnlab --help"] = wall([nnlab, "--help"], cli_reps, env)
        cli["nnlab train --cfg job"] = wall([nnlab, "train", "--cfg", "job"], cli_reps, env)
        with tempfile.TemporaryDirectory(prefix="nnlab-bench-") as tmp:
            mem_cmd = [
                nnlab,
                "train",
                accel,
                f"threads={threads}",
                "trainer.max_epochs=1",
                "test_after_fit=false",
                f"hydra.run.dir={tmp}/mem",
                *args.set,
            ]
            if args.limit_batches:
                mem_cmd += [
                    f"trainer.limit_train_batches={args.limit_batches}",
                    "trainer.limit_val_batches=2",
                ]
            cli["peak memory: nnlab train, 1 epoch"] = peak_memory(mem_cmd, env)
            # the finished one-epoch run above: what a student waits for to see its samples
            sample_cmd = [nnlab, "sample", f"{tmp}/mem", f"out={tmp}/samples.png"]
            sample_cmd += [f"threads={threads}"]
            cli["nnlab sample (the 1-epoch run)"] = wall(sample_cmd, cli_reps, env)
            cli["peak memory: nnlab sample"] = peak_memory(sample_cmd, env)
            if args.full_train:
                cli["nnlab train (default, whole run)"] = wall(
                    [nnlab, "train", f"threads={threads}", f"hydra.run.dir={tmp}/full"], 1, env
                )
    load1 = os.getloadavg()

    print()
    print(fmt_table(rows))
    print()
    for key, value in cli.items():
        figure = (
            f"{value['median_s']:.2f} s wall, {value['median_cpu_s']:.2f} s CPU"
            if "median_s" in value
            else f"{value['max_rss_mb']:.0f} MB max RSS ({value['wall_s']:.1f} s wall)"
        )
        print(f"{key:40s} {figure}")
    for row in rows:
        if "cuda_max_memory_allocated_mb" in row:
            mb = row["cuda_max_memory_allocated_mb"]
            print(f"{row['model']}: torch.cuda.max_memory_allocated {mb:.0f} MB")
    if device.type != "cuda":
        print("GPU: none here (torch.cuda.is_available() is False): no GPU figures")
    print(
        f"load average (1 min) at start {load0[0]:.1f}, at end {load1[0]:.1f}, "
        f"on {os.cpu_count()} cores"
    )

    report = {
        "settings": {k: v for k, v in vars(args).items()},
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        "host": platform.node(),
        "cores": os.cpu_count(),
        "load_avg_start": load0,
        "load_avg_end": load1,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(),
        "table": rows,
        "cli": cli,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


def _commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        return None


if __name__ == "__main__":
    main()
