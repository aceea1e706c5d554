"""What a config may call: the rule that keeps a run folder or a checkpoint from choosing code.

Hydra builds objects from `_target_` strings, so whoever writes a config chooses what Python
calls. nnlab's configs come from three places: the packaged YAML (nnlab/configs, trusted: it is
the code), the command line (trusted: the user typed it), and files read back from a run folder or
a checkpoint (.hydra/overrides.yaml, metrics.json, hyper-parameters: data, never trusted).

- `check_config`: every `_target_` of a composed, resolved config must be one that the packaged
  YAML names at the same place (model, dataset, trainer, callbacks.*, logger.*), compared exactly
  after interpolation; model optimisers and schedulers may also name any `torch.optim.<Name>`
  that is an Optimizer (`torch.optim.lr_scheduler.<Name>` that is a scheduler), checked on the
  resolved class by `check_optimizer_classes`. Hydra's other `_`-keys and nested targets elsewhere
  are refused. The allowlist is read from the YAML files at run time: a new family's
  configs/model/<name>.yaml allows its model class, with no edit here.
- `sanitize_overrides`: recorded overrides are replayed only as plain `key=value` data and
  choices of packaged group options; no hydra.*, no `_`-keys, no interpolations, no paths to write.
- `plain_hparams`: checkpoint hyper-parameters as data: `_`-keys dropped, interpolations refused.
- `bounded_text`: a file of a run folder, read only if it is a regular file of bounded size.
"""

from __future__ import annotations

import os
import re
import stat
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

from nnlab.errors import CheckpointError, ConfigError

MAX_TEXT_BYTES = 4 << 20  # config.yaml, overrides.yaml, metrics.json: a few kB in practice
# Hydra's instantiate() keys besides _target_: never needed by nnlab's configs, refused everywhere
HYDRA_KEYS = frozenset({"_args_", "_partial_", "_recursive_", "_convert_"})
OPTIMIZER = re.compile(r"torch\.optim\.[A-Z][A-Za-z0-9_]*")
SCHEDULER = re.compile(r"torch\.optim\.lr_scheduler\.[A-Z][A-Za-z0-9_]*")
# keys whose value is a place to write: never replayed from a run folder
WRITE_PATH_KEYS = frozenset({"dirpath", "save_dir", "default_root_dir", "filename", "log_dir"})
README = "see 'What nnlab trusts' in the README"


