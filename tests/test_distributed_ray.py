"""The Ray engine: predict on Ray Data actors, PaDiM and PatchCore fitted on shards.

One local Ray cluster (2 CPUs, no dashboard) for the module; the tests that need Ray skip, saying why, where
it is not installed. The runs and images are tiny (64 px); the comparisons are against the local paths.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anomalens.catalog import create_detector, load_detector
from anomalens.cli import main
from anomalens.data import load_dataset
from anomalens.errors import ConfigError, DataError
from anomalens.workflow import predict_images

from conftest import FIT

try:
    import ray
    import ray.data  # noqa: F401
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'anomalens[ray]')")


@pytest.fixture(scope="module")
def ray_session():
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'anomalens[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(category, tmp_path_factory):
    """The category's test images, one of them under a name that is not UTF-8, plus one file that is not an
    image, in one folder."""
    folder = tmp_path_factory.mktemp("images")
    for path in sorted((category / "test").rglob("*.png")):
        (folder / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    first = sorted(folder.iterdir())[0]
    first.rename(folder / os.fsdecode(b"caf\xe9_" + os.fsencode(first.name)))
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_same_rows(ray_rows: list[dict], local_rows: list[dict]) -> None:
    assert [r["image"] for r in ray_rows] == [r["image"] for r in local_rows]
    for got, want in zip(ray_rows, local_rows):
        assert float(got["score"]) == pytest.approx(float(want["score"]), rel=1e-5)
        assert float(got["normalized_score"]) == pytest.approx(float(want["normalized_score"]), rel=1e-5, abs=1e-7)
        assert str(got["anomalous"]) == str(want["anomalous"])
        assert float(got["threshold"]) == float(want["threshold"])


@needs_ray
def test_predict_on_ray_writes_what_the_local_predict_writes(ray_session, run, images, tmp_path):
    from anomalens.distributed import predict_with_ray

    local = predict_images(run, images, tmp_path / "local", heatmaps="none", skip_bad=True, progress=False, workers=0)
    rows = predict_with_ray(run, images, tmp_path / "ray", workers=2, skip_bad=True, progress=False)
    _assert_same_rows(rows, local)
    # the files, column for column: CSV (same header), JSONL, errors.csv naming the broken file as local does
    _assert_same_rows(_read_csv(tmp_path / "ray" / "predictions.csv"), _read_csv(tmp_path / "local" / "predictions.csv"))
    assert (tmp_path / "ray" / "predictions.csv").read_text().splitlines()[0] == \
        (tmp_path / "local" / "predictions.csv").read_text().splitlines()[0]
    jsonl = [json.loads(line) for line in (tmp_path / "ray" / "predictions.jsonl").read_text().splitlines()]
    assert jsonl == rows
    assert _read_csv(tmp_path / "ray" / "errors.csv") == _read_csv(tmp_path / "local" / "errors.csv")
    assert [r["image"] for r in _read_csv(tmp_path / "ray" / "errors.csv")] == [str(images / "broken.png")]


class CrashOnce:
    """Mixin for the scoring actor: the first batch any actor receives kills its process (once per flag file)."""

    flag: Path

    def __call__(self, batch):
        if not self.flag.exists():
            self.flag.touch()
            os._exit(1)  # the worker process dies mid-job, as if killed
        return super().__call__(batch)


@needs_ray
def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(ray_session, run, images, tmp_path):
    """Also the parquet output: the same rows as the local predict's, in a file of its own."""
    import pyarrow.parquet as pq

    from anomalens.distributed import ImageScorer, predict_with_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor class travels by value
    flag = tmp_path / "crashed"
    scorer = type("CrashingScorer", (CrashOnce, ImageScorer), {"flag": flag})
    rows = predict_with_ray(run, images, tmp_path / "ray", workers=1, skip_bad=True, progress=False, scorer=scorer,
                            output_format="parquet")
    assert flag.exists()  # it did die
    local = predict_images(run, images, tmp_path / "local", heatmaps="none", skip_bad=True, progress=False, workers=0)
    _assert_same_rows(rows, local)  # every image once, in order, same scores
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [".anomalens-output.json", "errors.csv",
                                                                    "predictions.parquet"]
    _assert_same_rows(pq.read_table(tmp_path / "ray" / "predictions.parquet").to_pylist(), local)


@needs_ray
def test_an_unreadable_image_without_skip_bad_stops_and_writes_nothing(ray_session, run, images, tmp_path):
    from anomalens.distributed import predict_with_ray

    with pytest.raises(DataError, match="broken.png.*--skip-bad"):
        predict_with_ray(run, images, tmp_path / "out", workers=1, progress=False)
    assert os.listdir(tmp_path) == []  # no output folder, no staging folder, no lock


