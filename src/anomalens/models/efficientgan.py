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
image is used); ``kept_epoch_`` says which epoch the networks hold. ``checkpoint`` = a file saves the
training state after every epoch and resumes from it. ``history_`` has the per-epoch means of the D, G
and E losses. Batches are shuffled per (seed, epoch); a trailing batch of one image joins the previous
one (BatchNorm needs two images; earlier versions dropped that image instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.errors import ConfigError
from anomalens.models.components.dcgan import GANDetector, gan_init, residual_map, square_side
from anomalens.params import Float, Int, Size
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

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
        out = self.layer2(self.layer1(z)).view(-1, *self.grid)
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


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class EfficientGANGraph(nn.Module):
    """Images in [0, 1] → (image scores, residual maps): z = E(x), x̂ = G(z), the seed's score."""

    def __init__(self, generator: Generator, encoder: Encoder, discriminator: Discriminator, feature_weight: float):
        super().__init__()
        self.generator, self.encoder, self.discriminator = generator, encoder, discriminator
        self.feature_weight = feature_weight

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images * 2 - 1  # the networks' [-1, 1]
        z = self.encoder(x)
        x_hat = self.generator(z)
        _, f_real = self.discriminator(x, z)
        _, f_fake = self.discriminator(x_hat, z)
        lam = self.feature_weight
        residual = (x - x_hat).abs().flatten(1).sum(1)
        feature = (f_real - f_fake).abs().sum(1)
        return (1 - lam) * residual + lam * feature, residual_map(x, x_hat)


@register_detector
class EfficientGAN(GANDetector):
    """BiGAN with an encoder: the latent code of a test image is E(x), no search as in AnoGAN."""

    name = "efficientgan"
    hyperparameters = {
        "image_size": Size(28, "square side s0·2^n, n >= 2, s0 in 3..7 (the seed's MNIST: 28)"),
        "epochs": Int(1500, "training epochs (the seed's run, on a folder of a few hundred 7/8 digits)", low=1),
        "latent_dim": Int(50, "z_dim", low=1),
        "n_features": Int(64, "base conv width (the seed's 64); conv widths scale with it, FC widths do not", low=1),
        "lr_ge": Float(1e-4, "Adam learning rate of the generator and the encoder", low=0.0, low_open=True),
        "lr_d": Float(2.5e-5, "Adam learning rate of the discriminator (1e-4 / 4)", low=0.0, low_open=True),
        "feature_weight": Float(0.1, "λ of the score", low=0.0, high=1.0),
        "validation_fraction": Float(0.0, "> 0: hold out this share of the fit images and keep the best "
                                     "validation epoch; 0: keep the last epoch (the seed)", low=0.0, high=0.9),
        **EARLY_STOPPING,
    }

    def _check_params(self) -> None:
        stage_plan(square_side(self.name, self.input_size))

    def _build_networks(self) -> None:
        args = (self.input_size[0], self.latent_dim, self.channels, self.n_features)
        # The seed initialises G, E, D in this order; BatchNorm weights N(0, 0.02) as its weights_init.
        self.generator_ = gan_init(Generator(*args), bn_weight_mean=0.0).to(self.device)
        self.encoder_ = gan_init(Encoder(*args), bn_weight_mean=0.0).to(self.device)
        self.discriminator_ = gan_init(Discriminator(*args), bn_weight_mean=0.0).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "encoder": self.encoder_, "discriminator": self.discriminator_}

    # -- training (the seed's train_model) -------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": torch.optim.Adam(self.generator_.parameters(), lr=self.lr_ge, betas=self.betas),
            "encoder": torch.optim.Adam(self.encoder_.parameters(), lr=self.lr_ge, betas=self.betas),
            "discriminator": torch.optim.Adam(self.discriminator_.parameters(), lr=self.lr_d, betas=self.betas),
        }

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        G, E, D = self.generator_, self.encoder_, self.discriminator_
        opt_g, opt_e, opt_d = optimizers["generator"], optimizers["encoder"], optimizers["discriminator"]
        n = len(x)
        # 1. D: (x, E(x)) real, (G(z), z) fake.
        with torch.no_grad():
            z_real = E(x)
            z = torch.randn(n, self.latent_dim, device=x.device)
            fake = G(z)
        d_real, _ = D(x, z_real)
        d_fake, _ = D(fake, z)
        d_loss = _bce(d_real, 1.0) + _bce(d_fake, 0.0)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # 2. G: make (G(z), z) look real, with a fresh z.
        z = torch.randn(n, self.latent_dim, device=x.device)
        d_fake, _ = D(G(z), z)
        g_loss = _bce(d_fake, 1.0)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        # 3. E: make (x, E(x)) look fake.
        d_real, _ = D(x, E(x))
        e_loss = _bce(d_real, 0.0)
        opt_e.zero_grad(set_to_none=True)
        e_loss.backward()
        opt_e.step()
        return {"d": d_loss.item(), "g": g_loss.item(), "e": e_loss.item()}

    def _validation_loss(self, x: torch.Tensor) -> float:
        """Σ|x − G(E(x))| over the batch's pixels and images."""
        return (x - self.generator_(self.encoder_(x))).abs().flatten(1).sum(1).sum().item()

    # -- score ----------------------------------------------------------------------------------
    def inference_module(self) -> EfficientGANGraph:
        return EfficientGANGraph(self.generator_, self.encoder_, self.discriminator_, self.feature_weight)

    def _reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator_(self.encoder_(x))
