"""Validate a composed config up front, before torch is imported: every mistake becomes one
clear ConfigError that names the key, the bad value and a good example."""

from __future__ import annotations

from numbers import Number

from omegaconf import DictConfig, ListConfig, OmegaConf

from nnlab.errors import ConfigError


def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _fraction(v):
    return isinstance(v, Number) and not isinstance(v, bool) and 0 < v < 1


def _positive_number(v):
    return isinstance(v, Number) and not isinstance(v, bool) and v > 0


def _non_negative_number(v):
    return isinstance(v, Number) and not isinstance(v, bool) and v >= 0


def _int_list(v):
    return (
        isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and all(_positive_int(x) for x in v)
    )


def _epochs(v):
    return isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1)


# model.compile: false, true (torch.compile's default mode) or one of its modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# key -> (check, what it must be, an example). Keys that a config does not have are skipped.
RULES = {
    "model.latent_dim": (_positive_int, "a positive integer", "model.latent_dim=32"),
    # [] is allowed: a one-layer encoder (the sparse and contractive autoencoders' textbook form)
    "model.hidden_dims": (
        lambda v: v == [] or _int_list(v),
        "a list of positive integers",
        "model.hidden_dims=[512,256]",
    ),
    "model.optimizer.lr": (_positive_number, "a positive number", "model.optimizer.lr=1e-3"),
    "dataset.batch_size": (_positive_int, "a positive integer", "dataset.batch_size=128"),
    "dataset.eval_batch_size": (
        _positive_int,
        "a positive integer",
        "dataset.eval_batch_size=1024",
    ),
    "dataset.val_fraction": (
        _fraction,
        "a number strictly between 0 and 1",
        "dataset.val_fraction=0.1",
    ),
    "dataset.shape": (
        lambda v: _int_list(v) and len(v) in (1, 3),
        "[channels, height, width] for images or [features] for sequences",
        "dataset.shape=[1,28,28] or dataset.shape=[12]",
    ),
    # the sequence family (issue 17): forecasting spans and truncated BPTT
    "dataset.horizon": (_positive_int, "a positive integer (steps ahead)", "dataset.horizon=1"),
    "dataset.window": (_positive_int, "a positive integer (steps of history)", "dataset.window=24"),
    "dataset.test_size": (_positive_int, "a positive integer (steps)", "dataset.test_size=36"),
    "dataset.val_size": (_positive_int, "a positive integer (steps)", "dataset.val_size=12"),
    "dataset.period": (_positive_int, "a positive integer (steps)", "dataset.period=12"),
    "dataset.ar_order": (_positive_int, "a positive integer", "dataset.ar_order=9"),
    "dataset.transform": (
        lambda v: v in ("none", "log", "sqrt"),
        "one of none, log, sqrt",
        "dataset.transform=log",
    ),
    "model.tbptt_steps": (
        lambda v: v is None or _positive_int(v),
        "null (full BPTT) or a positive integer",
        "model.tbptt_steps=100",
    ),
    "trainer.max_epochs": (
        _epochs,
        "a positive integer (or -1 for no limit)",
        "trainer.max_epochs=10",
    ),
    "seed": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
        "an integer in [0, 2^32) (numpy's seed range)",
        "seed=42",
    ),
    "dataset.n_train": (_positive_int, "a positive integer", "dataset.n_train=512"),
    "dataset.augment.pad": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "a non-negative integer (pixels of random shift; 0 = off)",
        "dataset.augment.pad=2",
    ),
    "dataset.augment.hflip": (
        lambda v: isinstance(v, bool),
        "true or false",
        "dataset.augment.hflip=true",
    ),
    "dataset.n_test": (_positive_int, "a positive integer", "dataset.n_test=128"),
    "trainer.max_steps": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1),
        "a positive integer (or -1 for no limit)",
        "trainer.max_steps=1000",
    ),
    "trainer.limit_train_batches": (
        lambda v: v is None or (_positive_number(v) and (isinstance(v, int) or v <= 1)),
        "null, a fraction in (0, 1] or a positive number of batches (0 would train nothing)",
        "trainer.limit_train_batches=100",
    ),
    "callbacks.checkpoint.every_n_steps": (
        lambda v: v is None or _positive_int(v),
        "null or a positive integer",
        "callbacks.checkpoint.every_n_steps=500",
    ),
    "threads": (lambda v: v is None or _positive_int(v), "null or a positive integer", "threads=2"),
    "steps_per_execution": (
        lambda v: v == "auto" or _positive_int(v),
        "auto or a positive integer (optimizer steps per Lightning step)",
        "steps_per_execution=auto",
    ),
    "model.compile": (
        lambda v: isinstance(v, bool) or v in COMPILE_MODES,
        f"true, false or one of torch.compile's modes ({', '.join(COMPILE_MODES)})",
        "model.compile=reduce-overhead",
    ),
    "model.projection": (lambda v: isinstance(v, bool), "true or false", "model.projection=true"),
    "model.weight_decay": (_non_negative_number, "a number >= 0", "model.weight_decay=2e-4"),
    "model.l1_weight_decay": (
        _non_negative_number,
        "a number >= 0 (0 = off)",
        "model.l1_weight_decay=2e-3",
    ),
    # null: nnlab's QuietProfiler (nnlab/lean.py); a name: one of Lightning's profilers
    "trainer.profiler": (
        lambda v: v is None or v in ("simple", "advanced", "pytorch", "xla"),
        "null or one of simple, advanced, pytorch, xla",
        "+trainer.profiler=simple (or debug=profile)",
    ),
}


