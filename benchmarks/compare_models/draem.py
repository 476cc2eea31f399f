"""DRAEM in both libraries with the same networks, anomaly source, budget and batch (``draem@EPOCHS:DATASET``).

- Networks: anomalib's ``DraemModel`` has the paper's widths (128 / 64, 97 M parameters) fixed; at 256 px one
  epoch of 120 images takes tens of minutes on two shared CPU cores, so both libraries run the same narrower
  sub-networks (``WIDTHS``): anomalib's own ``ReconstructiveSubNetwork`` / ``DiscriminativeSubNetwork`` classes
  built with that ``base_width``, anomalens' ``reconstruction_width`` / ``discriminative_width``.
- Anomaly source: anomalib's ``Draem`` downloads DTD when ``dtd_dir`` is not a folder (impossible offline); both
  get the same folder, ``SOURCES``: the twelve scikit-image photos anomalens uses by default, written once as PNG.
- Inputs in [0, 1] for both (anomalib refuses a Normalize in DRAEM's pre-processor), resized to the same size;
  batch 32 (the harness's anomalib data loaders; the paper's is 8); Adam lr 1e-4 in both. Each library keeps its own score: anomalens the paper's maximum
  of the 21 × 21 mean-filtered map, anomalib the map's maximum; and its own schedule: anomalens ×0.2 at 80 % and
  90 % of the epochs (the paper), anomalib ×0.1 at epochs 400 and 600 (never reached at a short budget).
"""

from __future__ import annotations

from pathlib import Path

WIDTHS = {"reconstruction": 8, "discriminative": 4}
BATCH = 32  # the harness's anomalib loaders use compare_anomalib.BATCH (32); the paper's is 8
SOURCES = Path(__file__).resolve().parents[1] / "_work" / "draem_sources"


def _write_sources() -> Path:
    """The default anomaly-source photos as PNG files (run in anomalens' environment, which has scikit-image)."""
    if SOURCES.is_dir() and any(SOURCES.iterdir()):
        return SOURCES
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    from anomalens.models.components.perlin_anomalies import BUILTIN_SOURCES

    stage = SOURCES.with_name(SOURCES.name + ".partial")
    stage.mkdir(parents=True, exist_ok=True)
    for name in BUILTIN_SOURCES:
        Image.fromarray(np.asarray(getattr(skdata, name)(), dtype=np.uint8)).save(stage / f"{name}.png")
    stage.rename(SOURCES)
    return SOURCES


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    return {"image_size": size, "epochs": int(option or 10), "batch_size": BATCH, "device": device,
            "reconstruction_width": WIDTHS["reconstruction"], "discriminative_width": WIDTHS["discriminative"],
            "anomaly_source": str(_write_sources())}


def anomalib_model(option: float | None, common: dict):
    from anomalib.models import Draem
    from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork, ReconstructiveSubNetwork
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Resize

    if not SOURCES.is_dir():
        raise SystemExit(f"[compare] {SOURCES} is missing: the anomalens job of the same dataset writes it")
    resize = next(t for t in common["pre_processor"].transform.transforms if isinstance(t, Resize))
    settings = {**common, "pre_processor": PreProcessor(transform=Compose([Resize(resize.size, antialias=True)]))}
    model = Draem(dtd_dir=SOURCES, beta=(0.1, 1.0), **settings)
    model.model.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=WIDTHS["reconstruction"])
    model.model.discriminative_subnetwork = DiscriminativeSubNetwork(
        in_channels=6, out_channels=2, base_width=WIDTHS["discriminative"])
    return model, int(option or 10)
