"""NNLabModule: what every nnlab LightningModule shares - the step contract and the protocol that
training, `nnlab eval`, `nnlab sample` and the figure callbacks rely on.

The step contract: a model defines `step(batch, stage) -> {name: scalar tensor or torchmetrics
Metric}` for stage "train", "val" or "test"; the base's training_step/validation_step/test_step
call it and log every entry as f"{stage}/{name}" by one rule (`log_terms`). Training minimises
terms["objective"] when the step returns one (e.g. a warmed-up KL weight), else terms["loss"].
Manual-optimisation families (GANs, RBMs) write their own training_step and reuse the rest.
`step` takes no batch index: a step that needs a counter reads `self.batch_index`.

The optimiser and the optional scheduler come from the model's YAML as plain specs
({_target_: torch.optim.Adam, lr: 1e-3}) and are built in configure_optimizers. All constructor
arguments are saved as hyper-parameters (plain Python types, so checkpoints load with
torch.load(weights_only=True)).

Training: `train_batch(batch)` is one optimizer step on one batch. With one step per Lightning
step (steps_per_execution=1) Lightning's automatic loop trains the models that return a loss, and
training_step calls train_batch for the manual-optimisation families (GANs, RBMs: they define
train_batch, never training_step). With several (steps_per_execution=N or auto; nnlab/lean.py),
training_step gets a Chunk of batches and nnlab/models/steps.py runs train_batch on each, doing
Lightning's per-step work itself; every family's step() and train_batch gain it unchanged.
Inside that loop `batch_index`, `logging_step`, `optimizers()`, `manual_backward()`,
`log_terms("train", ...)` and `guard_finite()` answer per step; a model that takes more than one
optimizer step on some batches says how many in `optimizer_steps_for_batch`.

Speed: per-step training scalars are logged only on the steps the loggers write (every
trainer.log_every_n_steps, `self.logging_step`): the values of the other steps would be thrown
away by Lightning after costing ~10% of a small model's step on the CPU. `compile: true` compiles
every child net with torch.compile (nn.Module.compile, so checkpoints keep their keys), once: the
forward and backward graphs that each step of the loop runs; `compile: reduce-overhead` also
captures them as CUDA graphs on a GPU (static shapes: the training batches all have one size).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torchmetrics import Metric

from nnlab import lightning_compat as compat
from nnlab.config_check import COMPILE_MODES
from nnlab.errors import ConfigError
from nnlab.models.steps import SeveralSteps, StepLoop, run_chunk

# Adam and AdamW run as one fused kernel over all parameters unless the spec says otherwise
# (fused/foreach): on this CPU a 200k-parameter Adam step took 0.33 ms fused against 1.25 ms with
# torch's per-tensor default
FUSABLE = frozenset({"torch.optim.Adam", "torch.optim.AdamW"})


def build_optimizer(spec: dict, params) -> Any:
    """The optimiser of a plain spec ({_target_: torch.optim.Adam, lr: 1e-3}), fused where torch
    offers it."""
    spec = dict(spec)
    if spec.get("_target_") in FUSABLE and "fused" not in spec and "foreach" not in spec:
        spec["fused"] = True
    return instantiate(spec, params=params)


def compile_mode(value) -> str | None:
    """model.compile as torch.compile's mode (None: not compiled)."""
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ConfigError(
        f"model.compile={value!r} must be true, false or one of torch.compile's modes: "
        f"{', '.join(COMPILE_MODES)} (e.g. model.compile=reduce-overhead for CUDA graphs)."
    )


class DefaultClip:
    """Mixin: clip the gradient norm at the model's own default (its YAML's gradient_clip_val,
    kept as self.default_clip: the lstm's is on, lenet's off); trainer.gradient_clip_val wins
    when set."""

    default_clip = None

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        clip = gradient_clip_val if gradient_clip_val is not None else self.default_clip
        if clip:
            self.clip_gradients(optimizer, clip, gradient_clip_algorithm or "norm")


