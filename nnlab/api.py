"""nnlab from Python (a notebook, a script): train, load and compare runs.

    import nnlab

    run = nnlab.train("model=vae", "trainer.max_epochs=1")  # the same run as `nnlab train ...`
    run.metrics["test/elbo"], run.config["model"]["latent_dim"], run.status
    run.sample(16)                    # a PIL image (Jupyter shows it); out="x.png" also writes it
    run.eval(dataset="mnist")         # the metrics, also recorded in metrics.json (eval.mnist)
    run.model                         # the trained LightningModule, in eval mode, on the CPU

    run = nnlab.load("outputs/vae/fashion_mnist/<time>")   # any run folder
    table = nnlab.runs("outputs")     # one record per run, as `nnlab runs --json` prints them
    table.to_pandas()                 # a pandas DataFrame, one column per key and metric

`nnlab.train` goes through the same steps as the command (its checks, Hydra's run folder and
train.log, the run record), but errors are raised as exceptions (nnlab.errors.ConfigError,
DataError...) instead of ending the process. Nothing here imports torch until it is needed:
`import nnlab` stays instant.
"""

from __future__ import annotations

import logging
import sys
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

from nnlab.errors import CheckpointError, ConfigError, NNLabError


def train(*overrides: str, callbacks=()) -> Run:
    """Train and test one configuration, like `nnlab train <overrides>`; returns its Run.

    overrides: Hydra overrides as on the command line ("model=vae", "trainer.max_epochs=1",
    "resume=outputs/vae/fashion_mnist/<time>"). callbacks: extra Lightning callbacks (objects).
    A sweep (-m, hparams_search) is a loop of nnlab.train calls here."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from nnlab import train as recipe
    from nnlab.run_folder import claim_run_folder

    argv = _train_argv(overrides)
    lock = claim_run_folder(argv)
    folder: list[Path] = []
    failed: list[BaseException] = []

    def task(cfg) -> None:
        folder.append(Path(HydraConfig.get().runtime.output_dir))
        try:
            recipe.train(cfg, folder[0], callbacks)
        except recipe.Interrupted:
            failed.append(KeyboardInterrupt())
        except Exception as err:  # noqa: BLE001 - raised below, after Hydra's job has ended
            failed.append(err)

    GlobalHydra.instance().clear()
    try:
        _hydra_run(argv, task)
    finally:
        GlobalHydra.instance().clear()
        _close_run_logs()
        if lock is not None:
            lock.release()
    if failed:
        raise failed[0]
    return Run(folder[0])


def _train_argv(overrides) -> list[str]:
    """`nnlab train`'s argv for the overrides, checked as the command checks it (one
    configuration: no sweep, no flags) and prepared as it prepares it (resume=...)."""
    from nnlab.config_check import check_group_choices, check_override_keys
    from nnlab.run_folder import prepare_argv

    args = [str(o) for o in overrides]
    if any(a in ("-m", "--multirun") or a.startswith(("hparams_search=", "--")) for a in args):
        raise ConfigError(
            "nnlab.train runs one configuration; a sweep from Python is a loop, e.g. "
            "[nnlab.train('model.latent_dim=%d' % d) for d in (8, 16, 32)], and `nnlab train -m` "
            "or hparams_search=... are for the command line. Command-line flags (--cfg, -m) do "
            "not apply."
        )
    argv = prepare_argv(["nnlab train", *args])
    check_group_choices(argv[1:])
    check_override_keys(argv[1:])
    return argv


def _hydra_run(argv: list[str], task) -> None:
    """Hydra's job for the packaged train config and argv's overrides (its run folder, its
    train.log), calling task(cfg) in it."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module("nnlab.configs", version_base="1.3", job_name="train"):
        hydra = GlobalHydra.instance().hydra
        hydra.run(
            config_name="train",
            task_function=task,
            overrides=argv[1:],
            with_log_configuration=True,
        )


