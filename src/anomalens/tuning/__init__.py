"""Hyper-parameter search (``anomalens tune``): Optuna's TPE over a detector's declared parameters, each
setting scored on a validation set that never holds a test image.

**Search space.** A mapping of parameter → range, checked against the detector's declaration
(``anomalens.params``): ``{low, high}`` (an int parameter gives integers; ``log: true`` samples the
logarithm, ``step`` a grid) or ``{choices: [...]}`` / a plain list (any values the parameter accepts).
``DEFAULT_SPACES`` holds the ranges that matter for each detector; a detector without one gets the
epochs and learning rate it declares (a quarter to twice the default epochs, a tenth to ten times the
default rate). ``--space FILE`` replaces the default space.

**Validation** (what a trial is scored on; the test split is never opened):

1. ``validation=DATA2``: labelled images of another dataset (its test split), which must share no file
   with DATA's test split.
2. Otherwise *pasted defects*: normal images no trial trains on — the layout's own ``validation/good``
   (MVTec AD 2, MVTec LOCO) when it ships one, else a seeded ``holdout`` share of the training normals —
   each used twice, once as it is (normal) and once with one synthetic defect of
   ``anomalens.data.synthetic`` drawn on it (scratch, stain, hole, patch in turn; anomalous, with its
   mask). They are written once to ``TUNE_DIR/validation/`` at the detector's input size.

The objective is the validation image AUROC; for a detector that localises it is the mean of image
and pixel AUROC (on an easy category the image AUROC of many settings is 1, and the pixel AUROC still
orders them). How that ranking agrees with the test AUROC on a synthetic category is measured in
``benchmarks/tune_validation.py``.

**Trials** run one at a time, each in a fresh Python process (its memory is returned when it ends, and
nothing of the caller's script is run again in it; a trial that fails or dies is recorded as failed and the
search goes on). **Results** in ``TUNE_DIR``: ``best.yaml``
(``anomalens fit --config TUNE_DIR/best.yaml`` reads it as is), ``trials.csv``, the Optuna study
``study.db`` (SQLite) and ``tune.json`` (the job). ``--trials N`` is the total: a stopped or finished tune
run again with the same job continues its study up to N trials.

The rooms: ``space`` (the search space and its defaults), ``validation`` (the validation set), ``trial``
(one setting fitted and scored, in its own process), ``study`` (the Optuna study, the tune folder) and
``results`` (``trials.csv`` and ``best.yaml``).
"""

from anomalens.tuning.results import BEST_FILE, TRIALS_FILE
from anomalens.tuning.space import DEFAULT_SPACES, Dimension, default_space, read_space, search_space
from anomalens.tuning.study import STUDY_FILE, STUDY_NAME, TUNE_FILE, TUNE_OUTPUTS, VALIDATION_DIR, tune
from anomalens.tuning.trial import TrialFailed, run_trial, score_setting, trial_main, validation_objective
from anomalens.tuning.validation import build_validation, check_apart, validation_records, validation_size

__all__ = ["BEST_FILE", "DEFAULT_SPACES", "Dimension", "STUDY_FILE", "STUDY_NAME", "TRIALS_FILE", "TUNE_FILE",
           "TUNE_OUTPUTS", "TrialFailed", "VALIDATION_DIR", "build_validation", "check_apart", "default_space",
           "read_space", "run_trial", "score_setting", "search_space", "trial_main", "tune", "validation_objective",
           "validation_records", "validation_size"]
