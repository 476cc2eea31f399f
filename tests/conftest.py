"""Shared fixtures: tiny in-memory data and tiny settings for every registered detector."""

from __future__ import annotations

import os
import sys

# Bytecode caches on for the suite (git ignores __pycache__), even where the environment turns them off
# (PYTHONDONTWRITEBYTECODE, set on this project's machines): without them every xdist worker rewrites the asserts of
# every test module again (3.7 s of each worker's 14 s collection, measured) and every CLI process a test starts
# compiles the anomalens modules it imports. Set here, before the workers and the tests' processes start.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False

import numpy as np
import pytest

# Tests never reach a model hub: timm/huggingface fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Decode in the test process, as a user's process on this CPU does by default (torch's threads use every core;
# the suite's one thread per xdist worker would otherwise start a decoding process for every loop). The worker
# path keeps its own tests, which ask for workers explicitly.
os.environ.setdefault("ANOMALENS_WORKERS", "0")
# `anomalens serve` keeps its history under $XDG_STATE_HOME by default: the tests' servers write into a
# throwaway folder of this run, never the user's ~/.local/state.
if "ANOMALENS_TESTS_KEEP_STATE_HOME" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="anomalens-tests-state-")
    atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], ignore_errors=True)

import torch  # noqa: E402

from anomalens.data import ImageRecord  # noqa: E402

# One torch thread: the tiny tensors of the tests gain nothing from more, and OpenMP threads that
# spin-wait slow the suite down many times over when the machine is shared with other jobs.
torch.set_num_threads(1)

IMAGE_SIZE = 64

# The slow tiers, by test file: `make test-fast` leaves them out
# (`-m "not (browser or ray or export or ddp or docs or line or serve or jobs)"`), `make test` runs everything. A single
# test of another file joins a tier with its own mark: a detector's export parity test `@pytest.mark.export`,
# a test against a real broker / stream server `line`, one of `anomalens serve` run as a process `serve`.
TIERS = {
    "test_serve_browser.py": "browser", "test_report_browser.py": "browser",
    "test_distributed_ray.py": "ray",
    "test_export.py": "export", "test_integrity_exports.py": "export",
    "test_export_precision.py": "export",
    "test_ddp.py": "ddp",
    "test_docs_run.py": "docs",
    "test_sinks_opcua.py": "line",  # an OPC UA server (asyncua) on a local port
    # `anomalens benchmark` end to end: each job a fresh process (torch, timm: 4-5 s of start-up per job)
    "test_benchmark_command.py": "jobs", "test_benchmark_variants.py": "jobs",
}


def pytest_report_header(config):
    """The free disk where the tests write: a full run needs about 5 GB at its peak (fitted runs, exports)."""
    import shutil
    import tempfile

    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    return f"free disk under {tempfile.gettempdir()}: {free:.1f} GB (a full run needs about 5 GB)"


def pytest_ignore_collect(collection_path, config):
    """A whole-file tier that ``-m`` deselects is not imported at all (the fast tier would otherwise import Ray,
    ONNX, asyncua, ... in every xdist worker only to deselect the tests: ~2.4 CPU s a worker, measured)."""
    tier = TIERS.get(collection_path.name)
    expression = config.option.markexpr
    if not tier or not expression:
        return None
    try:
        from _pytest.mark.expression import Expression  # pytest's own -m parser, so that the rule is -m's
        selected = Expression.compile(expression).evaluate(lambda name, **_: name == tier)
    except Exception:  # an unknown pytest version or expression: collect, and let -m deselect as usual
        return None
    return None if selected else True


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = TIERS.get(item.path.name)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


