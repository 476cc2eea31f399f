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

Model selection: the weights of the last epoch are kept (``kept_epoch_``; a validation criterion would
need the costly search on held-out images every epoch; the GAN losses themselves do not measure
quality). No anomalous image is ever used. ``checkpoint`` = a file saves the training state after every
epoch and resumes from it. ``history_`` holds the per-epoch mean D and G losses. Batches are shuffled
per (seed, epoch); a trailing batch of one image joins the previous one (BatchNorm needs two images;
earlier versions dropped that image instead).

Cost: scoring runs ``search_steps`` forward and backward passes of G and D per batch — by design the
slow part of AnoGAN that EfficientGAN's encoder removes. ``fit`` also scores the threshold hold-out.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.errors import ConfigError
from anomalens.models.components.dcgan import (
    DCGANDecoder,
    DCGANEncoder,
    GANDetector,
    check_dcgan_size,
    discriminator_loss,
    gan_init,
    residual_map,
)
from anomalens.params import Float, Floats, Int, Param, Size
from anomalens.registry import register_detector


@register_detector
class AnoGAN(GANDetector):
    """DCGAN of normal images; a test image's score is how badly the best latent search reproduces it."""

    name = "anogan"
    hyperparameters = {
        "image_size": Size(64, "square side, a power of two >= 32 (the paper's 64×64 patches)"),
        "epochs": Int(25, "training epochs (the DCGAN reference's niter)", low=1),
        "latent_dim": Int(100, "size of z", low=1),
        "n_features": Int(64, "DCGAN's ngf = ndf", low=1),
        "lr": Float(2e-4, "Adam learning rate of G and D", low=0.0, low_open=True),
        "feature_weight": Float(0.1, "λ of the mapping loss", low=0.0, high=1.0),
        "search_steps": Int(500, "Adam steps of the latent search", low=1),
        "search_lr": Floats((0.01, 0.001, 0.0005), "search learning rates, one more than search_milestones",
                            low=0.0, low_open=True),
        "search_milestones": Param((200, 300), "search steps at which search_lr moves to its next value", "ints",
                                   low=1, min_length=0),
    }

    def _check_params(self) -> None:
        check_dcgan_size(self.name, self.input_size)
        lrs, milestones = self.search_lr, self.search_milestones
        if len(lrs) != len(milestones) + 1:
            raise ConfigError(
                f"{self.name}: search_lr needs one positive rate more than search_milestones "
                f"({len(milestones)} milestones), got {list(lrs)}"
            )
        if list(milestones) != sorted(milestones):
            raise ConfigError(f"{self.name}: search_milestones must be increasing steps >= 1, got {list(milestones)}")

    def _build_networks(self) -> None:
        side, nz, c, nf = self.input_size[0], self.latent_dim, self.channels, self.n_features
        self.generator_ = gan_init(DCGANDecoder(side, nz, c, nf)).to(self.device)
        self.discriminator_ = gan_init(DCGANEncoder(side, 1, c, nf)).to(self.device)
        # z₁, where every latent search starts: one draw of its own generator, so that training leaves it alone.
        self.z_start_ = torch.randn(nz, generator=torch.Generator().manual_seed(self.seed))

    def _networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "discriminator": self.discriminator_}

    # -- training: the DCGAN game ---------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        G, D = self.generator_, self.discriminator_
        return {"generator": torch.optim.Adam(G.parameters(), lr=self.lr, betas=self.betas),
                "discriminator": torch.optim.Adam(D.parameters(), lr=self.lr, betas=self.betas)}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        G, D = self.generator_, self.discriminator_
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        z = torch.randn(len(x), self.latent_dim, device=x.device)
        fake = G(z)
        d_loss = discriminator_loss(D(x), D(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        logit_fake = D(fake)
        g_loss = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {"d": d_loss.item(), "g": g_loss.item()}

    # -- score: the latent search (Sec. 2.2) -----------------------------------------------------
    def mapping_loss(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image L(z) (B,) and G(z), for images x in [-1, 1]."""
        lam = self.feature_weight
        fake = self.generator_(z)
        residual = (x - fake).abs().flatten(1).sum(1)
        feature = (self.discriminator_.features(x) - self.discriminator_.features(fake)).abs().flatten(1).sum(1)
        return (1 - lam) * residual + lam * feature, fake

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched latent search for images x in [-1, 1] → (scores (B,), G(z*), z*). Networks frozen."""
        lrs, milestones = self.search_lr, self.search_milestones
        # Gradients are needed w.r.t. z even when the caller is in inference mode.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            z = self.z_start_.to(x.device).expand(len(x), -1).clone().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=lrs[0])
            for t in range(self.search_steps):
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
    def _inference(self) -> Iterator[None]:
        """Networks without parameter gradients while z is searched (not inference mode: z needs them)."""
        modules = self._networks().values()
        for m in modules:
            m.eval()
            m.requires_grad_(False)
        try:
            yield
        finally:
            for m in modules:
                m.requires_grad_(True)

    def inference_module(self) -> nn.Module:
        """The latent search as a module (it runs an optimiser: Python, with gradients; not exportable)."""
        return _LatentSearch(self)

    def export_refusal(self) -> str | None:
        return (f"anogan cannot be exported: its score comes from a per-image latent search ({self.search_steps} "
                "Adam steps with gradients through the generator and discriminator), which is an optimisation, "
                "not a fixed inference graph; efficientgan or ganomaly learn an encoder instead and do export")

    def _reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        """G(z*) after the latent search."""
        return self.search(x)[1]

    # -- persistence ----------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"z_start": self.z_start_}

    def _load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.z_start_ = tensors["z_start"].float()


class _LatentSearch(nn.Module):
    """Images in [0, 1] → (scores, residual maps) by ``AnoGAN.search`` (networks registered for ``eval()``)."""

    def __init__(self, detector: AnoGAN) -> None:
        super().__init__()
        self.generator, self.discriminator = detector.generator_, detector.discriminator_
        self._detector = [detector]  # a list: not registered as a submodule

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images * 2 - 1  # the networks' [-1, 1]
        score, fake, _ = self._detector[0].search(x)
        return score, residual_map(x, fake)
