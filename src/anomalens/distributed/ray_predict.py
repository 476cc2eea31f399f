"""``anomalens predict --engine ray``: score many images on a Ray cluster (or Ray's local cluster) with Ray Data.

The pipeline, for N image paths:

1. ``ray.data.from_items`` of (index, path) rows, cut into blocks of about one batch;
2. ``map_batches(decode_images)`` as Ray tasks, in parallel on every CPU: each image is read and resized by
   ``anomalens.data.model_input.decode_for_model``, the decode of the local ``predict`` (same pixels, bit
   for bit); an unreadable file becomes its one-line reason instead of an exception;
3. ``map_batches(ImageScorer)`` on a fixed pool of ``workers`` actors, each loading the model once as its
   ``Predictor`` (a run with torch, an export with ONNX Runtime / OpenVINO: ``anomalens.inference``) and
   scoring whole batches through ``anomalens.inference.predict`` — what the local command runs; with GPUs in the cluster
   every actor holds ``gpus_per_worker`` of one (default 1) and runs on it. (When decoding and scoring ask
   for the same resources — CPU actors — Ray Data may fuse steps 2 and 3: each actor then decodes its own
   batches, and no decoded image crosses the object store.)
4. the driver gathers (index, score, label) rows, keyed by index, and writes ``predictions.csv`` +
   ``predictions.jsonl`` (the local command's columns; ``--format parquet``: ``predictions.parquet``) and
   ``errors.csv`` for unreadable images, into a staging folder renamed into place only when every image is
   accounted for (``anomalens.workflow.staged_directory``): a result folder is complete, or absent.

The model travels with the job: the driver reads the run's (or export's) files once — an export verified as a
whole first (``anomalens.inference.manifest.read_manifest``: every file hashed, plain file names only) — and puts them in
Ray's object store; each actor writes them to a private temporary folder, loads them (verified again) and
removes the folder at once, so no model copy is left in the temporary folder whatever way the actor ends. A
file name that is not a plain name (a folder part, ``..``, an absolute path) is refused before anything is
written. So only the images must be readable at the same paths on every node (a shared mount); the run folder
need not be.

Faults: Ray Data runs a decode task again when its worker process dies, and restarts a scoring actor that
died and re-runs its unfinished batches (its defaults: ``max_restarts=-1``, ``max_task_retries=-1`` on the
actor pool), so a worker killed mid-job (out of memory, a lost node) costs a retry, not the job. Rows are
keyed by their image's index: a batch delivered twice is counted once, and the files are written only once
every index has its row (else the job fails with one line and nothing is written).

What differs from the local ``predict``: no heatmaps or masks (maps stay on the workers: for millions of
images run the local ``predict`` on the flagged ones for pictures), so ``heatmap``, ``mask`` and
``defect_area_fraction`` are empty — the local command's rows with ``--heatmaps none``; no ``--resume``
(Ray retries failed work instead, and nothing is written before the end). Scores equal the local command's
to float rounding (batches may be cut differently).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomalens.distributed.cluster import (
    check_reachable,
    cluster_resources,
    job_failure,
    quiet_ray_data,
    ray_cluster,
    require_ray,
    resolve_address,
)
from anomalens.errors import AnomalensError, ConfigError, DataError
from anomalens.inference.rows import RESULT_FIELDS, result_rows
from anomalens.jsonvalues import plain_json
from anomalens.names import file_label

OUTPUT_FORMATS = ("csv", "parquet")


def model_files(path: str | Path) -> dict[str, bytes]:
    """The files that make a run (``detector.json``, ``weights.safetensors``) or an export (``export.json``
    and the files it lists), by name: what an actor needs to load the model anywhere in the cluster."""
    from anomalens.inference.manifest import MANIFEST_FILE, is_export, read_manifest
    from anomalens.persistence import CONFIG_FILE, WEIGHTS_FILE

    path = Path(path)
    # read_manifest verifies the export (plain names, every file hashed) before a byte of it is shipped.
    names = [MANIFEST_FILE, *read_manifest(path)["files"]] if is_export(path) else [CONFIG_FILE, WEIGHTS_FILE]
    return {name: (path / name).read_bytes() for name in names}


def write_model_files(folder: str | Path, files: dict[str, bytes]) -> None:
    """Write the ``model_files`` dict into ``folder``: ModelFileError, before anything is written, for a name
    that is not a plain file name (it could point outside ``folder``)."""
    from anomalens.errors import ModelFileError
    from anomalens.inference.manifest import is_plain_file_name

    bad = [name for name in files if not is_plain_file_name(name)]
    if bad:
        raise ModelFileError(f"the model sent to the Ray workers names the file {bad[0]!r:.80}, which is not a plain "
                             "file name (a folder part, '..' or an absolute path); nothing was written")
    for name, data in files.items():
        (Path(folder) / name).write_bytes(data)


def decode_images(batch: dict[str, np.ndarray], input_size: tuple[int, int], channels: int,
                  decode: str = "exact") -> dict[str, np.ndarray]:
    """A Ray Data batch of (index, path as file-system bytes) → (index, path, image (B, C, H, W) float32, error): each image decoded
    as the local ``predict`` decodes it (``decode``: the run's exact / fast decoding); an unreadable one gets
    zeros and its one-line reason in ``error``."""
    from anomalens.data.model_input import decode_for_model

    images = np.zeros((len(batch["path"]), channels, *input_size), np.float32)
    errors = []
    for k, path in enumerate(batch["path"]):
        try:
            images[k] = decode_for_model(Path(os.fsdecode(path)), input_size, channels, decode=decode)[0].numpy()
            errors.append("")
        except DataError as exc:
            errors.append(str(exc))
    return {"index": batch["index"], "path": batch["path"], "image": images, "error": np.array(errors, dtype=object)}


class ImageScorer:
    """The Ray Data actor that scores decoded batches: loads the model once, in its own process, as its
    ``Predictor`` (``predictor``).

    ``model`` is the ``model_files`` dict, or a one-item list holding an object reference to it (fetched by
    the actor itself, again after a restart, while the driver holds the reference); ``runtime`` / ``device``
    as for ``anomalens.inference.load_predictor``. A subclass may add work around each batch
    (``predict_with_ray``'s ``scorer``).
    """

    def __init__(self, model: Any, runtime: str | None, device: str | None) -> None:
        import ray

        from anomalens.inference.loading import load_predictor

        files = ray.get(model[0]) if isinstance(model, list) else model
        # The copy lives only while the model loads: a run and an export are read whole into memory by then
        # (OpenVINO may map model.bin, which stays readable once unlinked), and an actor that Ray ends
        # without running finalisers leaves nothing behind.
        with tempfile.TemporaryDirectory(prefix="anomalens-model-") as folder:
            write_model_files(folder, files)
            self.predictor = load_predictor(folder, runtime=runtime, device=device)

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,) float32, labels (B,) int64) of images already at the model's input size."""
        from anomalens.inference.rows import predict

        result = predict(self.predictor, images)
        return np.asarray(result.scores, np.float32), np.asarray(result.labels, np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        readable = np.array([not e for e in batch["error"]], bool)
        scores = np.full(len(readable), np.nan, np.float32)
        labels = np.zeros(len(readable), np.int64)
        if readable.any():
            scores[readable], labels[readable] = self.score(np.asarray(batch["image"])[readable])
        return {"index": batch["index"], "score": scores, "anomalous": labels, "error": batch["error"]}


def default_workers(ray: Any, gpus_per_worker: float) -> int:
    """Scoring actors when not given: one per GPU share with GPUs, else every CPU but one (for decoding)."""
    cpus, gpus = cluster_resources(ray)
    if gpus_per_worker > 0:
        return max(1, int(gpus / gpus_per_worker))
    return max(1, cpus - 1)


def check_capacity(ray: Any, workers: int, gpus_per_worker: float) -> None:
    """ConfigError when the cluster cannot hold ``workers`` scoring actors at once (Ray would wait for them
    forever): each takes one CPU, and ``gpus_per_worker`` of a GPU."""
    cpus, gpus = cluster_resources(ray)
    if workers > cpus or workers * gpus_per_worker > gpus + 1e-9:
        need = f"{workers} CPU(s)" + (f" and {workers * gpus_per_worker:g} GPU(s)" if gpus_per_worker else "")
        raise ConfigError(f"--workers {workers}: the Ray cluster has {cpus} CPU(s) and {gpus} GPU(s), the scoring "
                          f"actors need {need}; ask for fewer workers")


def score_on_ray(
    ray: Any,
    paths: Sequence[str],
    files: dict[str, bytes],
    input_size: tuple[int, int],
    channels: int,
    *,
    workers: int,
    batch_size: int,
    gpus_per_worker: float,
    runtime: str | None,
    device: str | None,
    skip_bad: bool,
    scorer: type[ImageScorer] = ImageScorer,
    decode: str = "exact",
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Run the pipeline (module docstring) over ``paths``: (scores (N,), labels (N,), {index: error}).

    Without ``skip_bad`` the first unreadable image seen stops the job (DataError naming it). Raises
    AnomalensError if an image has no result at the end (nothing is returned half-done).
    """
    n = len(paths)
    model_ref = ray.put(files)
    batch_size = max(1, min(batch_size, math.ceil(n / workers)))  # a small job still reaches every actor
    # Paths travel as bytes (Arrow binary): a file name that is not UTF-8 is no Arrow string.
    items = [{"index": i, "path": os.fsencode(p)} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(math.ceil(n / batch_size), 10_000)))
    # Ray Data's fault tolerance (its defaults): a decode task whose process died is run again; a dead actor is
    # restarted and its unfinished batches re-run.
    ds = ds.map_batches(decode_images, fn_kwargs={"input_size": tuple(input_size), "channels": channels,
                                                  "decode": decode},
                        batch_size=batch_size, num_cpus=1)
    ds = ds.map_batches(scorer, fn_constructor_kwargs={"model": [model_ref], "runtime": runtime, "device": device},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                        num_gpus=gpus_per_worker or None)
    scores = np.full(n, np.nan, np.float32)
    labels = np.zeros(n, np.int64)
    done = np.zeros(n, bool)
    errors: dict[int, str] = {}
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for index, score, label, error in zip(batch["index"], batch["score"], batch["anomalous"], batch["error"]):
                index = int(index)
                if done[index]:  # delivered twice (a retried batch): counted once
                    continue
                done[index] = True
                if error:
                    if not skip_bad:
                        raise DataError(f"{error} (pass --skip-bad to list unreadable images in errors.csv and go on)")
                    errors[index] = str(error)
                else:
                    scores[index], labels[index] = score, label
    except ray.exceptions.RayError as exc:
        raise job_failure(exc, "scoring") from None
    if not done.all():
        missing = np.flatnonzero(~done)
        raise AnomalensError(f"{paths[missing[0]]}: no result came back from the Ray workers for {len(missing)} of "
                             f"{n} images; nothing was written — run the job again")
    return scores, labels, errors


def prediction_rows(paths: Sequence[str], scores: np.ndarray, labels: np.ndarray, decision: Any,
                    errors: dict[int, str]) -> list[dict[str, Any]]:
    """The local ``predict``'s rows (with ``--heatmaps none``) of every readable image, in input order."""
    readable = [i for i in range(len(paths)) if i not in errors]
    normalized = decision.normalized(scores)
    return result_rows([file_label(paths[i]) for i in readable], scores[readable], normalized[readable],
                       labels[readable], decision.image_threshold)


def write_predictions(folder: Path, rows: list[dict[str, Any]], errors: list[dict[str, str]], output_format: str) -> None:
    """``predictions.csv`` + ``.jsonl`` (or ``predictions.parquet``) and ``errors.csv`` (when any) in ``folder``."""
    from anomalens.workflow import ERROR_FIELDS, PREDICTION_FIELDS

    if output_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: [row[name] for row in rows] for name in RESULT_FIELDS}
        types = {"image": pa.string(), "score": pa.float64(), "normalized_score": pa.float64(),
                 "anomalous": pa.bool_(), "threshold": pa.float64()}
        pq.write_table(pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()}),
                       folder / "predictions.parquet")
    else:
        with open(folder / "predictions.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=PREDICTION_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(folder / "predictions.jsonl", "w") as fh:
            fh.writelines(json.dumps(plain_json(row), allow_nan=False) + "\n" for row in rows)
    if errors:
        with open(folder / "errors.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=ERROR_FIELDS)
            writer.writeheader()
            writer.writerows(errors)


def predict_with_ray(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    runtime: str | None = None,
    device: str | None = None,
    output_format: str = "csv",
    batch_size: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    scorer: type[ImageScorer] = ImageScorer,
) -> list[dict[str, Any]]:
    """Score ``images`` (files and folders, as ``predict_images`` takes them) with the run or export ``run_dir``
    on Ray; write the results into ``out_dir`` (see the module docstring). Returns the rows, in input order.

    ``address``: the cluster (``anomalens.distributed.cluster``; None: ``RAY_ADDRESS`` or a local cluster).
    ``workers``: scoring actors (default: one per GPU, else the cluster's CPUs but one). ``gpus_per_worker``:
    the GPU share of each actor (default: 1 when the cluster has GPUs, else 0 — CPU actors; fractions let
    several actors share a GPU). ``output_format``: "csv" (``predictions.csv`` + ``.jsonl``) or "parquet".
    ``batch_size``: images per scored batch (default: the model's). ``skip_bad``: list unreadable images in
    ``errors.csv`` and go on (default: stop at the first, writing nothing).
    """
    from anomalens.inference.loading import load_predictor
    from anomalens.workflow import prediction_records, staged_directory

    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format '{output_format}'; use {' or '.join(OUTPUT_FORMATS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 with --engine ray, got {workers}")
    require_ray()
    check_reachable(resolve_address(address))  # an unreachable cluster fails here, in seconds
    inputs = [run_dir, *([images] if isinstance(images, (str, Path)) else images)]
    with staged_directory(Path(out_dir), overwrite=overwrite, kind="predictions", inputs=inputs) as stage:
        records = prediction_records(images)
        model = load_predictor(run_dir, runtime=runtime, device="cpu")  # checks the run; its rule and input size
        paths = [str(r.source) for r in records]
        files = model_files(run_dir)
        size = batch_size or model.batch_size
        local_cpus = None if workers is None else workers + 1  # a local cluster: one CPU for decoding besides
        with ray_cluster(address, num_cpus=local_cpus, quiet=not progress) as ray:
            quiet_ray_data(ray, progress)
            gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if cluster_resources(ray)[1] else 0.0)
            count = workers or default_workers(ray, gpus)
            check_capacity(ray, count, gpus)
            scores, labels, errors = score_on_ray(
                ray, paths, files, model.input_size, model.image_channels, workers=count, batch_size=size,
                gpus_per_worker=gpus, runtime=runtime, device=device or ("cuda" if gpus else "cpu"),
                skip_bad=skip_bad, scorer=scorer, decode=model.params.get("decode", "exact"))
        rows = prediction_rows(paths, scores, labels, model.decision_, errors)
        error_rows = [{"image": file_label(paths[i]), "error": errors[i]} for i in sorted(errors)]
        write_predictions(stage, rows, error_rows, output_format)
    return rows
