"""The Ray engine, ``RayShards`` (``anomalens fit padim|patchcore --engine ray``): the training-free
detectors fitted on shards of the training images, on Ray workers, into an ordinary run.

    fit_run("padim", DATA, RUN, engine=RayShards(shards=8, address="ray://head:10001"))

``Detector.fit`` runs on the driver exactly as in one process — hold-out split, the cross-fitting folds,
the seed, the decision rule from the out-of-fold normal scores, its warnings — and only the work of the
cross-fitting moves to the cluster: the engine passes its ``RayShardRunner`` to ``fit`` as the ``cross_fit``
strategy (``anomalens.detector.normal_scores.CrossFit``), which

1. cuts the N training images, in the order ``fit`` sees them, into shards along the threshold folds
   (whole folds per shard; leave-one-out: contiguous runs of images), one ``ShardWorker`` actor per shard;
2. has every worker compute its share (``shard_part``): PaDiM the running sums of its images' embeddings
   (``GaussianSums``, the class the local fit sums into), PatchCore a greedy coreset of its patches, twice
   the final fraction (``CoresetPart``);
3. merges them on the driver in shard order (``merge_shard_parts``): PaDiM's sums re-centred onto one shift
   and added — the Gaussians of a single fit up to float rounding; PatchCore's final coreset of the union,
   the size a single fit keeps (an approximation, measured in ``benchmarks/distributed.py``) — and makes it
   the fitted model (``adopt_merged``);
4. has every worker score its own images out of fold against the merged model (``score_shard_folds``, the
   code ``fit`` runs: PaDiM leave-one-out in closed form or fold by fold, PatchCore each fold against the
   coreset selected from the union of the shards' coresets without the fold's patches); ``fit`` sets the
   threshold from those N scores and maps as it always does.

The detector is never told which engine runs it: the shard hooks (``ShardableDetector``) are plain methods
of its arithmetic. The saved run is an ordinary run (``load_detector``, ``test``, ``predict``, ``export``),
its decision rule computed like a local fit's; for PaDiM every number equals the single-machine fit's to
float rounding (sums added in another order). The threshold comes from cross-fitting only: a detector set to
the plain hold-out (``threshold_folds=1``, or too few images to cross-fit) is refused with one line.

Workers read the training images themselves (paths must be readable on every node, e.g. a shared mount;
in-memory images travel with the job), take one CPU each (``torch`` runs one thread) or a GPU each when the
cluster has GPUs, and are restarted by Ray if they die, their unfinished call run again (each call starts
from its arguments, so a retry gives the same result).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from anomalens.distributed.cluster import (
    check_reachable,
    cluster_resources,
    job_failure,
    ray_cluster,
    require_ray,
    resolve_address,
)
from anomalens.errors import ConfigError

MAX_RETRIES = 2  # restarts of a dead shard worker, and re-runs of its unfinished call


@runtime_checkable
class ShardableDetector(Protocol):
    """What a detector offers to be fitted on shards (PaDiM and PatchCore; see their "fitting on shards"): a
    shard's part of the fit (PaDiM: ``GaussianSums``; PatchCore: ``CoresetPart``), the merge of the parts into
    the state of one fit (``GaussianSums``; ``MergedCoreset``), adopting it, and scoring a shard's images out
    of fold against it."""

    name: str

    def shard_params(self) -> dict[str, Any]: ...
    def shard_part(self, records: Sequence, global_index: np.ndarray, progress: bool = False) -> Any: ...
    def merge_shard_parts(self, parts: Any) -> Any: ...
    def adopt_merged(self, state: Any) -> None: ...
    def score_shard_folds(self, records: list, state: Any, folds: list[np.ndarray],
                          global_index: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]: ...


class ShardWorker:
    """A Ray actor holding one shard's detector: builds it once, computes its part, scores its folds.

    It holds one CPU, so it decodes its images itself instead of starting decoding processes."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        from anomalens.catalog import create_detector

        self.detector = create_detector(name, **params)

    def part(self, records: list, global_index: np.ndarray) -> Any:
        from anomalens.data import decoding_workers

        with decoding_workers(0):
            return self.detector.shard_part(records, global_index)

    def score(self, records: list, state: Any, folds: list[np.ndarray],
              global_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from anomalens.data import decoding_workers

        with decoding_workers(0):
            return self.detector.score_shard_folds(records, state, folds, global_index)


def shard_plan(folds: Sequence[np.ndarray], shards: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Cut the folds (index arrays covering 0..N-1) into at most ``shards`` shards of whole folds, in order
    and near-equal image counts: per shard, (global indices of its images, its folds as local index arrays)."""
    folds = [np.asarray(fold, dtype=np.int64) for fold in folds]
    total = sum(len(fold) for fold in folds)
    shards = max(1, min(shards, len(folds)))
    plan, current, filled = [], [], 0
    for j, fold in enumerate(folds):
        current.append(fold)
        filled += len(fold)
        left_folds, left_shards = len(folds) - j - 1, shards - len(plan) - 1
        # close this shard at its share of the images, keeping a fold for every shard still to fill
        if left_shards and (filled >= total * (len(plan) + 1) / shards or left_folds == left_shards):
            plan.append(current)
            current = []
    if current:
        plan.append(current)
    result = []
    for group in plan:
        index = np.concatenate(group)
        starts = np.cumsum([0] + [len(fold) for fold in group])
        result.append((index, [np.arange(starts[i], starts[i + 1]) for i in range(len(group))]))
    return result


class RayShardRunner:
    """The ``cross_fit`` strategy ``RayShards`` passes to ``Detector.fit``: the out-of-fold work on shards
    (module docstring)."""

    def __init__(self, ray: Any, shards: int | None = None, gpus_per_shard: float | None = None) -> None:
        cpus, gpus = cluster_resources(ray)
        self.ray = ray
        self.gpus_per_shard = gpus_per_shard if gpus_per_shard is not None else (1.0 if gpus else 0.0)
        default = int(gpus / self.gpus_per_shard) if self.gpus_per_shard else cpus
        self.shards = shards or max(1, default)
        if self.shards > cpus or self.shards * self.gpus_per_shard > gpus + 1e-9:
            each = "one CPU" + (f" and {self.gpus_per_shard:g} GPU" if self.gpus_per_shard else "")
            raise ConfigError(f"--shards {self.shards}: the Ray cluster has {cpus} CPU(s) and {gpus} GPU(s), and each "
                              f"shard worker takes {each}; ask for fewer shards")
        self.shards_used = 0

    def fit_out_of_fold(self, detector: ShardableDetector, parts: list[list], folds: list[np.ndarray],
                        progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Fit ``detector`` on the images of ``parts`` (in order) on shards; return every image's out-of-fold
        scores (N,) and maps (N, H, W) — what ``_fit_and_score_out_of_fold`` returns."""
        from anomalens.progress import iterate_progress

        ray = self.ray
        records = [r for part in parts for r in part]
        plan = shard_plan(folds, self.shards)
        self.shards_used = len(plan)
        params = {**detector.shard_params(), "device": "cuda" if self.gpus_per_shard else "cpu"}
        actor = ray.remote(ShardWorker).options(num_cpus=1, num_gpus=self.gpus_per_shard or None,
                                                max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
        workers = [actor.remote(detector.name, params) for _ in plan]
        try:
            shard_records = [[records[i] for i in index] for index, _ in plan]
            part_refs = [w.part.remote(recs, index) for w, recs, (index, _) in zip(workers, shard_records, plan)]

            def parts_in_order() -> Iterator[Any]:  # one part in memory at a time, in shard order
                for k in iterate_progress(range(len(part_refs)), progress, f"{detector.name} shards",
                                          total=len(part_refs)):
                    part = ray.get(part_refs[k])
                    part_refs[k] = None
                    yield part

            state = detector.merge_shard_parts(parts_in_order())
            state_ref = ray.put(state)  # before adopt_merged, which may consume the state in place
            score_refs = [w.score.remote(recs, state_ref, local_folds, index)
                          for w, recs, (index, local_folds) in zip(workers, shard_records, plan)]
            detector.adopt_merged(state)
            del state
            scores, maps = np.empty(len(records), np.float32), None
            for (index, _), ref in zip(plan, score_refs):
                shard_scores, shard_maps = ray.get(ref)
                if maps is None:
                    maps = np.empty((len(records), *shard_maps.shape[1:]), np.float32)
                scores[index], maps[index] = shard_scores, shard_maps
        finally:
            for worker in workers:
                ray.kill(worker)
        return scores, maps


NOT_SHARDABLE = ("cannot be fitted on shards (--engine ray fits padim and patchcore, whose fit is a sum or a "
                 "coreset); train the detectors that train data-parallel with torchrun (--engine ddp)")


class RayShards:
    """The Ray engine (``anomalens.engines.FitEngine``; module docstring): ``shards`` workers (default: one per
    CPU of the cluster, or per GPU when it has GPUs) on the cluster at ``address``
    (``anomalens.distributed.cluster``), each with ``gpus_per_shard`` of a GPU (default 1 with GPUs, else 0)."""

    def __init__(self, shards: int | None = None, address: str | None = None,
                 gpus_per_shard: float | None = None) -> None:
        self.shards, self.address, self.gpus_per_shard = shards, address, gpus_per_shard

    def check(self, detector: Any) -> None:
        """Before anything is read: Ray is installed, ``shards`` makes sense, the detector can be sharded and
        the cluster answers (ConfigError, one line, otherwise)."""
        require_ray()
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"--shards must be at least 1, got {self.shards}")
        if not isinstance(detector, ShardableDetector):
            raise ConfigError(f"{detector.name} {NOT_SHARDABLE}")
        check_reachable(resolve_address(self.address))

    def session(self, detector: Any, run_dir: Path, overwrite: bool) -> ContextManager[bool]:
        """Nothing held around the run (the cluster is joined for the fit alone); this process writes it."""
        return contextlib.nullcontext(True)

    def fit(self, detector: Any, records: Sequence, progress: bool = True) -> dict[str, Any]:
        """``detector.fit(records)`` with its sums / coresets computed on Ray shards; returns what ``run.json``
        records about the engine."""
        if not isinstance(detector, ShardableDetector):
            raise ConfigError(f"{detector.name} {NOT_SHARDABLE}")
        records = list(records)
        if not detector.normal_scores.fold_count(len(records)):
            raise ConfigError(f"{detector.name}: the sharded fit sets the threshold by cross-fitting, and this detector "
                              f"is set to the plain hold-out (threshold_folds=1, or {len(records)} images are too few "
                              "to cross-fit); use threshold_folds=0 (padim) or >= 2, or fit in one process")
        with ray_cluster(self.address, quiet=not progress) as ray:
            runner = RayShardRunner(ray, self.shards, self.gpus_per_shard)
            try:
                detector.fit(records, progress=progress, cross_fit=runner)
            except ray.exceptions.RayError as exc:
                raise job_failure(exc, f"fitting {detector.name} on shards") from None
        return {"engine": "ray", "shards": runner.shards_used, "gpus_per_shard": runner.gpus_per_shard}


def fit_sharded(detector: Any, records: Sequence, *, shards: int | None = None, address: str | None = None,
                gpus_per_shard: float | None = None, progress: bool = True) -> dict[str, Any]:
    """``detector.fit(records)`` on Ray shards, without a run folder: ``RayShards(...).fit(detector, records)``."""
    return RayShards(shards, address, gpus_per_shard).fit(detector, records, progress)


def fit_run_on_ray(model: str, data: Any, run_dir: str | Path, params: dict[str, Any] | None = None, *,
                   shards: int | None = None, address: str | None = None, gpus_per_shard: float | None = None,
                   overwrite: bool = False, progress: bool = True) -> Any:
    """``fit_run(model, data, run_dir, params, engine=RayShards(shards, address, gpus_per_shard))``: kept for
    the callers of the time before engines were passed to ``fit_run``."""
    from anomalens.workflow.fit import fit_run

    return fit_run(model, data, run_dir, params, overwrite=overwrite, progress=progress,
                   engine=RayShards(shards, address, gpus_per_shard))
