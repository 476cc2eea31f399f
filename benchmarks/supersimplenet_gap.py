"""Accuracy suite (issue 27): why SuperSimpleNet ranks defects below chance against anomalib 2.7 at a small budget.

    .venv/bin/python benchmarks/supersimplenet_gap.py --parity                # the same weights in both: same outputs?
    .venv/bin/python benchmarks/supersimplenet_gap.py                         # every planned job not yet in results.json
    .venv/bin/python benchmarks/supersimplenet_gap.py --jobs anomalens:default:brick:1 anomalib:anomalib:brick:1
    .venv/bin/python benchmarks/supersimplenet_gap.py --epochs 15 --jobs anomalens:default:brick:0
    .venv/bin/python benchmarks/supersimplenet_gap.py --report-only

``benchmarks/results/compare_supersimplenet`` (3 epochs = 12 optimiser steps, 256 px, batch 32, the same
EfficientNet-Lite0 levels 2-3 upscaled × 2 in both libraries, one seed per row) has anomalens' image AUROC below
0.5 on brick, coffee and chelsea. A job here is ``LIBRARY:SETTING:CATEGORY:SEED``, run in a fresh process
(``harness.run_job``):

- ``anomalens:default`` — the comparison's anomalens row (``compare_models/supersimplenet.py``'s parameters) with
  ``seed=SEED``: 108 of the 120 images trained on, 12 held out for the threshold, the last epoch kept. Seed 0 is
  the committed comparison's row, which the report reads from ``results/compare_supersimplenet/results.json``
  unless this suite reran it (``anomalens:default:brick:0``, last in the plan: the check that this worker
  reproduces the comparison's);
- ``anomalens:untrained`` — the same with both learning rates at 1e-12: the same forward passes (the BatchNorm
  statistics move as in the default's fit) but the weights stay at their seeded initial values, so the row says
  how much of the default's ranking the 12 optimiser steps made and how much the initial draw already had (AdamW
  moves a weight by at most about its lr per step: 12 × 2e-4 = 0.0024, against a Xavier-normal standard
  deviation of 0.088 for the classification head's last layer);
- ``anomalens:raw`` — the default with ``standardise=False``: the backbone's own feature scale, as anomalib's model
  sees it (the same initial weights as the default's for the same seed: the pair isolates the standardisation);
- ``anomalib:anomalib`` — ``compare_anomalib.py``'s anomalib worker with torch's generator seeded with SEED
  (``COMPARE_SUPERSIMPLENET_SEED``); seed 0 is the committed comparison's row, which the report reads from
  ``results/compare_supersimplenet/results.json`` when this suite has not rerun it.

``--parity`` asks whether the two models differ at all: anomalib's ``SupersimplenetModel`` (built by the plugin)
is trained for a few optimiser steps on brick's training images in anomalib's venv, with its own loss, AdamW
groups and anomaly generator (a short fit: the heads and the BatchNorm statistics away from their initial
values); its weights are loaded into anomalens' adaptor and heads, which run here on the same images: the
upscaled features, the map logits, the classification logit, the final map and score at inference (2 defective
and 2 normal test images), and one training step's loss terms and gradients on the same synthetic anomalies (the
Perlin masks and noise anomalib drew, handed to anomalens' ``_losses``).

Both are scored as the comparison scores them: scikit-learn AUROC on the raw image scores, and on all pixels of
the raw maps against the masks. anomalens' workers also score each image by its map's maximum
(``image_auroc_map_max``: what the classification head is given, the option ``image_score="map_max"``
approximately) and record the first / last training loss. Everything is seeded, so the accuracy does not depend
on the machine's load; the fit seconds do (the load average of each job is in its row).
Results: ``results/supersimplenet_gap/results.{json,md}``.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import RESULTS as ALL_RESULTS
from harness import (
    WORK,
    Results,
    describe_run,
    fmt,
    run_job,
)
from harness.seed_gap import ANOMALIB_PYTHON, SeedGap

SUITE = "supersimplenet_gap"
RESULTS = ALL_RESULTS / SUITE
SIZE = 256
SETTINGS = {"default": {}, "untrained": {"adaptor_lr": 1e-12, "discriminator_lr": 1e-12},
            "raw": {"standardise": False}}
CATEGORIES = ("brick", "grass", "gravel", "coffee", "chelsea")
PLAN = (  # in priority order: the initial draw of the three categories below 0.5, then more seeds of both libraries
    [f"anomalens:untrained:{c}:0" for c in ("brick", "coffee", "chelsea")]
    + [f"{lib}:{c}:{seed}" for seed in (1, 2) for c in CATEGORIES
       for lib in ("anomalens:default", "anomalib:anomalib")]
    + [f"anomalens:raw:{c}:0" for c in CATEGORIES]
    + [f"anomalens:untrained:{c}:{seed}" for seed in (0, 1) for c in CATEGORIES]
    + ["anomalens:default:brick:0"]
)
TIMEOUT_S = 3600
PARITY_CATEGORY = "brick"
PARITY_STEPS = 4  # optimiser steps of the short anomalib fit
PARITY_BATCH = 8


def _decode(paths):
    """Image files → (N, 3, H, W) float images in [0, 1] (torch is imported inside each worker)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    return torch.stack([decode_image(str(p), mode=ImageReadMode.RGB).float().div(255) for p in paths])


