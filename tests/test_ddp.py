"""Data-parallel training (anomalens.distributed.ddp): two CPU processes with gloo.

- in-process groups (torch.multiprocessing.spawn): one synchronised step equals a single-process step on the
  union of the two ranks' batches; rank 0 alone writes checkpoints; stopping after epoch 2 and resuming gives
  the weights of an uninterrupted run;
- the real entry point, ``torchrun ... -m anomalens.cli fit``: an ordinary run, and ``--resume``;
- every trained detector in a real one-rank gloo group, in this process: its steps go through the
  DistributedDataParallel wrappers (CFlow's once called a method past ``forward`` and failed under torchrun).
Tiny settings: mlp_ae (architecture B: SGD, a batch-mean loss) on 16×16 images.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from anomalens.catalog import create_detector, load_detector
from anomalens.data import ImageRecord
from anomalens.distributed.ddp import DataParallelPlan, check_checkpoint, own_checkpoint
from anomalens.errors import ConfigError

PARAMS = {"image_size": 16, "architecture": "B", "batch_size": 4, "epochs": 1, "validation_fraction": 0.0,
          "holdout_fraction": 0.0, "device": "cpu", "seed": 0}


def _records(folder: Path, n: int = 8) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return [ImageRecord(source=p, label=0, name=p.name) for p in sorted(folder.glob("*.png"))]


def _weights(detector) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in detector.net_.state_dict().items()}


def _fit(params: dict, records: list, plan: DataParallelPlan | None):
    return create_detector("mlp_ae", **params).fit(records, progress=False, data_parallel=plan)


def _rank(rank: int, world: int, store: str, folder: str, out: str) -> None:
    """One process of the spawned job: three data-parallel fits; rank 0 saves what the test compares."""
    torch.set_num_threads(1)
    os.environ["ANOMALENS_WORKERS"] = "0"  # decode in the process: no loader workers to start per fit
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        records = [ImageRecord(source=p, label=0, name=p.name) for p in sorted(Path(folder).glob("*.png"))]
        plan = DataParallelPlan(rank, world, torch.device("cpu"))
        results = {"one_step": _weights(_fit(PARAMS, records, plan))}
        # each rank is given a checkpoint file of its own name: only rank 0's may appear
        mine = str(Path(out) / f"rank{rank}.pt")
        results["four_epochs"] = _weights(_fit({**PARAMS, "epochs": 4, "checkpoint": mine}, records, plan))
        shared = str(Path(out) / "shared.pt")  # what every rank resumes from (as on shared storage)
        _fit({**PARAMS, "epochs": 2, "checkpoint": shared}, records, plan)  # "stopped" after epoch 2 ...
        dist.barrier()  # (separate jobs in real life: rank 0 has written the file before anyone resumes)
        resumed = _fit({**PARAMS, "epochs": 4, "checkpoint": shared}, records, plan)  # ... and resumed
        results["resumed"] = _weights(resumed)
        results["resumed_history"] = resumed.history_
        if rank == 0:
            torch.save(results, Path(out) / "results.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Run the two-process job once; returns (its results, the records, the output folder)."""
    root = tmp_path_factory.mktemp("ddp")
    records = _records(root / "images")
    out = root / "out"
    out.mkdir()
    mp.spawn(_rank, args=(2, str(root / "store"), str(root / "images"), str(out)), nprocs=2, join=True)
    return torch.load(out / "results.pt", weights_only=False), records, out


def test_one_synchronised_step_is_the_single_process_step_on_the_union_batch(spawned):
    results, records, _ = spawned
    # each rank stepped once on its 4 of the 8 images; one process steps once on all 8
    union = _weights(_fit({**PARAMS, "batch_size": 8}, records, None))
    for name, value in union.items():
        torch.testing.assert_close(results["one_step"][name], value, rtol=1e-5, atol=1e-6)
    # and it is not the step of rank 0's half alone
    plan = DataParallelPlan(0, 2, torch.device("cpu"))
    half = [records[i] for i in plan.epoch_indices(np.arange(8), 0, 0)]
    alone = _weights(_fit(PARAMS, half, None))
    gap = max(float((alone[k] - union[k]).abs().max()) for k in union)
    error = max(float((results["one_step"][k] - union[k]).abs().max()) for k in union)
    assert gap > 100 * max(error, 1e-9)


def test_rank_0_alone_writes_checkpoints_and_a_resumed_fit_equals_an_uninterrupted_one(spawned):
    results, _, out = spawned
    assert (out / "rank0.pt").is_file() and not (out / "rank1.pt").exists()
    assert torch.load(out / "shared.pt", weights_only=True)["epoch"] == 3
    for name, value in results["four_epochs"].items():
        torch.testing.assert_close(results["resumed"][name], value, rtol=0, atol=0)
    assert len(results["resumed_history"]["loss"]) == 4


