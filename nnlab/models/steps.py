"""The step loop: several optimizer steps inside one Lightning training step.

With `steps_per_execution` (configs/train.yaml; nnlab/lean.py sets it up before the fit),
Lightning's fit loop hands NNLabModule.training_step a Chunk of batches (nnlab/data/batches.py),
and `run_chunk` runs one optimizer step per batch with the model's own `train_batch`. Around each
step it does what Lightning's loop does around each batch, in the same order, on its counters:

    the batch     Lightning's transfer path (precision plugin, datamodule hooks), batch by batch
    the step      zero_grad at the start of an accumulation window; step(batch, "train");
                  backward of the loss (divided by accumulate_grad_batches); at the window's end the
                  on_before_optimizer_step hooks, gradient clipping, the optimizer step, schedulers
                  with interval "step" (and "epoch" after the epoch's last batch)
    the counters  global_step, the logging step, batch_index and logging_step per step
    the scalars   the training terms of each logged step, written at that step's number
    NaN guard     the flags of every step, checked once after the call

Manual-optimisation families (GANs, RBMs) write `train_batch` with `self.optimizers()` and
`self.manual_backward(loss)` as usual; inside the loop those hand out `Stepper`s (the on_before_
optimizer_step hooks, then the optimizer's own step, counted) and a plain backward with its hooks.

GPU-ready: nothing in the loop reads a tensor on the host. Scalars, and the NaN flags, stay on the
device and are read once per call, together (`StepLoop.report`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from torchmetrics import Metric

from nnlab import lightning_compat as compat
from nnlab.data.batches import Chunk

STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward")
OPTIMIZER_HOOK = "on_before_optimizer_step"


@dataclass
class SeveralSteps:
    """How a model runs several steps per call: plain values, set by nnlab.lean before the fit."""

    automatic: bool  # Lightning would optimise it automatically: the loop drives the optimiser
    accumulate: int = 1  # trainer.accumulate_grad_batches (the trainer then holds 1)
    clip_val: float | None = None  # trainer.gradient_clip_val (the trainer then holds None)
    clip_algorithm: str | None = None
    fast_backward: bool = True  # loss.backward() + hooks; False: Lightning's (DDP, AMP scaler)
    mark_cudagraph_steps: bool = False  # compile mode with CUDA graphs: one graph step per batch


def _module_overrides(module: pl.LightningModule, hook: str) -> bool:
    return getattr(type(module), hook) is not getattr(pl.LightningModule, hook)


def _callback_hooks(trainer: pl.Trainer, hook: str) -> list:
    """The callbacks' `hook` methods that do something (not Callback's empty one)."""
    out = []
    for callback in trainer.callbacks:
        fn = getattr(callback, hook, None)
        inherited = getattr(type(callback), hook) is getattr(Callback, hook)
        if callable(fn) and (hook in vars(callback) or not inherited):
            out.append(fn)
    return out


class Stepper:
    """One optimizer inside the loop, stepped as Lightning's optimizer wrapper steps it: the
    on_before_optimizer_step hooks (callbacks, then the model), gradient clipping (models Lightning
    optimises automatically), the optimizer's own step, counted in global_step."""

    __slots__ = ("optimizer", "loop")

    def __init__(self, optimizer: torch.optim.Optimizer, loop: StepLoop):
        self.optimizer, self.loop = optimizer, loop

    def step(self, closure=None):
        loop, optimizer = self.loop, self.optimizer
        module, trainer = loop.module, loop.trainer
        for fn in loop.hooks[OPTIMIZER_HOOK]:
            fn(trainer, module, optimizer)
        if loop.module_hooks[OPTIMIZER_HOOK]:
            module.on_before_optimizer_step(optimizer)
        settings = loop.settings
        if loop.clips and trainer is None:  # timing a detached copy: a clip of the same cost
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        elif loop.clips:
            module.configure_gradient_clipping(
                optimizer,
                gradient_clip_val=settings.clip_val,
                gradient_clip_algorithm=settings.clip_algorithm,
            )
        out = optimizer.step() if closure is None else optimizer.step(closure)
        loop.steps += 1
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)


@dataclass
class Logged:
    """The training scalars of one logged step (names without the stage)."""

    j: int  # the step within the call
    step: int  # the logging step (Lightning's logged_step)
    values: dict
    batch_size: int | None


@dataclass
class FiniteCheck:
    j: int
    index: int  # batch_index
    position: int  # batch in the epoch
    names: list
    values: torch.Tensor  # the losses, stacked
    ok: torch.Tensor  # all finite (a 0-d bool on the device)
    diverged: object  # (values {name: float}, iteration, batch in epoch) -> the error to raise


