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
(``history_["val_loss"]``) and the epoch where it is lowest is kept (``patience`` stops early);
``kept_epoch_`` says which epoch the networks hold. No anomalous image is ever used. Batches are shuffled
per (seed, epoch); a trailing batch of one image joins the previous one (BatchNorm needs two images;
earlier versions dropped that image instead). ``checkpoint`` = a file saves the training state after every epoch and
resumes from it. ``history_`` holds the per-epoch means of the losses (d, g, g_adv, g_con, g_enc).
BCE is computed on logits (BCEWithLogits), the same value as the reference's Sigmoid + BCELoss.
"""

from __future__ import annotations

import torch
from torch import nn

from anomalens.models.components.dcgan import (
    DCGANDecoder,
    DCGANEncoder,
    GANDetector,
    check_dcgan_size,
    discriminator_loss,
    gan_init,
    residual_map,
)
from anomalens.params import Choice, Float, Int, Size
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

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


class GANomalyGraph(nn.Module):
    """Images in [0, 1] → (image scores, residual maps): x → z, x̂, ẑ; latent (or reconstruction) score."""

    def __init__(self, generator: GANomalyGenerator, score_type: str):
        super().__init__()
        self.generator, self.score_type = generator, score_type

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images * 2 - 1  # the networks' [-1, 1]
        x_hat, z, z_hat = self.generator(x)
        amap = residual_map(x, x_hat).float()
        score = (z - z_hat).pow(2).mean(1) if self.score_type == "latent" else amap.flatten(1).mean(1)
        return score, amap


@register_detector
class GANomaly(GANDetector):
    """Encoder–decoder–encoder GAN; anomalies are images whose re-encoded latent ẑ differs from z."""

    name = "ganomaly"
    hyperparameters = {
        "image_size": Size(32, "square side, a power of two >= 32 (isize 32: the seed's MNIST / CIFAR-10 runs)"),
        "epochs": Int(15, "training epochs", low=1),
        "latent_dim": Int(100, "nz", low=1),
        "n_features": Int(64, "ngf = ndf", low=1),
        "extra_layers": Int(0, "extra 3×3 conv layers in every encoder and decoder", low=0),
        "lr": Float(2e-4, "Adam learning rate of G and D", low=0.0, low_open=True),
        "w_adv": Float(1.0, "weight of the adversarial (feature-matching) loss", low=0.0),
        "w_con": Float(50.0, "weight of the contextual L1 loss", low=0.0),
        "w_enc": Float(1.0, "weight of the latent L2 loss", low=0.0),
        "d_reinit_below": Float(1e-5, "re-initialise D when its loss drops below this", low=0.0),
        "score_type": Choice("latent", SCORES, "latent: mean (z − ẑ)² (the paper); reconstruction: mean |x − x̂|"),
        "validation_fraction": Float(0.0, "> 0: hold out this share of the fit images and keep the best "
                                     "validation epoch; 0: keep the last epoch", low=0.0, high=0.9),
        **EARLY_STOPPING,
    }

    def _check_params(self) -> None:
        check_dcgan_size(self.name, self.input_size)

    def _build_networks(self) -> None:
        args = (self.input_size[0], self.latent_dim, self.channels, self.n_features, self.extra_layers)
        self.generator_ = gan_init(GANomalyGenerator(*args)).to(self.device)
        self.discriminator_ = gan_init(DCGANEncoder(args[0], 1, *args[2:])).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "discriminator": self.discriminator_}

    # -- training -------------------------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": torch.optim.Adam(self.generator_.parameters(), lr=self.lr, betas=self.betas),
                "discriminator": torch.optim.Adam(self.discriminator_.parameters(), lr=self.lr, betas=self.betas)}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        G, D = self.generator_, self.discriminator_
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        x_hat, z, z_hat = G(x)
        # Generator: feature matching on D's features + contextual L1 + latent L2. D is held fixed here (its
        # gradients of this loss were discarded before its own step anyway), which also lets a data-parallel D
        # (a DistributedDataParallel wrapper: ``module``) be used outside its forward().
        features = getattr(D, "module", D).forward_with_features
        D.requires_grad_(False)
        try:
            _, feat_real = features(x)
            _, feat_fake = features(x_hat)
        finally:
            D.requires_grad_(True)
        g_adv = (feat_real - feat_fake).pow(2).mean()
        g_con = (x - x_hat).abs().mean()
        g_enc = (z - z_hat).pow(2).mean()
        g_loss = self.w_adv * g_adv + self.w_con * g_con + self.w_enc * g_enc
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        # Discriminator on the same batch: x real, x̂ (of this step's forward pass) fake.
        d_loss = 0.5 * discriminator_loss(D(x), D(x_hat.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        d_value = d_loss.item()
        reinit = self.agreed(d_value) < self.d_reinit_below  # rank 0's loss decides for every rank
        if reinit:
            gan_init(getattr(D, "module", D))
            self.resynchronised(D)
        return {"d": d_value, "g": g_loss.item(), "g_adv": g_adv.item(), "g_con": g_con.item(),
                "g_enc": g_enc.item(), "d_reinit": float(reinit)}

    def _validation_loss(self, x: torch.Tensor) -> float:
        """w_con·L1 + w_enc·L2 of the generator, summed over the batch's images."""
        x_hat, z, z_hat = self.generator_(x)
        per_image = self.w_con * (x - x_hat).abs().flatten(1).mean(1) + self.w_enc * (z - z_hat).pow(2).mean(1)
        return per_image.sum().item()

    def _training_finished(self, steps_per_epoch: int) -> None:
        # "d_reinit" is logged per step as 0/1, so its per-epoch mean × steps is that epoch's count.
        self.d_reinits_ = int(round(sum(self.history_.pop("d_reinit", [])) * steps_per_epoch))

    # -- score ----------------------------------------------------------------------------------
    def inference_module(self) -> GANomalyGraph:
        return GANomalyGraph(self.generator_, self.score_type)

    def _reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator_(x)[0]

    # -- persistence ----------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"d_reinits": torch.tensor(self.d_reinits_)}

    def _load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.d_reinits_ = int(tensors["d_reinits"])
