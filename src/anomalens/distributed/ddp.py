"""Data-parallel training of the detectors that train (STPM, the autoencoders, the GANs) across processes
and hosts, with ``torchrun`` and DistributedDataParallel.

    torchrun --standalone --nproc_per_node 2 -m anomalens.cli fit stpm DATA -o RUN -p epochs=10
    torchrun --nnodes 2 --node_rank R --master_addr HOST0 --master_port 29500 --nproc_per_node 4 \\
        -m anomalens.cli fit stpm /shared/DATA -o /shared/RUN -p checkpoint=/shared/RUN.pt

``anomalens fit`` sees torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and trains data-parallel (``--engine ddp`` says so explicitly, and refuses to run outside
torchrun): every process calls ``fit_run(..., engine=DataParallel(resume=...))``. The engine
(``anomalens.engines.FitEngine``) joins the process group around the run, and every process runs the
ordinary ``TrainedDetector.fit`` with this process's ``DataParallelPlan`` passed to it (``data_parallel=``):
the detector is never told which engine runs it, only the plan of its training:

- **Process group**: NCCL when the detector runs on CUDA (one GPU per process: ``LOCAL_RANK``), else gloo.
- **Batches**: each epoch's seeded order (the single-process one) is padded by wrapping to a multiple of the
  world size W and dealt out — rank r steps through ``order[r::W]`` in batches of ``batch_size`` — as torch's
  ``DistributedSampler`` (``drop_last=False``) does: disjoint shards but for the ≤ W − 1 wrapped images. One
  step of the job thus consumes W batches and DistributedDataParallel averages their gradients before every
  optimiser step, so all ranks keep identical weights; an epoch has W times fewer steps. With a loss that is
  a batch mean a step equals a single-process step on the union of the W batches (``tests/test_ddp.py``);
  with a summed loss (STPM) the averaged step has the size of one batch's, as in one process — no learning
  rate to rescale either way.
- **Randomness**: the networks start from rank 0's weights (DDP broadcasts them). Rank 0's torch stream is
  the single-process fit's; the others reseed at every epoch from (seed, rank, epoch), so their dropout and
  GAN noise differ from rank 0's and a resumed job draws them again identically.
- **BatchNorm**: batch statistics per process; running statistics broadcast from rank 0 before every step
  (DDP's ``broadcast_buffers``); the saved model is rank 0's.
- **Validation, early stopping, the kept epoch, the threshold**: every rank computes them on the same held-out
  images; the validation loss is rank 0's on all ranks (so they stop together); rank 0 writes the run, by the
  output-folder protocol of ``anomalens.outputs`` (staged, renamed into place when complete); the others
  return None from ``fit_run``.
- **Checkpoints**: rank 0 alone writes one after every epoch: to ``-p checkpoint=FILE`` when given (kept,
  resumed from whenever it exists, as in one process), else to ``.RUN.ddp-checkpoint.pt`` beside the run
  folder, deleted once the run is saved. A stopped job continues from it with ``--resume``; without
  ``--resume`` a left-over checkpoint is refused with one line (``--overwrite`` discards it). Every rank reads
  it when resuming: on several hosts give a path on shared storage.
- **Failures**: rank 0 checks the output folder (and the checkpoint) before any rank trains, and tells the
  others to stop if that fails; all ranks must see the checkpoint alike (else one line: put it on shared
  storage); a rank that fails later ends the job (torchrun stops the other processes). Every process reads
  the training images itself (each host needs them, at the same path).
- **GANomaly** re-initialises its discriminator when its loss collapses: rank 0's loss decides and rank 0's
  new weights are broadcast (``TrainedDetector.resynchronised``). ``NOT_DATA_PARALLEL`` would name a trained
  detector that cannot be split (none today); the detectors that do not train (PaDiM, PatchCore:
  ``--engine ray`` shards them) are refused with one line.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from anomalens.errors import AnomalensError, ConfigError
from anomalens.outputs.folders import remove_earlier_files

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Trained detectors whose training step cannot be split across processes, and why.
NOT_DATA_PARALLEL: dict[str, str] = {}
LAUNCH = "torchrun --standalone --nproc_per_node N -m anomalens.cli fit MODEL DATA -o RUN"
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (its rendezvous variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


class DataParallelPlan:
    """How one process of a data-parallel fit trains: the ``TrainingPlan`` passed to ``TrainedDetector.fit``
    (see the module docstring). ``device``: this process's device; ``checkpoint``: the job's own checkpoint
    file."""

    replicates = True  # the networks train wrapped in DistributedDataParallel (``wrap``)

    def __init__(self, rank: int, world_size: int, device: torch.device, checkpoint: str | None = None) -> None:
        self.rank, self.world_size, self.device, self.checkpoint = rank, world_size, device, checkpoint

    @property
    def writes_checkpoints(self) -> bool:
        return self.rank == 0

    def shard_size(self, n: int) -> int:
        """Images per rank and epoch: ⌈n / W⌉."""
        return -(-n // self.world_size)

    def epoch_indices(self, order: np.ndarray, epoch: int, seed: int) -> np.ndarray:
        """This rank's shard of an epoch's ``order`` (padded by wrapping to a multiple of W, every W-th from
        ``rank``). Called as the epoch starts: ranks other than 0 reseed torch here from (seed, rank, epoch)."""
        if self.rank:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank, epoch]).generate_state(1)[0]))
        padded = np.resize(np.asarray(order), self.shard_size(len(order)) * self.world_size)
        return padded[self.rank :: self.world_size]

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (its gradients averaged across ranks by the backward pass);
        a module without trainable parameters is returned as it is."""
        if not any(p.requires_grad for p in module.parameters()):
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Depthwise convolutions' weights (C, 1, k, k) have a stride on their size-1 axis that differs from the
        # bucket's: harmless (same memory order), but torch warns once per process.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank. A number (a loss, every step for GANomaly) goes as one float64
        tensor — no pickling; anything else as a pickled object."""
        if isinstance(value, float):
            number = torch.tensor([value], dtype=torch.float64, device=self.device)
            dist.broadcast(number, src=0)
            return float(number.item())
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers of ``module`` (a DistributedDataParallel wrapper or the network) on
        every rank, in place: after a re-initialisation the replicas start from the same weights again."""
        inner = getattr(module, "module", module)
        with torch.no_grad():
            for tensor in [*inner.parameters(), *inner.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def check_checkpoint_seen(self, checkpoint: str | None) -> None:
        """ConfigError on every rank unless all ranks see the checkpoint file alike (all or none): resuming
        from a file only some processes can read would set them on different epochs."""
        seen = self.gather(bool(checkpoint) and Path(checkpoint).is_file())
        if len(set(seen)) > 1:
            where = ", ".join(str(rank) for rank, found in enumerate(seen) if not found)
            raise ConfigError(f"{checkpoint}: the checkpoint to resume from is not readable by rank(s) {where}; on "
                              "several hosts put it on storage every host sees (-p checkpoint=/shared/FILE)")


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[tuple[int, int, torch.device]]:
    """Join the torchrun job's process group for the block: yields (rank, world size, this process's device).

    NCCL with one GPU per process (``LOCAL_RANK``) when ``device_name`` resolves to CUDA, else gloo. A group
    that already exists (initialised by the caller) is used and left open.
    """
    from anomalens.devices import resolve_device

    if not dist.is_initialized() and not launched_by_torchrun():
        raise ConfigError(f"--engine ddp runs under torchrun, which sets {', '.join(TORCHRUN_VARIABLES)}: {LAUNCH}")
    device = resolve_device(device_name)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local}: this host has {torch.cuda.device_count()} GPU(s); start at most that "
                              "many processes per host (--nproc_per_node)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if created:
            dist.destroy_process_group()


