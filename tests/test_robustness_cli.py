"""`nnlab robustness` end to end on tiny runs: the attack sweep, calibration and OOD sections of a
classifier, the vae's OOD likelihood, and its one-paragraph errors."""

from __future__ import annotations

import pytest
from conftest import FAST, read_metrics, run_train
from test_digits import write_digits

from nnlab.robustness import main


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    write_digits(folder / "digits.csv.gz", n=940)
    return folder


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    return run_train(tmp_path_factory.mktemp("lenet"), "model=lenet", *FAST)


def _robustness(capsys, *argv: str, code: int = 0) -> tuple[str, str]:
    if code:
        with pytest.raises(SystemExit) as exc:
            main([*argv])
        assert exc.value.code == code
    else:
        assert main([*argv]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out, err


def test_classifier_sweep_calibration_and_ood(lenet_run, digits_dir, monkeypatch, capsys):
    monkeypatch.setenv("NNLAB_DATA_DIR", str(digits_dir))
    out, err = _robustness(
        capsys, str(lenet_run), "eps=0.1,0,0.3", "steps=3", "n=64", "threads=1", "accelerator=cpu"
    )
    assert "pgd-3" in err  # the progress bar
    entry = read_metrics(lenet_run)["robustness"]["synthetic"]
    m = entry["metrics"]
    clean = m["clean_acc"]
    for name in ("fgsm", "pgd3"):
        assert m[f"{name}/acc_eps0"] == pytest.approx(clean)
        assert m[f"{name}/acc_eps0.3"] <= m[f"{name}/acc_eps0.1"] <= clean
        assert m[f"{name}/seconds_per_eps"] > 0
    assert 0 <= m["ood_digits/auroc_max_softmax"] <= 1
    assert m["calibration/temperature"] > 0 and 0 <= m["calibration/ece_scaled"] <= 1
    assert entry["settings"]["steps"] == 3 and entry["settings"]["eps"] == [0.0, 0.1, 0.3]
    figures = {p.name for p in (lenet_run / "robustness").iterdir()}
    assert figures == {
        "attack_curve.png",
        "adversarial_fgsm.png",
        "adversarial_pgd3.png",
        "reliability.png",
        "ood_max_softmax.png",
    }


def test_vae_ood_likelihood(tmp_path, digits_dir, monkeypatch, capsys):
    monkeypatch.setenv("NNLAB_DATA_DIR", str(digits_dir))
    run = run_train(tmp_path, "model=vae", "model.hidden_dims=[32]", "model.latent_dim=4", *FAST)
    out, _ = _robustness(capsys, str(run), "n=32", "iw_k=2", "out=" + str(tmp_path / "figs"))
    m = read_metrics(run)["robustness"]["synthetic"]["metrics"]
    assert set(m) == {"ood_digits/loglik_in", "ood_digits/loglik_out", "ood_digits/auroc_loglik"}
    assert (tmp_path / "figs" / "ood_loglik.png").is_file()
    # an attack on a model that is not a classifier; saliency maps of one
    _, err = _robustness(capsys, str(run), "attacks=pgd", code=2)
    assert "not a classifier" in err and "attacks=none" in err
    from nnlab.sample import main as sample_main

    with pytest.raises(SystemExit):
        sample_main([str(run), "saliency=true", f"out={tmp_path / 's.png'}"])
    assert "not a classifier" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, words",
    [
        ("eps=0.1,1.5", "budgets in [0, 1]"),
        ("steps=0", "steps='0' is not valid"),
        ("attacks=cw", "'cw' is not an attack"),
        ("step_size=-1", "positive number"),
        ("ood=cifar10", "same shape"),
    ],
)
def test_bad_options_are_one_paragraph(lenet_run, capsys, option, words):
    quiet = ("attacks=none", "calibrate=false", "ood=none")
    _, err = _robustness(capsys, str(lenet_run), *quiet, option, code=2)
    assert words in err and err.count("\n") <= 4


def test_sample_saliency(lenet_run, tmp_path, capsys):
    from nnlab.sample import main as sample_main

    out = tmp_path / "saliency.png"
    assert sample_main([str(lenet_run), "saliency=true", "n=4", "label=1", f"out={out}"]) == 0
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 3 * 2 * 84 and height > 2 * 84  # two rows of two image | maps triples