def _select(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as err:  # noqa: BLE001 - interpolation errors are user errors too
        raise ConfigError(f"{key} cannot be resolved: {err}") from err


# what each kind of dataset holds, for the model/dataset check (no `inputs` key: images)
INPUTS = {
    "images": "images",
    "sequences": "variable-length sequences of feature vectors (batches of x, lengths, y)",
    "series": "windows of one time series to forecast",
    "text": "a character stream (for a language model)",
    "parallel": "sentence pairs to translate",
}


def check_inputs(cfg: DictConfig) -> None:
    """A model that cannot read the dataset's kind of input (an image model on sequences, the
    forecaster on images...) is one ConfigError: models list the kinds they read in `inputs`
    (absent: images), datasets say theirs in `inputs` (absent: images)."""
    model, dataset = cfg.get("model"), cfg.get("dataset")
    if model is None or dataset is None:
        return
    kind = dataset.get("inputs", "images")
    reads = list(model.get("inputs", ["images"]))
    if kind in reads:
        return
    raise ConfigError(
        f"model={model.get('name')} reads {' or '.join(reads)}, but dataset={dataset.get('name')} "
        f"holds {INPUTS.get(kind, kind)}. Pick a matching pair: model=lstm reads images and "
        "sequences (e.g. dataset=japanese_vowels), model=forecaster reads series (dataset=airline, "
        "sunspots, co2), model=char_rnn reads text (dataset=fortunes, dataset=text), "
        "model=seq2seq sentence pairs (dataset=bible_en_es), model=char_cnn/bag_of_chars "
        "fortunes by file (dataset=fortunes_files), the other models read images "
        "(dataset=fashion_mnist)."
    )


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value."""
    check_inputs(cfg)
    cell = OmegaConf.select(cfg, "model.cell", default=None)
    if cell is not None:  # the recurrent cells of nnlab/nets/sequence.py (CELLS)
        from nnlab.errors import check_choice

        check_choice("model.cell", cell, ("lstm", "gru", "rnn"))
    for key, (check, must, example) in RULES.items():
        value = _select(cfg, key)
        if value is None and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        if value is None and key == "trainer.max_epochs":
            continue
        if not check(value):
            shown = (
                OmegaConf.to_container(value)
                if isinstance(value, (DictConfig, ListConfig))
                else value
            )
            raise ConfigError(
                f"{key}={shown!r} is not valid: it must be {must}. Example: {example}"
            )


def check_group_choices(overrides: list[str]) -> None:
    """`model=vea` and the like, before Hydra composes anything: an unknown option of a config group
    becomes one ConfigError that names the group's options and the closest one. Only plain
    `group=a` and comma sweeps `group=a,b` are checked; Hydra reports anything fancier itself."""
    from nnlab.errors import check_choice
    from nnlab.run_folder import config_groups, group_options

    for arg in overrides:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key not in config_groups():
            continue
        if any(c in value for c in "()[]{}*$'\" "):
            continue  # sweep functions, globs, interpolations, quoting: Hydra's own syntax
        options = group_options(key)
        for choice in value.split(","):
            if choice in ("null", "none") and choice not in options:
                raise ConfigError(
                    f"{key}={choice}: to leave the group '{key}' out, write ~{key} (Hydra's "
                    f"delete syntax); to pick one of its options, use one of: {', '.join(options)}."
                )
            check_choice(
                key,
                choice,
                options,
                note=f"(the YAML files in configs/{key}/; `nnlab train --help` lists every group)",
            )


# the parts of the command line that are not config keys: Hydra's own, and what nnlab turns into
# Hydra arguments itself
_NOT_KEYS = ("hydra.", "hydra/")


def _composed_for(groups: list[list[str]]):
    """The packaged config composed with each combination of the group choices (a sweep over
    groups, model=ae,vae, composes each; at most 16 combinations)."""
    import itertools

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    combos = list(itertools.islice(itertools.product(*groups), 16))
    configs = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="nnlab.configs", version_base="1.3"):
            for combo in combos:
                try:
                    configs.append(compose(config_name="train", overrides=list(combo)))
                except Exception:  # noqa: BLE001 - Hydra reports what it cannot compose itself
                    continue
    finally:
        GlobalHydra.instance().clear()
    return configs


def config_keys(cfg, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (sections and leaves), without _target_ & co."""
    keys = []
    for key in cfg.keys() if isinstance(cfg, DictConfig) else []:
        if str(key).startswith("_"):
            continue
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            keys += config_keys(value, dotted + ".")
    return keys


def check_override_keys(args: list[str]) -> None:
    """`model.latnt_dim=3`, `epochs=1`, `model.lr=0.01`: a key the config does not have becomes
    one ConfigError naming the closest keys, before Hydra composes (whose own message suggests
    `+model.latnt_dim=3`, which the model's constructor then refuses). Keys added on purpose
    (+key=value), deleted (~key) and Hydra's own (hydra.*) are left to Hydra."""
    from nnlab.run_folder import config_groups

    plain, groups = [], []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith(("-", "+", "~")) or key.startswith(_NOT_KEYS):
            continue
        if key in config_groups():
            groups.append([f"{key}={choice}" for choice in value.split(",")])
        elif "/" not in key and key.replace(".", "").replace("_", "").isalnum():
            plain.append(key)
    if not plain:
        return
    configs = _composed_for(groups)
    if not configs:
        return
    for key in plain:
        missing = [
            c
            for c in configs
            if OmegaConf.select(c, key, default=_ABSENT, throw_on_resolution_failure=False)
            is _ABSENT
        ]
        if missing:
            value = next(a.partition("=")[2] for a in args if a.partition("=")[0] == key)
            raise _unknown_key(key, value, config_keys(missing[0]), groups, len(missing), configs)


def _unknown_key(key, value, known, groups, n_missing, configs) -> ConfigError:
    from nnlab.errors import suggest
    from nnlab.run_folder import group_options

    section = key.split(".", 1)[0]
    close = suggest(key, known)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    if n_missing < len(configs):  # a sweep over groups where only some options have the key
        hint = (
            f" It is a key of some of the options you sweep but not of all: sweep it with the "
            f"options that have it (one sweep per {section})."
        )
    elif section in ("model", "dataset"):  # another option of the group has it
        others = [
            o for o in group_options(section) if key.split(".", 1)[1] in _yaml_keys(section, o)
        ]
        if others:
            named = ", ".join(f"{section}={o}" for o in others[:4])
            hint = (
                f" It is a key of {named}: choose one, e.g. {section}={others[-1]} {key}={value}."
            )
    added = (
        f" A Lightning Trainer argument that nnlab's config does not list is added with a plus: "
        f"+{key}={value}."
        if section == "trainer"
        else ""
    )
    where = " (with the groups you chose)" if groups else ""
    return ConfigError(
        f"{key}={value}: the config has no key '{key}'{where}.{hint}{added} `nnlab train --cfg "
        "job` prints every key (add your group choices, e.g. model=vae)."
    )


def _yaml_keys(group: str, option: str) -> list[str]:
    """The dotted keys one packaged option file sets itself (its defaults list not followed)."""
    from importlib.resources import files

    import yaml

    try:
        data = yaml.safe_load(files("nnlab.configs").joinpath(group, f"{option}.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return config_keys(OmegaConf.create(data)) if isinstance(data, dict) else []


_ABSENT = object()