def test_the_shards_are_disjoint_and_cover_the_epoch():
    order = np.random.default_rng(0).permutation(11)
    plans = [DataParallelPlan(r, 3, torch.device("cpu")) for r in range(3)]
    shards = [p.epoch_indices(order, 0, 0) for p in plans]
    assert [len(s) for s in shards] == [4, 4, 4]  # ⌈11/3⌉ each: one image wrapped round
    assert sorted(np.concatenate(shards).tolist()) == sorted(order.tolist() + order[:1].tolist())


def test_a_left_over_checkpoint_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    checkpoint = own_checkpoint(run)
    assert checkpoint == tmp_path / ".run.ddp-checkpoint.pt"
    with pytest.raises(ConfigError, match="no checkpoint"):
        check_checkpoint(run, checkpoint, owned=True, resume=True, overwrite=False)
    checkpoint.write_bytes(b"x")
    with pytest.raises(ConfigError, match="--resume to continue it, or --overwrite"):
        check_checkpoint(run, checkpoint, owned=True, resume=False, overwrite=False)
    check_checkpoint(run, checkpoint, owned=True, resume=True, overwrite=False)  # resumes from it
    check_checkpoint(run, checkpoint, owned=True, resume=False, overwrite=True)  # discards it
    assert not checkpoint.exists()


def test_engine_ddp_outside_torchrun_and_a_detector_that_does_not_train_are_one_line(category, tmp_path, capsys):
    from anomalens.cli import main

    assert main(["fit", "mlp_ae", str(category), "-o", str(tmp_path / "r"), "--engine", "ddp", "-q"]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "r"), "--engine", "ddp", "-q"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _torchrun(*args: str, scratch: Path) -> subprocess.CompletedProcess:
    # TMPDIR: torchrun's own torchelastic_* folders go with the test's folder instead of piling up in /tmp
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "anomalens.cli", "fit", *args, "--device", "cpu", "--workers", "0", "-q"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_writes_an_ordinary_run_and_resume_continues_a_stopped_one(category, tmp_path):
    run = tmp_path / "ae"
    options = ["-p", "image_size=16", "-p", "architecture=B", "--batch-size", "4"]
    done = _torchrun("mlp_ae", str(category), "-o", str(run), *options, "-p", "epochs=2",
                     "-p", f"checkpoint={tmp_path / 'two.pt'}", scratch=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert (info["engine"], info["world_size"], info["backend"]) == ("ddp", 2, "gloo")
    detector = load_detector(run)
    assert len(detector.history_["loss"]) == 2 and detector.threshold_ > 0
    # a job into "more" that stopped after its second epoch left its own checkpoint: --resume finishes it
    more = tmp_path / "more"
    own_checkpoint(more).write_bytes((tmp_path / "two.pt").read_bytes())
    resumed = _torchrun("mlp_ae", str(category), "-o", str(more), *options, "-p", "epochs=4", "--resume",
                        scratch=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = load_detector(more).history_["loss"]
    assert len(history) == 4 and history[:2] == detector.history_["loss"]
    assert not own_checkpoint(more).exists()  # deleted once the run is saved


def test_torchrun_trains_ganomaly_and_its_discriminator_resets_on_every_rank_together(category, tmp_path):
    # d_reinit_below far above any loss: D is re-initialised after every step, on rank 0's decision, and rank
    # 0's new weights are broadcast — the job must run through and count one reset per step.
    run = tmp_path / "ganomaly"
    done = _torchrun("ganomaly", str(category), "-o", str(run), "-p", "image_size=32", "-p", "channels=3",
                     "-p", "latent_dim=16", "-p", "n_features=8", "-p", "epochs=1", "--batch-size", "4",
                     "-p", "d_reinit_below=1e9", scratch=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    detector = load_detector(run)
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert detector.d_reinits_ >= 1 and detector.threshold_ > 0


# -- every trained detector under DistributedDataParallel ------------------------------------------------------
def _trained_detectors() -> list[str]:
    from anomalens.catalog import detector_class, list_detectors
    from anomalens.models.components.trained import TrainedDetector

    return [name for name in list_detectors() if issubclass(detector_class(name), TrainedDetector)]


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    """A real gloo process group of one rank, in this process: the networks train in real DistributedDataParallel
    wrappers, whose averaging over one rank changes nothing."""
    store = tmp_path_factory.mktemp("store") / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", _trained_detectors())
def test_every_trained_detector_trains_in_distributed_data_parallel_as_in_one_process(name, one_rank_group,
                                                                                       train_records, test_records):
    """A training step that bypasses ``forward`` (a method of the network called through the wrapper) fails here
    as it fails under torchrun; and one rank's data-parallel fit is the single-process fit."""
    from tests.conftest import TINY_PARAMS

    params = {**TINY_PARAMS[name], "seed": 0}
    if "epochs" in params:
        params["epochs"] = 1
    plain = create_detector(name, **params).fit(train_records, progress=False)
    parallel = create_detector(name, **params).fit(train_records, progress=False,
                                                   data_parallel=DataParallelPlan(0, 1, torch.device("cpu")))
    plain_scores, _ = plain.score(test_records, progress=False)
    parallel_scores, _ = parallel.score(test_records, progress=False)
    np.testing.assert_allclose(parallel_scores, plain_scores, rtol=1e-5, atol=1e-6)