def own_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a data-parallel fit into ``run_dir`` keeps when no ``-p checkpoint`` is given."""
    return run_dir.parent / f".{run_dir.name}.ddp-checkpoint.pt"


def check_checkpoint(run_dir: Path, checkpoint: Path, owned: bool, resume: bool, overwrite: bool) -> None:
    """Rank 0, before training: --resume needs a checkpoint; a left-over one of our own needs --resume or
    --overwrite (which deletes it)."""
    if resume and not checkpoint.is_file():
        raise ConfigError(f"{run_dir}: --resume, but there is no checkpoint of a stopped data-parallel fit to continue "
                          f"({checkpoint} does not exist)")
    if owned and checkpoint.is_file() and not resume:
        if not overwrite:
            raise ConfigError(f"{run_dir}: a stopped data-parallel fit left its checkpoint {checkpoint}; pass --resume to "
                              "continue it, or --overwrite to start again")
        remove_earlier_files(checkpoint.parent, [checkpoint.name])


@dataclass
class DataParallelJob:
    """What a ``DataParallel`` engine holds while its run lasts: this process's plan, the run folder and the
    checkpoint (``owned``: the job's own, deleted once the run is saved), and whether the ranks started."""

    plan: DataParallelPlan
    run_dir: Path
    checkpoint: Path
    owned: bool
    overwrite: bool
    started: bool = False


class DataParallel:
    """The data-parallel engine (``anomalens.engines.FitEngine``; module docstring) of one process of a
    torchrun job: every process passes one to ``fit_run``; rank 0 writes the run, the others train along.
    ``resume``: continue a stopped job from its checkpoint."""

    def __init__(self, resume: bool = False) -> None:
        self.resume = resume
        self.job: DataParallelJob | None = None

    def check(self, detector: Any) -> None:
        """Before anything is read: only the detectors that train, and can be split (ConfigError otherwise)."""
        from anomalens.models.components.trained import TrainedDetector

        if not isinstance(detector, TrainedDetector):
            raise ConfigError(f"{detector.name} does not train networks: --engine ddp is for stpm, the autoencoders "
                              "and the GANs; fit padim or patchcore on shards with --engine ray, or in one process")
        if detector.name in NOT_DATA_PARALLEL:
            raise ConfigError(f"{detector.name} cannot train data-parallel: {NOT_DATA_PARALLEL[detector.name]}; fit it "
                              "in one process")

    @contextlib.contextmanager
    def session(self, detector: Any, run_dir: Path, overwrite: bool) -> Iterator[bool]:
        """The torchrun job's process group around the whole run; yields whether this process writes the run
        (rank 0). Rank 0 tells the others to stop if it fails before training starts, and deletes the job's own
        checkpoint once the run is saved; the other ranks wait here for rank 0's go."""
        run_dir = Path(run_dir)
        owned = not detector.params["checkpoint"]
        checkpoint = own_checkpoint(run_dir) if owned else Path(detector.params["checkpoint"])
        with process_group(detector.params["device"]) as (rank, world_size, device):
            plan = DataParallelPlan(rank, world_size, device, str(checkpoint) if owned else None)
            self.job = job = DataParallelJob(plan, run_dir, checkpoint, owned, overwrite)
            try:
                if rank != 0:
                    logging.getLogger("anomalens").setLevel(logging.ERROR)  # rank 0 says it once
                    if not plan.agree(None):
                        raise AnomalensError(f"rank {rank}: rank 0 stopped before training (its error says why); "
                                             "nothing was trained")
                    yield False
                    return
                try:
                    yield True
                except BaseException:
                    if not job.started:
                        plan.agree(False)
                    raise
                if owned:
                    remove_earlier_files(checkpoint.parent, [checkpoint.name])
            finally:
                self.job = None

    def fit(self, detector: Any, records: Sequence, progress: bool = True) -> dict[str, Any]:
        """Train ``detector`` on this process's shares of ``records`` with the job's plan (inside ``session``);
        rank 0 first checks the checkpoint and gives the others the go."""
        job = self.job
        if job is None:
            raise ConfigError("DataParallel.fit runs inside its session: pass the engine to fit_run")
        plan = job.plan
        if plan.rank == 0:
            check_checkpoint(job.run_dir, job.checkpoint, job.owned, self.resume, job.overwrite)
            job.started = plan.agree(True)  # the other ranks start now
        plan.check_checkpoint_seen(str(job.checkpoint))
        detector.fit(records, progress=progress, data_parallel=plan)
        return {"engine": "ddp", "world_size": plan.world_size, "backend": dist.get_backend()}


def fit_run_data_parallel(model: str, data: Any, run_dir: str | Path, params: dict[str, Any] | None = None, *,
                          overwrite: bool = False, resume: bool = False, progress: bool = True) -> Any:
    """``fit_run(model, data, run_dir, params, engine=DataParallel(resume))`` for one process of a torchrun job:
    rank 0 writes the run and returns the detector, the others return None. Kept for the callers of the time
    before engines were passed to ``fit_run``."""
    from anomalens.workflow.fit import fit_run

    return fit_run(model, data, run_dir, params, overwrite=overwrite, progress=progress,
                   engine=DataParallel(resume=resume))
