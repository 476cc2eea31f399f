"""Operator feedback that teaches the model.

- ``store``: the service's history in SQLite (every verdict, the operator's judgement) and the bounded store
  of the images themselves (``anomalens serve RUN --state DIR``);
- ``export``: the judged images as a labelled dataset folder that ``fit``, ``calibrate`` and ``test`` read
  (``anomalens feedback export``);
- ``refit``: the run refitted on its own training images plus the confirmed normals, recalibrated with the
  confirmed defects, judged before / after on a held-out share of the feedback (``anomalens refit``).

``store`` needs only the standard library (the service imports it, with or without torch); ``refit``
imports the workflow.
"""

#: The share of each class of the feedback ``refit`` holds out to judge itself (a third: enough to see a
#: change on a few dozen judgements, while most of them still teach the model).
DEFAULT_HOLDOUT = 1 / 3