def anomalib_outputs(out: str) -> None:
    """In anomalib's venv: the comparison's model, a short fit, its outputs on the same images, saved to OUT."""
    import copy

    import torch
    from anomalib.pre_processing import PreProcessor
    from compare_anomalib import _patch_timm_for_offline_weights, _records
    from compare_models.supersimplenet import anomalib_model
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    _patch_timm_for_offline_weights()  # the bundled encoder weights, torch seeded with 0
    pre = PreProcessor(transform=Compose([Resize((SIZE, SIZE), antialias=True), Normalize([0.5] * 3, [0.5] * 3)]))
    switches = {"post_processor": False, "evaluator": False, "visualizer": False}
    module = anomalib_model(3, {"pre_processor": pre, **switches})[0]
    model, loss = module.model, module.loss
    train, test, labels, _ = _records(WORK / "data" / PARITY_CATEGORY)
    # The short fit: anomalib's own loss, its AdamW groups (configure_optimizers needs a Trainer), no clipping.
    optimizer = torch.optim.AdamW([{"params": model.adaptor.parameters(), "lr": 1e-4},
                                   {"params": model.segdec.parameters(), "lr": 2e-4, "weight_decay": 1e-5}])
    model.train()
    losses = []
    for step in range(PARITY_STEPS):
        images = _decode(train[step * PARITY_BATCH:(step + 1) * PARITY_BATCH])
        anomaly_map, score, masks, targets = model(pre.transform(images), labels=torch.zeros(len(images)))
        value = loss(pred_map=anomaly_map, pred_score=score, target_mask=masks, target_label=targets)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("feature_extractor")}

    # Inference on 2 defective and 2 normal test images.
    paths = [p for p, y in zip(test, labels) if y][:2] + [p for p, y in zip(test, labels) if not y][:2]
    test_images = _decode(paths)
    model.eval()
    with torch.no_grad():
        x = pre.transform(test_images)
        features = model.feature_extractor(x)
        adapted = model.adaptor(features)
        map_logits, score_logits = model.segdec(seg_features=adapted, cls_features=adapted)
        inferred = model(x)

    # One training step on the same model: the synthetic anomalies anomalib draws, its loss terms and gradients.
    check = copy.deepcopy(model).train()
    captured = {}
    check.adaptor.register_forward_hook(lambda m, i, o: captured.__setitem__("adapted", o.detach().clone()))
    check.segdec.register_forward_hook(lambda m, a, k, o: captured.__setitem__("noised", k["seg_features"].detach().clone()),
                                       with_kwargs=True)
    step_images = _decode(train[-PARITY_BATCH:])
    torch.manual_seed(123)
    anomaly_map, score, masks, targets = check(pre.transform(step_images), labels=torch.zeros(len(step_images)))
    terms = {"map_focal": loss.focal_loss(anomaly_map, masks), "map_l1": loss.trunc_l1_loss(anomaly_map, masks),
             "score_focal": loss.focal_loss(score, targets)}
    sum(terms.values()).backward()
    gradients = {k: p.grad.clone() for k, p in check.named_parameters() if p.grad is not None}
    torch.save({"state": state, "fit_losses": losses, "train_images": step_images,
                "images": test_images, "image_labels": [1, 1, 0, 0], "features": features, "adapted": adapted,
                "map_logits": map_logits, "score_logits": score_logits, "map": inferred.anomaly_map[:, 0],
                "score": inferred.pred_score.flatten(),
                "step": {"adapted": captured["adapted"], "noised": captured["noised"], "masks": masks,
                         "labels": targets, "terms": {k: v.item() for k, v in terms.items()},
                         "gradients": gradients}}, out)


