"""The shared training loop: learns, keeps the best validation epoch, stops early, resumes exactly."""

from __future__ import annotations

import torch
from torch import nn

from anomalens.models.components.training import TrainingSetup, train


def _setup(seed: int = 0, val_noise: bool = False) -> tuple[TrainingSetup, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    calls = {"n": 0}

    def step(batch):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def batches(epoch):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, 64, 16):
            idx = order[i : i + 16]
            yield {"x": x[idx], "y": y[idx]}

    def validate():
        calls["n"] += 1
        # After epoch 3 the "validation loss" gets worse on purpose, to test best-epoch selection.
        base = nn.functional.mse_loss(model(x), y).item()
        return base + (10.0 * calls["n"] if val_noise and calls["n"] > 3 else 0.0)

    return TrainingSetup({"model": model}, {"opt": opt}, step, batches, validate), model


def test_loss_decreases():
    setup, _ = _setup()
    history = train(setup, epochs=8, seed=0, progress=False).history
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert len(history["val_loss"]) == 8


def test_best_epoch_is_restored_and_patience_stops():
    setup, model = _setup(val_noise=True)
    result = train(setup, epochs=20, seed=0, patience=2, progress=False)
    assert result.best_epoch == result.kept_epoch == 2
    assert set(result.history) == {"loss", "val_loss"}  # curves only
    assert len(result.history["val_loss"]) == 5  # epochs 4 and 5 did not improve → stop
    setup_ref, model_ref = _setup(val_noise=False)
    train(setup_ref, epochs=3, seed=0, progress=False)
    assert torch.allclose(model.weight, model_ref.weight)


