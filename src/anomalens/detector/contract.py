"""``Detector``: the contract every detector follows (the package docstring states it).

The class keeps what a user calls — ``fit``, ``score``, ``predict``, ``calibrate``, ``save`` — and what a
detector declares (its abilities and hyper-parameters); the policies around them are collaborators it
builds from its parameters: ``sizing`` (working size, tiles, batch plan: ``anomalens.detector.sizing``),
``normal_scores`` (the hold-out / cross-fit protocol: ``anomalens.detector.normal_scores``), the
calibration (``anomalens.detector.calibration``), and the decision rules with their weaknesses
(``anomalens.decision``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from anomalens.data import as_image_inputs, as_image_records
from anomalens.data.model_input import decoding_mode
from anomalens.decision import MIN_THRESHOLD_SCORES, DecisionRule, DetectionResult, weaknesses
from anomalens.detector.calibration import Calibration
from anomalens.detector.hyperparameters import COMMON, HyperParameterAttribute, checked_params, declared_by
from anomalens.detector.model_hooks import ModelHooks
from anomalens.detector.normal_scores import CrossFit, NormalScores
from anomalens.detector.saved_run import SavedRun
from anomalens.detector.sizing import Sizing, aspect_kept_size
from anomalens.devices import resolve_device
from anomalens.errors import ConfigError, DataError, NotFittedError, NumericalError
from anomalens.params import Param

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


class Detector(ModelHooks, SavedRun):
    """Base class of every anomaly detector. Subclasses implement the model hooks (``ModelHooks``: ``_fit``,
    ``inference_module``, the two persistence hooks) and declare their own ``hyperparameters``; ``save`` /
    ``load_fitted_state`` come from ``SavedRun`` (``anomalens.detector.saved_run``).

    Class attributes (what a detector declares):
        name: registry name.
        localizes: whether ``_score`` returns anomaly maps.
        reconstructs: whether ``reconstruct()`` is available (autoencoders, GANs).
        score_is_map_max: whether the image score is the maximum of the anomaly map.
        tiles: whether ``tile_size`` / ``tile_overlap`` are offered (``anomalens.tiling``): the model's fit and
            ``inference_module`` work at ``model_input_size`` and its module goes through ``tiled()``.
        crossfits: whether ``_fit_and_score_out_of_fold`` exists: the threshold comes from out-of-fold scores of
            every training image (``threshold_folds``), not from the hold-out.
        final_fit_includes_holdout: whether the final model is fitted on the held-out normals too (their
            threshold scores come from a model without them: PaDiM, PatchCore).
        min_fit_images: the fewest images ``_fit`` can work with (after the threshold hold-out).
        accepts_abnormal: whether ``fit`` also learns from labelled defective images (``abnormal=``, the
            supervised setting of SuperSimpleNet); the others refuse them with one ConfigError line.
        hyperparameters: this class's own declarations (name → ``Param``); they add to, or override, those of
            its base classes and the common ones (``anomalens.detector.hyperparameters``).
    """

    name: ClassVar[str] = ""
    localizes: ClassVar[bool] = True
    reconstructs: ClassVar[bool] = False
    score_is_map_max: ClassVar[bool] = False
    tiles: ClassVar[bool] = False
    crossfits: ClassVar[bool] = False
    final_fit_includes_holdout: ClassVar[bool] = False
    min_fit_images: ClassVar[int] = 1
    accepts_abnormal: ClassVar[bool] = False
    #: Below this many normal scores ``fit`` calls its threshold weak (``anomalens.decision.weaknesses``).
    min_threshold_scores: ClassVar[int] = MIN_THRESHOLD_SCORES
    hyperparameters: ClassVar[dict[str, Param]] = COMMON
    _all_params: ClassVar[dict[str, Param]] = dict(COMMON)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._all_params = declared_by(cls, cls._all_params)

    @classmethod
    def declared_params(cls) -> dict[str, Param]:
        """Every hyper-parameter the constructor accepts (common and own), with default and meaning."""
        return dict(cls._all_params)

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = checked_params(self.name or type(self).__name__, self._all_params, params)
        self.working_size_: tuple[int, int] | None = None  # keep_aspect: the size fit chose (None: image_size)
        self.sizing.check()  # first: a model's own checks may read the tile size
        self._check_params()
        self.decision_: DecisionRule | None = None
        self.history_: dict[str, list[float]] = {}
        self.abnormal_records: list = []  # fit's labelled defects while it runs (``accepts_abnormal``)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != self._all_params[k].default}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- collaborators ------------------------------------------------------------------------------------
    @property
    def sizing(self) -> Sizing:
        """The working size, the tiles and the batch plan (``anomalens.detector.sizing``)."""
        return Sizing(self.name, self.params["image_size"], self.params.get("tile_size"),
                      self.params.get("tile_overlap", 0.0), self.working_size_)

    @property
    def normal_scores(self) -> NormalScores:
        """Which normal scores the threshold comes from (``anomalens.detector.normal_scores``)."""
        return NormalScores(self.name, self.params["seed"], self.params["holdout_fraction"],
                            self.params["threshold_folds"], self.crossfits, self.min_fit_images,
                            self.final_fit_includes_holdout)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params["device"])

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the images ``inference_module()`` takes and of its maps: the working size —
        ``image_size``, or with ``resize="keep_aspect"`` the size ``fit`` chose."""
        return self.sizing.input_size

    @property
    def model_input_size(self) -> tuple[int, int]:
        """(height, width) the model itself works at — what its fit reads and its own module takes: the tile
        size when tiling, else ``input_size``."""
        return self.sizing.model_input_size

    def tiled(self, tile_module: torch.nn.Module) -> torch.nn.Module:
        """The whole-image inference around the model's own module (at ``model_input_size``): ``tile_module``
        itself without tiling, else a ``TiledInference`` that cuts, scores and blends the tiles. Models that
        ``tiles`` return their module through this from ``inference_module()``."""
        return self.sizing.tiled(tile_module, self._scoring_batch_size(), self.score_is_map_max, self.device)

    def _scoring_batch_size(self) -> int:
        """Images (tiles, when tiling) per call of the model's module."""
        return int(self.setting("batch_size"))

    def setting(self, key: str) -> Any:
        """A hyper-parameter as fitting and scoring use it: its value, or where a detector declares a default
        of None that depends on other parameters (MLP autoencoders: the architecture's), the value it stands
        for. Every reader of an effective value asks here, so the dependent default is resolved once."""
        return self.params[key]

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

    # -- the public contract ------------------------------------------------------------------
    @_decoding_as_declared
    def fit(self, records: Any, progress: bool = True, *, cross_fit: CrossFit | None = None,
            abnormal: Any = None) -> "Detector":
        """Fit on normal images and set the decision rule from normal scores of models that did not see
        them (out of fold, or the hold-out: ``normal_scores``). Returns self.

        ``records``: what ``predict`` takes — ``ImageRecord`` s, image files, folders (searched into their
        sub-folders), glob patterns, numpy arrays (one image, or an (N, H, W[, C]) stack), PIL images or
        torch tensors, alone or in a list (``anomalens.data.inputs``); all taken as normal.
        ``cross_fit``: who fits and scores the folds when the threshold is cross-fitted (an engine's, e.g.
        ``anomalens.distributed.RayShards``'s); None: this detector, in this process.
        ``abnormal``: labelled defective images (what ``records`` takes; records keep their masks, images without
        a mask are labelled by the image alone) that detectors which ``accepts_abnormal`` learn from beside the
        normal ones (``_fit`` reads them as ``self.abnormal_records``); the others refuse them (ConfigError).
        The threshold still comes from normal scores only: the defects never enter the hold-out or the folds.

        Every fit starts from nothing: the previous decision rule (a calibration included) is gone. With
        ``resize="keep_aspect"`` it first sets the working size from the images' shapes; with tiling the
        model learns from every tile of every image, and the threshold still comes from image scores.
        """
        records = as_image_records(records, label=0)
        if not records:
            raise ValueError(f"{self.name}: no training images")
        self.abnormal_records = self._labelled_defects(abnormal)
        try:
            return self._fit_and_decide(records, progress, cross_fit)
        finally:
            self.abnormal_records = []

    def _labelled_defects(self, abnormal: Any) -> list:
        """``fit``'s ``abnormal=`` as records of defective images (label 1); ConfigError for a detector that does not
        learn from them, DataError for an image labelled normal."""
        if abnormal is None:
            return []
        if not self.accepts_abnormal:
            raise ConfigError(f"{self.name} learns from normal images only; labelled defects (abnormal=, --abnormal "
                              "with fit) are for detectors with a supervised setting (supersimplenet)")
        defects = as_image_records(abnormal, label=1)
        normal = [r for r in defects if r.label != 1]
        if normal:
            raise DataError(f"{self.name}: abnormal= takes defective images (label 1); {len(normal)} of them are "
                            f"labelled {normal[0].label} (first: {normal[0].name or 'image'})")
        return defects

    def _fit_and_decide(self, records: list, progress: bool, cross_fit: CrossFit | None) -> "Detector":
        """The rest of ``fit``: the model from ``records`` (and ``abnormal_records``), the rule from normal scores."""
        self.decision_ = None
        self.history_ = {}
        self.working_size_ = None
        if self.params["resize"] == "keep_aspect":
            self.working_size_ = aspect_kept_size(self.name, records, self.input_size)
            self.sizing.check()
            self._check_params()  # a network's supported sizes, now for the chosen size
        plan = self.normal_scores.plan(records)
        # With tiling the model fits on (and scores) tiles; the folds and the hold-out stay whole images.
        layout = self.sizing.tile_layout() if self.sizing.tiling else None
        as_model_input = layout.tile_records if layout else (lambda images: images)
        torch.manual_seed(self.params["seed"])
        if plan.cross_fits:
            parts = [as_model_input(part) for part in plan.parts]
            folds = [layout.tile_indices(fold) for fold in plan.folds] if layout else plan.folds
            if cross_fit is None:
                scores, maps = self._fit_and_score_out_of_fold(parts, folds, progress)
            else:
                scores, maps = cross_fit.fit_out_of_fold(self, parts, folds, progress)
        else:
            model_fit = as_model_input(plan.fit_records)
            model_holdout = as_model_input(plan.holdout) if plan.held_out else model_fit
            scores, maps = self._fit_and_score_holdout(model_fit, model_holdout, progress)
        scores, maps = self._image_outputs(scores, maps)
        self._decide(DecisionRule.from_normal_scores(scores, maps, self.params["false_alarm_rate"], plan.describe(),
                                                     folds=plan.n_models))
        return self

    def _image_outputs(self, scores: np.ndarray, maps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """What the model gave for the records of a fit: as is for images; tiles (whole images' worth, in
        order) blended into image scores and maps exactly as the tiled module blends them."""
        if not self.sizing.tiling:
            return scores, maps
        return self.inference_module().blend_outputs(scores, maps)

    def _decide(self, rule: DecisionRule) -> None:
        """Adopt ``rule`` and log its weaknesses (the sentences the test report repeats)."""
        self.decision_ = rule
        for weakness in weaknesses(rule, self.min_threshold_scores):
            logger.warning("%s: %s", self.name, weakness)

    def unseen_normals(self, records: Sequence) -> list:
        """The training normals the saved model never saw: the hold-out of ``records`` (the training images
        the detector was fitted on), or [] when there is none or the final fit included it
        (``NormalScores.unseen``: the area calibration's validation normals)."""
        return self.normal_scores.unseen(records)

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
        """``predict`` over ``records`` in chunks: yields (offset of the chunk, its DetectionResult), so only
        one chunk's maps exist at a time (``predict`` on N images returns the N full-resolution maps
        together). ``anomalens predict`` works this way.
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
    def calibrate(self, records: Any, method: str = "f1", normal_records: Any = (), clear_border: bool = False,
                  progress: bool = True) -> dict[str, Any]:
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
        (``anomalens.detector.calibration``; the rules are built in ``anomalens.decision``.)
        """
        current = self._fitted_decision()
        calibration = Calibration(self.name, method, self.localizes)
        records, labels = calibration.labelled(records)
        normal_records = as_image_records(normal_records, label=0)  # () stays []
        scores, maps = self.score(records, progress)
        normal_maps = None
        if calibration.uses_normal_maps:
            normal_maps = self.score(normal_records, progress)[1] if len(normal_records) else maps[labels == 0]
        rule, info = calibration.rule(current, scores, maps, labels, normal_maps,
                                      false_alarm_rate=self.params["false_alarm_rate"],
                                      pixel_is_image_threshold=self.score_is_map_max, clear_border=clear_border,
                                      progress=progress)
        self._decide(rule)
        return info

    def _fitted_decision(self) -> DecisionRule:
        if self.decision_ is None:
            raise NotFittedError(f"{self.name}: call fit() first (this detector is not fitted)")
        return self.decision_

    def _check_fitted(self) -> None:
        self._fitted_decision()


# The common hyper-parameters read as attributes too; ``device`` is the property above (a torch.device).
for _name in COMMON:
    if _name != "device":
        setattr(Detector, _name, HyperParameterAttribute(_name))
del _name
