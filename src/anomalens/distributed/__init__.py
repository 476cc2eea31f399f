"""Beyond one machine: batch scoring and sharded fitting on Ray, data-parallel training under torchrun.

- ``predict_with_ray(run, images, out, ...)`` (``anomalens predict --engine ray``): images decoded in parallel
  and scored by a pool of Ray Data actors (GPU actors when the cluster has GPUs); the local ``predict``'s
  ``predictions.csv`` / ``.jsonl`` (or ``predictions.parquet``) and ``errors.csv``, written once complete.
- ``RayShards(shards=, address=)``, the Ray engine of ``fit_run(..., engine=...)``
  (``anomalens fit padim|patchcore --engine ray``; ``fit_sharded(detector, records, ...)`` without a run):
  PaDiM's sums and PatchCore's coresets computed on shards and merged; the threshold cross-fitted as a local
  fit does; an ordinary run.
- ``DataParallel(resume=)``, the data-parallel engine (``torchrun ... -m anomalens.cli fit stpm ...``): the
  detectors that train, with DistributedDataParallel; rank 0 writes checkpoints and the run.

Engines are strategies passed to ``fit_run`` (``anomalens.engines``); ``fit_run_on_ray`` and
``fit_run_data_parallel`` are that call spelt out, for the callers of the time before.

Ray is an optional extra (``pip install 'anomalens[ray]'``); it is imported only when a Ray function runs.
Each module's docstring says how its part works and what differs from one process.
"""

from anomalens.distributed.cluster import ray_cluster, require_ray
from anomalens.distributed.ddp import DataParallel, DataParallelPlan, fit_run_data_parallel, launched_by_torchrun
from anomalens.distributed.ray_predict import ImageScorer, predict_with_ray
from anomalens.distributed.sharded_fit import RayShards, ShardableDetector, fit_run_on_ray, fit_sharded

__all__ = [
    "DataParallel",
    "DataParallelPlan",
    "ImageScorer",
    "RayShards",
    "ShardableDetector",
    "fit_run_data_parallel",
    "fit_run_on_ray",
    "fit_sharded",
    "launched_by_torchrun",
    "predict_with_ray",
    "ray_cluster",
    "require_ray",
]
