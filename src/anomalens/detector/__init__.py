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
  fit on the other folds selects — while the final model still uses every image; the others score the
  seeded ``holdout_fraction`` of the images they are not trained on (k trainings for a trained detector
  would cost k times its fit): ``anomalens.detector.normal_scores``;
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

The package, one job per module:

- ``contract``: the ``Detector`` base class — fit / score / predict / calibrate / save and what a detector
  declares (its abilities and hyper-parameters);
- ``hyperparameters``: the common hyper-parameters and how a class's declarations add up;
- ``saved_run``: what ``save`` writes and ``load_fitted_state`` restores (``Detector`` inherits them);
- ``sizing``: the working size, the tiles and the batch plan (``Detector.sizing``);
- ``normal_scores``: the hold-out / cross-fit protocol of the normal scores (``Detector.normal_scores``),
  and ``CrossFit``, the strategy an engine passes to ``fit`` to do the cross-fitting work itself;
- ``calibration``: what ``calibrate`` checks and gathers before ``anomalens.decision`` builds the rule.

Every kind of decision rule, and the one list of a rule's weaknesses, is built in ``anomalens.decision``.
The package knows no implementation: the registry is ``anomalens.registry``, the list of all detectors
and ``load_detector`` are in ``anomalens.catalog``, file handling in ``anomalens.persistence``; engines
(``anomalens.engines``) drive ``fit`` from outside, never through the detector's attributes.
"""

from anomalens.decision import DetectionResult
from anomalens.detector.contract import Detector

__all__ = ["DetectionResult", "Detector"]
