"""Which normal scores a detector's threshold comes from: the hold-out / cross-fit protocol.

``fit`` sets the decision rule from normal images scored by a model that did not see them, so that a
threshold exists without any defective sample (``anomalens.decision``). ``NormalScores`` decides which
images those are, from the detector's parameters and declared abilities, and ``plan`` says it for one fit:

- cross-fitting (detectors that ``crossfits``: PaDiM, PatchCore): *every* training image is scored out of
  fold — the images are cut into ``threshold_folds`` seeded folds (0: one image per fold, leave-one-out)
  and each fold is scored by the model fitted on the others, while the final model still uses every image.
  A detector set to ``threshold_folds=1``, or with too few images for a model without the largest fold to
  keep ``min_fit_images``, takes the hold-out instead;
- the hold-out (the others: k trainings of a trained detector would cost k times its fit): the seeded
  ``holdout_fraction`` of the images is left out of the model and scored by it; with nothing held out the
  training images themselves are scored (optimistic, and the rule's ``folds`` evidence says 0).

The images keep the hold-out split's order (kept, then held) in both cases, so the final model — and so
every score — is the same whichever way its threshold was set.

Who does the cross-fitting work is a strategy (``CrossFit``): by default the detector itself, in this
process; an engine passes its own to ``Detector.fit`` (``anomalens.distributed.RayShards`` fits the folds on
shards) — the detector is never told which engine runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from anomalens.data.records import split_records
from anomalens.errors import DataError

if TYPE_CHECKING:
    from anomalens.detector.contract import Detector


class CrossFit(Protocol):
    """Who fits a cross-fitting detector and scores its training images out of fold (module docstring)."""

    def fit_out_of_fold(self, detector: Detector, parts: list[list], folds: list[np.ndarray],
                        progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit ``detector``'s final model on every image of ``parts`` (lists of records, in order) and return
        the scores (N,) and maps (N, H, W) of all N images, each from the model fitted without its fold
        (``folds``: index arrays into the concatenation of ``parts``)."""


@dataclass(frozen=True)
class NormalScorePlan:
    """The normal scores of one fit: how the model is fitted and which images it scores.

    ``fit_records`` / ``holdout``: the hold-out split (``holdout is fit_records`` when nothing is held out);
    ``folds``: for cross-fitting, k index arrays into ``parts`` concatenated (None: the hold-out).
    """

    fit_records: list
    holdout: list
    folds: list[np.ndarray] | None

    @property
    def cross_fits(self) -> bool:
        return self.folds is not None

    @property
    def held_out(self) -> bool:
        return self.holdout is not self.fit_records

    @property
    def parts(self) -> list[list]:
        """The images of a cross-fit, in the order the final model sees them: kept, then held out."""
        return [self.fit_records, self.holdout] if self.held_out else [self.fit_records]

    @property
    def n_models(self) -> int:
        """How many models the normal scores came from, as the rule's evidence records it: k when cross-
        fitting, 1 for a hold-out, 0 for the training images themselves."""
        if self.folds is not None:
            return len(self.folds)
        return 1 if self.held_out else 0

    def describe(self) -> str:
        """Which images the normal scores are, for the rule's description."""
        if self.folds is not None:
            n, k = sum(len(part) for part in self.parts), len(self.folds)
            return ("training images, each scored leave-one-out" if k == n else
                    f"training images, each scored by the model of the other {k - 1} of {k} folds")
        return "held-out normal images" if self.held_out else "training images (none held out: optimistic)"


@dataclass(frozen=True)
class NormalScores:
    """The protocol of a detector (module docstring): its ``seed``, ``holdout_fraction`` and
    ``threshold_folds``, whether it ``crossfits``, the fewest images its fit takes (``min_fit_images``) and
    whether its final model includes the held-out images (``final_fit_includes_holdout``)."""

    owner: str
    seed: int
    holdout_fraction: float
    threshold_folds: int
    crossfits: bool = False
    min_fit_images: int = 1
    final_fit_includes_holdout: bool = False

    def holdout_split(self, records: Sequence) -> tuple[list, list]:
        """(fit, held out): the seeded share of normals held out for the thresholds. When nothing can be held
        out, both are the same list (thresholds then come from the training images themselves)."""
        kept, held = split_records(list(records), self.holdout_fraction, self.seed)
        return (kept, held) if held else (kept, kept)

    def fold_count(self, n_images: int) -> int:
        """k, the folds the threshold is cross-fitted with for ``n_images`` training images; 0 when it comes
        from the hold-out instead (no cross-fitting, ``threshold_folds`` 1, or a model without the largest fold
        would have fewer than ``min_fit_images`` images)."""
        k = self.threshold_folds
        if not self.crossfits or k == 1:
            return 0
        k = n_images if k == 0 else min(k, n_images)
        if k < 2 or n_images - math.ceil(n_images / k) < self.min_fit_images:
            return 0
        return k

    def folds(self, n_images: int, k: int) -> list[np.ndarray]:
        """The seeded partition of range(n_images) into k folds (sizes differ by at most one), each sorted."""
        order = np.random.default_rng((self.seed, 2)).permutation(n_images)
        return [np.sort(order[j::k]) for j in range(k)]

    def plan(self, records: Sequence) -> NormalScorePlan:
        """The plan of a fit on ``records``; DataError when the hold-out leaves too few images to fit."""
        fit_records, holdout = self.holdout_split(records)
        k = self.fold_count(len(records))
        if k:
            return NormalScorePlan(fit_records, holdout, self.folds(len(records), k))
        if len(fit_records) < self.min_fit_images:
            held = 0 if holdout is fit_records else len(holdout)
            raise DataError(
                f"{self.owner}: needs at least {self.min_fit_images} images to fit, got {len(records)} training "
                f"image(s)" + (f", {held} of them held out for the threshold (more images, or -p holdout_fraction=0)"
                               if held else "")
            )
        return NormalScorePlan(fit_records, holdout, None)

    def unseen(self, records: Sequence) -> list:
        """The training normals the final model never saw: the hold-out of ``records``, or [] when there is
        none or the final fit included it. The area calibration needs such images: those the model was
        fitted on have maps near zero and would set the pixel threshold far too low."""
        kept, held = self.holdout_split(records)
        return [] if self.final_fit_includes_holdout or held is kept else held
