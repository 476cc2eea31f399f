"""The output-folder protocol (anomalens.workflow): no lost file, no deleted input, no leftovers, one-line errors.

Regression tests for issue 15: the output-folder race (3), --overwrite deleting inputs and runs (4),
file-system errors as tracebacks (6), NaN in metrics.json (13) and leftovers after kill -9 (14).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from anomalens.cli import main
from tests.conftest import FIT
from anomalens.outputs.marker import output_kind
from anomalens.outputs.targets import folder_lock
from anomalens.outputs.names import MARKER_FILE


@pytest.fixture
def images(category, tmp_path) -> Path:
    """A private copy of a few test images (tests may try to delete it)."""
    folder = tmp_path / "imgs"
    shutil.copytree(category / "test" / "hole", folder)
    return folder


def _one_line_error(capsys, *needles: str) -> str:
    # the library's warnings are lines of their own before it
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith("anomalens: warning:"))
    assert err.startswith("anomalens: error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------- 3: the race
# Two identical fits / predicts into one folder at once (exactly one wins, the other says why in one line, no
# staging folder or lock left): the adversarial suite's cases two-fits-into-one-folder and
# two-predicts-into-one-folder (tests/adversarial_cases.py), which once ran here a second time.


def test_a_held_lock_makes_a_second_command_fail_at_once(run, images, tmp_path, capsys):
    out = tmp_path / "out"
    with folder_lock(out):  # as a concurrent command holds it
        assert main(["predict", str(run), str(images), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "another anomalens command is writing")
    assert not out.exists()


def test_a_user_file_created_in_output_during_a_fit_survives(category, tmp_path, monkeypatch, capsys):
    import anomalens.workflow as workflow

    out = tmp_path / "run"
    real = workflow.fit.as_dataset

    def user_writes_meanwhile(data):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return real(data)

    monkeypatch.setattr(workflow.fit, "as_dataset", user_writes_meanwhile)
    assert main(["fit", "padim", str(category), "-o", str(out), *FIT]) == 2
    _one_line_error(capsys, "created by something else while this command ran")
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------- 4: --overwrite and inputs
def test_output_equal_to_the_input_images_with_overwrite_is_refused(run, images, capsys):
    before = _snapshot(images)
    assert main(["predict", str(run), str(images), "-o", str(images), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "is an input of this command")
    assert _snapshot(images) == before


def test_output_equal_to_the_run_with_overwrite_is_refused(run, images, capsys):
    before = _snapshot(run)
    assert main(["predict", str(run), str(images), "-o", str(run), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "is an input of this command")
    assert _snapshot(run) == before


def test_output_above_or_inside_an_input_is_refused(category, run, images, tmp_path, capsys):
    assert main(["predict", str(run), str(images), "-o", str(tmp_path), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "contains an input")
    assert main(["predict", str(run), str(images), "-o", str(images / "pred"), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "inside an input")
    data = tmp_path / "cat"
    shutil.copytree(category, data)
    before = _snapshot(data)
    assert main(["fit", "padim", str(data), "-o", str(data), "--overwrite", *FIT]) == 2
    _one_line_error(capsys, "is an input")
    assert _snapshot(data) == before


def test_overwrite_refuses_a_folder_anomalens_did_not_write(run, images, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["predict", str(run), str(images), "-o", str(mine), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "not a folder anomalens wrote")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_folder_of_another_kind(run, category, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["predict", str(run), str(category / "test" / "good"), "-o", str(copy), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "is an anomalens run folder, not a predictions folder")
    assert (copy / "weights.safetensors").is_file()


def test_overwrite_replaces_an_anomalens_folder_and_keeps_nothing_old(run, images, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q"]) == 0
    assert output_kind(out) == "predictions" and (out / MARKER_FILE).is_file()
    assert main(["predict", str(run), str(images), "-o", str(out), "--overwrite", "-q", "--no-heatmaps"]) == 0
    assert not (out / "heatmaps").exists() and (out / "predictions.csv").is_file()
    assert _leftovers(tmp_path) == []


def test_a_crash_between_the_renames_leaves_the_old_folder_and_the_next_run_restores_it(run, images, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--no-heatmaps"]) == 0
    before = _snapshot(out)
    os.rename(out, tmp_path / ".pred.old-0123abcd")  # killed after "rename aside", before "rename in"
    stage = tmp_path / ".pred.partial-89abcdef"
    shutil.copytree(tmp_path / ".pred.old-0123abcd", stage)
    assert main(["predict", str(run), str(images), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "already exists")
    assert _snapshot(out) == before and _leftovers(tmp_path) == []


def test_a_failed_rename_in_restores_the_old_folder(run, images, tmp_path, monkeypatch, capsys):

    out = tmp_path / "pred"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--no-heatmaps"]) == 0
    before = _snapshot(out)
    real_rename = os.rename

    def failing_rename(src, dst):
        if ".partial-" in str(src):
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    assert main(["predict", str(run), str(images), "-o", str(out), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "Input/output error")
    assert _snapshot(out) == before and _leftovers(tmp_path) == []


# --------------------------------------------------------------------- 6: file-system errors
def test_output_that_is_an_existing_file(run, images, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    assert main(["predict", str(run), str(images), "-o", str(target), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "file.txt", "is not a folder")
    assert target.read_text() == "keep"


def test_output_under_a_file(category, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("keep")
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "file.txt" / "run"), *FIT]) == 2
    _one_line_error(capsys, "file.txt")


def test_read_only_parent_directory(category, tmp_path, capsys):
    if os.geteuid() == 0:  # root ignores permission bits: use a file system that refuses new folders
        parent = Path("/sys")
        try:
            os.mkdir(parent / "anomalens-probe")
        except OSError:
            pass
        else:
            os.rmdir(parent / "anomalens-probe")
            pytest.skip("no read-only folder available to root here")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    start = time.perf_counter()
    assert main(["fit", "padim", str(category), "-o", str(parent / "run"), *FIT]) == 2
    _one_line_error(capsys, str(parent), "cannot")
    assert time.perf_counter() - start < 5, "the folder must be checked before the fit"


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_symbolic_link_as_output(kind, run, images, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing" if kind == "dangling" else link)
    assert main(["predict", str(run), str(images), "-o", str(link), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "link", "symbolic link")
    assert link.is_symlink() and not (tmp_path / "missing").exists()


def test_a_full_disk_while_writing_gives_one_line_and_leaves_nothing(run, images, tmp_path, monkeypatch, capsys):

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "predictions.csv"))

    monkeypatch.setattr(csv, "DictWriter", disk_full)
    assert main(["predict", str(run), str(images), "-o", str(tmp_path / "out"), "-q"]) == 2
    _one_line_error(capsys, "predictions.csv: No space left on device")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_a_failed_fit_removes_the_parent_folders_it_created(tmp_path, capsys):
    assert main(["fit", "padim", str(tmp_path / "nowhere"), "-o", str(tmp_path / "a" / "b" / "run"), *FIT]) == 2
    _one_line_error(capsys, "nowhere")
    assert not (tmp_path / "a").exists()


def test_a_test_report_never_replaces_files_it_did_not_write(run, category, tmp_path, capsys):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "report.html").write_text("my own report")
    assert main(["test", str(run), str(category), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "report.html", "not written by anomalens")
    assert (out / "report.html").read_text() == "my own report"
    assert sorted(os.listdir(out)) == ["report.html"]


@pytest.mark.parametrize("own", [["metrics.json"], ["metrics.json", "notes.txt"], ["predictions.csv", "plan.md"]])
def test_a_user_file_with_an_anomalens_name_does_not_make_the_folder_ours(own, run, category, tmp_path, capsys):
    """Without the marker, one file of a common name is no proof that anomalens wrote the folder."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in own:
        (out / name).write_text(f"my own {name}")
    assert output_kind(out) is None
    if "metrics.json" in own:  # test adds its files beside a user's, but never replaces one
        assert main(["test", str(run), str(category), "-o", str(out), "-q"]) == 2
        _one_line_error(capsys, "not written by anomalens")
    assert main(["predict", str(run), str(category / "test" / "good"), "-o", str(out), "--overwrite", "-q"]) == 2
    _one_line_error(capsys, "not a folder anomalens wrote")
    assert {p.name: p.read_text() for p in out.iterdir()} == {name: f"my own {name}" for name in own}