def test_an_unreachable_cluster_is_one_line_within_seconds(run, category, tmp_path, capsys):
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'anomalens[ray]')")
    start = time.monotonic()
    code = main(["predict", str(run), str(category / "test" / "good"), "-o", str(tmp_path / "out"), "--engine", "ray",
                 "--address", "127.0.0.1:9", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 15
    assert err.count("\n") == 1 and "127.0.0.1:9" in err and "no Ray cluster answers" in err
    assert not (tmp_path / "out").exists()
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "run"), *FIT, "--engine", "ray",
                 "--address", "127.0.0.1:9"]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_without_ray_the_engine_says_how_to_install_it(run, category, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError, as when it is not installed
    assert main(["predict", str(run), str(category / "test" / "good"), "-o", str(tmp_path / "out"),
                 "--engine", "ray", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'anomalens[ray]'" in err
    assert not (tmp_path / "out").exists()


def test_options_of_another_engine_are_refused(run, category, tmp_path, capsys):
    cases = [["fit", "padim", str(category), "-o", str(tmp_path / "r"), *FIT, "--shards", "2"],
             ["fit", "padim", str(category), "-o", str(tmp_path / "r"), *FIT, "--resume"],
             ["predict", str(run), str(category / "test" / "good"), "-o", str(tmp_path / "p"), "--format", "parquet"],
             ["predict", str(run), str(category / "test" / "good"), "-o", str(tmp_path / "p"), "--engine", "ray",
              "--heatmaps", "all"]]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "engine" in err, argv
    assert os.listdir(tmp_path) == []


def test_shard_plan_keeps_folds_whole_and_balanced():
    from anomalens.distributed.sharded_fit import shard_plan

    folds = [np.array([0, 3, 6]), np.array([1, 4, 7]), np.array([2, 5])]
    plan = shard_plan(folds, 2)
    assert [list(index) for index, _ in plan] == [[0, 3, 6, 1, 4, 7], [2, 5]]
    assert [[list(f) for f in local] for _, local in plan] == [[[0, 1, 2], [3, 4, 5]], [[0, 1]]]
    loo = shard_plan([np.array([i]) for i in range(7)], 3)  # leave-one-out: runs of single images
    assert [list(index) for index, _ in loo] == [[0, 1, 2], [3, 4], [5, 6]]
    assert len(shard_plan(folds, 10)) == 3  # never more shards than folds


def _inverse_covariance(detector) -> np.ndarray:
    whitener = detector.whitener_.double()
    return (whitener.transpose(1, 2) @ whitener).numpy()


@needs_ray
def test_sharded_padim_is_the_single_fit(ray_session, category):
    from anomalens.distributed import fit_sharded

    train = load_dataset(category).train
    # d = 8 features from 12 images: well-conditioned covariances, so float rounding stays at float level
    params = {"image_size": 64, "batch_size": 4, "device": "cpu", "n_features": 8}
    single = create_detector("padim", **params).fit(train, progress=False)
    sharded = create_detector("padim", **params)
    info = fit_sharded(sharded, train, shards=2, progress=False)
    assert info["shards"] == 2
    np.testing.assert_allclose(sharded.mean_.numpy(), single.mean_.numpy(), rtol=1e-5, atol=1e-5)
    inverse, single_inverse = _inverse_covariance(sharded), _inverse_covariance(single)
    np.testing.assert_allclose(inverse, single_inverse, rtol=1e-4, atol=1e-4 * np.abs(single_inverse).max())
    np.testing.assert_allclose(np.linalg.inv(inverse), np.linalg.inv(single_inverse), rtol=1e-4,
                               atol=1e-4 * np.abs(np.linalg.inv(single_inverse)).max())
    # the threshold: the same leave-one-out scores and maps, so the same rule
    assert sharded.decision_.description == single.decision_.description
    assert sharded.threshold_ == pytest.approx(single.threshold_, rel=1e-5)
    assert sharded.pixel_threshold_ == pytest.approx(single.pixel_threshold_, rel=1e-5)
    assert sharded.decision_.map_reference == pytest.approx(single.decision_.map_reference, rel=1e-5)
    test = load_dataset(category).test
    np.testing.assert_allclose(sharded.predict(test, progress=False).scores, single.predict(test, progress=False).scores,
                               rtol=1e-5)


@needs_ray
def test_sharded_patchcore_is_an_ordinary_run(ray_session, category, tmp_path, capsys):
    run = tmp_path / "pc"
    assert main(["fit", "patchcore", str(category), "-o", str(run), *FIT, "--engine", "ray", "--shards", "2"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert (info["engine"], info["shards"]) == ("ray", 2)
    detector = load_detector(run)
    n_patches = 12 * detector.grid_size_[0] * detector.grid_size_[1]
    assert detector.memory_bank_.shape[0] == detector.coreset_size(n_patches)  # the size a single fit keeps
    assert "folds" in detector.decision_.description  # cross-fitted, as the local fit
    capsys.readouterr()
    assert main(["test", str(run), str(category), "--no-report", "-q"]) == 0
    assert "image_auroc=" in capsys.readouterr().out


@needs_ray
def test_a_detector_that_trains_is_not_sharded(ray_session, category, tmp_path, capsys):
    assert main(["fit", "stpm", str(category), "-o", str(tmp_path / "r"), *FIT, "--engine", "ray"]) == 2
    assert "--engine ddp" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cross-fitting"):
        from anomalens.distributed import fit_sharded

        fit_sharded(create_detector("padim", threshold_folds=1, image_size=64, device="cpu"),
                    load_dataset(category).train, progress=False)


@needs_ray
def test_a_failed_ray_job_is_one_line_naming_the_workers_error():
    from anomalens.distributed.cluster import job_failure
    from anomalens.errors import AnomalensError

    bad_image = DataError("a.png: cannot read image (truncated)")
    wrapped = ray.exceptions.RayTaskError("ImageScorer.__call__", "Traceback ...", bad_image)
    assert job_failure(wrapped, "scoring") is bad_image
    died = job_failure(ray.exceptions.RayError("the actor died\nunexpectedly: out of memory"), "scoring")
    assert isinstance(died, AnomalensError)
    assert str(died) == "scoring failed on Ray (RayError: unexpectedly: out of memory)"


# ------------------------------------------------- issue 30: the model copies the scoring actors make
def _export(run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_run

    return export_run(run, tmp_path / "export")


@needs_ray
@pytest.mark.parametrize("kind", ["run", "export"])
def test_a_scoring_actor_leaves_no_model_copy_in_the_temporary_folder(kind, run, category, tmp_path, monkeypatch):
    """Issue 30: each actor's copy of the model stayed in the temporary folder after the job. The copy now
    lives only while the model loads; the actor still scores as the local model does."""
    import tempfile

    from anomalens.distributed import ImageScorer
    from anomalens.distributed.ray_predict import model_files
    from anomalens.inference import load_predictor
    from anomalens.inference.preprocess import load_input
    from anomalens.inference.rows import predict_inputs

    model = run if kind == "run" else _export(run, tmp_path)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    scorer = ImageScorer(model_files(model), None, "cpu")
    assert os.listdir(temporary) == []
    local = load_predictor(model, device="cpu")
    paths = sorted((category / "test").rglob("*.png"))[:3]
    batch = np.stack([load_input(p, local.input_size, local.image_channels) for p in paths])
    scores, _ = scorer.score(batch)
    np.testing.assert_allclose(scores, predict_inputs(local, [str(p) for p in paths]).scores, rtol=1e-4)


@pytest.mark.parametrize("name", ["../escaped.bin", "/tmp/escaped.bin", "sub/x.bin", "..", ""])
def test_a_crafted_export_never_writes_outside_the_actors_folder(name, run, tmp_path):
    """Issue 30: a file entry with '../' in a crafted export was written outside the actor's temporary folder.
    The driver refuses the export before shipping it (read_manifest), and the actor refuses such a name before
    writing anything."""
    import hashlib
    import shutil

    from anomalens.distributed.ray_predict import model_files, write_model_files
    from anomalens.errors import ModelFileError

    export = _export(run, tmp_path)
    manifest = json.loads((export / "export.json").read_text())
    manifest["files"][name] = hashlib.sha256(b"payload").hexdigest()
    (export / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="not a plain file name"):
        model_files(export)
    folder = tmp_path / "actor" / "model"
    folder.mkdir(parents=True)
    files = {"export.json": b"{}", name: b"payload"}
    with pytest.raises(ModelFileError, match="not a plain file name.*nothing was written"):
        write_model_files(folder, files)
    assert os.listdir(folder) == [] and os.listdir(tmp_path / "actor") == ["model"]
    assert not Path("/tmp/escaped.bin").exists()
    shutil.rmtree(tmp_path / "actor")


@needs_ray
def test_ray_predict_refuses_a_tampered_export_before_starting(run, category, tmp_path, capsys):
    """The export is verified on the driver: a threshold edited in export.json is one line, nothing written."""
    export = _export(run, tmp_path)
    manifest = json.loads((export / "export.json").read_text())
    manifest["decision"]["image_threshold"] *= 100
    (export / "export.json").write_text(json.dumps(manifest))
    image = min((category / "test").rglob("*.png"))
    assert main(["predict", str(export), str(image), "-o", str(tmp_path / "out"), "--engine", "ray",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "differs from the copy inside model.onnx" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@needs_ray
def test_the_command_under_q_prints_one_line_for_an_unreadable_image(run, images, tmp_path):
    """`predict --engine ray -q` in its own process (its own local cluster): an unreadable image in the middle
    is the one error line of the local engine — no Ray warnings, no log wall."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "anomalens.cli", "predict", str(run), str(images), "-o",
                           str(tmp_path / "out"), "--engine", "ray", "--workers", "1", "-q"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anomalens: error:") and "broken.png" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
