"""The one contract every detector follows and its typed result.

A detector is used like a scikit-learn estimator:

    det = create_detector("padim", backbone="efficientnet_lite0")
    det.fit(train_records)                     # normal images only
    result = det.predict(test_records)         # DetectionResult: scores, labels, maps, masks
    det.save("runs/x"); det = load_detector("runs/x")

Rules shared by all detectors:
- the constructor only stores hyper-parameters, declared once per class in ``hyperparameters`` (typed,
  checked at construction: see ``anomalens.params``); fitted state lives in attributes ending in ``_``;
- higher score = more anomalous;
- detectors that localise (``localizes``) return anomaly maps at the resolution of their input tensors
  (``image_size``);
- the decision — thresholds, the optional minimum-area rule and where they came from — is one
  ``DecisionRule`` in ``decision_``: ``fit`` creates it from normal images scored by a model that did
  not see them (the (1 − ``false_alarm_rate``) quantile of their scores, so a threshold exists without
  any defective sample), ``calibrate`` replaces it, ``predict`` applies it;
- those normal scores: detectors that can (``crossfits``: PaDiM, PatchCore) score *every* training image
  out of fold — the images are cut into ``threshold_folds`` seeded folds and each fold is scored by the
  model of the others — PaDiM from the final model's sums without refitting, PatchCore with the coreset a
  fit on the other folds selects — while the final model still uses every image; the others score the seeded ``holdout_fraction`` of the images they are
  not trained on (k trainings for a trained detector would cost k times its fit);
- optional abilities are named by class flags: ``localizes`` (anomaly maps), ``reconstructs``
  (``reconstruct()`` gives the images the model rebuilt), ``score_is_map_max``, ``tiles`` (``tile_size`` /
  ``tile_overlap``: high-resolution images scored as overlapping tiles, ``anomalens.tiling``);
- sizes: every image is resized to the working size ``input_size`` — ``image_size``, or with
  ``resize="keep_aspect"`` the largest size inside ``image_size`` with the training images' aspect ratio
  (found by ``fit``, saved with the run); the model itself works at ``model_input_size``, which is the tile
  size when tiling and ``input_size`` otherwise; maps come back at ``input_size``;
- one inference graph: ``inference_module()`` is the fitted detector's whole inference as one plain
  ``nn.Module`` — float32 images (N, C, H, W) in [0, 1] at ``input_size`` in, ``(scores (N,), maps (N, H, W))``
  out (``(scores,)`` for image-level detectors), normalisation, features, distances, upsampling, blur and
  the image score inside. ``score`` / ``predict`` run through it, and ``anomalens.export`` writes it to
  ONNX / OpenVINO, so the exported model is the same computation; ``export_refusal()`` says (one line)
  why a detector's module cannot be a static graph (a latent search, an approximate index), else None.

This module knows no implementation: the registry is ``anomalens.registry``, the list of all detectors
and ``load_detector`` are in ``anomalens.catalog``, file handling in ``anomalens.persistence``.
"""

from __future__ import annotations

import functools
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Iterator, Sequence

import numpy as np
import torch

from anomalens.data import as_image_inputs, as_image_records, iterate_batches
from anomalens.data.records import split_records
from anomalens.decision import DecisionRule, DetectionResult  # DetectionResult: re-exported
from anomalens.devices import check_device_name, resolve_device
from anomalens.errors import ConfigError, DataError, NotFittedError, NumericalError
from anomalens.data.io import image_size as stored_image_size
from anomalens.data.torch_dataset import decoding_mode
from anomalens.params import Choice, Float, Int, Param, Size, Text, check_params
from anomalens.persistence import rename_deprecated_params, write_decision, write_run_files
from anomalens.thresholds import area_threshold_search, f1_threshold
from anomalens.tiling import TILING_PARAMS, TiledInference, TileLayout, is_tile_records
from anomalens.version import __version__


logger = logging.getLogger("anomalens")


def _decoding_as_declared(method: Any) -> Any:
    """Run a Detector method with files decoded the way its ``decode`` hyper-parameter says: the models'
    own loops (``iterate_batches`` in fit, the hold-out and fold scoring) then decode as the run does, so
    fit, test, predict and calibrate see the same pixels."""
    @functools.wraps(method)
    def wrapper(self: "Detector", *args: Any, **kwargs: Any) -> Any:
        with decoding_mode(self.params["decode"]):
            return method(self, *args, **kwargs)
    return wrapper


