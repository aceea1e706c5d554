"""The tool as a student meets it (issue 21): key typos answered before torch, `nnlab runs` at 100
columns, the Python API end to end, no run folder after a config mistake, the end-of-run summary,
HParams that compare runs, sweep folder names, labelled figures, eval/sample option parity.

One tiny run (synthetic data, debug=fast) trained through nnlab.train serves most tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_runs import make_run

from nnlab import runs as nnlab_runs
from nnlab.errors import ConfigError

FAST = ("dataset=synthetic", "debug=fast", "accelerator=cpu", "threads=1")


def _no_torch(code: str, cwd=None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, then fail if torch or Lightning got imported."""
    check = "\nimport sys\nheavy=[m for m in ('torch','pytorch_lightning') if m in sys.modules]"
    check += "\nassert not heavy, heavy"
    return subprocess.run(
        [sys.executable, "-c", code + check],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the Run of nnlab.train on synthetic data, its console output): in a fresh folder."""
    import contextlib
    import io

    import nnlab

    folder = tmp_path_factory.mktemp("api")
    cwd, out = os.getcwd(), io.StringIO()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out):
            run = nnlab.train(*FAST, "callbacks.progress_bar.refresh_rate=0")
    finally:
        os.chdir(cwd)
    return run, out.getvalue()


# -- 2: key typos --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, meant",
    [
        ("model.latnt_dim=3", "model.latent_dim"),
        ("epochs=1", "trainer.max_epochs"),
        ("max_epochs=1", "trainer.max_epochs"),
        ("trainer.max_epoch=1", "trainer.max_epochs"),
        ("model.lr=0.01", "model.optimizer.lr"),
    ],
)
def test_key_typos_name_the_key_that_was_meant(override, meant):
    from nnlab.config_check import check_override_keys

    with pytest.raises(ConfigError) as err:
        check_override_keys([override])
    text = str(err.value)
    assert f"Did you mean {meant}" in text and f"+{override}" not in text.replace("+trainer", "")


def test_a_key_of_another_model_says_which_and_a_sweep_over_groups_is_checked():
    from nnlab.config_check import check_override_keys

    with pytest.raises(ConfigError, match="It is a key of .*model=vae"):
        check_override_keys(["model.beta=2"])
    check_override_keys(["model=vae", "model.beta=2"])  # vae has it
    with pytest.raises(ConfigError, match="some of the options you sweep"):
        check_override_keys(["-m", "model=ae,vae", "model.beta=2"])


def test_a_key_typo_answers_before_torch_and_makes_no_run_folder(tmp_path):
    proc = _no_torch(
        "from nnlab import cli\ntry:\n    cli.main(['train', 'model.latnt_dim=3'])\n"
        "except SystemExit as e:\n    assert e.code == 2, e.code",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Did you mean model.latent_dim?" in " ".join(proc.stderr.split())
    assert not (tmp_path / "outputs" / "ae").exists()


# -- 7: a config mistake leaves no run folder; --prune-failed for the rest ---------------------
def test_a_value_mistake_leaves_no_folder_under_outputs(tmp_path):
    code = (
        "from nnlab import cli\ntry:\n    cli.main(['train', 'dataset=synthetic', "
        "'model.latent_dim=0'])\nexcept SystemExit as e:\n    assert e.code == 2\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0 and "model.latent_dim=0 is not valid" in proc.stderr
    assert not list((tmp_path / "outputs").rglob("*")) if (tmp_path / "outputs").exists() else True


def test_prune_failed_deletes_failed_runs_only_after_asking(tmp_path, capsys, monkeypatch):
    make_run(tmp_path / "ae" / "synthetic" / "2026-01-01_10-00-00-000001", status="failed")
    good = make_run(tmp_path / "ae" / "synthetic" / "2026-01-01_10-00-00-000002")
    assert nnlab_runs.main([str(tmp_path), "--prune-failed"]) == 1  # not a terminal: --yes
    assert "Add --yes" in capsys.readouterr().err
    assert (tmp_path / "ae" / "synthetic" / "2026-01-01_10-00-00-000001").exists()
    assert nnlab_runs.main([str(tmp_path), "--prune-failed", "--yes"]) == 0
    assert "Deleted 1 run folder" in capsys.readouterr().out
    assert not (tmp_path / "ae" / "synthetic" / "2026-01-01_10-00-00-000001").exists()
    assert good.exists()


# -- 4: nnlab runs at 100 columns ----------------------------------------------------------------
@pytest.fixture
def many_runs(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-01_10-00-00-000000"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    for i, dim in enumerate((8, 16, 32)):
        job = make_run(
            sweep / f"latent_dim={dim}",
            overrides=[f"model.latent_dim={dim}"],
            metrics={"test/mse": 0.02 / (i + 1), "test/pca_mse": 0.03, "test/loss": 0.02},
            latent_dim=dim,
        )
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {i}\n")
    make_run(
        tmp_path / "vae" / "synthetic" / "2026-01-02_10-00-00-000000",
        model="vae",
        overrides=["model=vae"],
        metrics={"test/elbo": -240.4, "test/nll_iw": 238.3, "test/mse": 0.03},
        eval={"mnist": {"metrics": {"test/elbo": -300.5}, "checkpoint": "x", "time": "t"}},
    )
    make_run(
        tmp_path / "lenet" / "synthetic" / "2026-01-02_11-00-00-000000",
        model="lenet",
        overrides=["model=lenet"],
        metrics={"test/acc": 0.9125, "test/loss": 0.25},
        status="failed",
        error="x" * 300,
    )
    return tmp_path


def test_the_table_fits_100_columns_without_folding_cells(many_runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert nnlab_runs.main([str(many_runs)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, out
    assert "finished" in out and "fini\n" not in out  # whole words, not folded cells
    assert "01-01 10:00:00 #0" in out and "01-02 10:00:00" in out  # short names
    assert "elbo -240.4" in out and "acc 0.9125" in out and "pca_mse 0.03" in out  # per family
    assert "mnist elbo -300.5" in out  # nnlab eval results
    assert nnlab_runs.main([str(many_runs / "multirun"), "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "model.latent_dim=8" in wide and "multirun" not in wide.splitlines()[0][:5]


def test_best_top_and_paths(many_runs, capsys):
    assert nnlab_runs.main([str(many_runs), "--best", "test/mse", "--paths"]) == 0
    (best,) = capsys.readouterr().out.split()
    assert best.endswith("latent_dim=32")  # 0.02 / 3: less is better
    assert nnlab_runs.main([str(many_runs), "--best", "test/mse", "--top", "2", "--json"]) == 0
    assert [r["metrics"]["test/mse"] for r in json.loads(capsys.readouterr().out)] == [
        pytest.approx(0.02 / 3),
        pytest.approx(0.01),
    ]
    assert nnlab_runs.main([str(many_runs), "--best", "test/elbo", "--paths"]) == 0  # more
    assert capsys.readouterr().out.strip().endswith("2026-01-02_10-00-00-000000")
    assert nnlab_runs.main([str(many_runs), "--json"]) == 0
    vae = next(r for r in json.loads(capsys.readouterr().out) if r["model"] == "vae")
    assert vae["eval"]["mnist"]["metrics"] == {"test/elbo": -300.5}


@pytest.mark.parametrize(
    "args, meant",
    [
        (["--sort", "test/mes"], "test/mse"),
        (["--filter", "model.latnt_dim=8"], "model.latent_dim"),
        (["--metrics", "test/ebo"], "test/elbo"),
        (["--best", "test/acuracy"], "test/acc"),
    ],
)
def test_typos_in_sort_filter_metrics_are_errors(many_runs, capsys, args, meant):
    assert nnlab_runs.main([str(many_runs), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "nnlab: error:" in err and f"Did you mean {meant}" in err


def test_no_outputs_folder_says_how_to_make_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert nnlab_runs.main([]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no outputs/ folder" in err and "nnlab train" in err and "nnlab runs outputs" not in err


def test_a_run_folder_given_as_dir_is_named_once(many_runs, capsys):
    vae = many_runs / "vae" / "synthetic" / "2026-01-02_10-00-00-000000"
    lenet = many_runs / "lenet" / "synthetic" / "2026-01-02_11-00-00-000000"
    assert nnlab_runs.main([str(vae), str(lenet), "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names == [vae.name, lenet.name]


# -- 5 and 6: the API end to end, the summary, quiet console, per-epoch log, HParams ---------------
def test_train_returns_a_run_with_metrics_config_model_sample_and_eval(trained, capsys):
    import nnlab

    run, _ = trained
    assert isinstance(run, nnlab.Run) and run.status == "finished"
    assert run.metrics["test/mse"] > 0 and run.config["model"]["name"] == "ae"
    assert "ae on synthetic, finished, test/mse=" in repr(run)
    assert not run.model.training and run.model.hparams.name == "ae"
    picture = run.sample(8, nrow=4)
    assert picture.size[0] > 100 and picture.size[1] > 50  # enlarged, labelled rows
    metrics = run.eval(threads=1)
    assert metrics["test/mse"] == pytest.approx(run.metrics["test/mse"], rel=1e-4)
    same = nnlab.load(run.path)
    assert same.record["eval"]["synthetic"]["metrics"]["test/mse"] == metrics["test/mse"]
    records = nnlab.runs(run.path.parents[2])
    assert len(records) == 1 and records[0]["eval"]["synthetic"]["metrics"]["test/mse"] > 0


def test_runs_as_a_dataframe_when_pandas_is_there(trained, monkeypatch):
    import types

    import nnlab

    frames = []
    fake = types.ModuleType("pandas")
    fake.DataFrame = lambda rows: frames.append(rows) or "frame"
    monkeypatch.setitem(sys.modules, "pandas", fake)
    run, _ = trained
    assert nnlab.runs(run.path.parents[2]).to_pandas() == "frame"
    (row,) = frames[0]
    assert row["model"] == "ae" and row["test/mse"] > 0 and "eval/synthetic/test/mse" in row
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(nnlab.errors.NNLabError, match="pip install pandas"):
        nnlab.runs(run.path.parents[2]).to_pandas()


def test_api_errors_are_exceptions_and_leave_no_folder(tmp_path, monkeypatch):
    import nnlab

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="Did you mean model.latent_dim"):
        nnlab.train("model.latnt_dim=3")
    with pytest.raises(ConfigError, match="model.latent_dim=0 is not valid"):
        nnlab.train(*FAST, "model.latent_dim=0")
    with pytest.raises(ConfigError, match="a loop"):
        nnlab.train("-m", "model.latent_dim=2,4")
    assert not list(tmp_path.rglob("metrics.json"))


def test_import_nnlab_is_torch_free_and_exposes_the_api():
    proc = _no_torch(
        "import nnlab\nassert callable(nnlab.train) and callable(nnlab.runs)\n"
        "assert nnlab.load and nnlab.Run and nnlab.train.main and nnlab.runs.main"
    )
    assert proc.returncode == 0, proc.stderr


def test_the_summary_names_the_key_metric_its_baseline_and_the_next_commands(trained):
    run, out = trained
    lines = out.splitlines()
    assert any(line.startswith("nnlab: ae on synthetic finished in") for line in lines), out
    assert any("test/mse" in line and "baseline test/pca_mse" in line for line in lines)
    assert any("best val/loss" in line and "at epoch 1" in line for line in lines)
    assert "nnlab sample outputs/ae/synthetic/" in out and "tensorboard --logdir" in out
    assert "GPU available" not in out and "Test metric" not in out  # Lightning's, in verbose mode
    log = (run.path / "train.log").read_text()
    assert "epoch 1/1  train/loss" in log and "val/loss" in log  # one line per epoch


def test_hparams_is_a_session_and_tags_are_grouped(trained):
    from conftest import event_tags
    from test_sweeps import hparams_of_events

    run, _ = trained
    hparams, scalars = hparams_of_events(run.path)  # asserts: no experiment summary
    assert hparams["model.latent_dim"] == 32 and hparams["model"] == "ae"
    assert {"test/mse", "val/loss", "lr/Adam", "train/epoch"} <= set(scalars)
    assert "epoch" not in scalars and not any(s.startswith("lr-") for s in scalars)
    images = event_tags(run.path).Tags()["images"]
    assert images and all(tag.startswith("vis/") for tag in images)


def test_the_gans_name_their_learning_rates():
    from nnlab.figures import LearningRates
    from nnlab.models.gans import GAN

    class Trainer:  # the two optimisers a GAN's configure_optimizers returns
        optimizers = GAN(name="gan", g_dims=[8], d_dims=[8], latent_dim=4).configure_optimizers()

    assert LearningRates().names(Trainer(), GAN) == ["generator", "discriminator"]


# -- 10: sweep folder names ------------------------------------------------------------------------
def test_sweep_jobs_are_named_by_the_swept_keys():
    from nnlab.sweeps import job_argv, job_name

    argv = ["nnlab train", "-m", "model.latent_dim=8,16", "trainer.max_epochs=5", "seed=1"]
    argv = job_argv(argv, ["threads"])
    assert argv[-1].endswith("=[threads,trainer.max_epochs,seed]")
    excluded = ["threads", "trainer.max_epochs", "seed"]
    overrides = ["model.latent_dim=8", "trainer.max_epochs=5", "seed=1", "threads=1"]
    assert job_name(overrides, excluded, 0) == "latent_dim=8"
    optuna = ["model.optimizer.lr=0.0012345678901234567", "model.d_optimizer.lr=0.5"]
    assert job_name(optuna, [], 3) == "model.optimizer.lr=0.00123457,model.d_optimizer.lr=0.5"
    assert job_name(["model=vae", "dataset.data_dir=/x/y"], [], 2) == "model=vae,data_dir=_x_y"
    assert job_name([], [], 4) == "job4"
    assert job_argv(["nnlab train", "model.latent_dim=8"], []) == [
        "nnlab train",
        "model.latent_dim=8",
    ]  # one run: its folder is named by Hydra's run.dir


# -- 8: eval and sample: parity, errors before torch -----------------------------------------------
def test_eval_and_sample_share_their_options():
    from nnlab.evaluate import COMMON, parse_args
    from nnlab.sample import OPTIONS

    both = ["checkpoint=last", "accelerator=cpu", "threads=2", "seed=3", "dataset=mnist"]
    for options in ({}, OPTIONS):
        _, own, overrides = parse_args(["run", *both], "usage", options)
        assert {k: own[k] for k in COMMON} == {
            "checkpoint": "last",
            "accelerator": "cpu",
            "threads": "2",
            "seed": "3",
        }
        assert overrides == {"dataset": "mnist"}
    with pytest.raises(ConfigError, match="Did you mean threads=2"):
        parse_args(["run", "thread=2"], "usage", OPTIONS)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["label=12"], "label=12 is out of range"),
        (["n=0"], "n='0' is not valid"),
        (["scale=0"], "scale='0' is not valid"),
        (["lable=3"], "Did you mean label=3?"),
        (["out=x.txt"], "no image suffix"),
    ],
)
def test_sample_argument_errors_come_before_torch(trained, args, needle):
    run, _ = trained
    code = (
        "from nnlab import cli\ntry:\n"
        f"    cli.main(['sample', {str(run.path)!r}, *{args!r}])\n"
        "except SystemExit as e:\n    assert e.code == 2, e.code"
    )
    proc = _no_torch(code)
    assert proc.returncode == 0, proc.stderr
    assert needle in " ".join(proc.stderr.split())


def test_label_on_an_unconditional_model_is_refused_before_torch(tmp_path):
    from nnlab.sample import check_label

    vae = {"name": "vae", "_target_": "nnlab.models.vae.VAE"}
    data = {"name": "fashion_mnist", "num_classes": 10, "classes": list("abcdefghij")}
    with pytest.raises(ConfigError, match="unconditional"):
        check_label("3", vae, data)
    cgan = {"name": "cgan", "_target_": "nnlab.models.gans.CGAN"}
    assert check_label("3", cgan, data) == 3
    with pytest.raises(ConfigError, match="0 a, 1 b"):
        check_label("10", cgan, data)
    with pytest.raises(ConfigError, match="has no classes"):
        check_label("0", cgan, {"name": "synthetic", "num_classes": None})


# -- 9: figures that explain themselves ------------------------------------------------------------
def test_labelled_grids_name_their_rows_and_columns():
    import torch

    from nnlab import viz

    images = torch.rand(16, 1, 28, 28)
    plain = viz.grid(images, nrow=8)
    rows = viz.paired_grid([images[:8], images[8:]], labels=("input", "reconstruction"))
    assert rows.shape[1] == 2 * plain.shape[1] and rows.shape[2] > 2 * plain.shape[2]
    cols = viz.labelled(plain, (28, 28), cols=[f"a={i}" for i in range(8)], title="title")
    assert cols.shape[1] == 2 * plain.shape[1] + 28 and cols.shape[2] == 2 * plain.shape[2]
    left = rows[:, :, :40]  # the label margin holds dark text on white
    assert (left < 0.5).any() and (left > 0.99).float().mean() > 0.5
    with viz.columns(4):
        assert viz.grid(images).shape[2] == viz.grid(images, nrow=4).shape[2]


def test_sample_scale_enlarges_the_png(trained, tmp_path):
    from PIL import Image

    from nnlab.sample import sample

    run, _ = trained
    sample([str(run.path), "n=8", f"out={tmp_path / 'a.png'}", "scale=1"])
    sample([str(run.path), "n=8", f"out={tmp_path / 'b.png'}", "scale=3"])
    small, big = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert big.size == (3 * small.size[0], 3 * small.size[1])


def test_resume_cfg_job_prints_the_runs_config(trained):
    run, _ = trained
    proc = subprocess.run(
        [sys.executable, "-m", "nnlab.cli", "train", f"resume={run.path}", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: synthetic" in proc.stdout and f"resume: {run.path}" in proc.stdout


def test_the_summary_follows_the_loggers_and_a_resume_that_only_tested(tmp_path):
    from nnlab.report import summary_lines

    record = {"model": "vae", "dataset": "mnist", "epochs": 5, "wall_time_s": 75.0}
    record["metrics"] = {"test/elbo": -240.4, "test/nll_iw": 238.3, "test/mse": 0.03}
    run = tmp_path / "vae" / "mnist" / "run"
    lines = summary_lines(record, run, "val/loss", 241.0, "best-epoch004.ckpt", ["csv"], True)
    text = "\n".join(lines)
    assert lines[0] == "nnlab: vae on mnist finished in 1m15s (5 epochs)"
    assert "test/elbo -240.4" in text and "best val/loss 241 at epoch 5" in text
    assert "tensorboard" not in text and "csv/metrics.csv" in text  # logger=csv: no TensorBoard
    assert "only tested it again" in text and "trainer.max_epochs=10" in text
