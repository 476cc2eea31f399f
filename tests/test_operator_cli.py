"""Issue 16's command-line polish: help for every argument, ``--image-size HxW``, ``fit --config`` (YAML, JSON,
a run's detector.json), logs when there is no terminal (``--log-level``), and the provenance a run records."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from anomalens.cli import build_parser, main
from anomalens.names import printable
from tests.conftest import FIT


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_argument_of_every_command_has_help():
    missing = [f"{name} {action.dest}" for name, sub in _subparsers(build_parser()).items()
               for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("text, size", [("256", 256), ("224x320", [224, 320]), ("224X320", [224, 320]),
                                        ("64,96", [64, 96])])
def test_image_size_takes_n_or_h_x_w(text, size):
    args = build_parser().parse_args(["fit", "padim", "data", "-o", "run", "--image-size", text])
    assert args.image_size == size


@pytest.mark.parametrize("text", ["64x", "x64", "0", "64x64x3", "big"])
def test_a_bad_image_size_is_one_line(text, capsys):
    assert main(["fit", "padim", "data", "-o", "run", "--image-size", text]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error: fit: argument --image-size") and "\n" not in err and text in err


def test_fit_with_a_rectangular_image_size(category, tmp_path):
    from anomalens import load_detector

    run = tmp_path / "run"
    assert main(["fit", "padim", str(category), "-o", str(run), "--device", "cpu", "-q", "--image-size", "64x96"]) == 0
    assert load_detector(run).input_size == (64, 96)


def test_a_parameter_given_twice_is_refused(category, tmp_path, capsys):
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "r"), *FIT, "-p", "batch_size=4"]) == 2
    assert "batch_size is given twice" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ --config
def test_config_file_in_yaml_sets_hyper_parameters_and_the_command_line_overrides_it(category, tmp_path):
    from anomalens import load_detector

    config = tmp_path / "padim.yaml"
    config.write_text("# a small PaDiM\nn_features: 40\nblur_sigma: 2.0\nepsilon: 0.05\n")
    run = tmp_path / "run"
    assert main(["fit", "padim", str(category), "-o", str(run), *FIT, "--config", str(config), "-p", "epsilon=0.02"]) == 0
    params = load_detector(run).params
    assert (params["n_features"], params["blur_sigma"], params["epsilon"]) == (40, 2.0, 0.02)


def test_fitting_from_a_runs_detector_json_reproduces_the_run(run, category, tmp_path):
    again = tmp_path / "again"
    assert main(["fit", "padim", str(category), "-o", str(again), "-q", "--config", str(run / "detector.json")]) == 0
    from safetensors.torch import load_file

    # The same tensors, bit for bit (the file bytes may differ: safetensors writes its metadata keys in any order).
    first_tensors, second_tensors = (load_file(str(r / "weights.safetensors")) for r in (run, again))
    assert first_tensors.keys() == second_tensors.keys()
    assert all(first_tensors[k].equal(second_tensors[k]) for k in first_tensors)
    first, second = (json.loads((r / "detector.json").read_text()) for r in (run, again))
    assert first["params"] == second["params"] and first["decision"] == second["decision"]


@pytest.mark.parametrize("text, says", [
    ("n_features: [1, 2", "not valid YAML or JSON (line"),
    ("- 1\n- 2\n", "expected a mapping"),
    ('{"detector": "patchcore", "params": {}}', "detector 'patchcore', not of 'padim'"),
    ("n_features: abc\n", "n_features"),
    ("no_such_parameter: 1\n", "no_such_parameter"),
])
def test_a_bad_config_file_is_one_line_naming_it(text, says, category, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "run"), *FIT, "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "\n" not in err and says in err, err
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file(category, tmp_path, capsys):
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "run"), *FIT, "--config", str(tmp_path / "no.yaml")]) == 2
    assert "no.yaml: cannot read the config file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ logs
FIT_LOUD = [a for a in FIT if a != "-q"]


def test_without_a_terminal_a_fit_logs_its_stages_progress_and_timings(category, tmp_path, capsys):
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "run"), *FIT_LOUD]) == 0
    lines = capsys.readouterr().err.splitlines()
    info = [line for line in lines if " anomalens: info: " in line]
    assert any("fit padim on 12 training images: started" in line for line in info), lines
    assert any("fit padim on 12 training images: done in" in line for line in info), lines
    assert any("img/s" in line for line in info), lines
    assert all(line[:4].isdigit() for line in info), "log lines carry the time"


@pytest.mark.parametrize("flags", [["-q"], ["--log-level", "warning"]])
def test_quiet_or_a_higher_log_level_shows_no_info(flags, category, tmp_path, capsys):
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "run"), *FIT_LOUD, *flags]) == 0
    assert "info:" not in capsys.readouterr().err


def test_predict_and_test_log_their_stages(run, category, tmp_path, capsys):
    assert main(["test", str(run), str(category), "-o", str(tmp_path / "report"), "--no-report"]) == 0
    assert "anomalens: info: test padim on" in capsys.readouterr().err
    assert main(["predict", str(run), str(category / "test" / "good"), "-o", str(tmp_path / "out")]) == 0
    assert "anomalens: info: predict: 4 images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ provenance
def test_a_run_records_its_provenance(run):
    import torch

    provenance = json.loads((run / "run.json").read_text())["provenance"]
    assert provenance["torch"] == torch.__version__.split("+")[0] or provenance["torch"] == torch.__version__
    for key in ("anomalens", "timm", "numpy", "python", "platform", "device", "date_utc"):
        assert provenance[key], key
    assert provenance["device"] == "cpu" and len(provenance["training_images_sha256"]) == 64


def test_the_training_list_hash_changes_with_an_image_and_not_with_the_folder(category, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(category, copy)
    moved = tmp_path / "elsewhere"
    shutil.copytree(category, moved)
    first = sorted((copy / "train" / "good").iterdir())[0]
    first.write_bytes(sorted((copy / "train" / "good").iterdir())[1].read_bytes())

    def fitted_hash(data, name):
        assert main(["fit", "padim", str(data), "-o", str(tmp_path / name), *FIT]) == 0
        return json.loads((tmp_path / name / "run.json").read_text())["provenance"]["training_images_sha256"]

    original, same_images, changed = fitted_hash(category, "a"), fitted_hash(moved, "b"), fitted_hash(copy, "c")
    assert original == same_images != changed


# ------------------------------------------------------------------------------------------ names
def test_names_that_are_not_utf8_are_spelt_with_escapes():
    import os

    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert printable("café.png") == "café.png"
    assert printable(b"a\xffb") == "a\\xffb"


# ------------------------------------------------------------------------------------------ calibration vs test
def test_testing_on_the_calibration_images_warns_and_says_how_many(run, category, tmp_path, capsys):
    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    assert main(["calibrate", str(calibrated), str(category), "-q"]) == 0
    assert main(["test", str(calibrated), str(category), "-o", str(tmp_path / "report"), "-q", "--no-report"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["calibration_images_in_test"] == metrics["n_images"]
    assert any("used to calibrate this run's threshold" in w for w in metrics["warnings"])
    assert "were used to calibrate this run's threshold" in capsys.readouterr().err


def test_testing_on_other_images_than_the_calibration_does_not_warn(run, category, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(category, other)
    for defect in (other / "test").iterdir():  # half the test images go to the calibration copy only
        for path in sorted(defect.iterdir())[::2]:
            path.unlink()
            mask = other / "ground_truth" / defect.name / f"{path.stem}_mask.png"
            mask.unlink(missing_ok=True)
    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    assert main(["calibrate", str(calibrated), str(other), "-q"]) == 0
    capsys.readouterr()
    leftover = tmp_path / "leftover"
    shutil.copytree(category, leftover)
    for defect in (leftover / "test").iterdir():
        for path in sorted(defect.iterdir())[1::2]:
            path.unlink()
            (leftover / "ground_truth" / defect.name / f"{path.stem}_mask.png").unlink(missing_ok=True)
    assert main(["test", str(calibrated), str(leftover), "-o", str(tmp_path / "report"), "-q", "--no-report"]) == 0
    assert "calibration_images_in_test" not in json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert "used to calibrate" not in capsys.readouterr().err