def anomalens_state(anomalib_state: dict) -> dict[str, dict]:
    """anomalib's SupersimplenetModel keys → anomalens' networks: the 1 × 1 convolutions as linear layers,
    ``segdec.seg_head.{0,1,3}`` → segmentation ``body.0``, ``body.1``, ``tail``; ``segdec.cls_conv`` →
    classifier ``conv``; ``segdec.cls_fc`` → classifier ``linear``."""
    renames = {"adaptor.projection.": ("adaptor", "linear."), "segdec.seg_head.0.": ("segmentation", "body.0."),
               "segdec.seg_head.1.": ("segmentation", "body.1."), "segdec.seg_head.3.": ("segmentation", "tail."),
               "segdec.cls_conv.": ("classifier", "conv."), "segdec.cls_fc.": ("classifier", "linear.")}
    states: dict[str, dict] = {"adaptor": {}, "segmentation": {}, "classifier": {}}
    for key, value in anomalib_state.items():
        for prefix, (network, into) in renames.items():
            if key.startswith(prefix):
                is_pointwise = value.dim() == 4 and value.shape[-2:] == (1, 1) and network != "classifier"
                states[network][into + key[len(prefix):]] = value.flatten(1) if is_pointwise else value
    return states


def anomalens_parity(reference: str) -> dict:
    """Here: anomalib's weights in anomalens' SuperSimpleNet, on the same images; the largest differences."""
    from unittest import mock

    import torch
    import torch.nn.functional as F
    from compare_models.supersimplenet import anomalens_params

    from anomalens.models import supersimplenet as ssn

    class Probe(ssn.SuperSimpleNet):
        """The detector with its networks built unfitted and one training step's losses in reach."""

        def build(self) -> Probe:
            self._build_networks()
            return self

        def networks(self) -> dict:
            return self._networks()

        def step_losses(self, batch) -> dict:
            return self._losses(batch, None)

    ref = torch.load(reference, weights_only=True)
    # standardise=False: anomalib's model has no standardisation (mean 0, std 1 here: the raw features).
    d = Probe(**anomalens_params(3, SIZE, "cpu"), standardise=False).build()
    for name, state in anomalens_state(ref["state"]).items():
        getattr(d, f"{name}_").load_state_dict(state, strict=True)
    graph = d.inference_module().eval()
    with torch.no_grad():
        features = d.local_(ref["images"])
        adapted = ssn.per_position(d.adaptor_, features)
        map_logits = ssn.per_position(d.segmentation_, adapted)
        score_logits = d.classifier_(adapted, map_logits)
        scores, maps = graph(ref["images"])

    def largest(ours, theirs) -> float:
        return float((ours - theirs).abs().max())

    out = {"category": PARITY_CATEGORY, "images": len(ref["images"]), "fit_steps": PARITY_STEPS,
           "fit_losses": [round(v, 4) for v in ref["fit_losses"]],
           "features": [largest(features, ref["features"]), float(ref["features"].abs().max())],
           "adapted": [largest(adapted, ref["adapted"]), float(ref["adapted"].abs().max())],
           "map_logits": [largest(map_logits, ref["map_logits"]), float(ref["map_logits"].abs().max())],
           "score_logits": [largest(score_logits, ref["score_logits"]), float(ref["score_logits"].abs().max())],
           "map": [largest(torch.sigmoid(maps), ref["map"]), 1.0],
           "score": [largest(torch.sigmoid(scores), ref["score"]), 1.0],
           "score_logits_anomalib": [round(float(v), 4) for v in ref["score_logits"]],
           "score_logits_anomalens": [round(float(v), 4) for v in scores],
           "map_max_anomalib": [round(float(v), 4) for v in ref["map_logits"].flatten(1).amax(1)]}

    # One training step: anomalib's Perlin masks and noise handed to anomalens' _losses (train mode).
    step = ref["step"]
    for network in d.networks().values():
        network.train()
    perturbation = step["noised"] - torch.cat([step["adapted"], step["adapted"]])
    d.synthesizer_ = None  # feature_masks is replaced below
    with torch.no_grad():
        raw = d.local_(step_images := ref["train_images"])
    count = len(step_images)
    batch = ssn.LabelledBatch(raw, torch.zeros(count, 1, *raw.shape[-2:]), torch.zeros(count),
                              torch.ones(count, dtype=torch.bool))
    with mock.patch.object(ssn, "feature_masks", lambda *a, **k: step["masks"].float()), \
            mock.patch.object(ssn, "gaussian_feature_noise", lambda *a, **k: perturbation):
        losses = d.step_losses(batch)
    losses["loss"].backward()
    names = {"adaptor": "adaptor.projection.", "segmentation": "segdec.seg_head.", "classifier": "segdec.cls_"}
    gradients = []  # [parameter, largest difference, largest gradient]
    for network, module in d.networks().items():
        theirs = anomalens_state({k: v for k, v in step["gradients"].items() if k.startswith(names[network])})[network]
        for key, parameter in module.named_parameters():
            gradients.append([f"{network}.{key}", largest(parameter.grad, theirs[key]), float(theirs[key].abs().max())])
            if network == "classifier" and key == "conv.0.weight":
                per_channel = (parameter.grad - theirs[key]).abs().amax((1, 2, 3))
    # A global max-pool sends a channel's gradient to one position: where two positions are within float32
    # rounding of each other, the libraries may pick different ones. The worst channel's closest two positions:
    worst = int(per_channel.argmax())
    with torch.no_grad():
        adapted = ssn.per_position(d.adaptor_, raw)
        noised = torch.cat([adapted, adapted]) + perturbation
        hidden = d.classifier_.conv(torch.cat([noised, ssn.per_position(d.segmentation_, noised)], 1))
        top = hidden[:, worst].flatten(1).topk(2, dim=1).values
    out["step"] = {"anomalous_copies": int(step["labels"].sum()), "copies": len(step["labels"]),
                   "terms": {k: [round(losses[k].item(), 6), round(v, 6)] for k, v in step["terms"].items()},
                   "gradients": gradients, "worst_channel": worst,
                   "worst_channel_difference": float(per_channel[worst]),
                   "other_channels_difference": float(per_channel[torch.arange(len(per_channel)) != worst].max()),
                   "worst_channel_smallest_max_gap": float((top[:, 0] - top[:, 1]).min())}
    # The final map as the authors and anomalib blur it (a 2⌈3σ⌉ + 1 = 25-tap kernel; anomalens' has ±4σ = 33 taps).
    from torchvision.transforms.v2.functional import gaussian_blur

    upsampled = F.interpolate(ref["map_logits"], size=ref["images"].shape[-2:], mode="bilinear")
    out["map_25_taps"] = largest(torch.sigmoid(gaussian_blur(upsampled, [25, 25], [4.0, 4.0]))[:, 0], ref["map"])
    return out