def test_resume_from_checkpoint_gives_the_same_model(tmp_path):
    setup, straight = _setup()
    train(setup, epochs=6, seed=0, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    first, _ = _setup()
    train(first, epochs=3, seed=0, checkpoint=ckpt, progress=False)  # "interrupted" after 3 epochs
    resumed_setup, resumed = _setup(seed=123)  # different init: everything must come from the file
    history = train(resumed_setup, epochs=6, seed=0, checkpoint=ckpt, progress=False).history
    assert len(history["loss"]) == 6
    assert torch.allclose(resumed.weight, straight.weight, atol=1e-6)


def test_record_splits_are_seeded_disjoint_and_independent_per_stream():
    from anomalens.data import split_records
    from tests.conftest import make_records

    records = make_records(20, 0, seed=4, size=16)
    kept, held = split_records(records, 0.1, seed=1, stream=1)
    names = [r.name for r in held]
    assert len(held) == 2 and len(kept) == 18 and not set(names) & {r.name for r in kept}
    assert names == [r.name for r in split_records(records, 0.1, seed=1, stream=1)[1]]
    assert names != [r.name for r in split_records(records, 0.1, seed=2, stream=1)[1]]
    # The threshold hold-out (stream 0) and a validation split (stream 1) are different draws.
    assert names != [r.name for r in split_records(records, 0.1, seed=1, stream=0)[1]]
    assert split_records(records[:1], 0.5, seed=0) == (records[:1], [])


# -- the trained-detector base (components/trained.py) ---------------------------------------------
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from anomalens.models.components import trained  # noqa: E402
from anomalens.models.components.trained import TrainedDetector, TrainingImages, batch_slices, epoch_order  # noqa: E402
from anomalens.params import Float, Int, Size  # noqa: E402


@pytest.mark.parametrize(
    "n,batch_size,expected",
    [
        (16, 8, [(0, 8), (8, 16)]),
        (17, 8, [(0, 8), (8, 17)]),  # a trailing batch of one joins the previous one
        (18, 8, [(0, 8), (8, 16), (16, 18)]),  # two is a batch of its own
        (9, 8, [(0, 9)]),
        (1, 8, [(0, 1)]),  # a single image cannot join anything
        (5, 1, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
        (0, 4, []),
    ],
)
def test_trailing_batch_of_one_joins_the_previous_batch(n, batch_size, expected):
    slices = batch_slices(n, batch_size)
    assert slices == expected
    assert [i for start, stop in slices for i in range(start, stop)] == list(range(n))  # every image, once


def test_epoch_order_depends_on_seed_and_epoch_alone():
    np.testing.assert_array_equal(epoch_order(10, 3, 2), epoch_order(10, 3, 2))
    assert sorted(epoch_order(10, 3, 2)) == list(range(10))
    assert list(epoch_order(10, 3, 2)) != list(epoch_order(10, 3, 1))
    assert list(epoch_order(10, 3, 2)) != list(epoch_order(10, 4, 2))


def test_streamed_images_equal_preloaded(monkeypatch):
    from tests.conftest import make_records

    records = make_records(5, 0, seed=5, size=24)
    preloaded = TrainingImages(records, 16, 3)
    monkeypatch.setattr(trained, "PRELOAD_BYTES", 0)
    streamed = TrainingImages(records, 16, 3)
    assert preloaded.tensor is not None and streamed.tensor is None
    index = np.array([3, 0, 4])
    torch.testing.assert_close(streamed.take(index), preloaded.take(index))
    assert TrainingImages(records, 16, 1).take(index).shape == (3, 1, 16, 16)


class _ToyAutoencoder(TrainedDetector):
    """A 1×1-conv 'autoencoder' (not registered) that records what the base hands it."""

    name = "toy_trained"
    reconstructs = True
    network_range = "[-1, 1]"
    hyperparameters = {
        "image_size": Size(8, "side"),
        "batch_size": Int(4, "batch", low=1),
        "epochs": Int(3, "epochs", low=1),
        "validation_fraction": Float(0.2, "validation share", low=0.0, high=0.9),
    }

    def _build_networks(self) -> None:
        self.net_ = nn.Conv2d(3, 3, 1)
        self.seen_: list[tuple[int, float, float]] = []

    def _networks(self) -> dict[str, nn.Module]:
        return {"net": self.net_}

    def _optimizers(self) -> dict:
        return {"sgd": torch.optim.SGD(self.net_.parameters(), lr=0.1)}

    def _train_step(self, x, optimizers) -> dict[str, float]:
        self.seen_.append((len(x), x.min().item(), x.max().item()))
        loss = (self.net_(x) - x).pow(2).mean()
        optimizers["sgd"].zero_grad()
        loss.backward()
        optimizers["sgd"].step()
        return {"loss": loss.item()}

    def _validation_loss(self, x) -> float:
        return (self.net_(x) - x).pow(2).flatten(1).mean(1).sum().item()

    def _reconstruct_batch(self, x):
        return self.net_(x)

    def _score_batch(self, images):
        amap = (images - self._rebuild(images)).abs().mean(1)
        return amap.flatten(1).amax(1), amap


def test_trained_base_bookkeeping_and_saved_tensors():
    from tests.conftest import make_records

    records = make_records(12, 0, seed=6, size=8)
    det = _ToyAutoencoder(device="cpu").fit(records, progress=False)
    # 12 images: 1 held out for the threshold, 2 of the other 11 for validation, 9 trained on.
    # Batches of 4: 4 and 5 (the trailing one joins), every epoch; the networks see [-1, 1].
    assert [n for n, _, _ in det.seen_] == [4, 5] * 3
    assert all(-1 <= low and high <= 1 for _, low, high in det.seen_) and min(low for _, low, _ in det.seen_) < 0
    assert set(det.history_) == {"loss", "val_loss"} and len(det.history_["val_loss"]) == 3
    assert det.kept_epoch_ == int(np.argmin(det.history_["val_loss"]))
    inputs, outputs = det.reconstruct(records[:2])
    assert inputs.shape == outputs.shape == (2, 3, 8, 8) and 0 <= outputs.min() and outputs.max() <= 1
    tensors = det._state_tensors()
    assert set(tensors) == {"net.weight", "net.bias", "kept_epoch"}
    # A run saved before the base called the kept epoch "best_epoch": it still loads.
    legacy = {("best_epoch" if k == "kept_epoch" else k): v for k, v in tensors.items()}
    for saved in (tensors, legacy):
        loaded = _ToyAutoencoder(device="cpu")
        loaded._load_state_tensors(saved)
        assert loaded.kept_epoch_ == det.kept_epoch_
        torch.testing.assert_close(loaded.net_.weight, det.net_.weight)
    # No validation share: nothing held out for it, the last epoch is kept.
    det = _ToyAutoencoder(device="cpu", validation_fraction=0.0).fit(records, progress=False)
    assert set(det.history_) == {"loss"} and det.kept_epoch_ == 2
    assert [n for n, _, _ in det.seen_] == [4, 4, 3] * 3  # 11 images
