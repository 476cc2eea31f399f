"""The networks of EfficientAD (Batzner et al., WACV 2024) and the distillation of its teacher.

- ``PatchDescriptionNetwork`` (Sec. 3.1, Fig. 2 and the supplement's Tables 1-2): four (small) or six
  (medium) convolutions and two average poolings, no padding: every output vector describes one 33×33
  patch; at 256 px the output grid is 56×56 (stride 4). The paper's networks see ImageNet-normalised
  images; the normalisation is part of the module here so that it travels into an export.
- ``PatchAutoencoder`` (Sec. 3.3, supplement Table 3): six strided convolutions down to a 64-d code,
  then bilinear upsampling + convolutions back to the PDN grid. The paper's sizes are for 256 px (last
  encoder kernel 8, decoder sizes 3, 8, 15, 32, 63, 127, 56); here they are the same fractions of the
  image size, so 256 px gives exactly those numbers and smaller images (the tests' 64 px) still work.
- ``BackboneTeacher``: a pretrained backbone's early feature levels resampled onto the PDN grid — the
  offline default teacher, and the target a PDN teacher is distilled from.
- ``distil_teacher`` / ``save_teacher`` / ``load_teacher``: the paper's teacher pretraining (Sec. 3.1: a
  PDN regresses a pretrained network's normalised features on a pool of images, MSE, Adam), written to a
  safetensors file that the ``teacher`` parameter of ``efficientad`` accepts.
- ``offline_photos``: the pool of real photos that ships with scikit-image and scikit-learn, used as
  penalty images and as the default distillation pool where ImageNet is not available.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.errors import ConfigError, ModelFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PDN_STRIDE = 4  # two 2×2 average poolings
TEACHER_FILE_KIND = "anomalens-efficientad-teacher"

# The synthetic benchmark categories are cut from these photos (anomalens.data.synthetic): they stay out of
# the default pool, so that the penalty never pushes the student to zero on a category's own normal images.
BENCHMARK_SOURCES = {"brick", "grass", "gravel", "chelsea", "coffee"}
POOL_PHOTOS = ("astronaut", "camera", "coins", "rocket", "horse", "moon", "page", "text", "cell", "clock",
               "immunohistochemistry", "hubble_deep_field", "retina", "microaneurysms")


def pdn_grid(size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a PDN's output for an input of ``size`` (no padding: conv 4, pool 2, conv 4, pool 2, conv 3, conv 4)."""
    return tuple(((s - 3) // 2 - 3) // 2 - 5 for s in size)


def grid_margins(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Zero cells to add (left, right, top, bottom) so the PDN grid covers the image at stride 4, as the
    authors' code pads the 56×56 map by 4 before resizing it to 256×256."""
    (gh, gw), (h, w) = pdn_grid(size), size
    top, left = (h // PDN_STRIDE - gh) // 2, (w // PDN_STRIDE - gw) // 2
    return left, w // PDN_STRIDE - gw - left, top, h // PDN_STRIDE - gh - top


class _ImageNetNormalised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = (images - self.mean) / self.std
        if not self.training and images.device.type == "cpu":
            # Channels-last input: oneDNN then runs every convolution of the network channels-last (the weights
            # stay as they are): EfficientAD's three networks scored 1.2-1.3x faster at 128 px on 2 CPU cores,
            # the same maps within 3e-6. GPUs keep the default layout (as the backbones do: backbones.py).
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class PatchDescriptionNetwork(nn.Module):
    """PDN (supplement Tables 1-2): images in [0, 1] (B, 3, H, W) → (B, out_channels, *pdn_grid((H, W)))."""

    def __init__(self, size: str = "small", out_channels: int = 384) -> None:
        super().__init__()
        if size not in ("small", "medium"):
            raise ConfigError(f"PDN size must be small or medium, got {size!r}")
        self.size, self.out_channels = size, out_channels
        self.normalise = _ImageNetNormalised()
        wide = 128 if size == "small" else 256
        self.conv1 = nn.Conv2d(3, wide, 4)
        self.conv2 = nn.Conv2d(wide, 2 * wide, 4)
        self.pool = nn.AvgPool2d(2, 2)
        if size == "small":
            self.tail = nn.Sequential(nn.Conv2d(256, 256, 3), nn.ReLU(), nn.Conv2d(256, out_channels, 4))
        else:
            self.tail = nn.Sequential(
                nn.Conv2d(512, 512, 1), nn.ReLU(), nn.Conv2d(512, 512, 3), nn.ReLU(),
                nn.Conv2d(512, out_channels, 4), nn.ReLU(), nn.Conv2d(out_channels, out_channels, 1),
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(self.normalise(images))))
        x = self.pool(F.relu(self.conv2(x)))
        return self.tail(x)


class PatchAutoencoder(nn.Module):
    """The autoencoder (supplement Table 3): images in [0, 1] → (B, out_channels, *pdn_grid(size)).

    Encoder: five 4×4 stride-2 convolutions and one whose kernel is the remaining size (8 at 256 px),
    giving a 64-d code per image. Decoder: six bilinear upsamplings (to H/64 − 1, H/32, H/16 − 1, H/8,
    H/4 − 1, H/2 − 1: 3, 8, 15, 32, 63, 127 at 256 px) each followed by a 4×4 convolution (padding 2),
    ReLU and dropout 0.2, then an upsampling to the PDN grid and two 3×3 convolutions.
    """

    def __init__(self, input_size: tuple[int, int], out_channels: int = 384) -> None:
        super().__init__()
        self.input_size, self.out_channels = tuple(input_size), out_channels
        self.normalise = _ImageNetNormalised()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 32), (32, 32), (32, 64), (64, 64), (64, 64)):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        code = [s for s in self.input_size]
        for _ in range(5):
            code = [c // 2 for c in code]
        layers.append(nn.Conv2d(64, 64, tuple(code)))  # 8×8 at 256 px: one 64-d code
        self.encoder = nn.Sequential(*layers)
        h, w = self.input_size
        self.steps = [(max(1, h // d - o), max(1, w // d - o)) for d, o in ((64, 1), (32, 0), (16, 1), (8, 0), (4, 1), (2, 1))]
        self.decoder_convs = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in self.steps)
        self.dropout = nn.Dropout(0.2)
        self.grid = pdn_grid(self.input_size)
        self.head = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, out_channels, 3, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.normalise(images))
        for size, conv in zip(self.steps, self.decoder_convs):
            x = self.dropout(F.relu(conv(F.interpolate(x, size=size, mode="bilinear"))))
        return self.head(F.interpolate(x, size=self.grid, mode="bilinear"))


def features_on_grid(features: Sequence[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
    """Backbone feature maps resampled (bilinear) at the centres of the PDN's patches and concatenated:
    (B, Σ C_l, *pdn_grid(input_size)). The PDN's cell (i, j) sees the 33-px patch centred near (4i + 16, 4j + 16):
    resampling to the stride-4 grid of the image and dropping the margin cells aligns the two."""
    h, w = input_size
    left, right, top, bottom = grid_margins(input_size)
    full = (h // PDN_STRIDE, w // PDN_STRIDE)
    maps = [F.interpolate(f, size=full, mode="bilinear") for f in features]
    return torch.cat(maps, 1)[:, :, top: full[0] - bottom, left: full[1] - right]


class BackboneTeacher(nn.Module):
    """A frozen pretrained backbone's levels ``layers`` on the PDN grid: images in [0, 1] → (B, C, *grid)."""

    def __init__(self, extractor: nn.Module, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.extractor, self.input_size = extractor, tuple(input_size)
        self.out_channels = sum(extractor.channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return features_on_grid(self.extractor(images), self.input_size)


# -- the teacher file -------------------------------------------------------------------------------------
def save_teacher(path: str | Path, teacher: PatchDescriptionNetwork, provenance: dict) -> Path:
    """Write a PDN teacher as safetensors (tensors only; ``provenance`` in the metadata), atomically."""
    from safetensors.torch import save_file

    from anomalens.outputs.atomic import atomic_path

    path = Path(path)
    metadata = {"kind": TEACHER_FILE_KIND, "size": teacher.size, "out_channels": str(teacher.out_channels),
                "provenance": json.dumps(provenance)}
    state = {k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def pdn_from_state(state: dict[str, torch.Tensor], what: str) -> PatchDescriptionNetwork:
    """The PDN whose weights ``state`` holds (size and channels read from the tensors' names and shapes)."""
    size = "medium" if "tail.6.weight" in state else "small"
    last = "tail.6.weight" if size == "medium" else "tail.2.weight"
    if last not in state:
        raise ModelFileError(f"{what}: not an EfficientAD teacher (no PDN weights; make one with 'anomalens distill-teacher')")
    pdn = PatchDescriptionNetwork(size, int(state[last].shape[0]))
    try:
        pdn.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{what}: PDN weights do not fit a {size} PDN ({str(exc).splitlines()[0]})") from None
    return pdn


def load_teacher(path: str | Path) -> PatchDescriptionNetwork:
    """A PDN teacher saved by ``save_teacher`` (safetensors: loading runs no code from the file)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: teacher file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a bad file
        raise ModelFileError(f"{path}: not a safetensors teacher file ({type(exc).__name__})") from None
    return pdn_from_state(state, str(path)).eval().requires_grad_(False)


# -- the image pool -----------------------------------------------------------------------------------------
def offline_photos() -> list[np.ndarray]:
    """The real photos that ship with scikit-image and scikit-learn (uint8 RGB arrays), without the five the
    synthetic benchmark categories are built from (``BENCHMARK_SOURCES``)."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = [getattr(skdata, name)() for name in POOL_PHOTOS]
    photos += list(load_sample_images().images)
    rgb = []
    for photo in photos:
        photo = np.asarray(photo)
        if photo.dtype == bool:
            photo = photo.astype(np.uint8) * 255
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, -1)
        rgb.append(np.ascontiguousarray(photo[..., :3]).astype(np.uint8))
    return rgb


def image_pool(folder: str | Path | None, size: tuple[int, int], limit: int = 1000, seed: int = 0) -> torch.Tensor:
    """(N, 3, 2h, 2w) float images in [0, 1]: the photos of ``folder`` (a seeded sample of at most ``limit``)
    or, for None, ``offline_photos()``; at twice ``size`` so that random crops of ``size`` vary (the authors
    resize ImageNet images to 2× and crop)."""
    from anomalens.data import as_image_records, iterate_batches

    if folder is None:
        records = as_image_records(offline_photos())
    else:
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder}: image folder not found")
        records = as_image_records(str(folder))
        if len(records) > limit:
            keep = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
            records = [records[i] for i in keep]
    if not records:
        raise ConfigError(f"{folder}: no images in this folder")
    big = (2 * size[0], 2 * size[1])
    return torch.cat([b["image"] for b in iterate_batches(records, big, 16, channels=3, num_workers=0)])


def random_crops(pool: torch.Tensor, count: int, size: tuple[int, int], grey_share: float = 0.3) -> torch.Tensor:
    """``count`` random crops of ``size`` from random pool images, a share turned grey (the authors' penalty
    transform: RandomGrayscale(0.3)); drawn from torch's global generator (seeded and checkpointed by training)."""
    crops = []
    h, w = size
    for _ in range(count):
        image = pool[int(torch.randint(len(pool), ()))]
        top = int(torch.randint(image.shape[1] - h + 1, ()))
        left = int(torch.randint(image.shape[2] - w + 1, ()))
        crop = image[:, top: top + h, left: left + w]
        if float(torch.rand(())) < grey_share:
            crop = (0.299 * crop[0] + 0.587 * crop[1] + 0.114 * crop[2]).expand(3, -1, -1)
        crops.append(crop)
    return torch.stack(crops)


# -- distillation (Sec. 3.1, "we pretrain the PDN ... on ImageNet") ------------------------------------------
def distil_teacher(target: BackboneTeacher, pool: torch.Tensor, size: str, steps: int, batch_size: int = 8,
                   lr: float = 1e-4, weight_decay: float = 1e-5, seed: int = 0,
                   progress: Callable[[int, float], None] | None = None) -> tuple[PatchDescriptionNetwork, list[float]]:
    """Train a PDN to regress ``target``'s channel-normalised features on random crops of ``pool``.

    The paper's recipe: MSE between the PDN's output and the pretrained network's features normalised with
    their per-channel mean and standard deviation over the pool (estimated on up to 64 crops first); Adam,
    lr 1e-4, weight decay 1e-5. Returns the PDN (eval mode) and the loss of every step.
    """
    torch.manual_seed(seed)
    crop = target.input_size
    target.eval()
    with torch.no_grad():
        sample = torch.cat([target(random_crops(pool, min(8, batch_size), crop)) for _ in range(max(1, 64 // batch_size))])
        mean = sample.mean(dim=(0, 2, 3), keepdim=True)
        std = sample.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    pdn = PatchDescriptionNetwork(size, target.out_channels)
    optimiser = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    pdn.train()
    for step in range(steps):
        images = random_crops(pool, batch_size, crop, grey_share=0.1)
        with torch.no_grad():
            goal = (target(images) - mean) / std
        loss = F.mse_loss(pdn(images), goal)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    return pdn.eval().requires_grad_(False), losses
