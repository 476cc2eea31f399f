"""Accuracy suite: the operator-feedback loop (issue 28 item 3) — what feeding the line's false alarms back does.

    .venv/bin/python benchmarks/feedback_loop.py                       # every job (categories × seeds)
    .venv/bin/python benchmarks/feedback_loop.py --categories brick --seeds 0 --output /tmp/fl   # a smoke run
    .venv/bin/python benchmarks/feedback_loop.py --report-only

Per (category, seed) job, in a fresh process (``harness.run_job``):

1. a synthetic category (``anomalens.data.make_synthetic_category``: 20 training normals, 120 normal + 60
   defective test images, 96 px, seed 0) and PaDiM fitted on its 20 training normals (``anomalens fit``'s
   defaults: a leave-one-out threshold at a 0.01 false-alarm rate);
2. the test images split, seeded by ``seed``, into the *line* (half of the normals and of the defects) and the
   *held-out* half;
3. the line goes through the real service (``create_app`` with a state folder, ``POST /predict``) and the
   operator judges it from the ground truth through ``POST /feedback``: every flagged test normal is a
   ``false_alarm`` — real test normals, not made-up ones — every flagged defect ``confirmed_defect``, every
   passed defect ``missed_defect``; passed normals stay unjudged, as on a real line;
4. ``refit_run`` with ``holdout=0`` (all the line's feedback teaches; the judging is on the held-out test
   images instead): once as ``anomalens refit --with-feedback`` (the false alarms added to the training
   normals, the threshold from the out-of-fold scores of all of them), once with ``calibrate=True`` (then an
   F1 threshold on the feedback's labelled images: the recalibration the command does not offer, measured
   here to show why — the false alarms it uses as normals were fitted on);
5. the original run and both refits on the held-out half: false-alarm rate (flagged normals), detection rate
   (flagged defects), image AUROC.

Results: ``results/feedback_loop/results.{json,md}`` with the machine and its load (an accuracy suite: the
load changes the minutes, not the figures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import RESULTS as ALL_RESULTS
from harness import WORK, Results, Run, describe, describe_run, machine, run_job, table, write_report
from harness.cli import output_options, rebuild_report, refuse_smoke_into

SUITE = "feedback_loop"
RESULTS = ALL_RESULTS / SUITE
CATEGORIES = ("brick", "grass", "gravel")
SEEDS = (0, 1)
SIZES = {"n_train": 20, "n_test_good": 120, "n_test_defect": 60, "image_size": 96}
PARAMS = {"image_size": 96, "batch_size": 16, "device": "cpu"}
VARIANTS = ("before", "refit", "refit+calibrate")


def worker(category: str, seed: int, work: str) -> dict:
    """One job (module docstring), in this process; the rows' figures."""
    import shutil

    import numpy as np
    import torch
    from fastapi.testclient import TestClient

    from anomalens.catalog import load_detector
    from anomalens.data import load_dataset, make_synthetic_category
    from anomalens.feedback.refit import refit_run
    from anomalens.metrics import image_auroc
    from anomalens.serve import create_app, load_served_model
    from anomalens.workflow import fit_run

    torch.set_num_threads(2)
    work_dir = Path(work) / f"{category}-{seed}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    data_root = Path(work) / "data"
    folder = data_root / category
    if not folder.exists():
        make_synthetic_category(data_root, source=category, seed=0, **SIZES)
    dataset = load_dataset(folder)
    run = work_dir / "run"
    fit_run("padim", folder, run, PARAMS, progress=False)

    rng = np.random.default_rng(seed)
    line, held = [], []
    for label in (0, 1):
        group = [r for r in dataset.test if r.label == label]
        order = rng.permutation(len(group))
        line += [group[i] for i in order[: len(group) // 2]]
        held += [group[i] for i in order[len(group) // 2:]]

    judged = {"false_alarm": 0, "confirmed_defect": 0, "missed_defect": 0}
    with TestClient(create_app(load_served_model(run), state_dir=work_dir / "state"),
                    base_url="http://127.0.0.1:8000") as service:
        for record in line:
            answer = service.post(f"/predict?name={record.name.replace('/', '-')}",
                                  content=Path(record.source).read_bytes()).json()
            flagged = answer["anomalous"]
            judgement = (("confirmed_defect" if flagged else "missed_defect") if record.label == 1
                         else "false_alarm" if flagged else None)
            if judgement:
                judged[judgement] += 1
                assert service.post(f"/feedback/{answer['history_id']}", json={"judgement": judgement}).status_code == 200
    runs = {"before": run}
    if judged["false_alarm"]:  # else refit refuses, rightly: nothing to learn (a row says so)
        for variant, calibrate in (("refit", False), ("refit+calibrate", True)):
            runs[variant] = work_dir / variant
            refit_run(run, runs[variant], state=work_dir / "state", holdout=0.0, calibrate=calibrate, progress=False)

    labels = np.array([r.label for r in held])
    rows = []
    for variant, folder_of_run in runs.items():
        detector = load_detector(folder_of_run)
        result = detector.predict(held, progress=False)
        flagged = np.asarray(result.labels).astype(bool)
        rows.append({"category": category, "seed": seed, "variant": variant, **judged,
                     "n_train": len(dataset.train) + (judged["false_alarm"] if variant != "before" else 0),
                     "held_normals": int((labels == 0).sum()), "held_defects": int((labels == 1).sum()),
                     "false_alarm_rate": float(flagged[labels == 0].mean()),
                     "detection_rate": float(flagged[labels == 1].mean()),
                     "image_auroc": float(image_auroc(labels, result.scores)),
                     "threshold": float(detector.threshold_)})
    return {"rows": rows}


def report(results: Results) -> str:
    from harness import markdown

    rows = sorted(results.rows, key=lambda r: (r["category"], r["seed"], VARIANTS.index(r["variant"])))
    # the means compare like with like: only the jobs that had false alarms to feed back (and so all three rows)
    refitted = {(r["category"], r["seed"]) for r in rows if r["variant"] == "refit"}
    skipped = sorted({(r["category"], r["seed"]) for r in rows} - refitted)
    means = []
    for variant in VARIANTS:
        chosen = [r for r in rows if r["variant"] == variant and (r["category"], r["seed"]) in refitted]
        if chosen:
            means.append({"variant": variant, "jobs": len(chosen),
                          **{k: sum(r[k] for r in chosen) / len(chosen)
                             for k in ("false_alarm_rate", "detection_rate", "image_auroc")}})
    run_lines = [f"- {describe_run(entry)}" for entry in results.runs]
    return markdown(
        "Operator feedback loop: false alarms fed back, judged on held-out test images",
        f"Machine: {describe(results.machine) if isinstance(results.machine, dict) else results.machine}.",
        f"Settings: {results.settings}. Runs:",
        run_lines,
        "Each job: PaDiM fitted on 20 training normals of a synthetic category; half of the test images (seeded) "
        "go through the service and are judged from the ground truth (flagged normals → false_alarm, real test "
        "normals); `refit --with-feedback` (holdout 0) adds the false alarms to the training normals, "
        "`refit+calibrate` (`refit_run(..., calibrate=True)`, not offered by the command) then sets an F1 "
        "threshold on the feedback's labelled images, whose only normals are the false alarms the refit was "
        "fitted on; all three are judged on the other half (held out, never fed back).",
        "## Mean over the jobs with false alarms to feed back",
        f"Jobs without a false alarm on the line (nothing to refit: `refit` refuses with one line): "
        f"{', '.join(f'{c} seed {s}' for c, s in skipped) or 'none'}.",
        table(means, [("variant", "variant"), ("jobs", "jobs", None), ("false-alarm rate", "false_alarm_rate"),
                      ("detection rate", "detection_rate"), ("image AUROC", "image_auroc")]),
        "## Every job",
        table(rows, [("category", "category"), ("seed", "seed", None), ("variant", "variant"),
                     ("false alarms fed back", "false_alarm", None), ("confirmed / missed defects",
                      lambda r: f"{r['confirmed_defect']} / {r['missed_defect']}"),
                     ("training normals", "n_train", None), ("held-out normals / defects",
                      lambda r: f"{r['held_normals']} / {r['held_defects']}"),
                     ("false-alarm rate", "false_alarm_rate"), ("detection rate", "detection_rate"),
                     ("image AUROC", "image_auroc"), ("threshold", "threshold", 1)]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    output_options(parser, RESULTS, smoke="one category, one seed")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    json_path, md_path = args.output / "results.json", args.output / "results.md"
    if args.report_only:
        rebuild_report(json_path, md_path, SUITE, report)
        return
    if args.smoke:
        args.categories, args.seeds = args.categories[:1], args.seeds[:1]
    refuse_smoke_into(parser, args, RESULTS)
    started = Run()
    results = Results.load(json_path, SUITE)
    results.machine = machine()
    results.settings = {"detector": "padim", "params": PARAMS, "data": SIZES, "threads": args.threads,
                        "split": "seeded half of the test normals and defects to the line, half held out"}
    work = WORK / SUITE
    done = []
    try:
        for category in args.categories:
            for seed in args.seeds:
                job = run_job(worker, category, seed, str(work), threads=args.threads, timeout=1800,
                              label=f"{category}:{seed}")
                for row in job.value["rows"]:
                    results.upsert(row, "category", "seed", "variant")
                done.append(f"{category}:{seed}")
                print(f"{category} seed {seed}: " + "; ".join(
                    f"{r['variant']} FA {r['false_alarm_rate']:.3f} det {r['detection_rate']:.3f} AUROC "
                    f"{r['image_auroc']:.3f}" for r in job.value["rows"]), flush=True)
                results.save(json_path)
    finally:  # the invocation is recorded with the jobs it completed, even when one fails
        results.runs.append(started.record(jobs=done))
        results.save(json_path)
    write_report(md_path, report(results))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
