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
epoch are kept; ``restore_best=True`` keeps those of the epoch with the lowest validation loss instead,
and ``patience`` stops training after that many epochs without improvement (None = never, the seed).
``checkpoint`` = a file saves the training state after every epoch and resumes from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from anomalens.data import iterate_batches, split_records
from anomalens.detector import Detector, register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.training import TrainingSetup, load_module_tensors, module_tensors, train

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


@register_detector
class MLPAutoencoder(Detector):
    """Fully-connected autoencoder on flattened grayscale images (the seed's MNIST examples A and B)."""

    name = "mlp_ae"
    localizes = True
    score_is_map_max = False
    defaults = {
        "image_size": 28,
        "batch_size": None,  # None = per architecture: A 16, B 32
        "architecture": "A",  # "A" (Tanh output, Adam) or "B" (deep, ReLU output, SGD)
        "latent_dim": None,  # None = per architecture: A 64, B 16
        "epochs": None,  # None = per architecture: A 10, B 15
        "lr": None,  # None = per architecture: A 3e-4 (Adam), B 1e-2 (SGD)
        "weight_decay": 1e-5,
        "validation_fraction": 0.1,  # held out for the validation-loss curve
        "restore_best": False,  # keep the best validation epoch instead of the last (the seed: last)
        "patience": None,  # early stopping on the validation loss; None = train all epochs
        "checkpoint": None,  # file to save training state to after each epoch and resume from
        "image_score": None,  # None = the seed's (A "sum", B "mean"), or "sum" | "mean" | "max" of the map
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"mlp_ae: architecture must be 'A' or 'B', got {self.architecture!r}")
        if self.image_score not in (None, "sum", "mean", "max"):
            raise ConfigError(f"mlp_ae: image_score must be 'sum', 'mean' or 'max', got {self.image_score!r}")
        for key in ("latent_dim", "epochs", "batch_size"):
            if int(self.setting(key)) < 1:
                raise ConfigError(f"mlp_ae: {key} must be >= 1, got {self.setting(key)}")

    def setting(self, key: str):
        """A hyper-parameter, with ``None`` resolved to the architecture's default."""
        value = self.params.get(key)
        return ARCHITECTURES[self.architecture][key] if value is None else value

    @property
    def n_inputs(self) -> int:
        h, w = self.input_size
        return h * w

    def _build(self) -> nn.Sequential:
        return build_mlp_autoencoder(self.architecture, self.n_inputs, int(self.setting("latent_dim"))).to(self.device)

    # Inputs: A sees [-1, 1] (the reference's Normalize(0.5, 0.5)), B sees [0, 1] (pixel / 255).
    def _to_net(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1)
        return flat * 2 - 1 if self.architecture == "A" else flat

    def _from_net(self, values: torch.Tensor) -> torch.Tensor:
        return (values + 1) / 2 if self.architecture == "A" else values

    def _load(self, records: Sequence, progress: bool, desc: str) -> torch.Tensor:
        batches = iterate_batches(records, self.image_size, 256, channels=1, desc=desc if progress else None)
        return torch.cat([b["image"] for b in batches])

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, records: Sequence, progress: bool) -> None:
        self.net_ = self._build()
        seed, batch_size = int(self.seed), int(self.setting("batch_size"))
        fit_records, val_records = split_records(records, float(self.validation_fraction), seed, stream=1)
        data = self._to_net(self._load(fit_records, progress, "mlp_ae load"))
        val = self._to_net(self._load(val_records, progress, "mlp_ae load val")) if val_records else None
        lr, wd = float(self.setting("lr")), float(self.weight_decay)
        if self.setting("optimizer") == "adam":
            optimizer = torch.optim.Adam(self.net_.parameters(), lr=lr, weight_decay=wd)
        else:
            optimizer = torch.optim.SGD(self.net_.parameters(), lr=lr, weight_decay=wd)
        mse = nn.MSELoss()
        device = self.device

        def batches(epoch: int):
            order = torch.as_tensor(np.random.default_rng((seed, 0, epoch)).permutation(len(data)))
            for start in range(0, len(order), batch_size):
                yield {"x": data[order[start : start + batch_size]]}

        def step(batch: dict) -> dict[str, float]:
            x = batch["x"].to(device)
            loss = mse(self.net_(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        def validate() -> float:
            total = 0.0
            for start in range(0, len(val), 1024):
                x = val[start : start + 1024].to(device)
                total += mse(self.net_(x), x).item() * len(x)
            return total / len(val)

        setup = TrainingSetup(
            modules={"net": self.net_},
            optimizers={"opt": optimizer},
            step=step,
            batches=batches,
            validate=validate if val is not None else None,
        )
        epochs = int(self.setting("epochs"))
        result = train(setup, epochs, seed, self.patience, self.checkpoint, progress, desc="mlp_ae",
                       restore_best=bool(self.restore_best))
        self.kept_epoch_, self.history_ = result.kept_epoch, result.history

    # -- score ----------------------------------------------------------------------------------
    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] → reconstructions (B, 1, H, W) mapped to the [0, 1] scale."""
        out = self._from_net(self.net_(self._to_net(images.to(self.device))))
        return out.view(images.shape)

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        self.net_.eval()
        scores, maps = [], []
        with torch.inference_mode():
            for batch in iterate_batches(
                records, self.image_size, int(self.setting("batch_size")), channels=1,
                desc="mlp_ae score" if progress else None,
            ):
                x = batch["image"].to(self.device)
                diff = (x - self._reconstruct(x))[:, 0]
                amap = diff.abs() if self.architecture == "A" else diff.pow(2)
                flat = amap.flatten(1)
                score = {"sum": flat.sum, "mean": flat.mean, "max": flat.amax}[self.setting("image_score")](1)
                scores.append(score.cpu())
                maps.append(amap.float().cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def reconstruct(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, reconstructions) as float32 (N, H, W) arrays in [0, 1], for inspection figures."""
        self._check_fitted()
        self.net_.eval()
        inputs, outputs = [], []
        with torch.inference_mode():
            for batch in iterate_batches(records, self.image_size, 256, channels=1, desc="mlp_ae" if progress else None):
                inputs.append(batch["image"][:, 0])
                outputs.append(self._reconstruct(batch["image"])[:, 0].float().cpu())
        return torch.cat(inputs).numpy(), torch.cat(outputs).numpy()

    def preprocessing(self) -> dict:
        info = super().preprocessing()
        info["channels"] = "grayscale (ITU-R 601-2 luma)"
        info["network_input"] = "[-1, 1] (2x - 1)" if self.architecture == "A" else "[0, 1]"
        return info

    # -- persistence ----------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors({"net": self.net_})
        tensors["kept_epoch"] = torch.tensor(self.kept_epoch_)
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net_ = self._build()
        load_module_tensors({"net": self.net_}, tensors, self.device)
        self.kept_epoch_ = int(tensors["kept_epoch"])