def test_a_report_folder_from_before_the_marker_is_still_recognised_and_replaced(run, category, tmp_path):
    out = tmp_path / "report"
    assert main(["test", str(run), str(category), "-o", str(out), "-q"]) == 0
    (out / MARKER_FILE).unlink()  # as written by a version without the marker
    assert output_kind(out) == "report"
    first = (out / "metrics.json").read_text()
    assert main(["test", str(run), str(category), "-o", str(out), "-q"]) == 0
    assert json.loads((out / "metrics.json").read_text()).keys() == json.loads(first).keys()
    assert _leftovers(out) == [MARKER_FILE]


# ------------------------------------------------------------------------------ 14: leftovers
def test_after_a_stop_request_nothing_staged_is_committed(tmp_path, monkeypatch):
    """SIGTERM's handler raises where the main thread is, but an exception raised inside a finaliser is dropped:
    the stop request it also leaves makes the last step before a commit refuse, in both staging paths."""
    from anomalens.errors import Terminated
    from anomalens.outputs import folders

    monkeypatch.setattr(folders, "_stop_requested", False)  # restored after the test: the flag is per process
    new, existing = tmp_path / "new", tmp_path / "existing"
    with folders.staged_update(existing, kind="report") as stage:
        (stage / "metrics.json").write_text("{}")
    before = sorted(os.listdir(existing))
    folders.request_stop()
    with pytest.raises(Terminated):
        with folders.staged_directory(new, kind="run") as stage:
            (stage / "detector.json").write_text("{}")
    with pytest.raises(Terminated):
        with folders.staged_update(existing, kind="report") as stage:
            (stage / "scores.csv").write_text("image,score\n")
    assert not new.exists() and sorted(os.listdir(existing)) == before
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # no staging folder left either


