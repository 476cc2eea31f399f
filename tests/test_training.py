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