def worker_group(nodeid: str) -> str:
    """The group of a test under `-n 2 --dist loadgroup` (the Makefile's PYTEST_PARALLEL): a group runs whole on one
    worker. The contract's tests of one detector (`tests/test_contract.py::...[draem]`) and that detector's own
    file (`tests/test_draem.py`) are one group, so they share that worker's one `tiny_fit` of it (as two files on
    two workers it was fitted twice); every other test goes with its file, whose module fixtures are then set up
    once, as under `--dist loadfile`."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if name == "test_contract.py" and nodeid.endswith("]"):
        detector = nodeid[nodeid.rindex("[") + 1 : -1]
        if detector in TINY_PARAMS:
            return detector
    stem = name.removeprefix("test_").removesuffix(".py")
    return stem if stem in TINY_PARAMS else path


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups of :func:`worker_group`, computed from the test ids. (pytest-xdist's own
    `xdist_group` marks do not reach its scheduler under pytest 9.2, which no longer reads the id it rewrites.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class DetectorGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return DetectorGroups(config, log)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For a test module of a trained detector (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny tensors gain nothing from intra-op threads, and on a loaded machine OpenMP's waiting threads slowed
    such tests ~50x (3 s → 3 min); the setting is restored for the other test files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The smallest settings under which each detector still does its real work. A new detector must add
# an entry here: test_contract checks that every registered name has one.
TINY_PARAMS: dict[str, dict] = {
    "padim": {"image_size": IMAGE_SIZE, "batch_size": 8, "device": "cpu"},
    "patchcore": {"image_size": IMAGE_SIZE, "batch_size": 8, "device": "cpu"},
    "spade": {"image_size": IMAGE_SIZE, "batch_size": 8, "top_k": 5, "device": "cpu"},
    "mahalanobis": {"image_size": IMAGE_SIZE, "batch_size": 8, "device": "cpu"},
    "stpm": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 8, "device": "cpu"},
    # GANs: RGB, narrow networks, few epochs; AnoGAN with a 10-step latent search.
    "anogan": {"image_size": IMAGE_SIZE, "channels": 3, "batch_size": 8, "epochs": 2, "latent_dim": 16, "n_features": 8,
               "search_steps": 10, "search_lr": [0.05, 0.01], "search_milestones": [5], "device": "cpu"},
    "efficientgan": {"image_size": IMAGE_SIZE, "channels": 3, "batch_size": 8, "epochs": 1, "latent_dim": 16,
                     "n_features": 16, "device": "cpu"},
    # GANomaly's latent score does not separate the small synthetic squares (AUROC 0.3-0.8 at any length
    # tried): the contract runs its reconstruction score; tests/test_ganomaly.py covers the latent one.
    "ganomaly": {"image_size": IMAGE_SIZE, "channels": 3, "batch_size": 8, "epochs": 4, "latent_dim": 32, "n_features": 16,
                 "score_type": "reconstruction", "device": "cpu"},
    # Autoencoders trained from scratch: the random-phase stripes take hundreds of steps to learn (measured:
    # mvtec_cae ~300 steps to overfit 16 images), so the contract runs RGB + L2 for a few seconds, where the
    # green square shows in the channel-mean residual; skip_cae (skip connections) already separates with
    # the default max score. tests/test_cae.py and tests/test_mlp_ae.py cover the default SSIM / seed paths.
    "mlp_ae": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 10, "lr": 3e-3, "image_score": "max", "device": "cpu"},
    "mvtec_cae": {"image_size": IMAGE_SIZE, "channels": 3, "loss": "l2", "batch_size": 4, "epochs": 2,
                  "image_score": "mean", "device": "cpu"},
    "baseline_cae": {"image_size": IMAGE_SIZE, "channels": 3, "loss": "l2", "batch_size": 4, "epochs": 2,
                     "image_score": "mean", "device": "cpu"},
    "inception_cae": {"image_size": IMAGE_SIZE, "channels": 3, "loss": "l2", "batch_size": 4, "epochs": 1,
                      "image_score": "mean", "device": "cpu"},
    "resnet_cae": {"image_size": IMAGE_SIZE, "channels": 3, "loss": "l2", "batch_size": 4, "epochs": 2, "lr": 3e-4,
                   "image_score": "mean", "device": "cpu"},
    "skip_cae": {"image_size": IMAGE_SIZE, "channels": 3, "loss": "l2", "batch_size": 4, "epochs": 3, "device": "cpu"},
    # DRAEM from scratch: narrow sub-networks (width 8, the paper's 128 / 64) and lr 1e-3 (the paper's 1e-4 needs
    # hundreds of steps); 20 epochs of 5 steps flag the pasted squares (measured: image AUROC 1.0, pixel 0.76;
    # 12 epochs gave 0.94 / 0.30, too close to chance for the map).
    "draem": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 20, "lr": 1e-3, "reconstruction_width": 8,
              "discriminative_width": 8, "device": "cpu"},
    # Reverse Distillation: the bundled encoder, batch 4, 3 epochs (15 steps) already separate the squares.
    "reverse_distillation": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 3, "device": "cpu"},
    # EfficientAD: the bundled-photo penalty on, batch 4 instead of the paper's 1 so 2 epochs are 10 steps (~10 s).
    "efficientad": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 2, "device": "cpu"},
    # The ensemble of the two training-free members, 2 folds for its own threshold; PatchCore's own threshold from
    # its hold-out (a 10-fold cross-fit inside every fold fit would multiply the fits for nothing the test checks).
    "ensemble": {"image_size": IMAGE_SIZE, "batch_size": 8, "threshold_folds": 2, "device": "cpu",
                 "member_params": '{"patchcore": {"threshold_folds": 1}}'},
    # SimpleNet / GLASS: the bundled backbone, 3 epochs of 5 steps; SimpleNet with a 256-wide discriminator (the
    # papers' 1024), GLASS with 5 ascent steps (one projection; at width 256 seed 0 ranked the squares *below* the
    # normals: an MLP extrapolates arbitrarily this early). Both: image AUROC 1.0 in about a second.
    "simplenet": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 3, "discriminator_hidden": 256, "device": "cpu"},
    # GLASS's default features are the backbone's own scale (standardise=False): on these images 3 epochs rank and
    # localise for most seeds, not all (seed 0: image AUROC 0.78, pixel 0.45); 10 did for seeds 0-3 (image 1.0).
    "glass": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 10, "ascent_steps": 5, "device": "cpu"},
    # SuperSimpleNet: the bundled backbone, 3 epochs of 5 steps, the heads narrowed (segmentation 64 wide, the paper's
    # 1024; classification 16 channels, 128). The image score is the map's maximum: in 15 steps the classification
    # head ranked the pasted squares at random (seeds 0-2: image AUROC 0.0-0.8) while the maps localise them
    # (pixel AUROC 0.86-0.98); the head's own score is tested with labelled defects in tests/test_supersimplenet.py.
    "supersimplenet": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 3, "discriminator_hidden": 64,
                       "classifier_channels": 16, "image_score": "map_max", "device": "cpu"},
    # FastFlow / CFlow-AD: the bundled encoder, the papers' flows (8 blocks), 3 epochs of 5 steps (CFlow: one fiber
    # batch of 256 positions per step at 64 px); measured: image AUROC 1.0, pixel 0.99 / 0.92, fit ~1.5 s each.
    "fastflow": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 3, "device": "cpu"},
    "cflow": {"image_size": IMAGE_SIZE, "batch_size": 4, "epochs": 3, "device": "cpu"},
}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random stripe texture: normal images differ but share their statistics."""
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * 4 * (x + 0.1 * y) + phase)
    noise = rng.normal(0, 0.03, (size, size))
    gray = np.clip(base + noise, 0, 1)
    return (np.stack([gray, gray * 0.9, gray * 0.8], -1) * 255).astype(np.uint8)