# A fit killed by SIGKILL or SIGTERM while staging (nothing that looks like a run; SIGTERM: exit 143, one line,
# the staging folder removed on the way out; the next fit cleans up and succeeds): the adversarial suite's cases
# kill-9-during-fit and sigterm-during-fit (tests/adversarial_cases.py), which once ran here a second time.


def test_calibrate_removes_a_temporary_file_a_full_disk_left(run, category, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "detector.json.tmp").write_bytes(b"")
    (copy / ".anomalens-partial-0123abcd").mkdir()
    assert main(["calibrate", str(copy), str(category), "-q"]) == 0
    assert not (copy / "detector.json.tmp").exists() and not (copy / ".anomalens-partial-0123abcd").exists()
    assert "calibration.json" in json.loads((copy / MARKER_FILE).read_text())["files"]


# ---------------------------------------------------------------------- 13: NaN in metrics.json
def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_with_only_normal_test_images_is_strict_json_with_null(run, category, tmp_path, capsys):
    normals = tmp_path / "normals"
    shutil.copytree(category, normals, ignore=shutil.ignore_patterns("ground_truth"))
    for defect in (normals / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)
    out = tmp_path / "out"
    assert main(["test", str(run), str(normals), "-o", str(out), "-q"]) == 0
    metrics = _strict((out / "metrics.json").read_text())
    assert metrics["image_auroc"] is None and metrics["n_anomalous"] == 0
    assert metrics["undefined"]["image_auroc"] == "no anomalous image in the test set"
    printed = capsys.readouterr().out
    assert "image_auroc=undefined (no anomalous image in the test set)" in printed and "nan" not in printed
    assert output_kind(out) == "report" and (out / "report.html").is_file()


# ------------------------------------------------------------- export: the same protocol as every output
def _export(run: Path, out: Path, *extra: str) -> int:
    return main(["export", str(run), "--format", "onnx", "-o", str(out), "-q", *extra])


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("exports") / "brick"
    assert _export(run, out) == 0
    return out


def test_export_overwrite_never_deletes_a_users_folder(run, exported, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _export(run, mine, "--overwrite") == 2
    _one_line_error(capsys, str(mine), "not a folder anomalens wrote")
    assert _snapshot(mine) == {"notes.txt": b"keep me"}
    assert _leftovers(tmp_path) == []


def test_export_overwrite_into_the_run_or_the_data_is_refused(run, category, exported, capsys):
    before_run, before_data = _snapshot(run), _snapshot(category)
    for target, says in ((run, "input of this command"), (run / "sub", "input of this command"),
                         (run.parent, "input of this command"), (category, "not an export folder")):
        assert _export(run, target, "--overwrite") == 2
        _one_line_error(capsys, str(target), says)
    assert _snapshot(run) == before_run and _snapshot(category) == before_data


def test_export_overwrite_refuses_another_kind_of_anomalens_folder(run, images, exported, tmp_path, capsys):
    predictions = tmp_path / "preds"
    assert main(["predict", str(run), str(images), "-o", str(predictions), "-q"]) == 0
    before = _snapshot(predictions)
    assert _export(run, predictions, "--overwrite") == 2
    _one_line_error(capsys, "not an export folder")
    assert _snapshot(predictions) == before


def test_export_into_an_existing_empty_folder_and_over_an_earlier_export(run, exported, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    assert _export(run, out) == 0
    assert (out / "export.json").is_file() and (out / MARKER_FILE).is_file()
    first = _snapshot(out)
    assert _export(run, out) == 2  # not empty any more: needs --overwrite
    assert _export(run, out, "--overwrite") == 0
    assert set(_snapshot(out)) == set(first) and _leftovers(tmp_path) == []
    manifest = json.loads((out / "export.json").read_text())
    assert MARKER_FILE not in manifest["files"] and "model.onnx" in manifest["files"]


def test_a_folder_created_while_the_export_ran_survives(run, exported, tmp_path, monkeypatch, capsys):
    import anomalens.export as export

    out = tmp_path / "late"
    real_check = export.compare_outputs

    def user_creates_folder_meanwhile(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "mine.txt").write_text("mine")
        return real_check(*args, **kwargs)

    monkeypatch.setattr(export, "compare_outputs", user_creates_folder_meanwhile)
    assert _export(run, out, "--overwrite") == 2
    _one_line_error(capsys, str(out))
    assert _snapshot(out) == {"mine.txt": b"mine"}
    assert _leftovers(tmp_path) == []
