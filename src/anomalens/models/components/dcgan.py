"""Building blocks shared by the GAN detectors (AnoGAN, EfficientGAN, GANomaly), written once.

- ``DCGANEncoder`` / ``DCGANDecoder``: the DCGAN pyramid of Radford et al. (2016) as GANomaly's
  reference code builds it (samet-akcay/ganomaly ``lib/networks.py``): 4×4 stride-2 convolutions that
  halve the side down to 4×4 (the first without BatchNorm), LeakyReLU 0.2, then a 4×4 valid
  convolution to ``latent_dim`` outputs; the decoder mirrors it with transposed convolutions, BatchNorm,
  ReLU and a Tanh output. Used as GANomaly's E1 / decoder / E2 / discriminator and as AnoGAN's
  generator / discriminator.
- ``gan_init``: weights N(0, 0.02) for (transposed) convolutions, BatchNorm weights N(1, 0.02) (DCGAN,
  GANomaly) or N(0, 0.02) (the seed's EfficientGAN code), all biases 0.
- ``discriminator_loss``: the discriminator's binary cross-entropy, real images against 1, generated ones
  against 0 (AnoGAN's and GANomaly's D step).
- ``residual_map``: |x − x̂| of images in the networks' [-1, 1] scale (the references' Normalize(0.5, 0.5),
  the range of the Tanh outputs), given back in the [0, 1] scale of the input images, channel mean.
- ``square_side`` / ``check_dcgan_size``: the input sizes the networks accept.
- ``GANDetector``: what the three detectors share on top of the trained-detector base — images in
  [-1, 1], at least two training images (BatchNorm), ``reconstruct``, and the channels, batch size and
  Adam betas of DCGAN's settings.

Loading, scaling to [-1, 1], batching and saving are the trained-detector base's (``components.trained``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.errors import ConfigError
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Choice, Floats, Int

INIT_STD = 0.02


def square_side(name: str, input_size: tuple[int, int]) -> int:
    """The side of a square input, or ConfigError."""
    h, w = input_size
    if h != w:
        raise ConfigError(f"{name}: needs square images, got image_size {h}x{w}")
    return h


def check_dcgan_size(name: str, input_size: tuple[int, int]) -> int:
    """DCGAN pyramids halve the side down to 4×4: the side must be a power of two, at least 32."""
    side = square_side(name, input_size)
    if side < 32 or side & (side - 1):
        raise ConfigError(
            f"{name}: image_size must be a power of two >= 32 (32, 64, 128, 256, ...) for the DCGAN "
            f"encoder/decoder, got {side}"
        )
    return side


# ------------------------------------------------------------------------------------------ networks
class DCGANEncoder(nn.Module):
    """(B, C, S, S) images → (B, out_dim) through ``features`` (B, K, 4, 4) and a final 4×4 conv.

    ``features`` is everything but the last layer: GANomaly's discriminator features and AnoGAN's f.
    """

    def __init__(self, image_size: int, out_dim: int, channels: int, n_features: int, extra_layers: int = 0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, n_features, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        size, width = image_size // 2, n_features
        for _ in range(extra_layers):
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True)]
        while size > 4:
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width, size = width * 2, size // 2
        self.features = nn.Sequential(*layers)
        self.final = nn.Conv2d(width, out_dim, 4, 1, 0, bias=False)
        self.feature_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.features(x)).flatten(1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.final(feats).flatten(1), feats


class DCGANDecoder(nn.Module):
    """(B, latent_dim) → (B, C, S, S) in [-1, 1]: 4×4 transposed conv to 4×4, doublings, Tanh."""

    def __init__(self, image_size: int, latent_dim: int, channels: int, n_features: int, extra_layers: int = 0):
        super().__init__()
        width, size = n_features // 2, 4
        while size != image_size:
            width, size = width * 2, size * 2
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        size = 4
        while size < image_size // 2:
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width, size = width // 2, size * 2
        for _ in range(extra_layers):
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(-1, self.latent_dim, 1, 1))


def gan_init(module: nn.Module, bn_weight_mean: float = 1.0) -> nn.Module:
    """N(0, 0.02) (transposed) conv weights, N(bn_weight_mean, 0.02) BatchNorm weights, zero biases.

    Linear layers keep PyTorch's default weights with zero biases, as the seed's ``weights_init`` does.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, bn_weight_mean, INIT_STD)
        elif not isinstance(m, nn.Linear):
            continue
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    return module


# ------------------------------------------------------------------------------------------ detectors
class GANDetector(TrainedDetector):
    """Base of the GAN detectors: networks see images in [-1, 1]; maps are ``residual_map``s."""

    localizes = True
    reconstructs = True
    score_is_map_max = False
    network_range = "[-1, 1]"
    min_training_images = 2  # BatchNorm
    hyperparameters = {
        "channels": Choice(1, (1, 3), "1 = grayscale (the seeds' runs), 3 = RGB"),
        "batch_size": Int(64, "images per training (and scoring) batch (DCGAN's 64)", low=1),
        "betas": Floats((0.5, 0.999), "Adam betas (DCGAN's)", low=0.0, high=1.0, length=2),
    }


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """D's side of the GAN game: binary cross-entropy of its logits on real images against 1 plus on generated
    images against 0 (DCGAN, as AnoGAN trains it; GANomaly takes half of it)."""
    return (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
            + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))


# ------------------------------------------------------------------------------------------ images
def residual_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] → (B, H, W) |x − x̂| in the [0, 1] image scale, channel mean."""
    return ((x - x_hat).abs() / 2).mean(1)