class StepLoop:
    """The state of one call's steps: what the model's properties (batch_index, logging_step) and
    helpers (optimizers, manual_backward, log_terms, guard_finite) answer inside the loop. With
    trainer=None it times a detached copy of the model (nnlab.lean's `auto`): nothing is logged or
    counted."""

    def __init__(self, module, trainer, settings: SeveralSteps, optimizers, n: int):
        self.module, self.trainer, self.settings, self.n = module, trainer, settings, n
        self.steppers = [Stepper(o, self) for o in optimizers]
        self.steps = self.zero_grads = self.schedulers = self.stepped = 0
        self.logs: list[Logged] = []
        self.deferred: list[tuple[int, int, Callable[[], None]]] = []  # (j, logging step, write)
        self.finite: list[FiniteCheck] = []
        self.j = self.index = self.position = self.logged = 0
        self.logging, self.stepping, self.window_start, self.last_stepped = False, True, True, True
        # Lightning's automatic loop asks configure_gradient_clipping before every optimizer step;
        # LightningModule's own does nothing without a clip value
        self.clips = settings.automatic and (
            bool(settings.clip_val) or _module_overrides(module, "configure_gradient_clipping")
        )
        if trainer is None:  # timing
            self.hooks = {h: [] for h in (*STEP_HOOKS, OPTIMIZER_HOOK)}
            self.module_hooks = dict.fromkeys(self.hooks, False)
            self.index0 = self.position0 = self.logged0 = 0
            self.limit = 10**12
            self.log_every, self.should_stop, self.epoch = 0, False, 0
            return
        self.hooks = {h: _callback_hooks(trainer, h) for h in (*STEP_HOOKS, OPTIMIZER_HOOK)}
        self.module_hooks = {h: _module_overrides(module, h) for h in self.hooks}
        # Lightning has counted the chunk's batches already (nnlab.lean's StepPlan.served)
        self.index0 = compat.batch_index(trainer) - (n - 1)
        self.position0 = compat.batch_in_epoch(trainer) - (n - 1)
        self.logged0 = compat.logged_step(trainer)
        self.limit = trainer.num_training_batches  # the epoch's batches (limit_train_batches)
        self.log_every = int(trainer.log_every_n_steps or 0)
        self.should_stop = bool(trainer.should_stop)
        self.epoch = trainer.current_epoch

    # -- one step ---------------------------------------------------------------------------------
    def begin(self, j: int) -> None:
        self.j, self.index, self.position = j, self.index0 + j, self.position0 + j
        k = self.settings.accumulate
        self.window_start = self.position % k == 0
        self.stepping = (self.position + 1) % k == 0 or self.position + 1 >= self.limit
        self.logged = self.logged0 + self.stepped
        every = self.log_every
        self.logging = every > 0 and ((self.logged + 1) % every == 0 or self.should_stop)

    def end(self) -> None:
        self.stepped += self.stepping
        self.last_stepped = self.stepping

    # -- what train_batch calls -------------------------------------------------------------------
    def zero_grad(self, stepper: Stepper) -> None:
        """Lightning's zero_grad of an automatic step: the hooks, then optimizer_zero_grad."""
        module, optimizer = self.module, stepper.optimizer
        for fn in self.hooks["on_before_zero_grad"]:
            fn(self.trainer, module, optimizer)
        if self.module_hooks["on_before_zero_grad"]:
            module.on_before_zero_grad(optimizer)
        module.optimizer_zero_grad(self.epoch, self.position, optimizer)
        self.zero_grads += 1

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """loss.backward() with the backward hooks around it (Lightning's single-device path)."""
        module, trainer = self.module, self.trainer
        for fn in self.hooks["on_before_backward"]:
            fn(trainer, module, loss)
        if self.module_hooks["on_before_backward"]:
            module.on_before_backward(loss)
        loss.backward(*args, **kwargs)
        for fn in self.hooks["on_after_backward"]:
            fn(trainer, module)
        if self.module_hooks["on_after_backward"]:
            module.on_after_backward()

    def step_schedulers(self) -> None:
        """Schedulers after an optimizer step, as Lightning's automatic loop steps them: interval
        "step" every `frequency` batches of the epoch; interval "epoch" after its last batch."""
        trainer = self.trainer
        if trainer is None:
            return
        configs = trainer.lr_scheduler_configs
        if not configs:
            return
        last = self.position + 1 >= self.limit
        for interval, count in (("step", self.position + 1), ("epoch", self.epoch + 1)):
            if interval == "epoch" and not last:
                continue
            for config in configs:
                if config.interval == interval and count % config.frequency == 0:
                    self.module.lr_scheduler_step(config.scheduler, None)
                    self.schedulers += 1

    def record(self, terms: dict, batch_size: int | None) -> None:
        """log_terms("train", ...) inside the loop: kept on the device until the call ends."""
        if self.trainer is None:
            return
        values = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in terms.items()}
        if self.logs and self.logs[-1].step == self.logged:
            self.logs[-1].values.update(values)  # more terms of the same step (e.g. grad_norm)
        else:
            self.logs.append(Logged(self.j, self.logged, values, batch_size))

    def defer(self, write: Callable[[], None]) -> None:
        """A callback's write of this step (e.g. the learning rates it logs on a logged step):
        run after the call, before the step's training scalars are written, as Lightning's
        on_train_batch_start comes before them. Its values must be read already (no tensors)."""
        if self.trainer is not None:
            self.deferred.append((self.j, self.logged, write))

    def check_finite(self, losses: dict, diverged) -> None:
        if self.trainer is None:
            return
        stacked = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        ok = torch.isfinite(stacked).all()
        self.finite.append(
            FiniteCheck(self.j, self.index, self.position, list(losses), stacked, ok, diverged)
        )

    # -- after the call ---------------------------------------------------------------------------
    def count(self, n_run: int) -> None:
        """Lightning's counters after `n_run` steps of the call: optimizer steps (global_step),
        the logging step (Lightning adds 1 itself), whether this was the loader's last batch."""
        trainer = self.trainer
        compat.count_optimizer_steps(
            trainer,
            self.steps,
            self.zero_grads,
            self.schedulers,
            automatic=self.settings.automatic,
        )
        compat.add_batches_that_stepped(trainer, self.stepped - (1 if self.last_stepped else 0))
        if self.loader_length is not None and n_run == self.n:  # a chunk: was it the last batch?
            compat.set_last_batch(trainer, self.position0 + self.n >= self.loader_length)

    loader_length: int | None = None  # a chunk's loader's length (run_chunk sets it)

    def report(self) -> None:
        """One host read for the whole call: the logged scalars and the NaN flags. Writes the
        scalars of each logged step at its step, puts the last ones in the progress bar and
        callback_metrics, and raises the model's error at the first non-finite step."""
        tensors: list[torch.Tensor] = []
        for entry in self.logs:
            for key, value in entry.values.items():
                if isinstance(value, Metric):
                    entry.values[key] = value = value.compute()
                if isinstance(value, torch.Tensor):
                    tensors.append(value.float().reshape(()))
        for check in self.finite:
            tensors.append(check.ok.float())
            tensors.extend(check.values)
        numbers = iter(torch.stack(tensors).tolist() if tensors else [])
        scalars = []
        for entry in self.logs:
            scalars.append(
                {
                    f"train/{k}": next(numbers) if isinstance(v, torch.Tensor) else _as_logged(v)
                    for k, v in entry.values.items()
                }
            )
        bad = None
        for check in self.finite:
            ok = next(numbers)
            values = {name: next(numbers) for name in check.names}
            if not ok and bad is None:
                bad = (check, values)
        stop = bad[0].j if bad is not None else self.n
        written = [(e, s) for e, s in zip(self.logs, scalars) if e.j < stop]
        # in step order: a step's deferred writes (its batch start, also on the bad step), then
        # its training scalars
        writes = [(step, 0, i, fn) for i, (j, step, fn) in enumerate(self.deferred) if j <= stop]
        for i, (entry, values) in enumerate(written):
            writes.append((entry.step, 1, i, _writer(self.trainer, values, entry.step)))
        for *_, write in sorted(writes, key=lambda w: w[:3]):
            write()
        if written:  # the progress bar and callback_metrics, as after a logged step
            entry = written[-1][0]
            for key, value in entry.values.items():
                self.module.log_terms_to_lightning({key: value}, entry.batch_size)
        if bad is not None:
            check, values = bad
            raise check.diverged(values, check.index, check.position)


