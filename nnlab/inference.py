"""A trained model back from a run folder or a .ckpt, safely: for `nnlab eval`, `nnlab sample` and
the classifier behind FID.

- `load_checkpoint`: torch.load(weights_only=True) (no code runs from a checkpoint) with one
  CheckpointError for a file that is missing, not a checkpoint, truncated or carries objects.
- `check_fits`: a CheckpointError when a checkpoint belongs to another model or configuration.
- `load_for_inference`: model + datamodule of a run folder or a .ckpt. Both are rebuilt from the
  packaged configs: a run folder contributes its recorded overrides (checked by nnlab.trust), a
  bare checkpoint its hyper-parameters as plain data; every _target_ is then checked against the
  packaged allowlist before anything is built.
- `load_weights`: one model class from a run folder or .ckpt (the FID classifier).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from nnlab.errors import CheckpointError, ConfigError, check_choice, unwrap_instantiation
from nnlab.run_folder import (
    group_options,
    is_run_dir,
    pick_checkpoint,
    read_recorded_overrides,
    run_dir_of,
)
from nnlab.trust import (
    bounded_text,
    check_config,
    check_optimizer_classes,
    plain_hparams,
)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True) on the CPU, with one clear CheckpointError for every
    failure."""
    import pickle

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: expected a .ckpt file "
            "written by nnlab train (look in <run folder>/checkpoints/), or pass the run folder."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text or "not an allowed global" in text:
            found = next(
                (
                    line.strip()
                    for line in text.splitlines()
                    if "GLOBAL" in line or "Unsupported global" in line
                ),
                "",
            )
            raise CheckpointError(
                f"Refusing to load {path}: it carries Python objects besides tensors and plain "
                f"data ({found[:200]}). nnlab loads checkpoints with "
                "torch.load(weights_only=True), so a checkpoint can never run code; this file "
                "was not written by nnlab train or "
                "was tampered with. Do not load it with weights_only=False unless you trust its "
                "source completely."
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is not a PyTorch checkpoint (it could not "
            f"be unpickled: {text.splitlines()[-1][:200] if text else 'no detail'}). Pass a .ckpt "
            "file written by nnlab train, or a run folder."
        ) from None
    except Exception as err:  # noqa: BLE001 - zip, storage and unpickler errors of a damaged file
        first = f"{type(err).__name__}: " + (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is truncated or not a checkpoint at all "
            f"({first}). If a run was killed while writing it, use another checkpoint of the run "
            "(checkpoints/last.ckpt is written atomically), or train again."
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a training checkpoint (it holds no model "
            "state_dict). Pass a .ckpt file written by nnlab train, or a run folder."
        )
    return ckpt


def _another_model(path, saved: str, wanted: str) -> CheckpointError:
    return CheckpointError(
        f"{path} belongs to another model: it holds a '{saved}' model, not {wanted}. Pass a "
        f"checkpoint (or the run folder) of a {wanted} run."
    )


def check_fits(ckpt: dict[str, Any], model, path: str | Path) -> None:
    """A CheckpointError when the checkpoint was written by another model or configuration."""
    saved = (ckpt.get("hyper_parameters") or {}).get("name")
    name = getattr(model, "hparams", {}).get("name")
    if saved and name and saved != name:
        raise _another_model(path, saved, f"a '{name}' model (pick model={saved} for it)")
    state, own = ckpt["state_dict"], model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        k
        for k in own
        if k in state
        and (not hasattr(state[k], "shape") or tuple(state[k].shape) != tuple(own[k].shape))
    ]
    if missing or unexpected or wrong:
        if wrong:
            theirs = list(getattr(state[wrong[0]], "shape", ["not a tensor"]))
            detail = (
                f"{wrong[0]} has shape {theirs} in the checkpoint but "
                f"{list(own[wrong[0]].shape)} in the model"
            )
        else:
            detail = (
                f"{len(missing)} weights missing (e.g. {missing[:1]}), {len(unexpected)} "
                f"unexpected (e.g. {unexpected[:1]})"
            )
        raise CheckpointError(
            f"{path} does not fit the model '{name}' built from the config: {detail}. The "
            "checkpoint belongs to another model or another configuration (e.g. latent_dim, "
            "hidden_dims or the dataset's image shape); use the run folder it came from, so its "
            "own config is used."
        )


# -- configs: the packaged ones, with a run's values as data ---------------------------------------
def compose(overrides: list[str]):
    """The packaged `train` config composed with these (already checked) overrides (composed once
    per process: `nnlab sample` checks its options against the run's config before torch, then
    loads the model with it)."""
    return _compose(tuple(overrides))


@lru_cache(maxsize=8)
def _compose(overrides: tuple[str, ...]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="nnlab.configs", version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(
            f"The config of this run cannot be composed from nnlab's packaged configs: "
            f"{str(err).strip().splitlines()[0][:300]}. Fix the override it names."
        ) from None
    finally:
        GlobalHydra.instance().clear()


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _resolved(cfg, key: str, source: str) -> Any:
    from omegaconf import Container, OmegaConf

    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        return (
            OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
        )
    except Exception as err:  # noqa: BLE001 - interpolation errors of a damaged config
        raise ConfigError(f"{key} of {source} cannot be resolved: {err}") from None


def _merge(base: Any, data: Any) -> Any:
    if isinstance(base, dict) and isinstance(data, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in data.items()}}
    return data


def _origin_cwd(run: Path) -> str | None:
    """Where the run was started (.hydra/hydra.yaml): relative data folders are relative to it."""
    import yaml

    try:
        hydra_cfg = yaml.safe_load(bounded_text(run / ".hydra" / "hydra.yaml"))
        cwd = hydra_cfg["hydra"]["runtime"]["cwd"]
    except Exception:  # noqa: BLE001 - absent or damaged: data folders stay as written
        return None
    return cwd if isinstance(cwd, str) else None


def _run_overrides(run: Path) -> list[str]:
    """The run's recorded overrides; without .hydra/overrides.yaml, its model and dataset names."""
    overrides = read_recorded_overrides(run)
    if overrides or (run / ".hydra" / "overrides.yaml").is_file():
        return overrides
    import yaml

    try:
        config = yaml.safe_load(bounded_text(run / ".hydra" / "config.yaml"))
        names = {group: str(config[group]["name"]) for group in ("model", "dataset")}
    except Exception:  # noqa: BLE001 - damaged or hand-made
        raise CheckpointError(
            f"{run} has neither .hydra/overrides.yaml nor a readable .hydra/config.yaml naming "
            "its model and dataset: the run folder is damaged. Pass a .ckpt file of the run."
        ) from None
    for group, name in names.items():
        check_choice(f"{group} (in {run / '.hydra' / 'config.yaml'})", name, group_options(group))
    return [f"model={names['model']}", f"dataset={names['dataset']}"]


def _run_configs(run: Path, overrides: dict[str, str]):
    """(the model config the run trained, resolved; the composed config to evaluate with: the
    run's dataset, or the one `overrides` ask for)."""
    source = f"the run folder {run}"
    asked = [f"{k}={v}" for k, v in overrides.items()]
    recorded = _run_overrides(run)
    trained = compose(recorded)
    model = _resolved(trained, "model", source)
    switch = "dataset" in overrides
    kept = [
        o
        for o in recorded
        if _key(o) not in overrides and not (switch and _key(o).startswith("dataset"))
    ]
    return model, (compose(kept + asked) if asked else trained)


def run_config(run: Path, overrides: dict[str, str] | None = None) -> tuple[dict, dict]:
    """A run folder's model and dataset configs as plain resolved data, torch-free (nnlab eval
    and nnlab sample check their options against them before importing torch)."""
    overrides = dict(overrides or {})
    if "dataset" in overrides:
        check_choice("dataset", overrides["dataset"], group_options("dataset"))
    model, cfg = _run_configs(run, overrides)
    return model, _resolved(cfg, "dataset", f"the run folder {run}")


def inference_config(
    run: Path | None, ckpt: dict, ckpt_path: Path, overrides: dict[str, str]
) -> tuple[dict, dict, dict]:
    """(model config, dataset config, run settings) for evaluating a checkpoint, as plain resolved
    data that passed nnlab.trust. overrides: dataset=<name> and dataset.KEY=VALUE."""
    asked = [f"{k}={v}" for k, v in overrides.items()]
    for key in overrides:
        if key != "dataset" and not key.startswith("dataset."):
            raise ConfigError(f"Only dataset=NAME and dataset.KEY=VALUE can change, not {key}.")
    if "dataset" in overrides:
        check_choice("dataset", overrides["dataset"], group_options("dataset"))
    if run is not None:
        source = f"the run folder {run}"
        model, cfg = _run_configs(run, overrides)
        origin = _origin_cwd(run)
    else:
        source = f"the checkpoint {ckpt_path}"
        hp = plain_hparams(ckpt.get("hyper_parameters"), source)
        meta = ckpt.get("nnlab") if isinstance(ckpt.get("nnlab"), dict) else {}
        name = hp.get("name") or meta.get("model")
        if not isinstance(name, str) or not name:
            raise CheckpointError(
                f"{ckpt_path} does not say which model wrote it (no hyper-parameters). Pass its "
                "run folder."
            )
        check_choice(f"the model of {ckpt_path}", name, group_options("model"), CheckpointError)
        dataset = meta.get("dataset")
        dataset = dataset if dataset in group_options("dataset") else "fashion_mnist"
        base = [f"model={name}", f"dataset={dataset}"]
        packaged = _resolved(compose(base), "model", source)
        known = {k: v for k, v in hp.items() if k in packaged and k != "name"}  # values only
        model = _merge(packaged, known)
        cfg = compose([o for o in base if not (asked and o.startswith("dataset="))] + asked)
        origin = None
    data = _resolved(cfg, "dataset", source)
    if "shape" in data:  # image and sequence datasets (text ones size their nets by vocabulary)
        model["input_shape"] = list(model.get("input_shape") or data["shape"])  # as trained
    settings = {
        "seed": _resolved(cfg, "seed", source),
        "limit_test_batches": _resolved(cfg, "trainer.limit_test_batches", source),
        "origin": origin,
    }
    check_config({"model": model, "dataset": data}, source, CheckpointError)
    check_optimizer_classes(model, source, CheckpointError)
    return model, data, settings


def load_for_inference(target: str, overrides: dict[str, str] | None = None, which: str = "best"):
    """RUN_OR_CKPT -> (model config, model in eval mode with the checkpoint's weights, datamodule,
    ckpt path, run dir or None). overrides: dataset=<name> and dotted dataset keys."""
    from hydra.utils import instantiate

    path = Path(target).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{target} does not exist. Pass a run folder (e.g. outputs/ae/fashion_mnist/<time>) "
            "or a .ckpt file."
        )
    if path.is_dir():
        if not is_run_dir(path):
            raise CheckpointError(
                f"{path} is not an nnlab run folder (it has no .hydra/config.yaml). Pass the "
                "folder of a run, or a .ckpt file."
            )
        run, ckpt_path = path.resolve(), pick_checkpoint(path.resolve(), which)
    else:
        run, ckpt_path = run_dir_of(path), path.resolve()
    ckpt = load_checkpoint(ckpt_path)
    model_cfg, data_cfg, settings = inference_config(run, ckpt, ckpt_path, dict(overrides or {}))
    if "shape" in data_cfg and list(data_cfg["shape"]) != model_cfg["input_shape"]:
        raise ConfigError(
            f"The model was trained on images of shape {model_cfg['input_shape']}, but dataset "
            f"'{data_cfg['name']}' has shape {list(data_cfg['shape'])}. Evaluate it on a dataset "
            "of the same shape."
        )
    data_dir = Path(str(data_cfg["data_dir"])).expanduser()
    if not data_dir.is_absolute() and settings["origin"]:
        data_dir = Path(settings["origin"]) / data_dir  # relative to where the run was started
    datamodule = instantiate(data_cfg, data_dir=str(data_dir), seed=settings["seed"] or 0)
    try:
        model = instantiate(model_cfg, _recursive_=False, _convert_="all")
    except Exception as err:  # noqa: BLE001 - the constructor refused the run's values
        raise unwrap_instantiation(err) from err
    check_fits(ckpt, model, ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return {**model_cfg, **settings}, model, datamodule, ckpt_path, run


def load_weights(path: str | Path, model_class, name: str, what: str):
    """`model_class` (whose config name is `name`) with the weights of a run folder (its best
    checkpoint, else last) or a .ckpt, in eval mode on the CPU; the constructor gets the
    checkpoint's hyper-parameters as plain data."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist. Pass the run folder of a {what} run (outputs/...) or its "
            ".ckpt file."
        )
    ckpt_path = pick_checkpoint(path) if path.is_dir() else path
    ckpt = load_checkpoint(ckpt_path)
    hp = plain_hparams(ckpt.get("hyper_parameters"), str(ckpt_path))
    if hp.get("name", name) != name:
        raise _another_model(ckpt_path, str(hp.get("name")), what)
    try:
        model = model_class(**hp)
    except Exception:  # noqa: BLE001 - another model's arguments
        raise _another_model(ckpt_path, str(hp.get("name", "unknown")), what) from None
    check_fits(ckpt, model, ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def quiet_trainer(accelerator: str = "cpu", **kwargs):
    """A one-device Trainer without logger, checkpoints, progress bar or summary (eval, sample)."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def attach(model, datamodule, accelerator: str = "cpu"):
    """A bare Trainer that gives the model its datamodule (model.datamodule, model.device) outside
    fit/test."""
    from nnlab.lightning_compat import attach_datamodule

    trainer = quiet_trainer(accelerator)
    attach_datamodule(trainer, model, datamodule)
    model.trainer = trainer
    datamodule.prepare_data()
    datamodule.setup("test")
    model.to(trainer.strategy.root_device)
    return trainer