def _close_run_logs() -> None:
    """Hydra sends the root logger to the run's train.log: after the run, stop writing there."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def load(run_dir: str | Path) -> Run:
    """A trained run from its folder (nothing is loaded until a property asks for it)."""
    return Run(run_dir)


class Run:
    """One run folder: its record (status, metrics, wall time), its config, its trained model and
    what `nnlab sample` and `nnlab eval` do with it. The folder is data: the model is rebuilt
    from the packaged configs and loaded with torch.load(weights_only=True) (see the README)."""

    def __init__(self, path: str | Path):
        from nnlab.run_folder import is_run_dir

        self.path = Path(path).expanduser().resolve()
        if not is_run_dir(self.path):
            raise CheckpointError(
                f"{path} is not an nnlab run folder (no .hydra/config.yaml): pass the folder of a "
                "run, e.g. outputs/ae/fashion_mnist/<time>."
            )
        self._loaded: tuple | None = None

    def __repr__(self) -> str:
        from nnlab.runs import key_metric

        record = self.record
        metric = key_metric(self.metrics)
        shown = f", {metric}={self.metrics[metric]:.4g}" if metric else ""
        return (
            f"Run('{self.path}': {record.get('model')} on {record.get('dataset')}, "
            f"{self.status}{shown})"
        )

    @property
    def record(self) -> dict[str, Any]:
        """metrics.json as it is now (status, metrics, epochs, wall_time_s, eval, resumes)."""
        from nnlab.run_record import RunRecord

        return RunRecord.read(self.path) or {}

    @property
    def status(self) -> str:
        from nnlab.runs import live_status

        record = self.record
        return live_status(record) if record else "unreadable"

    @property
    def metrics(self) -> dict[str, float]:
        """The final metrics (test/..., the last val/...), as in metrics.json."""
        metrics = self.record.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}

    @property
    def config(self) -> dict[str, Any]:
        """The composed config the run was started with (.hydra/config.yaml), as plain data."""
        import yaml

        from nnlab.trust import bounded_text

        data = yaml.safe_load(bounded_text(self.path / ".hydra" / "config.yaml"))
        return data if isinstance(data, dict) else {}

    def _load(self):
        if self._loaded is None:
            from nnlab.inference import attach, load_for_inference
            from nnlab.report import quiet_lightning

            quiet_lightning()
            _, model, datamodule, _, _ = load_for_inference(str(self.path))
            attach(model, datamodule)
            self._loaded = (model, datamodule)
        return self._loaded

    @property
    def model(self):
        """The trained model (best checkpoint) in eval mode on the CPU, its datamodule attached."""
        return self._load()[0]

    @property
    def datamodule(self):
        return self._load()[1]

    def sample(
        self,
        n: int = 64,
        label: int | None = None,
        interpolate: bool = False,
        seed: int = 0,
        nrow: int | None = None,
        scale: int | None = None,
        out: str | Path | None = None,
    ):
        """The picture `nnlab sample` draws, as a PIL image (written to `out` if given)."""
        from nnlab.evaluate import Request
        from nnlab.sample import OPTIONS, USAGE, _out_path, check_label, draw, picture

        request = Request([str(self.path), f"seed={seed}"], USAGE, OPTIONS)
        label = check_label("" if label is None else str(label), request.model, request.dataset)
        path = _out_path(str(out)) if out is not None else None
        image, _ = draw(request, int(n), label, bool(interpolate), nrow)
        shown = picture(image, scale)
        if path is not None:
            shown.save(path)
        return shown

    def eval(self, dataset: str | None = None, checkpoint: str = "best", **keys) -> dict:
        """Test the run again, like `nnlab eval` (recorded in metrics.json under eval.<dataset>);
        keys: dataset keys (eval_batch_size=256) and the command's options (threads=1)."""
        from nnlab.evaluate import evaluate

        argv = [str(self.path), f"checkpoint={checkpoint}"]
        argv += [f"dataset={dataset}"] if dataset else []
        for key, value in keys.items():
            common = key in ("accelerator", "threads", "seed")
            argv.append(f"{key if common else 'dataset.' + key}={value}")
        return evaluate(argv)


class Records(list):
    """`nnlab.runs(...)`: one dict per run (as `nnlab runs --json`), and as a DataFrame."""

    def to_pandas(self):
        """A pandas DataFrame: name, path, model, dataset, status, epochs, wall_time_s, the
        overrides that differ between the runs and every metric, one column each."""
        try:
            import pandas as pd
        except ImportError:
            raise NNLabError(
                "Records.to_pandas() needs pandas, which nnlab does not install: `pip install "
                "pandas` (the records themselves are plain dicts: nnlab.runs(...) works without)."
            ) from None
        keep = ("name", "path", "model", "dataset", "status", "epochs", "wall_time_s", "error")
        rows = []
        for run in self:
            row = {k: run.get(k) for k in keep}
            row.update(run.get("differs") or {})
            row.update(run.get("metrics") or {})
            for dataset, entry in (run.get("eval") or {}).items():
                row.update({f"eval/{dataset}/{k}": v for k, v in entry["metrics"].items()})
            rows.append(row)
        return pd.DataFrame(rows)


def runs(*folders: str | Path, filter: list[str] | None = None, sort: str | None = None) -> Records:
    """The runs under the folders (default: outputs), as `nnlab runs --json` lists them:
    filter=["model=vae", "status=finished"], sort="test/mse"."""
    from nnlab import runs as table

    roots = [Path(f) for f in (folders or ("outputs",))]
    found = [
        table.read_run(run_dir, root)
        for root in roots
        if root.is_dir()
        for run_dir in table.find_runs(root)
    ]
    for item in filter or []:
        table.check_key(item.partition("=")[0], found, "filter")
    found = [run for run in found if table.matches(run, list(filter or []))]
    if sort:
        table.check_key(sort, found, "sort")
        found.sort(key=table._sort_key(sort))
    table.differing_overrides(found)
    return Records({k: v for k, v in run.items() if k != "config"} for run in found)


class CallableModule(ModuleType):
    """A submodule that is also one of the API's functions: `nnlab.train(...)` and
    `nnlab.runs(...)` call nnlab.api.train/runs, while `nnlab.train.main` (the command) and
    `python -m nnlab.train` stay what they are."""

    def __call__(self, *args, **kwargs):
        api = import_module("nnlab.api")
        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def callable_module(name: str) -> None:
    """Make the module `name` (nnlab.train, nnlab.runs) callable as the API function of its name."""
    sys.modules[name].__class__ = CallableModule
