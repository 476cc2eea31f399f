"""EfficientAD in ``benchmarks/compare_anomalib.py``: anomalens ``efficientad`` vs anomalib 2.7's ``EfficientAd``.

anomalib's EfficientAd cannot run offline as shipped: ``prepare_pretrained_model`` downloads its teachers
(``efficientad_pretrained_weights.zip`` from GitHub) and ``prepare_imagenette_data`` downloads imagenette2
(penalty images); on this machine both end in ``URLError <urlopen error [Errno -2] Name or service not known>``.
So both libraries get the same local ingredients here, and only the implementations differ:
- the teacher: one PDN-S file distilled by ``anomalens distill-teacher`` (TEACHER; its keys renamed to
  anomalib's ``conv1..conv4``), with anomalib's ``teacher_out_channels`` set to its channel count;
- the penalty images: the photos ``anomalens.models.components.pdn.offline_photos`` returns, written once as
  PNGs into an ImageFolder (PENALTY) for anomalib, and passed as ``penalty_images`` to anomalens; anomalib's
  penalty loader batch (its ``batch_size`` attribute, 1 by default) is set to BATCH — the folder holds 16
  photos, so anomalib draws all 16 per step (centre crops, its transform) — and anomalens' ``penalty_batch`` to
  the same count (``penalty_per_step``: 16 random crops per step). Until session 20 (2026-12-07, late) anomalens drew one crop per
  training image (32 per step): the student then ran on 96 images per step against anomalib's 80, which is
  what made anomalens' peak RSS 1.15-1.26× anomalib's in the rows measured until then;
- the epochs (the job's option), image size (IMAGE_SIZE, below), Adam lr 1e-4 / weight decay 1e-5, PDN small.
anomalib refuses a training batch other than 1 and a pre-processor with Normalize; the comparison script's
loaders use batch 32 for every model, so anomalib's model here skips that check (``_Batch32EfficientAd``) and
anomalens trains at batch 32 too: same batches for both (not the paper's 1). Its pre-processor is the script's
resize without the Normalize (its networks normalise with ImageNet statistics inside, as anomalens' PDNs do).

Image size: IMAGE_SIZE = 128 px for both (``compare_anomalib._size`` reads it), not the script's 256: one
training step at 256 px and batch 32 takes minutes on two CPU cores. Two things in anomalib need the plugin at a
size other than the files' (256 px):
- its autoencoder's last encoder convolution has a fixed 8×8 kernel, the paper's for 256 px, where the
  encoder's input is 8×8; at 128 px that input is 4×4 and the forward fails (``Kernel size can't be greater than
  actual input size``). The plugin makes that kernel the same fraction of the image (IMAGE_SIZE / 32), as
  anomalens' ``PatchAutoencoder`` does;
- its ``on_train_start`` and quantile pass read the data loaders directly, before the pre-processor (which
  anomalib applies in the batch hooks only): the teacher statistics, the penalty images' size and the map
  quantiles would come from 256-px images while the model trains and scores at 128. The plugin resizes those
  batches with the pre-processor's own transform.
Map quantiles: anomalib computes them in its validation pass, which the script turns off; here they are set
after training from anomalib's default validation split — the test set's normal images — whereas anomalens
takes them from normal training images it held out (anomalib sees the test normals; anomalens does not).
"""

from __future__ import annotations

import os
from pathlib import Path

WORK = Path(__file__).resolve().parents[1] / "_work" / "efficientad"
TEACHER = WORK / "teacher_lite0_small.safetensors"
PENALTY = WORK / "penalty_images"
BATCH = 32
IMAGE_SIZE = 128  # both libraries (see the module docstring); the paper's and anomalib's default is 256
SEED_VARIABLE = "COMPARE_EFFICIENTAD_SEED"  # anomalib's torch seed (default 0): efficientad_gap.py's other seeds


def _penalty_folder() -> Path:
    """The offline photos as PNG files in PENALTY/photos (an ImageFolder needs a class folder)."""
    if not (PENALTY / "photos").is_dir():
        from PIL import Image

        from anomalens.models.components.pdn import offline_photos

        stage = PENALTY.with_name(PENALTY.name + ".partial")  # renamed when complete: never a half-written pool
        (stage / "photos").mkdir(parents=True, exist_ok=True)
        for i, photo in enumerate(offline_photos()):
            Image.fromarray(photo).save(stage / "photos" / f"{i:02d}.png")
        stage.rename(PENALTY)
    return PENALTY


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    if not TEACHER.is_file():
        raise SystemExit(f"[efficientad] distil the shared teacher first: anomalens distill-teacher -o {TEACHER}")
    photos = _penalty_folder() / "photos"
    return {"image_size": size, "epochs": int(option or 1), "batch_size": BATCH, "device": device,
            "teacher": str(TEACHER), "penalty_images": str(photos), "penalty_batch": penalty_per_step()}