class NNLabModule(compat.ChunkPassThrough, compat.QuickHookName, pl.LightningModule):
    """The base of every nnlab model. The protocol (what the rest of nnlab may call):

    step(batch, stage)      the loss terms of one batch (see the module docstring)
    sample_grid(n, label, interpolate)
                            one (3, H, W) image in [0, 1] for `nnlab sample`; NotImplementedError
                            where the family has no samples
    sample_text(prompt, temperature, n, seed)
                            text for `nnlab sample RUN prompt=...` (text models: generated,
                            translated)
    extra_metrics           {name: float} computed at test time beyond the logged scalars
                            (e.g. per-class accuracy), merged into metrics.json
    figure hooks            reconstruction_rows(x), sample_images(): what the shared figure
                            callbacks of nnlab/figures draw; None where there is nothing to draw
    datamodule              the trainer's datamodule (its data face), or None outside a trainer
    batch_index, logging_step
                            the training step counter and whether this step is logged
    train_batch(batch)      one optimizer step on one batch (manual families define it)
    """

    n_log_images = 16  # images per figure; models with the option set it from their YAML
    several: SeveralSteps | None = None  # several steps per call (set by nnlab.lean before fit)
    _loop: StepLoop | None = None  # the running call's steps (nnlab/models/steps.py)

    def __init__(
        self,
        name: str,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        monitor: str | None = "val/loss",
        monitor_mode: str = "min",
        input_shape=(1, 28, 28),
        compile: bool | str = False,
    ):
        super().__init__()
        # every constructor argument of the whole class chain, as plain Python types
        self.save_hyperparameters()
        # None for models whose input is not an image (e.g. the ratings of rbm_cf)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        if self.input_shape is not None and len(self.input_shape) not in (1, 3):
            raise ConfigError(
                "input_shape must be [channels, height, width] (images) or [features] "
                f"(sequences), got {list(input_shape)}."
            )
        self.monitor = monitor
        self.compile_mode = compile_mode(compile)
        self._nets_compiled = False
        self.extra_metrics: dict[str, float] = {}

    def configure_model(self) -> None:
        """model.compile: torch.compile each child net in place (once; state_dict keys
        unchanged)."""
        if self.compile_mode and not self._nets_compiled:
            mode = None if self.compile_mode == "default" else self.compile_mode
            for child in self.children():
                child.compile(mode=mode)
            self._nets_compiled = True

    # -- the step contract ---------------------------------------------------------------------
    def step(self, batch, stage: str) -> dict[str, torch.Tensor | Metric]:
        """The terms of one batch for stage "train", "val" or "test": "loss" and whatever else is
        worth logging (scalar tensors, or torchmetrics Metrics updated here)."""
        raise NotImplementedError(f"{type(self).__name__} defines no step(batch, stage)")

    def training_step(self, batch, batch_idx):
        if self.several is not None:  # a Chunk: several optimizer steps (nnlab/models/steps.py)
            return run_chunk(self, batch)
        if not self.automatic_optimization:
            return self.train_batch(batch)
        terms = self.step(batch, "train")
        if self.logging_step:
            self.log_terms("train", terms, len(batch[0]))
        return terms["objective"] if "objective" in terms else terms["loss"]

    def train_batch(self, batch) -> None:
        """One optimizer step on one batch, as Lightning's automatic optimisation takes it:
        zero_grad at the start of an accumulation window, the step's objective (divided by the
        window's length), backward, and at the window's end the optimizer step (hooks and gradient
        clipping inside) and the schedulers. Several steps per call run it for each batch;
        manual-optimisation families override it (with self.optimizers(), self.manual_backward)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(
                f"{type(self).__name__} is optimised by Lightning one step per call; train_batch "
                "runs inside the step loop (steps_per_execution)."
            )
        optimizer = self.optimizers()
        if loop.window_start:
            loop.zero_grad(optimizer)
        terms = self.step(batch, "train")
        if self.logging_step:
            self.log_terms("train", terms, len(batch[0]))
        loss = terms["objective"] if "objective" in terms else terms["loss"]
        k = loop.settings.accumulate
        self.manual_backward(loss / k if k > 1 else loss)
        if loop.stepping:
            optimizer.step()
            loop.step_schedulers()

    def optimizer_steps_for_batch(self, index: int) -> int:
        """How many optimizer steps (trainer.global_step counts) training batch `index` (counted
        over the fit) takes when it steps: 1; the GANs' generator step adds one."""
        return 1

    def guard_finite(self, losses: dict[str, torch.Tensor], diverged) -> None:
        """The NaN guard: stop at the first step whose losses are not all finite, with the error
        `diverged(values, iteration, batch_in_epoch)` returns ({name: float}, batch_index, the
        batch in its epoch). One step per call: checked now (a host sync). Several: the flags stay
        on the device and are read once after the call, before anything is logged or saved of the
        bad step (the steps after it are dropped with the run)."""
        loop = self._loop
        if loop is not None:
            loop.check_finite(losses, diverged)
            return
        stacked = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if bool(torch.isfinite(stacked).all()):
            return
        trainer = compat.trainer_of(self)
        position = compat.batch_in_epoch(trainer) if trainer is not None else 0
        raise diverged(dict(zip(losses, stacked.tolist())), self.batch_index, position)

    def optimizers(self, use_pl_optimizer: bool = True):
        """Lightning's optimizers; inside the step loop, its Steppers (the same shape: one or a
        list)."""
        loop = self._loop
        if loop is None:
            return super().optimizers(use_pl_optimizer)
        steppers = loop.steppers
        return steppers[0] if len(steppers) == 1 else steppers

    def manual_backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Lightning's manual_backward; inside the step loop on one device, loss.backward() with
        the same hooks around it."""
        loop = self._loop
        if loop is not None and loop.settings.fast_backward:
            loop.backward(loss, *args, **kwargs)
        else:
            super().manual_backward(loss, *args, **kwargs)

    def validation_step(self, batch, batch_idx):
        self.log_terms("val", self.step(batch, "val"), len(batch[0]))

    def test_step(self, batch, batch_idx):
        self.log_terms("test", self.step(batch, "test"), len(batch[0]))

    def log_terms(self, stage: str, terms: dict, batch_size: int | None = None) -> None:
        """The one logging rule: each term as f"{stage}/{name}"; training terms per step (call it on
        the logged steps only: `if self.logging_step`), val/test terms per epoch, averaged over the
        batches and the DDP ranks (Metrics synchronise themselves); the loss and the monitored
        metric in the progress bar."""
        train = stage == "train"
        if train and self._loop is not None:  # inside the step loop: written after the call
            self._loop.record(terms, batch_size)
            return
        for key, value in terms.items():
            name = f"{stage}/{key}"
            self.log(
                name,
                value,
                on_step=train,
                on_epoch=not train,
                prog_bar=key == "loss" or name == self.monitor,
                batch_size=batch_size,
                sync_dist=not train and not isinstance(value, Metric),
            )

    def log_terms_to_lightning(self, terms: dict, batch_size: int | None = None) -> None:
        """Training terms into the progress bar and callback_metrics only (the step loop has
        written them to the loggers at their own steps)."""
        for key, value in terms.items():
            name = f"train/{key}"
            self.log(
                name,
                value,
                on_step=True,
                on_epoch=False,
                prog_bar=key == "loss" or name == self.monitor,
                logger=False,
                batch_size=batch_size,
            )

    @property
    def logging_step(self) -> bool:
        """True on the training steps whose per-step scalars the loggers write (every
        trainer.log_every_n_steps): compute and log a per-step statistic only then."""
        loop = self._loop
        if loop is not None:
            return loop.logging
        trainer = compat.trainer_of(self)
        return trainer is None or compat.should_update_logs(trainer)

    @property
    def batch_index(self) -> int:
        """The training batch being processed, counted from 0 over the whole fit (a resumed fit
        continues the count); 0 outside a trainer."""
        loop = self._loop
        if loop is not None:
            return loop.index
        trainer = compat.trainer_of(self)
        return 0 if trainer is None else compat.batch_index(trainer)

    # -- the rest of the protocol --------------------------------------------------------------
    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False) -> torch.Tensor:
        """One (3, H, W) image in [0, 1] for `nnlab sample`."""
        raise NotImplementedError(
            f"model {self.hparams.name} ({type(self).__name__}) has no samples to draw"
        )

    def sample_text(
        self, prompt: str = "", temperature: float | None = None, n: int | None = None, seed=0
    ) -> str:
        """`nnlab sample RUN [prompt=...]` for a text model (None: the model's default)."""
        raise NotImplementedError(
            f"model {self.hparams.name} ({type(self).__name__}) does not generate text"
        )

    def reconstruction_rows(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Figure hook: the rows of the `reconstructions` grid for images x (inputs first)."""
        return None

    def sample_images(self) -> torch.Tensor | None:
        """Figure hook: the images of the `samples` grid, from the same noise every epoch."""
        return None

    # -- optimisers ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        spec = dict(self.hparams.get("optimizer") or {"_target_": "torch.optim.Adam", "lr": 1e-3})
        optimizer = build_optimizer(spec, self.parameters())
        sched = self.hparams.get("scheduler")
        if not sched:
            return optimizer
        scheduler, interval = self.build_scheduler(sched, optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }

    def build_scheduler(self, spec: dict, optimizer, interval: str = "epoch") -> tuple[Any, str]:
        """(the scheduler of a plain spec for this optimiser, its interval: "epoch" or "step").
        total_steps / total_iters: auto (OneCycleLR, LinearLR & co.) become the fit's batches."""
        spec = dict(spec)
        interval = spec.pop("interval", interval)
        for key in ("total_steps", "total_iters"):
            if spec.get(key) == "auto":
                spec[key] = self.optimizer_steps_of_fit()
        return instantiate(spec, optimizer=optimizer), interval

    def optimizer_steps_of_fit(self) -> int:
        """trainer.estimated_stepping_batches, with the gradient accumulation that the step loop
        does in place of Lightning's (nnlab.lean moves it off the trainer)."""
        trainer = self.trainer
        steps = trainer.estimated_stepping_batches
        k = self.several.accumulate if self.several is not None else 1
        if k == 1 or trainer.max_epochs == -1 or trainer.num_training_batches == float("inf"):
            return int(steps)
        steps = -(-int(trainer.num_training_batches) // k) * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    @property
    def datamodule(self):
        trainer = compat.trainer_of(self)
        return getattr(trainer, "datamodule", None) if trainer is not None else None