class _HyperParameter:
    """Read-only attribute for a declared hyper-parameter: ``det.epochs`` is ``det.params["epochs"]``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return owner.declared_params()[self.name]
        return instance.params[self.name]

    def __set__(self, instance: Any, value: Any) -> None:
        raise AttributeError(f"hyper-parameter '{self.name}' is set when the detector is created")


class Detector(ABC):
    """Base class of every anomaly detector. Subclasses implement ``_fit``, ``inference_module`` (which
    ``_score`` runs over batches) and the two persistence hooks, and declare their own ``hyperparameters``.

    Class attributes:
        name: registry name.
        localizes: whether ``_score`` returns anomaly maps.
        reconstructs: whether ``reconstruct()`` is available (autoencoders, GANs).
        score_is_map_max: whether the image score is the maximum of the anomaly map.
        tiles: whether ``tile_size`` / ``tile_overlap`` are offered (declared here for the class, from
            ``anomalens.tiling.TILING_PARAMS``): the model's fit and ``inference_module`` work at
            ``model_input_size`` and its module goes through ``tiled()``.
        hyperparameters: this class's own declarations (name → ``Param``); they add to, or override,
            those of its base classes and the common ones below.
    """

    name: ClassVar[str] = ""
    localizes: ClassVar[bool] = True
    reconstructs: ClassVar[bool] = False
    score_is_map_max: ClassVar[bool] = False
    tiles: ClassVar[bool] = False
    hyperparameters: ClassVar[dict[str, Param]] = {
        "image_size": Size(256, "input size in pixels: one side, or [height, width]"),
        "resize": Choice("squash", ("squash", "keep_aspect"), "squash: every image resized to image_size; keep_aspect: "
                         "to the largest size inside image_size with the training images' aspect ratio (set by fit)"),
        "decode": Choice("exact", ("exact", "fast"), "exact: every pixel of a file decoded, then resized; fast: a "
                         "large file shrunk while decoding (JPEG at 1/2-1/8 scale, others box-reduced), never below "
                         "twice the working size — much faster on large frames, values differ slightly"),
        "batch_size": Int(16, "images per batch when scoring (and training)", low=1),
        "device": Text("auto", "auto (CUDA when available), cpu, cuda or cuda:N"),
        "seed": Int(0, "random seed: same seed, same model", low=0),
        "false_alarm_rate": Float(
            0.01, "target share of normal images flagged: the threshold is the (1 - rate) quantile of normal scores "
            "from models that did not see them (replaces threshold_quantile = 1 - rate)", low=0.0, high=1.0
        ),
        "threshold_folds": Int(
            10, "k of the cross-fitted threshold (padim, patchcore): every training image is scored by the model "
            "fitted without its fold; 0 = leave-one-out, 1 = hold-out only; others use the hold-out", low=0
        ),
        "holdout_fraction": Float(
            0.1, "share of the training normals held out to set the thresholds when not cross-fitting (0: none)",
            low=0.0, high=0.9
        ),
    }
    _all_params: ClassVar[dict[str, Param]] = dict(hyperparameters)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = dict(cls.__dict__.get("hyperparameters", {}))
        if cls.tiles:  # declared once, for every detector that tiles
            own = {**{k: v for k, v in TILING_PARAMS.items() if k not in cls._all_params}, **own}
        cls._all_params = {**cls._all_params, **own}
        if not cls.tiles:
            cls._all_params = {k: v for k, v in cls._all_params.items() if k not in TILING_PARAMS}
        for key in own:
            existing = getattr(cls, key, None)
            if existing is not None and not isinstance(existing, (_HyperParameter, Param)):
                raise TypeError(f"{cls.__qualname__}: hyper-parameter '{key}' clashes with attribute {cls.__qualname__}.{key}")
            setattr(cls, key, _HyperParameter(key))

    @classmethod
    def declared_params(cls) -> dict[str, Param]:
        """Every hyper-parameter the constructor accepts (common and own), with default and meaning."""
        return dict(cls._all_params)

    def __init__(self, **params: Any) -> None:
        owner = self.name or type(self).__name__
        if "threshold_quantile" in params:  # deprecated spelling, accepted and translated (never saved)
            try:
                params = rename_deprecated_params(params)
            except ConfigError as exc:
                raise ConfigError(f"{owner}: {exc}") from None
            logger.warning("%s: threshold_quantile is deprecated: use false_alarm_rate = 1 - threshold_quantile (%g)",
                           owner, params["false_alarm_rate"])
        offered = [key for key in TILING_PARAMS if key in params and key not in self._all_params]
        if offered:
            raise ConfigError(f"{owner}: does not tile (no {', '.join(offered)}): tiling is offered by the detectors "
                              "whose 'anomalens params NAME' lists tile_size; use resize / image_size here")
        self.params: dict[str, Any] = check_params(owner, self._all_params, params)
        check_device_name(self.params["device"])
        self.working_size_: tuple[int, int] | None = None  # keep_aspect: the size fit chose (None: image_size)
        self._check_tiling()  # first: a model's own checks may read the tile size
        self._check_params()
        self.decision_: DecisionRule | None = None
        self.history_: dict[str, list[float]] = {}

    def _check_params(self) -> None:
        """Checks that involve several parameters (e.g. a network's supported sizes); ConfigError if not met."""

    def _check_tiling(self) -> None:
        """ConfigError (one line, both sizes) unless the tile fits in the working image."""
        tile = self.params.get("tile_size")
        if tile is None or tile == 0:
            return
        if not isinstance(tile, int) and min(tile) < 1:
            raise ConfigError(f"{self.name}: parameter tile_size must be 0 or null (no tiling), a positive integer or a "
                              f"[height, width] pair of them, got {list(tile)}")
        (tile_h, tile_w), (height, width) = self.tile_shape, self.input_size
        if tile_h > height or tile_w > width:
            raise ConfigError(
                f"{self.name}: tile_size {tile_h}x{tile_w} is larger than the working image {height}x{width} "
                f"(image_size{', aspect kept' if self.working_size_ else ''}; height x width): use a tile_size of at "
                "most the image size, or a larger image_size"
            )

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != self._all_params[k].default}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params["device"])

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the images the detector's ``inference_module()`` takes and its maps: the working
        size. ``image_size`` (one int or a pair), or with ``resize="keep_aspect"`` the size ``fit`` chose."""
        if self.working_size_ is not None:
            return self.working_size_
        size = self.params["image_size"]
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def tile_shape(self) -> tuple[int, int] | None:
        """(height, width) of the tiles, or None without tiling."""
        tile = self.params.get("tile_size")
        if tile is None or tile == 0:
            return None
        return (tile, tile) if isinstance(tile, int) else (tile[0], tile[1])

    @property
    def tiling(self) -> bool:
        return self.tile_shape is not None

    @property
    def model_input_size(self) -> tuple[int, int]:
        """(height, width) the model itself works at — what its fit reads and its own module takes: the tile
        size when tiling, else ``input_size``."""
        return self.tile_shape or self.input_size

    def tile_layout(self) -> TileLayout:
        """Where the tiles of a working image lie (``anomalens.tiling``); only when tiling."""
        if self.tile_shape is None:
            raise ConfigError(f"{self.name}: no tile_size set: this detector does not tile")
        return TileLayout.plan(self.input_size, self.tile_shape, self.params["tile_overlap"])

    def tiled(self, tile_module: torch.nn.Module) -> torch.nn.Module:
        """The whole-image inference around the model's own module (at ``model_input_size``): ``tile_module``
        itself without tiling, else a ``TiledInference`` that cuts, scores and blends the tiles. Models that
        ``tiles`` return their module through this from ``inference_module()``."""
        if not self.tiling:
            return tile_module
        return TiledInference(tile_module, self.tile_layout(), self._scoring_batch_size(), self.score_is_map_max,
                              self.device)

    def _scoring_batch_size(self) -> int:
        """Images (tiles, when tiling) per call of the model's module."""
        return int(self.params["batch_size"] or 16)

    @property
    def is_fitted(self) -> bool:
        return self.decision_ is not None

    @property
    def threshold_(self) -> float:
        """The image threshold of the current decision rule."""
        return self._fitted_decision().image_threshold

    @property
    def pixel_threshold_(self) -> float | None:
        """The pixel threshold of the current decision rule (None for image-level detectors)."""
        return self._fitted_decision().pixel_threshold

    # -- what subclasses implement ------------------------------------------------------------
    @abstractmethod
    def _fit(self, records: Sequence, progress: bool) -> None:
        """Learn what normal looks like from ``records`` (normal images)."""

    @abstractmethod
    def inference_module(self) -> torch.nn.Module:
        """The fitted detector's inference as one ``nn.Module`` on ``device`` (see the module docstring).

        Input: float32 images (N, ``image_channels``, H, W) in [0, 1], (H, W) = ``input_size``. Output: the
        tuple ``(scores (N,), maps (N, H, W))`` when the detector ``localizes``, else ``(scores (N,),)``;
        float32. The module holds (references to) the fitted tensors, so build it after ``fit`` / load.
        """

    def export_refusal(self) -> str | None:
        """Why ``inference_module()`` cannot be exported as a static graph (one line), or None if it can."""
        return None

    @property
    def image_channels(self) -> int:
        """Channels images are decoded to before they enter the inference module (1 grey, 3 RGB)."""
        return 3

    def _inference(self) -> ContextManager:
        """The autograd context the inference module runs in (AnoGAN's latent search needs gradients)."""
        return torch.inference_mode()

    def batch_plan(self, records: Any, batch_size: int) -> tuple[tuple[int, int], int]:
        """(size to decode ``records`` at, records per batch): tiles (``anomalens.tiling``) at the tile size,
        ``batch_size`` of them; images at ``input_size`` — with tiling only as many per batch as give about
        ``batch_size`` tiles (at least one), since a working image is large and its tiles are chunked anyway."""
        if is_tile_records(records):
            return self.model_input_size, batch_size
        if self.tiling:
            return self.input_size, max(1, batch_size // len(self.tile_layout()))
        return self.input_size, batch_size

    def _image_batches(self, records: Sequence, progress: bool, what: str) -> Iterator[torch.Tensor]:
        """Batches of ``records`` in order, as (B, C, H, W) images in [0, 1] on the device (tiles at the tile
        size, images at ``input_size``: ``batch_plan``)."""
        desc = f"{self.name} {what}" if progress else None
        device = self.device
        cuda = device.type == "cuda"  # pinned batches, copied while the previous one runs
        size, per_batch = self.batch_plan(records, self.params["batch_size"])
        batches = iterate_batches(records, size, per_batch, channels=self.image_channels, desc=desc, pin_memory=cuda)
        for batch in batches:
            yield batch["image"].to(device, non_blocking=cuda)

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores (N,), maps (N, H, W) float32 or None): ``inference_module()`` over batches of ``records``;
        tile records (inside a tiled fit) go through the model's own tile-level module instead."""
        module = self.inference_module().eval()
        if isinstance(module, TiledInference) and is_tile_records(records):
            module = module.tile_module
        scores, maps = [], []
        with self._inference():
            for images in self._image_batches(records, progress, "score"):
                outputs = module(images)
                scores.append(outputs[0].detach().float().cpu().numpy())
                if len(outputs) > 1:
                    maps.append(outputs[1].detach().float().cpu().numpy())
        return np.concatenate(scores), (np.concatenate(maps) if maps else None)

    @abstractmethod
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to persist (safetensors)."""

    @abstractmethod
    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore fitted tensors saved by ``_state_tensors``."""

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit on ``fit_records``; return the scores and maps of ``holdout`` from a model that never saw them.

        Detectors whose fit is a sum over images override this to fit the final model on every image
        (the held-out ones too) while still scoring the held-out images without them (PaDiM).
        ``holdout is fit_records`` when nothing is held out.
        """
        self._fit(fit_records, progress)
        return self._score(holdout, progress)

    # -- the public contract ------------------------------------------------------------------
    def _fit_and_score_out_of_fold(self, parts: list[list], folds: list[np.ndarray],
                                   progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit the final model on every image of ``parts`` (lists of records, in this order); return the
        scores (N,) and maps (N, H, W) or None of all N images, each from the model fitted without its fold
        (``folds``: index arrays into the concatenation of ``parts``). Only for ``crossfits`` detectors."""
        raise NotImplementedError(f"{self.name} does not cross-fit its threshold")

    def threshold_fold_count(self, n_images: int) -> int:
        """k, the folds ``fit`` cross-fits the threshold with for ``n_images`` training images; 0 when the
        threshold comes from the hold-out instead (the detector does not cross-fit, ``threshold_folds`` is 1,
        or a model without the largest fold would have fewer than ``min_fit_images`` images)."""
        k = self.params["threshold_folds"]
        if not self.crossfits or k == 1:
            return 0
        k = n_images if k == 0 else min(k, n_images)
        if k < 2 or n_images - math.ceil(n_images / k) < self.min_fit_images:
            return 0
        return k

    def crossfit_folds(self, n_images: int, k: int) -> list[np.ndarray]:
        """The seeded partition of range(n_images) into k folds (sizes differ by at most one), each sorted."""
        order = np.random.default_rng((self.params["seed"], 2)).permutation(n_images)
        return [np.sort(order[j::k]) for j in range(k)]

    @_decoding_as_declared
    def fit(self, records: Any, progress: bool = True) -> "Detector":
        """Fit on normal images and set the decision rule from normal scores of models that did not see
        them (out of fold, or the hold-out: module docstring). Returns self.

        ``records``: what ``predict`` takes — ``ImageRecord`` s, image files, folders (searched into their
        sub-folders), glob patterns, numpy arrays (one image, or an (N, H, W[, C]) stack), PIL images or
        torch tensors, alone or in a list (``anomalens.data.inputs``); all taken as normal.

        Every fit starts from nothing: the previous decision rule (a calibration included) is gone. With
        ``resize="keep_aspect"`` it first sets the working size from the images' shapes; with tiling the
        model learns from every tile of every image, and the threshold still comes from image scores.
        """
        records = as_image_records(records, label=0)
        if not records:
            raise ValueError(f"{self.name}: no training images")
        self.decision_ = None
        self.history_ = {}
        self.working_size_ = None
        if self.params["resize"] == "keep_aspect":
            self.working_size_ = aspect_kept_size(self.name, records, self.input_size)
            self._check_tiling()
            self._check_params()  # a network's supported sizes, now for the chosen size
        fit_records, holdout = self.holdout_split(records)
        # With tiling the model fits on (and scores) tiles; the folds and the hold-out stay whole images.
        layout = self.tile_layout() if self.tiling else None
        as_model_input = layout.tile_records if layout else (lambda images: images)
        k = self.threshold_fold_count(len(records))
        if k:
            # The final model sees the images in the hold-out split's order (kept, then held): the model
            # (and so every score) is the same as when its threshold came from the hold-out.
            parts = [fit_records] if holdout is fit_records else [fit_records, holdout]
            folds = self.crossfit_folds(len(records), k)
            if layout:
                folds = [layout.tile_indices(fold) for fold in folds]
            torch.manual_seed(self.params["seed"])
            scores, maps = self._fit_and_score_out_of_fold([as_model_input(p) for p in parts], folds, progress)
            scores, maps = self._image_outputs(scores, maps)
            what = ("training images, each scored leave-one-out" if k == len(records) else
                    f"training images, each scored by the model of the other {k - 1} of {k} folds")
            self._set_threshold_from_normals(scores, maps, what, k)
            return self
        if len(fit_records) < self.min_fit_images:
            held = 0 if holdout is fit_records else len(holdout)
            raise DataError(
                f"{self.name}: needs at least {self.min_fit_images} images to fit, got {len(records)} training "
                f"image(s)" + (f", {held} of them held out for the threshold (more images, or -p holdout_fraction=0)"
                               if held else "")
            )
        torch.manual_seed(self.params["seed"])
        model_fit = as_model_input(fit_records)
        model_holdout = model_fit if holdout is fit_records else as_model_input(holdout)
        scores, maps = self._image_outputs(*self._fit_and_score_holdout(model_fit, model_holdout, progress))
        held_out = holdout is not fit_records
        what = "held-out normal images" if held_out else "training images (none held out: optimistic)"
        self._set_threshold_from_normals(scores, maps, what, 1 if held_out else 0)
        return self

    def _image_outputs(self, scores: np.ndarray, maps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """What the model gave for the records of a fit: as is for images; tiles (whole images' worth, in
        order) blended into image scores and maps exactly as the tiled module blends them."""
        if not self.tiling:
            return scores, maps
        module = self.inference_module()
        return module.blend_outputs(scores, maps)

    #: Below this many normal scores ``fit`` warns that its threshold is weak.
    min_threshold_scores: ClassVar[int] = 30

    def _set_threshold_from_normals(self, scores: np.ndarray, maps: np.ndarray | None, what: str, folds: int) -> None:
        rate = self.params["false_alarm_rate"]
        # Identical images score the same up to float rounding (leave-one-out models differ in summation order).
        if len(scores) > 2 and np.ptp(scores) <= 1e-5 * max(1.0, float(np.abs(scores).max())):
            logger.warning(
                "%s: the %d normal images the threshold comes from all score %.6g: the training images may be "
                "identical copies, and the threshold cannot tell new normal images from defects reliably",
                self.name, len(scores), float(scores[0]),
            )
        if len(scores) < self.min_threshold_scores:
            logger.warning(
                "%s: the threshold rests on only %d normal score(s) (%s), fewer than %d: the false-alarm rate of "
                "new normal images may be far from the %g aimed at — fit on more normal images, or calibrate",
                self.name, len(scores), what.split(" (")[0], self.min_threshold_scores, rate,
            )
        self.decision_ = DecisionRule.from_normal_scores(scores, maps, rate, what, folds=folds)

    def holdout_split(self, records: Sequence) -> tuple[list, list]:
        """(fit, held out): the seeded share of normals ``fit`` holds out for the thresholds.

        When nothing can be held out, both are the same list (thresholds then come from the training
        images themselves, which is optimistic).
        """
        kept, held = split_records(list(records), self.params["holdout_fraction"], self.params["seed"])
        return (kept, held) if held else (kept, kept)

    #: The fewest images ``_fit`` can work with (after the threshold hold-out).
    min_fit_images: ClassVar[int] = 1
    #: True when ``_fit_and_score_out_of_fold`` exists: the threshold comes from out-of-fold scores of every
    #: training image (``threshold_folds``), not from the hold-out.
    crossfits: ClassVar[bool] = False
    #: True when the final model is fitted on the held-out normals too (their threshold scores come from a
    #: model without them, but the saved model has seen them: PaDiM, PatchCore).
    final_fit_includes_holdout: ClassVar[bool] = False

    def unseen_normals(self, records: Sequence) -> list:
        """The training normals the saved model never saw: the hold-out of ``records`` (the training images
        the detector was fitted on), or [] when there is none or the final fit included it.

        The area calibration needs normal images whose maps look like those of new images; images the model
        was fitted on have maps near zero and would set the pixel threshold far too low.
        """
        kept, held = self.holdout_split(records)
        return [] if self.final_fit_includes_holdout or held is kept else held

    @_decoding_as_declared
    def score(self, records: Any, progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw anomaly scores (N,) and maps (N, H, W) or None, without thresholding.

        ``records``: ``ImageRecord`` s, file paths (a folder: its images), numpy arrays, PIL images or torch
        tensors, alone or in a list (``anomalens.data.as_image_inputs``); a float32 (N, C, H, W) tensor at
        ``input_size`` goes to the model without decoding or resizing.
        """
        self._check_fitted()
        records = as_image_inputs(records, self.input_size, self.image_channels)
        if not len(records):
            return np.zeros(0, np.float32), None
        scores, maps = self._score(records, progress)
        broken = ~np.isfinite(scores)
        if maps is not None:
            broken |= ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
        if broken.any():
            index = int(np.argmax(broken))
            first = getattr(records[index], "name", "") if isinstance(records, list) else ""
            raise NumericalError(
                f"{self.name}: NaN or infinite anomaly scores or maps for {int(broken.sum())} of {len(records)} "
                f"images (first: {first or f'image {index}'}); the fitted model is numerically broken — refit "
                "(check the parameters and the training images)"
            )
        return scores, maps

    def predict(self, records: Any, progress: bool = True) -> DetectionResult:
        """Scores, labels, maps and predicted masks for each image, under the current decision rule.

        Takes what ``score`` takes (records, paths, arrays, PIL images, tensors); maps are at ``input_size``
        (``anomalens.report.to_original_size`` brings one back to its image's own size).
        """
        scores, maps = self.score(records, progress)
        return self._fitted_decision().apply(scores, maps)

    def predict_in_chunks(
        self, records: Sequence, chunk_size: int = 64, progress: bool = False
    ) -> Iterator[tuple[int, DetectionResult]]:
        """``predict`` over ``records`` in chunks: yields (offset of the chunk, its DetectionResult).

        For scoring many images with bounded memory: only one chunk's maps exist at a time (with
        ``predict`` on N images the N full-resolution maps are returned together, 0.26 MB per image
        at 256 px). ``anomalens predict`` works this way.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._check_fitted()
        records = as_image_inputs(records, self.input_size, self.image_channels)
        for start in range(0, len(records), chunk_size):
            yield start, self.predict(records[start : start + chunk_size], progress=progress)

    def reconstruct(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, reconstructions) as float32 (N, C, H, W) or (N, H, W) arrays in [0, 1].

        Only for detectors with ``reconstructs = True``; the others raise ConfigError.
        """
        raise ConfigError(f"{self.name} does not reconstruct images (only autoencoders and GANs do)")

    @_decoding_as_declared
    def calibrate(
        self,
        records: Any,
        method: str = "f1",
        normal_records: Any = (),
        clear_border: bool = False,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Replace the decision rule with one set on labelled ``records``: ``ImageRecord`` s with label 0
        (normal) or 1 (defective), e.g. ``load_dataset(DATA).test`` (anything else is a DataError).

        method="f1": the F1-optimal image threshold. Without anomalous images the F1 rule is undefined;
            the thresholds are then re-estimated as the normal-score quantile instead of flagging
            everything, and the returned note says so.
        method="area" (localising detectors): the seed's finetune — a pixel threshold and a minimum
            defect area (see ``thresholds.area_threshold_search``); ``normal_records`` are the
            validation normals of its first step (defaults to the normal images among ``records``; anything
            ``predict`` takes: records, files, folders, arrays ...);
            ``clear_border`` ignores regions touching the border, as the 2021 reference code did.
        """
        rule = self._fitted_decision()
        if method not in ("f1", "area"):
            raise ConfigError(f"unknown calibration method '{method}'; use f1 or area")
        if method == "area" and not self.localizes:
            raise ConfigError(f"{self.name} gives no anomaly maps: use calibrate method 'f1'")
        records = as_image_records(records)
        unlabelled = [r for r in records if r.label not in (0, 1)]
        if unlabelled:
            raise DataError(
                f"{self.name}: calibrate needs labelled images (ImageRecords with label 0 normal or 1 defective, "
                f"e.g. load_dataset(DATA).test); {len(unlabelled)} of {len(records)} have none (first: "
                f"{unlabelled[0].name or 'image'})")
        normal_records = as_image_records(normal_records, label=0)  # () stays []
        labels = np.array([r.label for r in records], dtype=np.int64)
        if len(labels) and not labels.any():
            logger.warning(
                "%s: the calibration data has no defective image (%d normal): the %s calibration cannot weigh "
                "missed defects against false alarms — calibrate on labelled images with defects", self.name,
                len(labels), method,
            )
        scores, maps = self.score(records, progress)
        if method == "area":
            normal_maps = self.score(normal_records, progress)[1] if len(normal_records) else maps[labels == 0]
            if normal_maps is None or len(normal_maps) == 0:
                raise ValueError("the area calibration needs normal images")
            found = area_threshold_search(normal_maps, maps, labels, clear_border=clear_border, progress=progress)
            self.decision_ = rule.with_changes(
                source="area",
                pixel_threshold=float(found["threshold"]),
                min_area=int(found["min_area"]),
                clear_border=clear_border,
                description=f"area rule: region ≥ {found['min_area']} px above {found['threshold']:.4g}; {found['note']}",
                evidence={"n_labelled": len(labels), "n_anomalous": int(labels.sum()), "n_normal_validation": len(normal_maps),
                          "balanced_accuracy": float(found["score"])},
            )
            return {"threshold": self.threshold_, "pixel_threshold": self.pixel_threshold_, "min_area": found["min_area"],
                    "balanced_accuracy": found["score"], "note": found["note"]}
        threshold = f1_threshold(labels, scores)
        if threshold is None:
            normal = scores[labels == 0]
            if len(normal) == 0:
                raise ValueError("calibration data has no normal image; cannot set a threshold")
            rate = self.params["false_alarm_rate"]
            self.decision_ = DecisionRule.from_normal_scores(
                normal, None if maps is None else maps[labels == 0], rate, "calibration normal images"
            )
            note = (f"calibration data has no anomalous image: threshold set to the {1 - rate:g} quantile of its "
                    f"{len(normal)} normal scores (false-alarm rate {rate:g})")
        else:
            description = f"F1-optimal on {len(labels)} labelled images ({int(labels.sum())} anomalous)"
            # For max-of-map detectors the image threshold is exactly a pixel threshold too.
            pixel = threshold if maps is not None and self.score_is_map_max else rule.pixel_threshold
            self.decision_ = rule.with_changes(
                source="f1", image_threshold=threshold, pixel_threshold=pixel, min_area=None, clear_border=False,
                description=description, evidence={"n_labelled": len(labels), "n_anomalous": int(labels.sum())},
            )
            note = description
        return {"threshold": self.threshold_, "pixel_threshold": self.pixel_threshold_, "note": note}

    def _fitted_decision(self) -> DecisionRule:
        if self.decision_ is None:
            raise NotFittedError(f"{self.name}: call fit() first (this detector is not fitted)")
        return self.decision_

    def _check_fitted(self) -> None:
        self._fitted_decision()

    # -- persistence --------------------------------------------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        """How images are turned into tensors (saved for users re-implementing the pipeline): the working
        size every image is resized to (``input_size``) and, when tiling, how it is cut."""
        info: dict[str, Any] = {"resize": self.params["image_size"], "scale": "[0, 1]",
                                "interpolation": "bilinear, antialiased", "resize_mode": self.params["resize"],
                                "decode": self.params["decode"],
                                "working_size": list(self.input_size)}
        if self.tiling:
            layout = self.tile_layout()
            info["tiles"] = {"size": list(layout.tile_size), "overlap": layout.overlap, "rows": list(layout.rows),
                             "cols": list(layout.cols), "blend": "edge-ramp windows, normalised to sum 1",
                             "image_score": "max of the blended map" if self.score_is_map_max else "max of the tile scores"}
        return info

    def config(self) -> dict[str, Any]:
        """Everything but the tensors, as saved in ``detector.json``."""
        return {
            "library": "anomalens",
            "library_version": __version__,
            "detector": self.name,
            "params": self.params,
            "decision": self._fitted_decision().to_dict(),
            "history": self.history_,
            "preprocessing": self.preprocessing(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``detector.json`` + ``weights.safetensors`` into ``directory`` (no pickle, atomic)."""
        config = self.config()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        if self.working_size_ is not None:
            tensors[WORKING_SIZE_TENSOR] = torch.tensor(self.working_size_)
        return write_run_files(directory, config, tensors)

    def save_decision(self, directory: str | Path) -> None:
        """Rewrite only the decision rule in ``directory``'s ``detector.json`` (after calibrate), atomically."""
        write_decision(directory, self._fitted_decision().to_dict())

    def load_fitted_state(self, tensors: dict[str, torch.Tensor], decision: DecisionRule, history: dict) -> "Detector":
        """Restore what ``save`` wrote (used by ``anomalens.catalog.load_detector``). Returns self.

        Torch is seeded as ``fit`` seeds it, so that anything rebuilt rather than saved (a backbone with
        ``weights="random"``) is drawn exactly as it was when the detector was fitted.
        """
        torch.manual_seed(self.params["seed"])
        tensors = dict(tensors)
        working = tensors.pop(WORKING_SIZE_TENSOR, None)
        if (working is None) != (self.params["resize"] != "keep_aspect"):
            raise ValueError(f"resize={self.params['resize']} but the file {'lacks' if working is None else 'holds'} "
                             "a working size")
        self.working_size_ = None if working is None else (int(working[0]), int(working[1]))
        self._check_tiling()
        self._load_state_tensors(tensors)
        self.decision_ = decision
        self.history_ = history
        return self


#: The saved tensor holding the working size ``fit`` chose with ``resize="keep_aspect"``.
WORKING_SIZE_TENSOR = "working_size"
#: Training images whose aspect ratios differ by more than this share get a warning with keep_aspect.
ASPECT_TOLERANCE = 0.01


def aspect_kept_size(owner: str, records: Sequence, bound: tuple[int, int]) -> tuple[int, int]:
    """The largest (height, width) inside ``bound`` with the median aspect ratio of ``records`` (sizes read
    from the file headers), rounded to whole pixels. Mixed aspect ratios get a warning: the others will be
    resized to this one, distorted as with ``squash``."""
    sizes = []
    for record in records:
        source = getattr(record, "source", record)
        sizes.append(stored_image_size(source))
    ratios = np.array([width / height for height, width in sizes])
    ratio = float(np.median(ratios))
    low, high = float(ratios.min()), float(ratios.max())
    if high > low * (1 + ASPECT_TOLERANCE):
        odd = sizes[int(np.argmax(np.abs(np.log(ratios / ratio))))]
        logger.warning(
            "%s: resize=keep_aspect: the training images' aspect ratios (width / height) range from %.3g to %.3g; "
            "the working size follows their median %.3g, and images of another shape (e.g. one of %dx%d) are "
            "resized to it, distorted", owner, low, high, ratio, odd[1], odd[0])
    height, width = bound
    if width / height > ratio:  # the bound is wider than the images: their height fills it
        return height, max(1, round(height * ratio))
    return max(1, round(width / ratio)), width


# The common hyper-parameters read as attributes too; ``device`` is the property above (a torch.device).
for _name in Detector.hyperparameters:
    if _name != "device":
        setattr(Detector, _name, _HyperParameter(_name))
del _name
