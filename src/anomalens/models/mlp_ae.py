"""The seed's two fully-connected autoencoders for MNIST, as two configurations of one detector.

``architecture="A"`` — satolab12/anomaly-detection-using-autoencoder-PyTorch (the seed's first example,
trained on digit 1, tested on 1 vs 9): encoder 784→256→128→z (ReLU between), decoder z→128→256→784
with a Tanh output; inputs scaled to [-1, 1]; MSE; Adam, lr 3e-4, weight decay 1e-5; batch 16;
10 epochs; z = 64 (the repository's notebook; its ``main.py`` has z = 784 with lr 2e-4). Score: the sum
of |x − x̂| over the pixels, both mapped back to [0, 1] as the reference does before its difference
image; map: |x − x̂| per pixel.

``architecture="B"`` — the "MNIST in CSV" example (benjoe, "Anomaly Detection using PyTorch Autoencoder
and MNIST"): encoder 784-512-256-128-64-32-16 and the mirror decoder, ReLU after every layer including
the output; inputs /255; MSE; SGD (no momentum), lr 1e-2, weight decay 1e-5; batch 32; 15 epochs;
trained on the whole MNIST training set (all digits). Score: the per-image MSE; map: (x − x̂)².

Both take grayscale images of ``image_size`` (default 28, so 784 inputs); any size works, the input
layer having H·W units. Maps are at that resolution. ``image_score`` overrides the seed's reduction of
the map (``"sum"`` for A, ``"mean"`` for B) with ``"max"``, which suits small local defects better than
a total dominated by pixel noise on larger images.

Validation: a seeded ``validation_fraction`` (10 %) of the fit images is held out; its loss is recorded
each epoch (``history_["val_loss"]``) next to the training loss. As in the seed, the weights of the last
epoch are kept; ``restore_best=True`` keeps those of the epoch with the lowest validation loss instead
(``kept_epoch_`` says which), and ``patience`` stops training after that many epochs without improvement
(None = never, the seed). ``checkpoint`` = a file saves the training state after every epoch and resumes
from it. Training batches are shuffled per (seed, epoch); a trailing batch of one image joins the
previous one (``components.trained``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Bool, Choice, Float, Int, Size
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

# Per-architecture defaults that the seed's two programs differ in; ``None`` parameters take these.
ARCHITECTURES = {
    "A": {"latent_dim": 64, "epochs": 10, "lr": 3e-4, "batch_size": 16, "optimizer": "adam", "image_score": "sum"},
    "B": {"latent_dim": 16, "epochs": 15, "lr": 1e-2, "batch_size": 32, "optimizer": "sgd", "image_score": "mean"},
}
B_WIDTHS = (512, 256, 128, 64, 32)  # hidden widths of B between the input and its 16-unit code


def build_mlp_autoencoder(architecture: str, n_inputs: int, latent_dim: int) -> nn.Sequential:
    """The seed's network: ``encoder`` then ``decoder`` (an nn.Sequential of the two)."""
    if architecture == "A":
        encoder = nn.Sequential(
            nn.Linear(n_inputs, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, latent_dim)
        )
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, n_inputs), nn.Tanh()
        )
    else:
        widths = (n_inputs, *B_WIDTHS, latent_dim)
        enc, dec = [], []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        back = widths[::-1]
        for a, b in zip(back[:-1], back[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        encoder, decoder = nn.Sequential(*enc), nn.Sequential(*dec)
    return nn.Sequential(encoder, decoder)


class MLPAutoencoderGraph(nn.Module):
    """Grey images in [0, 1] → (image scores, maps): flatten, network scale, rebuild, residual, reduction."""

    def __init__(self, net: nn.Module, architecture: str, input_size: tuple[int, int], image_score: str):
        super().__init__()
        self.net, self.architecture, self.input_size, self.image_score = net, architecture, tuple(input_size), image_score

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = images.flatten(1)
        if self.architecture == "A":  # [-1, 1] in and out (Tanh), mapped back to [0, 1]
            rebuilt = (self.net(flat * 2 - 1) + 1) / 2
        else:
            rebuilt = self.net(flat)
        diff = (images - rebuilt.view(-1, 1, *self.input_size))[:, 0]
        amap = diff.abs() if self.architecture == "A" else diff.pow(2)
        flat_map = amap.flatten(1)
        score = flat_map.sum(1) if self.image_score == "sum" else flat_map.mean(1) if self.image_score == "mean" else flat_map.amax(1)
        return score, amap


@register_detector
class MLPAutoencoder(TrainedDetector):
    """Fully-connected autoencoder on flattened grayscale images (the seed's MNIST examples A and B)."""

    name = "mlp_ae"
    localizes = True
    reconstructs = True
    score_is_map_max = False
    hyperparameters = {
        "image_size": Size(28, "input size in pixels (H·W input units): one side, or [height, width]"),
        "batch_size": Int(None, "images per batch; null = per architecture: A 16, B 32", low=1, optional=True),
        "architecture": Choice("A", ("A", "B"), "A: Tanh output, Adam; B: deep, ReLU output, SGD"),
        "latent_dim": Int(None, "code size; null = per architecture: A 64, B 16", low=1, optional=True),
        "epochs": Int(None, "training epochs; null = per architecture: A 10, B 15", low=1, optional=True),
        "lr": Float(None, "learning rate; null = per architecture: A 3e-4 (Adam), B 1e-2 (SGD)",
                    low=0.0, low_open=True, optional=True),
        "weight_decay": Float(1e-5, "optimiser weight decay", low=0.0),
        "validation_fraction": Float(0.1, "share of the fit images held out for the validation-loss curve",
                                     low=0.0, high=0.9),
        "restore_best": Bool(False, "keep the best validation epoch instead of the last (the seed: last)"),
        **EARLY_STOPPING,
        "image_score": Choice(None, ("sum", "mean", "max"), "reduction of the map to the image score; "
                              "null = the seed's (A sum, B mean)", optional=True),
    }

    def setting(self, key: str) -> Any:
        """A hyper-parameter, with ``None`` resolved to the architecture's default."""
        value = self.params.get(key)
        return ARCHITECTURES[self.architecture][key] if value is None else value

    @property
    def n_inputs(self) -> int:
        h, w = self.input_size
        return h * w

    # Inputs: grayscale, flattened; A sees [-1, 1] (the reference's Normalize(0.5, 0.5)), B [0, 1] (pixel / 255).
    @property
    def image_channels(self) -> int:
        return 1

    @property
    def network_range(self) -> str:
        return "[-1, 1]" if self.architecture == "A" else "[0, 1]"

    def _to_network(self, images: torch.Tensor) -> torch.Tensor:
        return super()._to_network(images.flatten(1))

    def _from_network(self, values: torch.Tensor) -> torch.Tensor:
        return super()._from_network(values).view(-1, 1, *self.input_size)

    # -- network --------------------------------------------------------------------------------
    def _build_networks(self) -> None:
        self.net_ = build_mlp_autoencoder(self.architecture, self.n_inputs, self.setting("latent_dim")).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"net": self.net_}

    # -- training: MSE ----------------------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr, wd = self.setting("lr"), self.weight_decay
        if self.setting("optimizer") == "adam":
            return {"opt": torch.optim.Adam(self.net_.parameters(), lr=lr, weight_decay=wd)}
        return {"opt": torch.optim.SGD(self.net_.parameters(), lr=lr, weight_decay=wd)}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        loss = F.mse_loss(self.net_(x), x)
        optimizers["opt"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["opt"].step()
        return {"loss": loss.item()}

    def _validation_loss(self, x: torch.Tensor) -> float:
        return F.mse_loss(self.net_(x), x).item() * len(x)

    # -- score ----------------------------------------------------------------------------------
    def _reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.net_(x)

    def inference_module(self) -> MLPAutoencoderGraph:
        """A: |x − x̂| and its sum (the seed's difference image); B: (x − x̂)² and its mean (per-image MSE)."""
        return MLPAutoencoderGraph(self.net_, self.architecture, self.input_size, self.setting("image_score"))
