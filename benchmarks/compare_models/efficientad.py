"""EfficientAD in ``benchmarks/compare_anomalib.py``: anomalens ``efficientad`` vs anomalib 2.7's ``EfficientAd``.

anomalib's EfficientAd cannot run offline as shipped: ``prepare_pretrained_model`` downloads its teachers
(``efficientad_pretrained_weights.zip`` from GitHub) and ``prepare_imagenette_data`` downloads imagenette2
(penalty images); on this machine both end in ``URLError <urlopen error [Errno -2] Name or service not known>``.
So both libraries get the same local ingredients here, and only the implementations differ:
- the teacher: one PDN-S file distilled by ``anomalens distill-teacher`` (TEACHER; its keys renamed to
  anomalib's ``conv1..conv4``), with anomalib's ``teacher_out_channels`` set to its channel count;
- the penalty images: the photos ``anomalens.models.components.pdn.offline_photos`` returns, written once as
  PNGs into an ImageFolder (PENALTY) for anomalib, and passed as ``penalty_images`` to anomalens;
- the epochs (the job's option), image size (256 px), Adam lr 1e-4 / weight decay 1e-5, PDN small.
anomalib refuses a training batch other than 1 and a pre-processor with Normalize; the comparison script's
loaders use batch 32 for every model, so anomalib's model here skips that check (``_Batch32EfficientAd``) and
anomalens trains at batch 32 too: same batches for both (not the paper's 1). Its pre-processor is its own
(resize only: its networks normalise with ImageNet statistics inside, as anomalens' PDNs do).
Map quantiles: anomalib computes them in its validation pass, which the script turns off; here they are set
after training from anomalib's default validation split — the test set's normal images — whereas anomalens
takes them from normal training images it held out (anomalib sees the test normals; anomalens does not).
"""

from __future__ import annotations

from pathlib import Path

WORK = Path(__file__).resolve().parents[1] / "_work" / "efficientad"
TEACHER = WORK / "teacher_lite0_small.safetensors"
PENALTY = WORK / "penalty_images"
BATCH = 32


def _penalty_folder() -> Path:
    """The offline photos as PNG files in PENALTY/photos (an ImageFolder needs a class folder)."""
    target = PENALTY / "photos"
    if not target.is_dir():
        from PIL import Image

        from anomalens.models.components.pdn import offline_photos

        target.mkdir(parents=True)
        for i, photo in enumerate(offline_photos()):
            Image.fromarray(photo).save(target / f"{i:02d}.png")
    return PENALTY


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    if not TEACHER.is_file():
        raise SystemExit(f"[efficientad] distil the shared teacher first: anomalens distill-teacher -o {TEACHER}")
    return {"image_size": size, "epochs": int(option or 1), "batch_size": BATCH, "device": device,
            "teacher": str(TEACHER), "penalty_images": str(_penalty_folder() / "photos")}


def anomalib_model(option: float | None, common: dict):
    import torch
    from anomalib.models import EfficientAd
    from safetensors.torch import load_file

    state = load_file(str(TEACHER))
    renamed = {k.replace("tail.0.", "conv3.").replace("tail.2.", "conv4."): v for k, v in state.items()}
    channels = int(renamed["conv4.weight"].shape[0])
    penalty_root = _penalty_folder()

    class _Batch32EfficientAd(EfficientAd):
        def prepare_pretrained_model(self) -> None:  # the shared local teacher instead of the download
            self.model.teacher.load_state_dict(renamed, strict=True)

        def on_train_start(self) -> None:
            # anomalib's own steps without its batch-size check (see the module docstring).
            sample = next(iter(self.trainer.train_dataloader))
            self.prepare_pretrained_model()
            self.prepare_imagenette_data(sample.image.shape[-2:])
            if not self.model.is_set(self.model.mean_std):
                self.model.mean_std.update(self.teacher_channel_mean_std(self.trainer.datamodule.train_dataloader()))

        def on_train_end(self) -> None:
            # The script fits without a validation pass (limit_val_batches=0), where anomalib sets the map
            # quantiles (on_validation_start): set them here from the same loader, its default (the
            # validation split is the test set's normal images, val_split_mode="same_as_test").
            self.model.quantiles.update(self.map_norm_quantiles(self.trainer.datamodule.val_dataloader()))

    torch.manual_seed(0)
    settings = {k: v for k, v in common.items() if k != "pre_processor"}
    model = _Batch32EfficientAd(imagenet_dir=penalty_root, teacher_out_channels=channels, model_size="small",
                                batch_size=BATCH, **settings)
    return model, int(option or 1)