def _writer(trainer, values: dict, step: int) -> Callable[[], None]:
    return lambda: compat.log_step_metrics(trainer, values, step)


def _as_logged(number) -> float:
    """A Python number as Lightning's self.log keeps it: a tensor of the default dtype."""
    return torch.tensor(number, dtype=torch.get_default_dtype()).item()


def run_chunk(module, batch):
    """NNLabModule.training_step with several steps per call: one optimizer step per batch of the
    Chunk (a plain batch, from a loader that does not chunk, is one step)."""
    trainer = compat.trainer_of(module)
    chunk = batch if isinstance(batch, Chunk) else None
    n = len(chunk) if chunk is not None else 1
    loop = StepLoop(module, trainer, module.several, trainer.optimizers, n)
    if chunk is not None:
        loop.loader_length = len(chunk.source)
        prepare = compat.batch_preparer(trainer)
    mark = module.several.mark_cudagraph_steps
    object.__setattr__(module, "_loop", loop)
    done = 0
    try:
        for j in range(n):
            loop.begin(j)
            if mark:
                torch.compiler.cudagraph_mark_step_begin()
            module.train_batch(prepare(chunk.batch(j)) if chunk is not None else batch)
            loop.end()
            done += 1
    finally:
        object.__setattr__(module, "_loop", None)
        loop.count(done)
    loop.report()


def time_steps(module, batches: list, optimizers: list, settings: SeveralSteps) -> list[float]:
    """Seconds per step of `module.train_batch` over `batches` (a detached copy of the model: the
    timing of nnlab.lean's `auto`). The device is synchronised around each step."""
    import time

    loop = StepLoop(module, None, settings, optimizers, len(batches))
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    object.__setattr__(module, "_loop", loop)
    try:
        for j, batch in enumerate(batches):
            loop.begin(j)
            sync()
            t0 = time.perf_counter()
            module.train_batch(batch)
            sync()
            times.append(time.perf_counter() - t0)
            loop.end()
    finally:
        object.__setattr__(module, "_loop", None)
    return times
