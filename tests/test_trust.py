"""A run folder and a checkpoint are data, never code (issue 16, part 1).

Every route by which a file of a run folder or a checkpoint used to choose what Python calls is
tried here with a payload that would create a marker file; each test checks that the marker never
appears. The payloads use callables that hydra-core's own blocklist lets through."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST, read_metrics, run_train

from nnlab.errors import CheckpointError, ConfigError


def _writer(marker: Path) -> dict:
    """A spec that writes `marker` when Hydra instantiates it (recursively)."""
    return {
        "_target_": "pathlib.Path.write_text",
        "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
        "data": "pwned",
    }


def _override(marker: Path) -> str:
    """_writer(marker) in Hydra's override syntax."""
    return (
        "{_target_: pathlib.Path.write_text, self: {_target_: pathlib.Path, _args_: ["
        f"'{marker}']}}, data: pwned}}"
    )


def _hub(tmp_path: Path, marker: Path) -> Path:
    """A folder whose hubconf.py writes `marker` when torch.hub.load imports it."""
    hub = tmp_path / "hub"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    return hub


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run_train(tmp_path_factory.mktemp("trusted"), *FAST, "model=ae", "threads=1")


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of a finished run, as someone would share it (to be made hostile)."""
    copy = tmp_path / "shared_run"
    shutil.copytree(finished_run, copy, ignore=shutil.ignore_patterns(".nnlab.lock"))
    return copy


def _edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


def _eval(argv, capsys) -> tuple[int, str]:
    from nnlab.evaluate import main as eval_main

    try:
        code = eval_main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# -- eval / sample: the dataset's nested target, the prefix trick ----------------------------------
def test_nested_target_under_dataset_never_runs(run_copy, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    # the asyncio route of the issue, plus a direct writer: both under dataset:
    shell = {
        "_target_": "asyncio.run",
        "main": {"_target_": "asyncio.create_subprocess_shell", "cmd": f"touch {marker}"},
    }
    _edit_yaml(
        run_copy / ".hydra" / "config.yaml",
        lambda c: c["dataset"].update(classes=shell, extra=_writer(marker)),
    )
    code, err = _eval([str(run_copy)], capsys)
    assert not marker.exists()
    assert code == 0, err  # .hydra/config.yaml is not read: the packaged configs build the run

    (run_copy / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["dataset=synthetic", f"+dataset.extra={_override(marker)}"])
    )
    code, err = _eval([str(run_copy)], capsys)
    err = " ".join(err.split())
    assert code == 2 and "will not replay" in err and "Traceback" not in err
    assert not marker.exists()


def test_prefix_trick_and_foreign_targets_are_refused(run_copy, tmp_path, capsys):
    from nnlab.trust import check_config

    marker = tmp_path / "MARKER"
    hub = _hub(tmp_path, marker)
    trick = "nnlab.models.autoencoders.torch.hub.load"
    _edit_yaml(
        run_copy / ".hydra" / "config.yaml",
        lambda c: c["model"].update(
            _target_=trick, repo_or_dir=str(hub), model="x", source="local"
        ),
    )
    code, err = _eval([str(run_copy)], capsys)
    assert not marker.exists() and code == 0, err
    # the same names on any config: an exact allowlist, not a prefix
    for target in (trick, "nnlab.models.AE", "torch.hub.load", "nnlab.models.autoencoders.AEX"):
        with pytest.raises(ConfigError, match="is not allowed there"):
            check_config({"model": {"_target_": target, "name": "ae"}})
    for spec in ({"_target_": "torch.optim.Adam", "_args_": [1]}, {"lr": _writer(marker)}):
        with pytest.raises(ConfigError):
            check_config({"model": {"_target_": "nnlab.models.autoencoders.AE", "optimizer": spec}})
    check_config({"model": {"_target_": "nnlab.models.autoencoders.AE"}})  # the packaged one
    assert not marker.exists()


def test_the_allowlist_is_read_from_the_packaged_configs():
    from nnlab.run_folder import group_options
    from nnlab.trust import check_optimizer_classes, packaged_targets

    targets = packaged_targets()
    models = targets["model"]
    # every model YAML's class, with no list kept in code: a new family's YAML allows its class
    for option in group_options("model"):
        text = yaml.safe_load(
            (Path(__file__).parents[1] / "configs" / "model" / f"{option}.yaml").read_text()
        )
        assert text["_target_"] in models and text["name"] == option
    assert "nnlab.checkpoints.ResumableCheckpoint" in targets["callbacks.*"]
    # optimisers and schedulers: any class of torch.optim that is one, checked on the object
    check_optimizer_classes(
        {
            "optimizer": {"_target_": "torch.optim.AdamW"},
            "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR"},
        }
    )
    for key, target in (
        ("optimizer", "torch.optim.Optimizer.zero_grad"),
        ("optimizer", "torch.optim.lr_scheduler.StepLR"),
        ("optimizer", "torch.optim.SGDX"),
        ("scheduler", "torch.optim.lr_scheduler.LambdaLR.__init__"),
    ):
        with pytest.raises(ConfigError):
            from nnlab.trust import check_config

            check_config({"model": {key: {"_target_": target}}})
            check_optimizer_classes({key: {"_target_": target}})


def test_train_refuses_a_foreign_target_before_the_run_starts(tmp_path, capsys):
    from conftest import run_fails

    marker = tmp_path / "MARKER"
    err, record = run_fails(tmp_path, capsys, *FAST, f"+callbacks.evil={_override(marker)}")
    assert "is not allowed there" in " ".join(err.split()) and record is None
    assert not marker.exists()


# -- a bare checkpoint: its hyper-parameters are data ----------------------------------------------
def test_checkpoint_hyper_parameters_never_choose_the_class(finished_run, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    hub = _hub(tmp_path, marker)
    ckpt = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"].update(
        _target_="nnlab.models.autoencoders.torch.hub.load",
        repo_or_dir=str(hub),
        model="x",
        source="local",
        optimizer=_writer(marker),
    )
    ckpt["nnlab"]["target"] = "torch.hub.load"
    evil = tmp_path / "elsewhere" / "model.ckpt"  # not inside a run folder
    evil.parent.mkdir()
    torch.save(ckpt, evil)
    code, err = _eval([str(evil), "dataset=synthetic"], capsys)
    assert not marker.exists()
    assert code == 0, err  # built from the packaged ae config, with the weights of the file

    ckpt["hyper_parameters"]["latent_dim"] = "${oc.env:HOME}"
    torch.save(ckpt, evil)
    code, err = _eval([str(evil), "dataset=synthetic"], capsys)
    assert code == 2 and "interpolation" in err and not marker.exists()


def test_load_classifier_uses_the_same_safe_loader(finished_run):
    from nnlab.models.classifiers import load_classifier

    with pytest.raises(CheckpointError, match="'ae' model, not a LeNet-5"):
        load_classifier(finished_run)


# -- resume: the saved config is never the primary config ------------------------------------------
def test_resume_never_builds_what_the_saved_config_names(run_copy, tmp_path):
    from nnlab.train import main

    markers = {k: tmp_path / f"MARKER_{k}" for k in ("callback", "logger", "opt", "sched")}

    def hostile(c):
        c["callbacks"]["evil"] = _writer(markers["callback"])
        c["logger"] = {"evil": _writer(markers["logger"])}
        c["model"]["optimizer"]["lr"] = _writer(markers["opt"])
        c["model"]["scheduler"] = {
            "_target_": "torch.optim.lr_scheduler.StepLR",
            "step_size": _writer(markers["sched"]),
        }
        c["trainer"]["max_epochs"] = 2

    _edit_yaml(run_copy / ".hydra" / "config.yaml", hostile)
    stale = run_copy / "checkpoints" / "last.ckpt.tmp99999"
    stale.write_bytes(b"a partial file of a writer that died")
    argv, sys.argv = sys.argv, ["nnlab train", f"resume={run_copy}", "trainer.max_epochs=2"]
    try:
        main()
    finally:
        sys.argv = argv
    assert not any(m.exists() for m in markers.values())
    record = read_metrics(run_copy)
    assert record["status"] == "finished" and record["epochs"] == 2
    assert not stale.exists()  # stale temporary files are removed by the next owner


@pytest.mark.parametrize(
    "override",
    [
        "+callbacks.evil={_target_: pathlib.Path.touch, self: MARKER}",
        "logger.tensorboard._target_=pathlib.Path.touch",
        "model.optimizer._target_=torch.hub.load",
        "+model.scheduler={_target_: torch.optim.lr_scheduler.StepLR, step_size: ${oc.env:HOME}}",
        "callbacks.checkpoint.dirpath=/etc",
        "hydra.callbacks.x._target_=pathlib.Path.touch",
        "model=nosuch",
    ],
)
def test_resume_refuses_hostile_recorded_overrides(run_copy, capsys, override):
    from nnlab.train import main

    overrides = run_copy / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump([*yaml.safe_load(overrides.read_text()), override]))
    before = (run_copy / "metrics.json").read_text()
    argv, sys.argv = sys.argv, ["nnlab train", f"resume={run_copy}"]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and "will not replay" in err and "Traceback" not in err
    assert (run_copy / "metrics.json").read_text() == before  # refused before anything ran


def test_checkpoint_hparams_are_plain_data():
    from nnlab.trust import plain_hparams

    hp = {"name": "ae", "_target_": "x", "optimizer": {"_target_": "y", "lr": 1.0}, "t": object()}
    assert plain_hparams(hp, "x.ckpt") == {"name": "ae", "optimizer": {"lr": 1.0}}
    with pytest.raises(CheckpointError, match="interpolation"):
        plain_hparams({"latent_dim": "${oc.decode:'{_target_: os.system}'}"}, "x.ckpt")