def parity(work: Path) -> dict:
    reference = work / "anomalib_outputs.pt"
    work.mkdir(parents=True, exist_ok=True)
    run_job(anomalib_outputs, reference, python=ANOMALIB_PYTHON, threads=2, timeout=900, label="parity: anomalib")
    return run_job(anomalens_parity, reference, threads=2, timeout=900, label="parity: anomalens").value




def anomalens_worker(setting: str, category: str, seed: int, epochs: int, threads: int) -> dict:
    """Fit anomalens' supersimplenet on CATEGORY's 120 training images and score its test set, in this process."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from compare_anomalib import _aurocs, _masks, _records
    from compare_models.supersimplenet import anomalens_params
    from sklearn.metrics import roc_auc_score

    from anomalens import create_detector
    from anomalens.data import ImageRecord

    train, test, labels, masks = _records(WORK / "data" / category)
    params = {**anomalens_params(epochs, SIZE, "cpu"), **SETTINGS[setting], "seed": seed}
    detector = create_detector("supersimplenet", **params)
    held = round(len(train) * detector.holdout_fraction)
    start = time.perf_counter()
    detector.fit([ImageRecord(p, 0, None, p.name) for p in train], progress=False)
    fit_seconds = time.perf_counter() - start
    scores, maps = detector.score([ImageRecord(p, y, None, p.name) for p, y in zip(test, labels)], progress=False)
    loss = detector.history_["loss"]
    map_max = np.asarray(maps).reshape(len(maps), -1).max(1)
    return {**_aurocs(labels, scores, maps, _masks(masks, SIZE)),
            "image_auroc_map_max": float(roc_auc_score(labels, map_max)), "trained_on": len(train) - held,
            "params": params, "loss_first": round(loss[0], 3), "loss_last": round(loss[-1], 3),
            "fit_seconds": round(fit_seconds, 1)}








def report(results: Results, epochs: int) -> str:
    groups = GAP.group(GAP.with_committed_rows(results, epochs))
    lines = ["# SuperSimpleNet: where the accuracy gap against anomalib comes from (issue 27)", "",
             ("Generated by `benchmarks/supersimplenet_gap.py` (do not edit by hand); what each job is, is in that "
              "script's docstring; how to read it, in NOTES.md."), "", "## Machine", "",
             *[f"- {r.get('machine', '')}, {r.get('threads')} thread(s) per job; {r.get('jobs')} job(s); "
               + describe_run(r) for r in results.runs if isinstance(r, dict)], ""]
    image, means = GAP.means_table(groups, "image_auroc", f"## Image AUROC over seeds, {epochs} epochs (mean ± sd, range, n)")
    pixel, _ = GAP.means_table(groups, "pixel_auroc", f"## Pixel AUROC over seeds, {epochs} epochs")
    map_max, _ = GAP.means_table({k: v for k, v in groups.items() if k[0] == "anomalens"}, "image_auroc_map_max",
                              f"## anomalens: image AUROC of the map's maximum over seeds, {epochs} epochs")
    lines += image + [""]
    lines += GAP.gap_table(means, ("anomalens − anomalib image AUROC, each the mean over the seeds above (the target "
                                   "of issue 27: ≥ −0.005 on every category and on the mean):"))
    lines += [""] + pixel + [""] + map_max
    lines += ["", "## Every job", "",
              ("Fit seconds depend on the load (threads per job and the 1-minute load average at the job's end); the "
               "accuracy does not."), "",
              ("| job | epochs | image AUROC | pixel AUROC | image AUROC (map max) | trained on | loss first → last "
               "| fit s | threads | load |"), "|---|---|---|---|---|---|---|---|---|---|"]
    all_rows = sorted(results.rows, key=lambda r: (r["epochs"], r["job"]))
    for r in all_rows + [r for r in GAP.with_committed_rows(results, epochs) if r.get("source")]:
        source = " (compare_supersimplenet)" if r.get("source") else ""
        losses = f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else "–"
        lines.append(f"| {r['job']}{source} | {r['epochs']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | "
                     f"{fmt(r.get('image_auroc_map_max'))} | {r.get('trained_on', r.get('n_train', '–'))} | {losses} | "
                     f"{fmt(r.get('fit_seconds'), 1)} | {r.get('threads', '–')} | {fmt(r.get('load_average_1min'), 1)} |")
    check = results.sections.get("parity")
    if check:
        step = check["step"]
        lines += ["", "## The same weights in both libraries (`--parity`)", "",
                  (f"anomalib's model after a {check['fit_steps']}-step fit on {check['category']} (its losses "
                   f"{', '.join(f'{v:.3f}' for v in check['fit_losses'])}), its weights loaded into anomalens', "
                   f"{check['images']} {check['category']} test images (2 defective, 2 normal), anomalens' features "
                   "not standardised (as anomalib's):"), "",
                  "| quantity | largest difference | largest value |", "|---|---|---|"]
        for key, label in (("features", "upscaled, averaged features"), ("adapted", "adapted features"),
                           ("map_logits", "map logits (feature grid)"), ("score_logits", "classification logit"),
                           ("map", "final map (sigmoid)"), ("score", "image score (sigmoid)")):
            lines.append(f"| {label} | {check[key][0]:.2e} | {check[key][1]:.3g} |")
        lines += ["", (f"Classification logits, anomalib / anomalens: {check['score_logits_anomalib']} / "
                       f"{check['score_logits_anomalens']}; the map's largest logit (anomalib): "
                       f"{check['map_max_anomalib']} (the first two images are defective)."), "",
                  (f"One training step on the same {step['copies']} copies ({step['anomalous_copies']} with a synthetic "
                   "anomaly), anomalib's Perlin masks and noise given to anomalens' `_losses`, train-mode BatchNorm:"), "",
                  "| term | anomalens | anomalib |", "|---|---|---|",
                  *[f"| {k} | {v[0]:.6f} | {v[1]:.6f} |" for k, v in step["terms"].items()], "",
                  "| gradient of | largest difference | largest value (anomalib) |", "|---|---|---|",
                  *[f"| {name} | {diff:.2e} | {value:.3g} |" for name, diff, value in step["gradients"]], "",
                  (f"The classification convolution's gradient differs in one output channel ({step['worst_channel']}: "
                   f"{step['worst_channel_difference']:.2e}; every other channel within "
                   f"{step['other_channels_difference']:.2e}); that channel's two largest activations in one copy are "
                   f"{step['worst_channel_smallest_max_gap']:.2e} apart, so the global max-pool's gradient goes to "
                   "another position under the other library's float32 rounding (the adaptor's gradient differs through "
                   "it). Final map blurred as anomalib blurs it (25 taps instead of anomalens' 33): largest difference "
                   f"{check['map_25_taps']:.2e}.")]
    return "\n".join(lines) + "\n"




GAP = SeedGap(SUITE, "supersimplenet", SETTINGS, CATEGORIES, anomalens_worker, TIMEOUT_S)

if __name__ == "__main__":
    GAP.main(__doc__, PLAN, 3, parity, report)