def bounded_text(path: str | Path, limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a regular file of at most `limit` bytes. A FIFO, a device or a huge file raises
    ValueError at once (never blocks, never reads more than limit + 1 bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{path} is larger than {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


# -- the allowlist: the packaged configs' own _target_s --------------------------------------------
def _slot(path: tuple[str, ...]) -> str:
    """Where a _target_ sits: callbacks and loggers are named freely, so their names count as *."""
    if len(path) >= 2 and path[0] in ("callbacks", "logger"):
        path = (path[0], "*", *path[2:])
    return ".".join(path)


def _is_optimizer_slot(slot: str) -> bool:
    return slot.startswith("model.") and slot.count(".") == 1 and slot.endswith("optimizer")


def _is_scheduler_slot(slot: str) -> bool:
    return slot.startswith("model.") and slot.count(".") == 1 and slot.endswith("scheduler")


def _yaml_files(folder, parts: tuple[str, ...] = ()):
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            yield from _yaml_files(entry, (*parts, entry.name))
        elif entry.name.endswith(".yaml"):
            yield parts, entry


@cache
def packaged_targets() -> dict[str, frozenset[str]]:
    """slot -> the _target_ strings the packaged YAML files put there (Hydra's own hydra/ group
    and hydra: keys left out: Hydra builds those before nnlab runs, from trusted input only)."""
    from importlib.resources import files

    import yaml

    found: dict[str, set[str]] = defaultdict(set)
    for group, entry in _yaml_files(files("nnlab.configs")):
        if group[:1] == ("hydra",):
            continue
        text = entry.read_text()
        header = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
        package = header.group(1) if header else "_group_"
        prefix = (
            ()
            if package == "_global_" or not group
            else group
            if package == "_group_"
            else tuple(package.split("."))
        )

        def walk(node: Any, path: tuple[str, ...]) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "_target_" and isinstance(value, str):
                        found[_slot(path)].add(value)
                    elif not (path == () and key in ("defaults", "hydra")):
                        walk(value, (*path, str(key)))

        walk(yaml.safe_load(text), prefix)
    return {slot: frozenset(targets) for slot, targets in found.items()}


def allowed_targets(slot: str) -> frozenset[str]:
    return packaged_targets().get(slot, frozenset())


def _target_allowed(slot: str, target: Any) -> bool:
    if not isinstance(target, str):
        return False
    if target in allowed_targets(slot):
        return True
    if _is_optimizer_slot(slot):
        return OPTIMIZER.fullmatch(target) is not None
    if _is_scheduler_slot(slot):
        return SCHEDULER.fullmatch(target) is not None
    return False


def check_config(config: dict, source: str = "the config", error=ConfigError) -> None:
    """Refuse any _target_ the rule above does not allow, Hydra's other `_`-keys, and strings
    that would still be interpolated. `config`: a resolved plain container (its `hydra` left out).
    """

    def refuse(path: tuple[str, ...], why: str) -> None:
        raise error(
            f"{source} sets {'.'.join(path)}: {why}. A config may only name the classes that "
            f"nnlab's packaged configs name at that place ({README}); refusing to build it."
        )

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                key = str(key)
                if key == "_target_":
                    slot = _slot(path)
                    if not _target_allowed(slot, value):
                        known = sorted(allowed_targets(slot))
                        if _is_optimizer_slot(slot):
                            known.append("torch.optim.<an Optimizer>")
                        if _is_scheduler_slot(slot):
                            known.append("torch.optim.lr_scheduler.<a scheduler>")
                        refuse(
                            (*path, key),
                            f"{str(value)[:200]!r} is not allowed there (allowed: "
                            f"{', '.join(known) or 'no _target_ at all'})",
                        )
                elif key in HYDRA_KEYS:
                    refuse((*path, key), "Hydra's instantiate keys are not used by nnlab")
                else:
                    walk(value, (*path, key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, (*path, str(i)))
        elif isinstance(node, str) and "${" in node:
            refuse(path, f"the value {node[:200]!r} is an interpolation")

    walk({k: v for k, v in config.items() if k != "hydra"}, ())


def check_optimizer_classes(model: dict, source: str = "the config", error=ConfigError) -> None:
    """The optimiser/scheduler specs of a model config, on the resolved objects: each must be a
    class of torch.optim (torch.optim.lr_scheduler) that is an Optimizer (a scheduler)."""
    import torch

    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for key, spec in model.items():
        if not (isinstance(spec, dict) and "_target_" in spec):
            continue
        slot, target = f"model.{key}", str(spec["_target_"])
        if target in allowed_targets(slot):
            continue
        if _is_optimizer_slot(slot):
            module, bases = torch.optim, (torch.optim.Optimizer,)
        elif _is_scheduler_slot(slot):
            module, bases = torch.optim.lr_scheduler, schedulers
        else:
            continue
        obj = vars(module).get(target.rsplit(".", 1)[-1])
        if not (isinstance(obj, type) and issubclass(obj, bases)):
            raise error(
                f"{source} sets {slot}._target_={target!r}, which is not "
                f"{'an optimiser' if module is torch.optim else 'a learning-rate scheduler'} of "
                f"{module.__name__} ({README}). Example: {slot}._target_="
                f"{'torch.optim.AdamW' if module is torch.optim else module.__name__ + '.StepLR'}"
            )


# -- data read back from a run folder or a checkpoint ----------------------------------------------
def _plain(value: Any, where: str, error) -> Any:
    """A copy with `_`-keys dropped; an interpolation string raises."""
    if isinstance(value, dict):
        return {
            str(k): _plain(v, where, error) for k, v in value.items() if not str(k).startswith("_")
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v, where, error) for v in value]
    if isinstance(value, str) and "${" in value:
        raise error(
            f"{where} holds the value {value[:200]!r}, an interpolation: nnlab reads run folders "
            f"and checkpoints as plain data ({README}). Use a file written by nnlab train."
        )
    return value


def plain_hparams(hparams: Any, where: str) -> dict:
    """Checkpoint hyper-parameters as plain data: every `_`-key (_target_ included) dropped at any
    depth, interpolations refused, non-data values (a weights-only load gives only tensors and
    primitives) dropped."""
    if not isinstance(hparams, dict):
        return {}
    clean = _plain(hparams, where, CheckpointError)
    return {
        k: v
        for k, v in clean.items()
        if isinstance(v, (dict, list, str, int, float, bool)) or v is None
    }


def sanitize_overrides(overrides: Any, source: str) -> list[str]:
    """Recorded overrides that may be replayed: `key=value` with plain values, group=option for a
    packaged option, `~key`. Anything else raises a CheckpointError that names the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not isinstance(overrides, list):
        raise CheckpointError(f"{source} is not a list of overrides: the run folder is damaged.")
    parser = OverridesParser.create()
    for text in overrides:
        why = _refusal(parser, text)
        if why is not None:
            raise CheckpointError(
                f"{source} holds the override {str(text)[:200]!r}, which nnlab will not replay: "
                f"{why}. A run folder is data, never code ({README}). If you wrote it yourself, "
                "pass what you meant on the command line of a new run."
            )
    return list(overrides)


def _refusal(parser, text: Any) -> str | None:
    """Why one recorded override may not be replayed, or None when it may."""
    from nnlab.run_folder import config_groups, group_options

    if not isinstance(text, str) or len(text) > 10_000:
        return "it is not a short text"
    try:
        override = parser.parse_override(text)
    except Exception:  # noqa: BLE001 - Hydra's grammar errors
        return "it is not an override Hydra can parse"
    key = override.key_or_group
    if override.package is not None or key.split(".")[0].split("/")[0] == "hydra":
        return "it changes Hydra's own settings"
    if override.is_sweep_override():
        return "it is a sweep, not one value"
    value = override.value()
    if "/" in key or key in config_groups():
        if not override.is_delete() and value not in group_options(key):
            return f"{value!r} is not one of the packaged {key} options"
        return None
    parts = key.split(".")
    if any(p.startswith("_") for p in parts):
        return "it sets a `_`-key (a _target_ chooses code)"
    if parts[-1] in WRITE_PATH_KEYS:
        return "it chooses where files are written"
    if any(str(k).startswith("_") for k in _keys(value)):
        return "its value sets a `_`-key (a _target_ chooses code)"
    if "${" in text:
        return "it holds an interpolation (${...})"
    return None


def _keys(value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)
