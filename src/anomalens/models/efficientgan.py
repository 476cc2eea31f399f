"""EfficientGAN — Zenati, Foo, Lecouat, Manek & Chandrasekhar, "Efficient GAN-Based Anomaly Detection",
ICLR 2018 workshop (a BiGAN; reference code houssamzenati/Efficient-GAN-Anomaly-Detection). The layers,
training step and score are the seed's PyTorch code (Ogawa, "つくりながら学ぶ! PyTorchによる発展ディープ
ラーニング", ch. 6).

Networks, for the seed's 28×28 grayscale MNIST exactly:
- generator G: FC 1024–BN–ReLU → FC 7·7·128–BN–ReLU → deconv 64 (4×4, s2)–BN–ReLU → deconv C (4×4, s2),
  Tanh;
- discriminator D(x, z): x branch conv 64 (4×4, s2)–LeakyReLU 0.1 → conv 64 (4×4, s2)–BN–LeakyReLU 0.1;
  z branch FC 512 (no activation, as the seed); concatenated (3136 + 512 = 3648) → FC 1024–LeakyReLU 0.1
  (the feature layer f) → FC 1 (a logit);
- encoder E: conv 32 (3×3, s1, no padding)–LeakyReLU 0.1 → conv 64 (3×3, s2)–BN–LeakyReLU →
  conv 128 (3×3, s2)–BN–LeakyReLU → FC z_dim; z_dim 50.
Other sizes (e.g. 64–256 px, MVTec-style) add stride-2 stages: the side is halved n times down to a grid
s0 ≤ 7 (28 → 7 with n = 2; 32 → 4 with n = 3; 256 → 4 with n = 6), so the side must be s0·2^n with
n >= 2 and 3 <= s0 <= 7. Conv widths double per extra stage (capped at 8× the base width
``n_features`` = 64): G's deconvs from 64·2^(n−1) down to 64, D's x branch 64, 64, 128, …, E's convs
32, then 64, 128, 256, …; for 28 px and the default base this is exactly the seed (its FC widths 1024,
512 and 1024 are fixed).

Training (the seed's ``train_model``), per batch: D with BCE-with-logits, (x, E(x)) real and (G(z), z)
fake, z ~ N(0, I); then G to make (G(z), z) real with a fresh z; then E to make (x, E(x)) fake. Adam,
lr 1e-4 for G and E, 2.5e-5 for D, betas (0.5, 0.999), batch 64. Init as the seed's ``weights_init``:
(transposed) conv weights N(0, 0.02), BatchNorm weights N(0, 0.02) (the DCGAN convention would be
N(1, 0.02); the seed's choice is kept), biases 0, linear weights PyTorch's default. The seed trains 1500
epochs on its small 7/8 folder; set ``epochs`` for your data size.

Score (the seed's ``Anomaly_score``, eval mode): with z = E(x) and x̂ = G(z),
    (1 − λ)·Σ|x − x̂| + λ·Σ|f(x, z) − f(x̂, z)|,  λ = 0.1,
sums over pixels (in the [-1, 1] network scale, like the seed's totals of about 200) and over the 1024
features. Map: |x − x̂| in the [0, 1] image scale, averaged over channels.

Deviation: the seed scores in training mode (BatchNorm on batch statistics); here the networks are in
eval mode, so an image's score does not depend on the other images of its batch.

Model selection: the seed keeps the last epoch, and so does this detector by default. With
``validation_fraction`` > 0 a seeded share of the fit images is held out, the mean Σ|x − G(E(x))| on it is
recorded each epoch (``history_["val_loss"]``) and the epoch where it is lowest is kept (no anomalous
image is used). ``checkpoint`` = a file saves the training state after every epoch and resumes from it.
``history_`` has the per-epoch means of the D, G and E losses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.data import split_records
from anomalens.detector import Detector, register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.dcgan import (
    check_channels,
    check_images,
    check_positive,
    epoch_batches,
    gan_init,
    load_images,
    preprocessing_info,
    reconstructions,
    residual_map,
    scored_batches,
    square_side,
)
from anomalens.models.components.training import TrainingSetup, load_module_tensors, module_tensors, train

LEAK = 0.1


def stage_plan(side: int) -> tuple[int, int]:
    """(n stride-2 stages, final grid s0) for a square side: halve while even and > 7; n >= 2, s0 in 3..7."""
    n, s = 0, side
    while s > 7 and s % 2 == 0:
        s, n = s // 2, n + 1
    if n < 2 or not 3 <= s <= 7:
        raise ConfigError(
            f"efficientgan: image_size must be s0·2^n with n >= 2 stride-2 stages and a final grid s0 of 3..7 "
            f"(e.g. 28 as in the seed, 32, 64, 128, 256), got {side}"
        )
    return n, s


def _width(base: int, doublings: int) -> int:
    """base·2^doublings, at most 8·base (512 for the seed's base 64)."""
    return base * 2 ** min(max(doublings, 0), 3)


class Generator(nn.Module):
    def __init__(self, side: int, latent_dim: int, channels: int, base: int = 64):
        super().__init__()
        n, s0 = stage_plan(side)
        widths = [_width(base, n - 1 - i) for i in range(n)]  # 28 px: [128, 64]
        self.grid = (widths[0], s0, s0)
        self.layer1 = nn.Sequential(nn.Linear(latent_dim, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True))
        self.layer2 = nn.Sequential(nn.Linear(1024, widths[0] * s0 * s0), nn.BatchNorm1d(widths[0] * s0 * s0), nn.ReLU(inplace=True))
        ups: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            ups += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.ups = nn.Sequential(*ups)
        self.last = nn.Sequential(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(z)).view(len(z), *self.grid)
        return self.last(self.ups(out))


class Discriminator(nn.Module):
    def __init__(self, side: int, latent_dim: int, channels: int, base: int = 64):
        super().__init__()
        n, s0 = stage_plan(side)
        widths = [_width(base, i - 1) for i in range(n)]  # 28 px: [64, 64]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(LEAK, inplace=True)]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.BatchNorm2d(b), nn.LeakyReLU(LEAK, inplace=True)]
        self.x_layers = nn.Sequential(*layers)
        self.z_layer1 = nn.Linear(latent_dim, 512)
        self.last1 = nn.Sequential(nn.Linear(widths[-1] * s0 * s0 + 512, 1024), nn.LeakyReLU(LEAK, inplace=True))
        self.last2 = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit (B,), feature f (B, 1024))."""
        joint = torch.cat([self.x_layers(x).flatten(1), self.z_layer1(z.flatten(1))], dim=1)
        feature = self.last1(joint)
        return self.last2(feature).squeeze(1), feature


class Encoder(nn.Module):
    def __init__(self, side: int, latent_dim: int, channels: int, base: int = 64):
        super().__init__()
        n, s0 = stage_plan(side)
        width = max(base // 2, 1)  # 32 for the seed's base 64
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1), nn.LeakyReLU(LEAK, inplace=True)]
        for i in range(n):  # 28 px: 64, 128
            out = _width(base, i)
            layers += [nn.Conv2d(width, out, 3, 2, 1), nn.BatchNorm2d(out), nn.LeakyReLU(LEAK, inplace=True)]
            width = out
        self.convs = nn.Sequential(*layers)
        # (side − 2) halved n times (rounding up) is s0 for n >= 2.
        self.last = nn.Linear(width * s0 * s0, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.convs(x).flatten(1))


@register_detector
class EfficientGAN(Detector):
    """BiGAN with an encoder: the latent code of a test image is E(x), no search as in AnoGAN."""

    name = "efficientgan"
    localizes = True
    score_is_map_max = False
    defaults = {
        "image_size": 28,  # the seed's MNIST
        "channels": 1,  # 1 = grayscale (the seed), 3 = RGB
        "batch_size": 64,
        "epochs": 1500,  # the seed's run, on a folder of a few hundred 7/8 digits
        "latent_dim": 50,  # z_dim
        "n_features": 64,  # base conv width (the seed's 64); widths scale with it, FC widths do not
        "lr_ge": 1e-4,  # generator and encoder
        "lr_d": 2.5e-5,  # discriminator (1e-4 / 4)
        "betas": (0.5, 0.999),
        "feature_weight": 0.1,  # λ of the score
        "validation_fraction": 0.0,  # > 0: hold out this share and keep the best validation epoch
        "patience": None,
        "checkpoint": None,
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._check()  # refuse unusable sizes and settings when the detector is created

    def _check(self) -> int:
        side = square_side(self.name, self.input_size)
        stage_plan(side)
        check_channels(self.name, self.channels)
        check_positive(self.name, epochs=self.epochs, latent_dim=self.latent_dim, n_features=self.n_features,
                       batch_size=self.batch_size)
        if not 0.0 <= float(self.feature_weight) <= 1.0:
            raise ConfigError(f"{self.name}: feature_weight (λ) must be in [0, 1], got {self.feature_weight}")
        return side

    def _build(self) -> None:
        side = self._check()
        args = (side, int(self.latent_dim), int(self.channels), int(self.n_features))
        # The seed initialises G, E, D in this order; BatchNorm weights N(0, 0.02) as its weights_init.
        self.generator_ = gan_init(Generator(*args), bn_weight_mean=0.0).to(self.device)
        self.encoder_ = gan_init(Encoder(*args), bn_weight_mean=0.0).to(self.device)
        self.discriminator_ = gan_init(Discriminator(*args), bn_weight_mean=0.0).to(self.device)

    def _modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "encoder": self.encoder_, "discriminator": self.discriminator_}

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, records: Sequence, progress: bool) -> None:
        self._build()
        seed, batch_size, device = int(self.seed), int(self.batch_size), self.device
        fit_records, val_records = split_records(records, float(self.validation_fraction), seed, stream=1)
        data = load_images(fit_records, self.image_size, self.channels, progress, "efficientgan load")
        check_images(self.name, data)
        val = load_images(val_records, self.image_size, self.channels, progress, "efficientgan load val") if val_records else None
        G, E, D = self.generator_, self.encoder_, self.discriminator_
        betas = tuple(float(b) for b in self.betas)
        opt_g = torch.optim.Adam(G.parameters(), lr=float(self.lr_ge), betas=betas)
        opt_e = torch.optim.Adam(E.parameters(), lr=float(self.lr_ge), betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=float(self.lr_d), betas=betas)
        latent_dim = int(self.latent_dim)

        def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

        def step(batch: dict) -> dict[str, float]:
            x = batch["x"].to(device)
            n = len(x)
            # 1. D: (x, E(x)) real, (G(z), z) fake.
            with torch.no_grad():
                z_real = E(x)
                z = torch.randn(n, latent_dim, device=device)
                fake = G(z)
            d_real, _ = D(x, z_real)
            d_fake, _ = D(fake, z)
            d_loss = bce(d_real, 1.0) + bce(d_fake, 0.0)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # 2. G: make (G(z), z) look real, with a fresh z.
            z = torch.randn(n, latent_dim, device=device)
            d_fake, _ = D(G(z), z)
            g_loss = bce(d_fake, 1.0)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            # 3. E: make (x, E(x)) look fake.
            d_real, _ = D(x, E(x))
            e_loss = bce(d_real, 0.0)
            opt_e.zero_grad(set_to_none=True)
            e_loss.backward()
            opt_e.step()
            return {"d": d_loss.item(), "g": g_loss.item(), "e": e_loss.item()}

        def validate() -> float:
            total = 0.0
            for start in range(0, len(val), 256):
                x = val[start : start + 256].to(device)
                total += (x - G(E(x))).abs().flatten(1).sum(1).sum().item()
            return total / len(val)

        setup = TrainingSetup(
            modules=self._modules(),
            optimizers={"generator": opt_g, "encoder": opt_e, "discriminator": opt_d},
            step=step,
            batches=lambda epoch: epoch_batches(data, batch_size, seed, epoch),
            validate=validate if val is not None else None,
        )
        result = train(setup, int(self.epochs), seed, self.patience, self.checkpoint, progress, desc="efficientgan")
        self.kept_epoch_, self.history_ = result.kept_epoch, result.history

    # -- score ----------------------------------------------------------------------------------
    def anomaly_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] → (scores (B,), reconstructions G(E(x)))."""
        z = self.encoder_(x)
        x_hat = self.generator_(z)
        _, f_real = self.discriminator_(x, z)
        _, f_fake = self.discriminator_(x_hat, z)
        lam = float(self.feature_weight)
        residual = (x - x_hat).abs().flatten(1).sum(1)
        feature = (f_real - f_fake).abs().sum(1)
        return (1 - lam) * residual + lam * feature, x_hat

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        for m in self._modules().values():
            m.eval()
        scores, maps = [], []
        with torch.inference_mode():
            for x in scored_batches(records, self.image_size, int(self.batch_size), self.channels, progress, "efficientgan score"):
                x = x.to(self.device)
                score, x_hat = self.anomaly_score(x)
                scores.append(score.cpu())
                maps.append(residual_map(x, x_hat).float().cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def reconstruct(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, G(E(x))) as float32 (N, C, H, W) arrays in [0, 1], for inspection figures."""
        for m in self._modules().values():
            m.eval()
        return reconstructions(self, records, lambda x: self.generator_(self.encoder_(x)), progress,
                               "efficientgan reconstruct")

    def preprocessing(self) -> dict:
        return preprocessing_info(super().preprocessing(), self.channels)

    # -- persistence ----------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors(self._modules())
        tensors["kept_epoch"] = torch.tensor(self.kept_epoch_)
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._build()
        load_module_tensors(self._modules(), tensors, self.device)
        self.kept_epoch_ = int(tensors["kept_epoch"])
