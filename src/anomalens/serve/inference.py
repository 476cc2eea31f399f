"""The model behind the service: uploaded pixels → model input → batched inference → one JSON result.

``ServedModel`` wraps a ``Predictor`` (``anomalens.inference``): a run folder's ``Detector`` (torch) or an
export (ONNX Runtime / OpenVINO; then torch is never imported). The predictor decodes and resizes an upload
exactly as ``anomalens predict`` does for the same file (its ``load``), and a micro-batch goes through
``anomalens.inference.predict`` — the NaN / inf check and the decision rule every runtime shares — so the
service's scores equal ``predict``'s.

Per image the result carries the raw score, the **normalised score** (``DecisionRule.normalized``: monotone in
the score, 0.5 at the image threshold, the typical normal image at 0.05 — the same value as the
``normalized_score`` column of ``anomalens predict``), the verdict, the thresholds and the rule's description, the **defect regions** — the
8-connected regions of the predicted mask (``map > pixel_threshold`` at the image's own resolution, the mask
``anomalens predict`` writes), each with its bounding box and area in the image's pixels, largest first — and
the time spent in each step. Sizes, regions and heatmaps are in the pixel grid of the file as stored: its EXIF
orientation tag is reported (``exif_orientation``), never applied — as ``predict`` and ``fit`` decode it. With ``heatmap`` the overlay ``anomalens predict`` draws (one colour scale for
every image, from the normal maps' typical value to 2·pixel_threshold − that value, the mask outlined) comes
back as a base64 PNG.

Under the minimum-area rule (``calibrate --method area``) the verdict comes from the largest region at the
model's resolution, not from the score: ``rule`` says which one decided.
"""

from __future__ import annotations

import base64
import io
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import ConfigError
from anomalens.inference.loading import as_predictor, load_predictor
from anomalens.inference.rows import predict, result_row
from anomalens.jsonvalues import plain_json
from anomalens.version import __version__

#: Regions listed per image (largest first); ``regions_total`` counts them all.
MAX_REGIONS = 50
#: Longest side of a returned heatmap: larger frames are drawn downscaled (regions use the full mask).
HEATMAP_MAX_SIDE = 1024

NORMALIZED_SCORE_NOTE = ("1 / (1 + exp(-(score - threshold) / w)), w = (threshold - median normal score) / ln 19: "
                         "0.5 at the image threshold, the typical normal image at 0.05, monotone in the score")


@dataclass
class Prepared:
    """One decoded upload: the model input (C, H, W) float32, the picture a heatmap is drawn on, its size, and
    the file's EXIF orientation tag (reported, not applied: everything is in the stored pixel grid)."""

    input: Any
    picture: np.ndarray
    height: int
    width: int
    orientation: int | None = None


@dataclass
class ItemResult:
    """What the model gave for one image of a batch."""

    score: float
    label: int
    amap: np.ndarray | None


