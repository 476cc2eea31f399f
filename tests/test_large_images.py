"""Large frames: the bounded-memory exact decode (same values as before) and the opt-in fast decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import anomalens
from anomalens.data import ImageRecord, io as image_io
from anomalens.data import model_input
from anomalens.data.io import load_image, read_pixels
from anomalens.data.torch_dataset import decode_for_model, decoding_mode, iterate_batches
from anomalens.errors import ConfigError
from anomalens.exported import load_input

SIZE = (48, 64)  # working size (height, width)


def _frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with noise: like a camera frame, so JPEG and box reduction behave as on real ones."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    channels = [128 + 70 * np.sin(5 * x * (c + 1) + 3 * y) + rng.normal(0, 6, (height, width)) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    rgb = _frame(900, 1200)
    paths = {"png": folder / "frame.png", "jpg": folder / "frame.jpg", "grey": folder / "grey.png",
             "rgba": folder / "alpha.png", "deep": folder / "deep.png"}
    Image.fromarray(rgb).save(paths["png"])
    Image.fromarray(rgb).save(paths["jpg"], quality=92)
    Image.fromarray(rgb[..., 1]).save(paths["grey"])
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(paths["rgba"])
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(paths["deep"])
    return paths


def _whole_frame_reference(path, channels: int, size=SIZE) -> torch.Tensor:
    """The old path: the whole float (C, H, W) frame, one interpolate over all channels."""
    chw = torch.from_numpy(load_image(path, channels)).permute(2, 0, 1).contiguous()
    out = F.interpolate(chw[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


@pytest.mark.parametrize("kind", ["png", "jpg", "grey", "rgba", "deep"])
@pytest.mark.parametrize("channels", [1, 3])
def test_exact_decode_equals_the_whole_frame_path(frames, kind, channels):
    image, _, original = decode_for_model(frames[kind], SIZE, channels, decode="exact")
    assert original == (900, 1200)
    assert torch.equal(image, _whole_frame_reference(frames[kind], channels))


def test_pixels_copied_in_strips_equal_pillows(frames, monkeypatch):
    monkeypatch.setattr(image_io, "_STRIP_BYTES", 7 * 1200 * 4 + 5)  # 7 rows a strip, the last one short
    for kind in ("png", "grey"):
        with Image.open(frames[kind]) as img:
            expected = np.asarray(img)
        got = read_pixels(frames[kind])
        assert got.dtype == np.uint8 and np.array_equal(got, expected)


def test_channel_planes_in_strips_equal_load_image(frames, monkeypatch):
    monkeypatch.setattr(model_input, "_STRIP_PIXELS", 3 * 1200 * 3 + 1)  # a few rows a strip
    for kind, channels in (("png", 1), ("deep", 3), ("rgba", 1)):
        assert torch.equal(decode_for_model(frames[kind], SIZE, channels)[0], _whole_frame_reference(frames[kind], channels))


def test_same_size_decode_is_not_aliased_to_a_reused_buffer(frames):
    image = decode_for_model(frames["png"], (900, 1200), 3)[0]
    expected = torch.from_numpy(load_image(frames["png"], 3)).permute(2, 0, 1)
    assert torch.equal(image, expected)


@pytest.mark.parametrize("kind, shrunk", [("jpg", (113, 150)), ("png", (100, 134)), ("deep", (100, 134))])
def test_fast_decode_shrinks_but_never_below_twice_the_working_size(frames, kind, shrunk):
    pixels = read_pixels(frames[kind], fast_for=SIZE)
    assert pixels.shape[:2] == shrunk
    assert pixels.shape[0] >= 2 * SIZE[0] and pixels.shape[1] >= 2 * SIZE[1]
    image, picture, original = decode_for_model(frames[kind], SIZE, 3, display=True, decode="fast")
    assert original == (900, 1200)  # the file's own size (masks and heatmaps are checked against it)
    assert picture is None  # not the file's resolution: the heatmap writer reads the file itself
    exact = decode_for_model(frames[kind], SIZE, 3, decode="exact")[0]
    difference = float((image - exact).abs().max())
    assert 0 < difference < 0.03


def test_fast_decode_leaves_small_images_and_arrays_exact(frames):
    near = (500, 700)  # 900x1200 is less than twice that: nothing to gain
    assert torch.equal(decode_for_model(frames["jpg"], near, 3, decode="fast")[0],
                       decode_for_model(frames["jpg"], near, 3, decode="exact")[0])
    array = _frame(300, 400)
    assert torch.equal(decode_for_model(array, SIZE, 3, decode="fast")[0], decode_for_model(array, SIZE, 3)[0])


def test_decoding_mode_reaches_datasets_and_the_export_loader_decodes_the_same_pixels(frames):
    records = [ImageRecord(source=frames["jpg"], label=0, name="a"), ImageRecord(source=frames["png"], label=0, name="b")]
    with decoding_mode("fast"):
        fast = next(iterate_batches(records, SIZE, 2, num_workers=0))["image"]
    exact = next(iterate_batches(records, SIZE, 2, num_workers=0))["image"]
    assert torch.equal(fast[0], decode_for_model(frames["jpg"], SIZE, 3, decode="fast")[0])
    assert not torch.equal(fast, exact)
    # The torch-free loader of exports: same shrunk decode, its own numpy resize (equal to ~1e-6).
    numpy_fast = load_input(frames["jpg"], SIZE, 3, decode="fast")
    assert np.abs(numpy_fast - fast[0].numpy()).max() < 1e-5


def test_bad_decode_value_is_one_clear_line(frames):
    with pytest.raises(ConfigError, match=r"^padim: parameter decode must be one of 'exact', 'fast', got 'quick'$"):
        anomalens.create_detector("padim", decode="quick")
    with pytest.raises(ConfigError, match=r"^decode must be one of exact, fast, got 'quick'$"):
        decode_for_model(frames["png"], SIZE, 3, decode="quick")


def test_fast_decode_is_recorded_in_the_run_and_used_after_reload(frames, tmp_path, monkeypatch):
    from tests.conftest import TINY_PARAMS

    monkeypatch.setenv("ANOMALENS_WORKERS", "0")
    frame = _frame(900, 1200, seed=1)
    train = []
    for i in range(6):
        path = tmp_path / f"train_{i}.jpg"
        Image.fromarray(np.roll(frame, 37 * i, axis=1)).save(path, quality=92)
        train.append(ImageRecord(source=path, label=0, name=path.name))
    params = {**TINY_PARAMS["padim"], "threshold_folds": 1, "holdout_fraction": 0.34}
    fitted = anomalens.create_detector("padim", decode="fast", **params).fit(train, progress=False)
    fitted.save(tmp_path / "run")
    loaded = anomalens.load_detector(tmp_path / "run")
    assert loaded.params["decode"] == "fast" and loaded.preprocessing()["decode"] == "fast"

    asked: list = []
    real = model_input.read_pixels

    def spying(source, fast_for=None):
        asked.append(fast_for)
        return real(source, fast_for=fast_for)

    monkeypatch.setattr(model_input, "read_pixels", spying)
    scores, _ = loaded.score([frames["jpg"]], progress=False)
    assert asked == [tuple(loaded.input_size)]
    assert np.allclose(scores, fitted.score([frames["jpg"]], progress=False)[0])

    from anomalens.serve.inference import ServedModel

    with pytest.raises(ConfigError, match=r"fitted with decode=fast, which the service cannot reproduce"):
        ServedModel(loaded, tmp_path / "run")
