"""GANomaly — Akcay, Atapour-Abarghouei & Breckon, "GANomaly: Semi-Supervised Anomaly Detection via
Adversarial Training", ACCV 2018 (reference code: samet-akcay/ganomaly, the seed's runs).

1. Generator: encoder E1 → decoder → encoder E2, DCGAN-style (``components.dcgan``): x → z = E1(x) →
   x̂ = Dec(z) → ẑ = E2(x̂). Discriminator: the same encoder with one output; its features f_D are all
   its layers but the last.
2. Generator loss (per batch means): w_adv·‖f_D(x) − f_D(x̂)‖² + w_con·‖x − x̂‖₁ + w_enc·‖z − ẑ‖², with
   w_adv 1, w_con 50, w_enc 1. Discriminator: binary cross-entropy, real x → 1 and x̂ → 0, averaged
   (½(real + fake), as the reference code); re-initialised (weights only, as the reference) whenever that
   loss drops below 1e-5 — the count is ``d_reinits_``. One G step then one D step per batch, in the
   reference's order. Adam lr 2e-4, betas (0.5, 0.999), batch 64, nz 100, 64 base filters, isize 32,
   15 epochs; conv weights N(0, 0.02), BatchNorm weights N(1, 0.02).
3. Score: the mean of (z − ẑ)² over the latent dimensions. The paper and the reference code then min-max
   scale the scores over the test set; that is left out on purpose — it would make one image's score
   depend on which other images are scored with it, and as a monotone map it leaves AUROC (and every
   ranking) unchanged. Map: |x − x̂| in the [0, 1] image scale, averaged over channels — a by-product for
   inspection; GANomaly is an image-level method (``score_is_map_max`` is False).
   ``score_type="reconstruction"`` scores by the mean of that map instead (an option, not the paper's: the
   latent score is weak on small local defects — anomalib reports 0.42 image AUROC on MVTec AD — and on
   the 14-px synthetic squares of this library's contract test it stays at 0.3–0.8 AUROC whatever the
   training length, while the reconstruction error separates them).

Inputs: square images whose side is a power of two >= 32 (the DCGAN pyramid), grayscale (``channels=1``,
the seed's MNIST runs) or RGB, scaled to [-1, 1] (the reference's Normalize(0.5, 0.5)).

Model selection: the reference keeps the epoch with the best *test* AUROC; that is not done here. By
default the weights of the last epoch are kept. With ``validation_fraction`` > 0 a seeded share of the
fit images is held out, the generator's w_con·L1 + w_enc·L2 loss on it is recorded after each epoch
(``history_["val_loss"]``) and the epoch where it is lowest is kept (``patience`` stops early). No
anomalous image is ever used. ``checkpoint`` = a file saves the training state after every epoch and
resumes from it. ``history_`` holds the per-epoch means of the losses (d, g, g_adv, g_con, g_enc).
BCE is computed on logits (BCEWithLogits), the same value as the reference's Sigmoid + BCELoss.
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
    check_dcgan_size,
    check_images,
    check_positive,
    DCGANDecoder,
    DCGANEncoder,
    epoch_batches,
    gan_init,
    load_images,
    preprocessing_info,
    reconstructions,
    residual_map,
    scored_batches,
)
from anomalens.models.components.training import TrainingSetup, load_module_tensors, module_tensors, train

SCORES = ("latent", "reconstruction")


class GANomalyGenerator(nn.Module):
    """x → (x̂, z, ẑ): encoder E1, decoder, encoder E2."""

    def __init__(self, image_size: int, latent_dim: int, channels: int, n_features: int, extra_layers: int):
        super().__init__()
        self.encoder1 = DCGANEncoder(image_size, latent_dim, channels, n_features, extra_layers)
        self.decoder = DCGANDecoder(image_size, latent_dim, channels, n_features, extra_layers)
        self.encoder2 = DCGANEncoder(image_size, latent_dim, channels, n_features, extra_layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder1(x)
        x_hat = self.decoder(z)
        return x_hat, z, self.encoder2(x_hat)


@register_detector
class GANomaly(Detector):
    """Encoder–decoder–encoder GAN; anomalies are images whose re-encoded latent ẑ differs from z."""

    name = "ganomaly"
    localizes = True
    score_is_map_max = False
    defaults = {
        "image_size": 32,  # isize 32 (the seed's MNIST / CIFAR-10 runs)
        "channels": 1,  # 1 = grayscale (the seed's MNIST runs, --nc 1), 3 = RGB
        "batch_size": 64,
        "epochs": 15,
        "latent_dim": 100,  # nz
        "n_features": 64,  # ngf = ndf
        "extra_layers": 0,
        "lr": 2e-4,
        "betas": (0.5, 0.999),
        "w_adv": 1.0,
        "w_con": 50.0,
        "w_enc": 1.0,
        "d_reinit_below": 1e-5,  # re-initialise D when its loss drops below this
        "score_type": "latent",  # "latent": mean (z − ẑ)² (the paper); "reconstruction": mean |x − x̂|
        "validation_fraction": 0.0,  # > 0: hold out this share and keep the best validation epoch
        "patience": None,
        "checkpoint": None,
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._check()  # refuse unusable sizes and settings when the detector is created

    def _check(self) -> int:
        side = check_dcgan_size(self.name, self.input_size)
        check_channels(self.name, self.channels)
        check_positive(self.name, epochs=self.epochs, latent_dim=self.latent_dim, n_features=self.n_features, batch_size=self.batch_size)
        if self.score_type not in SCORES:
            raise ConfigError(f"{self.name}: score_type must be one of {', '.join(SCORES)}, got {self.score_type!r}")
        if int(self.extra_layers) < 0:
            raise ConfigError(f"{self.name}: extra_layers must be >= 0, got {self.extra_layers}")
        return side

    def _build(self) -> None:
        side = self._check()
        args = (side, int(self.latent_dim), int(self.channels), int(self.n_features), int(self.extra_layers))
        self.generator_ = gan_init(GANomalyGenerator(*args)).to(self.device)
        self.discriminator_ = gan_init(DCGANEncoder(side, 1, *args[2:])).to(self.device)

    def _modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "discriminator": self.discriminator_}

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, records: Sequence, progress: bool) -> None:
        self._build()
        seed, batch_size, device = int(self.seed), int(self.batch_size), self.device
        fit_records, val_records = split_records(records, float(self.validation_fraction), seed, stream=1)
        data = load_images(fit_records, self.image_size, self.channels, progress, "ganomaly load")
        check_images(self.name, data)
        val = load_images(val_records, self.image_size, self.channels, progress, "ganomaly load val") if val_records else None
        G, D = self.generator_, self.discriminator_
        betas = tuple(float(b) for b in self.betas)
        opt_g = torch.optim.Adam(G.parameters(), lr=float(self.lr), betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=float(self.lr), betas=betas)
        w_adv, w_con, w_enc = float(self.w_adv), float(self.w_con), float(self.w_enc)
        reinit_below = float(self.d_reinit_below)

        def step(batch: dict) -> dict[str, float]:
            x = batch["x"].to(device)
            x_hat, z, z_hat = G(x)
            # Generator: feature matching on D's features + contextual L1 + latent L2.
            _, feat_real = D.forward_with_features(x)
            _, feat_fake = D.forward_with_features(x_hat)
            g_adv = (feat_real - feat_fake).pow(2).mean()
            g_con = (x - x_hat).abs().mean()
            g_enc = (z - z_hat).pow(2).mean()
            g_loss = w_adv * g_adv + w_con * g_con + w_enc * g_enc
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            # Discriminator on the same batch: x real, x̂ (of this step's forward pass) fake.
            logit_real = D(x)
            logit_fake = D(x_hat.detach())
            d_loss = 0.5 * (
                F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
                + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
            )
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            reinit = d_loss.item() < reinit_below
            if reinit:
                gan_init(D)
            return {"d": d_loss.item(), "g": g_loss.item(), "g_adv": g_adv.item(), "g_con": g_con.item(),
                    "g_enc": g_enc.item(), "d_reinit": float(reinit)}

        def validate() -> float:
            total = 0.0
            for start in range(0, len(val), 256):
                x = val[start : start + 256].to(device)
                x_hat, z, z_hat = G(x)
                per_image = w_con * (x - x_hat).abs().flatten(1).mean(1) + w_enc * (z - z_hat).pow(2).mean(1)
                total += per_image.sum().item()
            return total / len(val)

        setup = TrainingSetup(
            modules=self._modules(),
            optimizers={"generator": opt_g, "discriminator": opt_d},
            step=step,
            batches=lambda epoch: epoch_batches(data, batch_size, seed, epoch),
            validate=validate if val is not None else None,
        )
        result = train(setup, int(self.epochs), seed, self.patience, self.checkpoint, progress, desc="ganomaly")
        history, self.kept_epoch_ = result.history, result.kept_epoch
        n_batches = sum(1 for _ in epoch_batches(data, batch_size, seed, 0))
        self.d_reinits_ = int(round(sum(history.pop("d_reinit", [])) * n_batches))
        self.history_ = history

    # -- score ----------------------------------------------------------------------------------
    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        self.generator_.eval()
        scores, maps = [], []
        with torch.inference_mode():
            for x in scored_batches(records, self.image_size, int(self.batch_size), self.channels, progress, "ganomaly score"):
                x = x.to(self.device)
                x_hat, z, z_hat = self.generator_(x)
                amap = residual_map(x, x_hat).float()
                if self.score_type == "latent":
                    scores.append((z - z_hat).pow(2).mean(1).cpu())
                else:
                    scores.append(amap.flatten(1).mean(1).cpu())
                maps.append(amap.cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def reconstruct(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, G(x)) as float32 (N, C, H, W) arrays in [0, 1], for inspection figures."""
        self.generator_.eval()
        return reconstructions(self, records, lambda x: self.generator_(x)[0], progress, "ganomaly reconstruct")

    def preprocessing(self) -> dict:
        return preprocessing_info(super().preprocessing(), self.channels)

    # -- persistence ----------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors(self._modules())
        tensors["kept_epoch"] = torch.tensor(self.kept_epoch_)
        tensors["d_reinits"] = torch.tensor(self.d_reinits_)
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._build()
        load_module_tensors(self._modules(), tensors, self.device)
        self.kept_epoch_ = int(tensors["kept_epoch"])
        self.d_reinits_ = int(tensors["d_reinits"])
