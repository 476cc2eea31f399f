"""AnoGAN — Schlegl, Seeböck, Waldstein, Schmidt-Erfurth & Langs, "Unsupervised Anomaly Detection with
Generative Adversarial Networks to Guide Marker Discovery", IPMI 2017.

1. A DCGAN trained on normal images only (``components.dcgan``): generator = the DCGAN decoder from
   z ~ N(0, I) (``latent_dim`` 100) to the image, discriminator = the DCGAN encoder with one output.
   Standard (non-saturating) GAN losses with binary cross-entropy on logits; Adam lr 2e-4, betas
   (0.5, 0.999), batch 64 (DCGAN's settings); 25 epochs (the DCGAN reference's ``niter``; the AnoGAN paper
   does not state its count). The paper's 64×64 patches are the default size; any power-of-two side >= 32.
2. Test (Sec. 2.2): the networks are frozen and, for each image x, a latent z is searched by gradient
   descent on the mapping loss
       L(z) = (1 − λ)·Σ|x − G(z)| + λ·Σ|f(x) − f(G(z))|,   λ = 0.1,
   where f is the discriminator's last intermediate layer (all layers but the final one). All images of a
   batch are optimised together: in eval mode each image's loss depends only on its own z, and Adam acts
   element-wise, so the result is the same as searching one image at a time. ``search_steps`` (paper:
   500) Adam steps with a piecewise-constant schedule: ``search_lr`` [0.01, 0.001, 0.0005] switching at
   ``search_milestones`` [200, 300] (the schedule of a public reference baseline). Every image starts from
   the same z₁, one seeded draw from N(0, I), so an image's score does not depend on its batch or position.
3. Score: L at the final z (sums over pixels in the [-1, 1] network scale and over features). Map:
   |x − G(z)| in the [0, 1] image scale, averaged over channels.

Model selection: the weights of the last epoch are kept (a validation criterion would need the costly
search on held-out images every epoch; the GAN losses themselves do not measure quality). No anomalous
image is ever used. ``checkpoint`` = a file saves the training state after every epoch and resumes from
it. ``history_`` holds the per-epoch mean D and G losses.

Cost: scoring runs ``search_steps`` forward and backward passes of G and D per batch — by design the
slow part of AnoGAN that EfficientGAN's encoder removes. ``fit`` also scores the threshold hold-out.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.detector import Detector, iterate_progress, register_detector
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


@register_detector
class AnoGAN(Detector):
    """DCGAN of normal images; a test image's score is how badly the best latent search reproduces it."""

    name = "anogan"
    localizes = True
    score_is_map_max = False
    defaults = {
        "image_size": 64,  # the paper's 64×64 patches
        "channels": 1,  # 1 = grayscale (the paper's OCT patches), 3 = RGB
        "batch_size": 64,
        "epochs": 25,
        "latent_dim": 100,
        "n_features": 64,  # DCGAN's ngf = ndf
        "lr": 2e-4,
        "betas": (0.5, 0.999),
        "feature_weight": 0.1,  # λ
        "search_steps": 500,
        "search_lr": (0.01, 0.001, 0.0005),
        "search_milestones": (200, 300),  # steps at which search_lr moves to its next value
        "checkpoint": None,
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._check()  # refuse unusable sizes and settings when the detector is created

    def _check(self) -> int:
        side = check_dcgan_size(self.name, self.input_size)
        check_channels(self.name, self.channels)
        check_positive(self.name, epochs=self.epochs, latent_dim=self.latent_dim, n_features=self.n_features,
                       batch_size=self.batch_size, search_steps=self.search_steps)
        lrs, milestones = list(self.search_lr), list(self.search_milestones)
        if len(lrs) != len(milestones) + 1 or any(float(v) <= 0 for v in lrs):
            raise ConfigError(
                f"{self.name}: search_lr needs one positive rate more than search_milestones "
                f"({len(milestones)} milestones), got {lrs}"
            )
        if milestones != sorted(milestones) or any(int(m) < 1 for m in milestones):
            raise ConfigError(f"{self.name}: search_milestones must be increasing steps >= 1, got {milestones}")
        if not 0.0 <= float(self.feature_weight) <= 1.0:
            raise ConfigError(f"{self.name}: feature_weight (λ) must be in [0, 1], got {self.feature_weight}")
        return side

    def _build(self) -> None:
        side = self._check()
        nz, c, nf = int(self.latent_dim), int(self.channels), int(self.n_features)
        self.generator_ = gan_init(DCGANDecoder(side, nz, c, nf)).to(self.device)
        self.discriminator_ = gan_init(DCGANEncoder(side, 1, c, nf)).to(self.device)

    def _modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "discriminator": self.discriminator_}

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, records: Sequence, progress: bool) -> None:
        self._build()
        seed, batch_size, device = int(self.seed), int(self.batch_size), self.device
        data = load_images(list(records), self.image_size, self.channels, progress, "anogan load")
        check_images(self.name, data)
        G, D = self.generator_, self.discriminator_
        betas = tuple(float(b) for b in self.betas)
        opt_g = torch.optim.Adam(G.parameters(), lr=float(self.lr), betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=float(self.lr), betas=betas)
        nz = int(self.latent_dim)

        def step(batch: dict) -> dict[str, float]:
            x = batch["x"].to(device)
            z = torch.randn(len(x), nz, device=device)
            fake = G(z)
            logit_real, logit_fake = D(x), D(fake.detach())
            d_loss = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real)) + \
                F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logit_fake = D(fake)
            g_loss = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            return {"d": d_loss.item(), "g": g_loss.item()}

        setup = TrainingSetup(
            modules=self._modules(),
            optimizers={"generator": opt_g, "discriminator": opt_d},
            step=step,
            batches=lambda epoch: epoch_batches(data, batch_size, seed, epoch),
        )
        self.history_ = train(setup, int(self.epochs), seed, None, self.checkpoint, progress, desc="anogan").history
        self.z_start_ = torch.randn(nz, generator=torch.Generator().manual_seed(seed))

    # -- score ----------------------------------------------------------------------------------
    def mapping_loss(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image L(z) (B,) and G(z), for images x in [-1, 1]."""
        lam = float(self.feature_weight)
        fake = self.generator_(z)
        residual = (x - fake).abs().flatten(1).sum(1)
        feature = (self.discriminator_.features(x) - self.discriminator_.features(fake)).abs().flatten(1).sum(1)
        return (1 - lam) * residual + lam * feature, fake

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched latent search for images x in [-1, 1] → (scores (B,), G(z*), z*). Networks frozen."""
        lrs = [float(v) for v in self.search_lr]
        milestones = [int(m) for m in self.search_milestones]
        # Gradients are needed w.r.t. z even when the caller is in inference mode.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            z = self.z_start_.to(x.device).expand(len(x), -1).clone().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=lrs[0])
            for t in range(int(self.search_steps)):
                lr = lrs[sum(t >= m for m in milestones)]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, _ = self.mapping_loss(x, z)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
        with torch.no_grad():
            loss, fake = self.mapping_loss(x, z)
        return loss, fake, z.detach()

    @contextlib.contextmanager
    def _frozen(self):
        """Networks in eval mode without parameter gradients while z is searched."""
        modules = self._modules().values()
        for m in modules:
            m.eval()
            m.requires_grad_(False)
        try:
            yield
        finally:
            for m in modules:
                m.requires_grad_(True)

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        with self._frozen():
            batches = scored_batches(records, self.image_size, int(self.batch_size), self.channels, False, "")
            n_batches = -(-len(records) // int(self.batch_size))
            for x in iterate_progress(batches, progress, "anogan latent search", total=n_batches):
                x = x.to(self.device)
                score, fake, _ = self.search(x)
                scores.append(score.cpu())
                maps.append(residual_map(x, fake).float().cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def reconstruct(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, G(z*)) after the latent search, as float32 (N, C, H, W) arrays in [0, 1]."""
        with self._frozen():
            return reconstructions(self, records, lambda x: self.search(x)[1], progress, "anogan reconstruct")

    def preprocessing(self) -> dict:
        return preprocessing_info(super().preprocessing(), self.channels)

    # -- persistence ----------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors(self._modules())
        tensors["z_start"] = self.z_start_
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._build()
        load_module_tensors(self._modules(), tensors, self.device)
        self.z_start_ = tensors["z_start"].float()