def penalty_per_step() -> int:
    """The penalty images anomalib's loader hands a step: its batch (BATCH), or fewer when the folder holds fewer."""
    return min(BATCH, len(list((_penalty_folder() / "photos").glob("*.png"))))


def anomalib_model(option: float | None, common: dict):
    import torch
    from anomalib.models import EfficientAd
    from anomalib.pre_processing import PreProcessor
    from safetensors.torch import load_file
    from torchvision.transforms.v2 import Compose, Resize

    if not (PENALTY / "photos").is_dir():
        raise SystemExit(f"[compare] {PENALTY} is missing: the anomalens job of the same dataset writes it")
    state = load_file(str(TEACHER))
    renamed = {k.replace("tail.0.", "conv3.").replace("tail.2.", "conv4."): v for k, v in state.items()}
    channels = int(renamed["conv4.weight"].shape[0])
    resize = next(t for t in common["pre_processor"].transform.transforms if isinstance(t, Resize))
    pre_processor = PreProcessor(transform=Compose([Resize(resize.size, antialias=True)]))

    class _Batch32EfficientAd(EfficientAd):
        def prepare_pretrained_model(self) -> None:  # the shared local teacher instead of the download
            self.model.teacher.load_state_dict(renamed, strict=True)

        def _resized(self, loader):
            """``loader``'s batches through the pre-processor, as its batch hooks would give them to a step."""
            for batch in loader:
                batch.image, batch.gt_mask = self.pre_processor.transform(batch.image, batch.gt_mask)
                yield batch

        def on_train_start(self) -> None:
            # anomalib's own steps without its batch-size check (see the module docstring), on resized images.
            sample = next(self._resized(self.trainer.train_dataloader))
            self.prepare_pretrained_model()
            self.prepare_imagenette_data(sample.image.shape[-2:])
            if not self.model.is_set(self.model.mean_std):
                loader = self.trainer.datamodule.train_dataloader()
                self.model.mean_std.update(self.teacher_channel_mean_std(self._resized(loader)))

        def on_train_end(self) -> None:
            # The script fits without a validation pass (limit_val_batches=0), where anomalib sets the map
            # quantiles (on_validation_start): set them here from the same loader, its default (the
            # validation split is the test set's normal images, val_split_mode="same_as_test").
            loader = self.trainer.datamodule.val_dataloader()
            self.model.quantiles.update(self.map_norm_quantiles(self._resized(loader)))

    torch.manual_seed(int(os.environ.get(SEED_VARIABLE) or 0))
    settings = {**common, "pre_processor": pre_processor}
    model = _Batch32EfficientAd(imagenet_dir=PENALTY, teacher_out_channels=channels, model_size="small", **settings)
    model.batch_size = BATCH  # its penalty loader's batch (see the module docstring)
    height, width = resize.size  # the script's Resize((size, size))
    if (height, width) != (256, 256):  # the 8×8 kernel is the paper's for 256 px: the same fraction elsewhere
        model.model.ae.encoder.enconv6 = torch.nn.Conv2d(64, 64, kernel_size=(height // 32, width // 32))
    return model, int(option or 1)


def border_check(dataset: str) -> str:
    """Pixel AUROC of the saved anomalens run of ``efficientad@1:<dataset>``: whole maps, maps with the padded
    border (the 4 PDN cells a side that the network does not cover) set to the lowest value of all maps — where
    anomalib's border lands, as it pads the raw maps before normalising — and the covered interior alone."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from anomalens import load_detector
    from anomalens.data import ImageRecord
    from anomalens.models.components.pdn import grid_margins
    from compare_anomalib import WORK as BENCH_WORK
    from compare_anomalib import _masks, _records

    detector = load_detector(BENCH_WORK / "compare" / "anomalens" / f"efficientad-1_{dataset}")
    _, test, labels, masks = _records(BENCH_WORK / "data" / dataset)
    records = [ImageRecord(p, y, None, p.name) for p, y in zip(test, labels)]
    maps = np.asarray(detector.predict(records, progress=False).maps, dtype=np.float32)
    truth = _masks(masks, maps.shape[-1])
    left, right, top, bottom = (4 * m for m in grid_margins(maps.shape[1:]))  # cells of stride 4 → pixels
    inner = np.zeros(maps.shape[1:], dtype=bool)
    inner[top: maps.shape[1] - bottom, left: maps.shape[2] - right] = True
    lowered = np.where(inner, maps, maps.min())  # one value below every covered pixel, as anomalib's border
    return (f"{dataset}: pixel AUROC whole {roc_auc_score(truth.ravel(), maps.ravel()):.3f}, border at the minimum "
            f"{roc_auc_score(truth.ravel(), lowered.ravel()):.3f}, interior only "
            f"{roc_auc_score(truth[:, inner].ravel(), maps[:, inner].ravel()):.3f}; defect pixels in the border "
            f"{truth[:, ~inner].sum() / truth.sum():.2f}")


def rescore(datasets: list[str]) -> None:
    """The saved anomalens runs of ``efficientad@1:<dataset>`` scored again by the current code — the same fitted
    networks, so the rows differ from results.md only by what changed in the inference graph (the uncovered
    border padded as a zero distance before the normalisation) — beside results.json's rows of both libraries;
    writes results/compare_efficientad/border.{json,md}."""
    import json

    from anomalens import load_detector
    from anomalens.data import ImageRecord
    from compare_anomalib import RESULTS as COMPARE_RESULTS
    from compare_anomalib import WORK as BENCH_WORK
    from compare_anomalib import _aurocs, _masks, _records

    folder = COMPARE_RESULTS.parent / "compare_efficientad"
    committed = {(r["job"], r["library"]): r for r in json.loads((folder / "results.json").read_text())["results"]}
    rows = []
    for dataset in datasets:
        job = f"efficientad@1:{dataset}"
        detector = load_detector(BENCH_WORK / "compare" / "anomalens" / f"efficientad-1_{dataset}")
        _, test, labels, masks = _records(BENCH_WORK / "data" / dataset)
        result = detector.predict([ImageRecord(p, y, None, p.name) for p, y in zip(test, labels)], progress=False)
        now = _aurocs(labels, result.scores, result.maps, _masks(masks, result.maps.shape[-1]))
        before, anomalib = committed[(job, "anomalens")], committed[(job, "anomalib")]
        rows.append({"job": job, "image_auroc": now["image_auroc"], "pixel_auroc": now["pixel_auroc"],
                     "image_auroc_before": before["image_auroc"], "pixel_auroc_before": before["pixel_auroc"],
                     "anomalib_image_auroc": anomalib["image_auroc"], "anomalib_pixel_auroc": anomalib["pixel_auroc"]})
        print(f"[border] {rows[-1]}", flush=True)
    (folder / "border.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# EfficientAD: the saved runs re-scored after the border change",
             "", "Generated by `python benchmarks/compare_models/efficientad.py --rescore CATEGORY …` (do not edit by hand):",
             "the anomalens runs of results.md (same fitted networks, 128 px, 1 epoch) scored again by the current code,",
             "whose inference pads the PDN's uncovered border as a zero distance before the quantile normalisation",
             "(before: the normalised map padded with 0, as the authors' code). anomalib's rows are results.md's.", "",
             "| job | image AUROC before → now | anomalib | pixel AUROC before → now | anomalib |", "|---|---|---|---|---|"]
    lines += [f"| {r['job']} | {r['image_auroc_before']:.3f} → {r['image_auroc']:.3f} | {r['anomalib_image_auroc']:.3f} | "
              f"{r['pixel_auroc_before']:.3f} → {r['pixel_auroc']:.3f} | {r['anomalib_pixel_auroc']:.3f} |" for r in rows]
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    lines.append(f"| mean | {mean('image_auroc_before'):.3f} → {mean('image_auroc'):.3f} | {mean('anomalib_image_auroc'):.3f} | "
                 f"{mean('pixel_auroc_before'):.3f} → {mean('pixel_auroc'):.3f} | {mean('anomalib_pixel_auroc'):.3f} |")
    (folder / "border.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":  # python benchmarks/compare_models/efficientad.py [--rescore] brick coffee …
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # compare_anomalib, harness
    if sys.argv[1:2] == ["--rescore"]:
        rescore(sys.argv[2:])
    else:
        for name in sys.argv[1:]:
            print(border_check(name), flush=True)
