"""``anomalens feedback export``: the operator's judged images as a labelled dataset folder.

The folder is an MVTec AD category (``anomalens.data.mvtec``), the layout ``fit``, ``calibrate`` and ``test``
all read:

    OUT/train/good/<id>.<ext>              the confirmed normals (false alarms): what ``fit`` learns from
    OUT/test/good/<id>.<ext>               the same confirmed normals, labelled normal
    OUT/test/confirmed_defect/<id>.<ext>   flagged parts the operator confirmed
    OUT/test/missed_defect/<id>.<ext>      passed parts the operator found defective
    OUT/feedback.json                      where each file came from: result id, judgement, score, time, model

so ``anomalens calibrate RUN OUT`` sets a threshold on every judged image and ``anomalens fit MODEL OUT``
fits on the confirmed normals. Only judged results are exported (a passed part nobody looked at is not a
confirmed normal), and only those whose image the store still keeps (the others are counted). The folder is
written through the output protocol (staged, then renamed in one step; ``--overwrite`` replaces only such a
folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalens.errors import AnomalensError
from anomalens.feedback.store import JUDGEMENTS, FeedbackStore
from anomalens.outputs import staged_directory, write_bytes, write_json

MANIFEST = "feedback.json"
GOOD = "good"


def judged_images(store: FeedbackStore) -> tuple[list[tuple[dict[str, Any], Path]], int]:
    """(every judged result whose image is kept, with its path; how many judged results lost their image)."""
    kept, lost = [], 0
    for item in store.judged():
        path = store.image_path(item)
        if path is None:
            lost += 1
        else:
            kept.append((item, path))
    return kept, lost


def export_feedback(state: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the judged images of the state folder ``state`` into ``out`` (module docstring); the summary
    (counts by judgement, images lost to the retention, the folders written)."""
    store = FeedbackStore(state, create=False)
    try:
        items, lost = judged_images(store)
    finally:
        store.close()
    if not items:
        raise AnomalensError(f"{state}: no judged result with a kept image yet ({lost} judged image(s) removed by the "
                             "retention): judge results on the operator page first")
    counts = {name: 0 for name in JUDGEMENTS}
    rows = []
    with staged_directory(Path(out), overwrite=overwrite, kind="dataset", inputs=[state]) as stage:
        for item, path in items:
            judgement = item["judgement"]
            counts[judgement] += 1
            folders = ["train/good", "test/good"] if JUDGEMENTS[judgement][1] == 0 else [f"test/{judgement}"]
            data = path.read_bytes()
            for folder in folders:
                (stage / folder).mkdir(parents=True, exist_ok=True)
                write_bytes(stage / folder / path.name, data)
            rows.append({"id": item["id"], "files": [f"{folder}/{path.name}" for folder in folders],
                         "judgement": judgement, "label": JUDGEMENTS[judgement][1], "image": item["image"],
                         "score": item["score"], "anomalous": item["anomalous"], "time": item["time"],
                         "judged_at": item["judged_at"], "model_id": item["model_id"]})
        (stage / "train" / GOOD).mkdir(parents=True, exist_ok=True)
        summary = {"state": str(Path(state).resolve()), "counts": counts, "images": len(rows),
                   "lost_to_retention": lost,
                   "layout": "MVTec AD category: train/good = confirmed normals (false alarms); test/good the same, "
                             "test/confirmed_defect and test/missed_defect the defects"}
        write_json(stage / MANIFEST, {**summary, "results": rows})
    return summary