def make_records(n_normal: int, n_anomalous: int, seed: int = 0, size: int = IMAGE_SIZE) -> list[ImageRecord]:
    """Normal stripe textures, and the same with a dark square defect (mask included)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_normal):
        records.append(ImageRecord(_texture(rng, size), 0, np.zeros((size, size), bool), f"normal/{i}", "good"))
    for i in range(n_anomalous):
        image = _texture(rng, size)
        mask = np.zeros((size, size), bool)
        top, left = rng.integers(8, size - 24, 2)
        mask[top : top + 14, left : left + 14] = True
        image[mask] = [20, 160, 30]
        records.append(ImageRecord(image, 1, mask, f"defect/{i}", "square"))
    return records


@pytest.fixture(scope="session")
def train_records() -> list[ImageRecord]:
    return make_records(20, 0, seed=1)


@pytest.fixture(scope="session")
def test_records() -> list[ImageRecord]:
    return make_records(6, 6, seed=2)


@pytest.fixture(scope="session")
def tiny_fit(train_records):
    """``tiny_fit(name)``: the detector fitted with ``TINY_PARAMS[name]`` on ``train_records``, fitted once per
    test process (the contract and the detector's own test file need the same fit) and handed out as a deep copy,
    so that what one test file does to it never reaches another."""
    import copy

    from anomalens import create_detector

    fits: dict = {}

    def fitted(name: str):
        if name not in fits:
            fits[name] = create_detector(name, **TINY_PARAMS[name]).fit(train_records, progress=False)
        return copy.deepcopy(fits[name])

    return fitted


# A tiny synthetic MVTec-layout category and a PaDiM run fitted on it through the CLI, for the tests of the
# command line and its output folders (a module may define its own instead).
FIT = ["--image-size", "64", "--batch-size", "8", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    from anomalens.data import make_synthetic_category

    root = tmp_path_factory.mktemp("data")
    return make_synthetic_category(root, source="brick", n_train=12, n_test_good=4, n_test_defect=4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def run(category, tmp_path_factory):
    from anomalens.cli import main

    run = tmp_path_factory.mktemp("runs") / "brick"
    assert main(["fit", "padim", str(category), "-o", str(run), *FIT]) == 0
    return run