def _display_picture(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) to draw on (as ``anomalens predict`` draws: the file's own 8-bit pixels)."""
    if pixels.dtype == np.uint8:
        return pixels
    out = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out[..., 0] if out.shape[-1] == 1 else out


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def defect_regions(mask: np.ndarray, limit: int = MAX_REGIONS) -> tuple[list[dict[str, int]], int]:
    """(the ``limit`` largest 8-connected regions of ``mask`` as {x, y, width, height, area}, how many in all)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return [], 0
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    order = np.argsort(-areas, kind="stable")[:limit]
    regions = []
    for i in order:
        rows, cols = boxes[i]
        regions.append({"x": int(cols.start), "y": int(rows.start), "width": int(cols.stop - cols.start),
                        "height": int(rows.stop - rows.start), "area": int(areas[i])})
    return regions, int(count)


def _png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class ServedModel:
    """A ``Predictor`` (a fitted detector or an export), with what the service needs of it."""

    def __init__(self, model: Any, source: str | Path | None = None) -> None:
        if getattr(model, "decision_", None) is None:
            raise ValueError("the model has no decision rule: serve a fitted detector or an export")
        predictor = as_predictor(model)
        if predictor.params.get("decode", "exact") != "exact":
            # Uploads are decoded from their bytes to full pixels (uploads.decode_image) before the model sees
            # them; the fast decode shrinks while decoding, so serving such a run would score other pixels.
            raise ConfigError(f"{Path(source).name if source is not None else 'the model'}: fitted with "
                              f"decode={predictor.params['decode']}, which the service cannot reproduce (it decodes "
                              "uploads exactly); refit with decode=exact to serve it")
        self.model = predictor
        self.runtime = predictor.runtime
        self.source = Path(source).name if source is not None else None
        self.input_size: tuple[int, int] = tuple(predictor.input_size)  # type: ignore[assignment]
        self.channels = int(predictor.image_channels)

    def warm_up(self) -> None:
        """Import what the first answer needs (the heatmap code, matplotlib's colour map) before it is asked."""
        from anomalens.report import overlay_heatmap

        overlay_heatmap(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32), 0.0, 1.0)

    # -- the decision --------------------------------------------------------------------------------
    @property
    def decision(self) -> Any:
        return self.model.decision_

    @property
    def name(self) -> str:
        return str(self.model.name)

    @property
    def localizes(self) -> bool:
        return bool(self.model.localizes)

    @property
    def model_id(self) -> str:
        """``anomalens.inference.protocol.model_id``: the same name ``anomalens watch`` gives the model."""
        from anomalens.inference.protocol import model_id

        return model_id(self.model)

    def heatmap_range(self) -> tuple[float, float]:
        """The colour scale of ``anomalens predict`` (``DecisionRule.heatmap_colour_range``)."""
        return self.decision.heatmap_colour_range()

    # -- decode and run --------------------------------------------------------------------------------
    def prepare(self, pixels: np.ndarray) -> Prepared:
        """Decoded pixels (``uploads.decode_image``) → the model input, resized as ``predict`` resizes."""
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        return Prepared(self.model.load(pixels), _display_picture(pixels), height, width)

    def run_batch(self, inputs: list[Any]) -> list[ItemResult]:
        """Model inputs of several requests → one result each (runs in the batcher's thread)."""
        result = predict(self.model, np.stack(inputs))
        maps = result.maps
        return [ItemResult(float(result.scores[i]), int(result.labels[i]), None if maps is None else maps[i])
                for i in range(len(result.scores))]

    # -- the answer ------------------------------------------------------------------------------------
    def result_json(self, name: str, prepared: Prepared, item: ItemResult, heatmap: bool) -> dict[str, Any]:
        """The JSON of one image (timing filled in by the caller)."""
        from anomalens.report import render_heatmap, to_original_size

        rule = self.decision
        out: dict[str, Any] = result_row(name, item.score, rule.normalized([item.score])[0], item.label,
                                         float(rule.image_threshold))
        threshold = out.pop("threshold")  # the service's order: the verdict in words before the thresholds
        out.update({
            "label": "defect" if item.label else "ok",
            "threshold": threshold,
            "pixel_threshold": rule.pixel_threshold,
            "rule": "area" if rule.uses_area else "score",
            "min_area": rule.min_area,
            "decision": rule.description,
            "image_size": {"width": prepared.width, "height": prepared.height},
            "exif_orientation": prepared.orientation,
            "defect_area_fraction": None,
            "regions": None,
            "regions_total": None,
        })
        if item.amap is not None and rule.pixel_threshold is not None:
            full = to_original_size(item.amap, (prepared.height, prepared.width))
            mask = full > rule.pixel_threshold
            del full
            out["defect_area_fraction"] = float(np.count_nonzero(mask)) / mask.size
            out["regions"], out["regions_total"] = defect_regions(mask)
        if heatmap and item.amap is not None:
            picture = prepared.picture
            longest = max(prepared.height, prepared.width)
            if longest > HEATMAP_MAX_SIDE:
                from PIL import Image

                scale = HEATMAP_MAX_SIDE / longest
                size = (max(1, round(prepared.width * scale)), max(1, round(prepared.height * scale)))
                picture = np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
            low, high = self.heatmap_range()
            overlay, _ = render_heatmap(picture, item.amap, low, high, rule.pixel_threshold)
            out["heatmap_png"] = _png_base64(overlay)
        return out

    def describe(self) -> dict[str, Any]:
        """What GET /model answers: the detector, its parameters, the decision rule, sizes, versions."""
        low, high = self.heatmap_range()
        versions = {"anomalens": __version__, "python": platform.python_version(), "numpy": np.__version__}
        for package in ("pillow", "fastapi", "uvicorn", *self.model.packages):
            versions[package] = _version(package)
        info: dict[str, Any] = {
            "detector": self.name,
            "runtime": self.runtime,
            "device": self.model.device,
            "source": self.source,
            "params": plain_json(dict(self.model.params)),
            "decision": plain_json(self.decision.to_dict()),
            "input_size": {"height": self.input_size[0], "width": self.input_size[1]},
            "channels": self.channels,
            "localizes": self.localizes,
            "normalized_score": NORMALIZED_SCORE_NOTE,
            "heatmap_scale": {"low": low, "high": high},
            "versions": versions,
        }
        info.update(self.model.details)  # an export: its format
        return info


def load_served_model(path: str | Path, runtime: str | None = None, device: str | None = None) -> ServedModel:
    """A run folder (torch) or an export folder (onnxruntime / openvino) ready to serve.

    ``runtime``: None picks by the folder (a run: torch; an export: its format's runtime). A run served with
    an export runtime, or an export with torch, is refused with one line saying what to do.
    """
    path = Path(path)
    return ServedModel(load_predictor(path, runtime=runtime, device=device), source=path)


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


__all__ = ["ServedModel", "Prepared", "ItemResult", "defect_regions", "load_served_model", "NORMALIZED_SCORE_NOTE"]
