"""Image/mask I/O: every Pillow mode, arrays, listing and the one-line DataError contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.data import image_size, list_images, load_image, load_mask
from anomalens.errors import DataError

H, W = 4, 6


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert str(path) in msg
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------ modes


def test_mode_1(tmp_path: Path) -> None:
    img = Image.new("1", (W, H), 0)
    img.putpixel((2, 1), 1)
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert out[1, 2].tolist() == [1.0, 1.0, 1.0]
    assert out.sum() == 3.0


def test_mode_l(tmp_path: Path) -> None:
    out = load_image(_save(Image.new("L", (W, H), 128), tmp_path / "a.png"))
    assert out.shape == (H, W, 3)
    np.testing.assert_allclose(out, 128 / 255, rtol=1e-6)
    assert load_image(tmp_path / "a.png", channels=1).shape == (H, W, 1)


def test_mode_la_alpha_composited_on_black(tmp_path: Path) -> None:
    out = load_image(_save(Image.new("LA", (W, H), (200, 128)), tmp_path / "a.png"))
    np.testing.assert_allclose(out, (200 / 255) * (128 / 255), rtol=1e-5)


def test_mode_p_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (W, H), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = _save(img, tmp_path / "a.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    out = load_image(path)
    assert out[0, 0].tolist() == [0.0, 1.0, 0.0]  # opaque green
    assert out[1, 1].tolist() == [0.0, 0.0, 0.0]  # transparent red -> black, not red


def test_mode_p_opaque(tmp_path: Path) -> None:
    img = Image.new("P", (W, H), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out[0, 0].tolist() == [0.0, 0.0, 1.0]


def test_mode_rgb_and_luminance(tmp_path: Path) -> None:
    out = load_image(_save(Image.new("RGB", (W, H), (255, 0, 51)), tmp_path / "a.png"))
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    grey = load_image(tmp_path / "a.png", channels=1)
    assert grey.shape == (H, W, 1)
    np.testing.assert_allclose(grey[0, 0, 0], 0.299 + 0.114 * 0.2, atol=1e-5)


def test_mode_rgba(tmp_path: Path) -> None:
    img = Image.new("RGBA", (W, H), (255, 255, 0, 255))
    img.putpixel((0, 0), (255, 255, 255, 0))
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.shape == (H, W, 3)
    assert out[1, 1].tolist() == [1.0, 1.0, 0.0]
    assert out[0, 0].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_scaled_by_type_max(tmp_path: Path, suffix: str) -> None:
    arr = np.full((H, W), 1000, dtype=np.uint16)
    arr[0, 0] = 2000  # the image max must NOT become 1.0
    path = _save(Image.fromarray(arr), tmp_path / f"a{suffix}")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, channels=1)
    assert out.shape == (H, W, 1)
    np.testing.assert_allclose(out[1, 1, 0], 1000 / 65535, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], 2000 / 65535, rtol=1e-6)


def test_16_bit_big_endian_tiff(tmp_path: Path) -> None:
    arr = np.full((H, W), 30000, dtype=">u2")
    img = Image.frombytes("I;16B", (W, H), arr.tobytes())
    path = _save(img, tmp_path / "a.tif")
    np.testing.assert_allclose(load_image(path), 30000 / 65535, rtol=1e-6)


def test_mode_i_32bit_out_of_16bit_range_rejected(tmp_path: Path) -> None:
    img = Image.fromarray(np.full((H, W), 100000, dtype=np.int32))
    assert img.mode == "I"
    path = _save(img, tmp_path / "a.tif")
    with pytest.raises(DataError, match="outside 0..65535") as excinfo:
        load_image(path)
    _one_line_error(excinfo, path)


def test_mode_cmyk(tmp_path: Path) -> None:
    img = Image.new("CMYK", (W, H), (0, 0, 0, 0))
    img.putpixel((0, 0), (0, 255, 255, 0))
    out = load_image(_save(img, tmp_path / "a.tif"))
    assert out.shape == (H, W, 3)
    assert out[1, 1].tolist() == [1.0, 1.0, 1.0]
    assert out[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_mode_f(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.full((H, W), 0.25, dtype=np.float32)), tmp_path / "a.tif")
    np.testing.assert_allclose(load_image(path), 0.25)
    bad = _save(Image.fromarray(np.full((H, W), 3.0, dtype=np.float32)), tmp_path / "b.tif")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_image(bad)


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    for suffix in (".jpg", ".bmp", ".webp"):
        out = load_image(_save(Image.new("RGB", (W, H), (10, 200, 30)), tmp_path / f"a{suffix}"))
        assert out.shape == (H, W, 3)
        np.testing.assert_allclose(out[0, 0], np.array([10, 200, 30]) / 255, atol=0.03)


# ---------------------------------------------------------------------------------- arrays


def test_arrays() -> None:
    np.testing.assert_allclose(load_image(np.full((H, W), 51, np.uint8)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(load_image(np.full((H, W, 3), 65535, np.uint16)), 1.0)
    np.testing.assert_allclose(load_image(np.full((H, W, 1), 0.5, np.float64), channels=1), 0.5)
    assert load_image(np.ones((H, W), bool)).shape == (H, W, 3)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255
    out = load_image(rgba)
    assert out[0, 0].tolist() == [1.0, 0.0, 0.0] and out[1, 1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((H, W), np.int64),
        np.full((H, W), 2.0),
        np.full((H, W), np.nan),
        np.zeros((H, W, 5), np.uint8),
        np.zeros(5, np.uint8),
    ],
)
def test_bad_arrays(arr: np.ndarray) -> None:
    with pytest.raises(DataError, match="in-memory array"):
        load_image(arr)


def test_bad_channels() -> None:
    with pytest.raises(DataError):
        load_image(np.zeros((H, W), np.uint8), channels=2)


# ---------------------------------------------------------------------------------- errors


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "cut.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read image") as excinfo:
        load_image(path)
    _one_line_error(excinfo, path)
    # The header is intact, so a header-only size check still works.
    assert image_size(path) == (64, 64)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    for fn in (load_image, load_mask, image_size):
        with pytest.raises(DataError, match="cannot read") as excinfo:
            fn(path)
        _one_line_error(excinfo, path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as excinfo:
        load_image(tmp_path / "nope.png")
    _one_line_error(excinfo, tmp_path / "nope.png")
    with pytest.raises(DataError, match="folder"):
        load_image(tmp_path)


# ----------------------------------------------------------------------------------- masks


def test_masks(tmp_path: Path) -> None:
    arr = np.zeros((H, W), np.uint8)
    arr[1, 2] = 255
    arr[2, 3] = 1  # any value > 0 counts
    m = load_mask(_save(Image.fromarray(arr), tmp_path / "l.png"))
    assert m.dtype == np.bool_ and m.shape == (H, W)
    assert m.sum() == 2 and m[1, 2] and m[2, 3]

    one = Image.new("1", (W, H), 0)
    one.putpixel((0, 0), 1)
    assert load_mask(_save(one, tmp_path / "1.png")).sum() == 1

    rgb = Image.new("RGB", (W, H), (0, 0, 0))
    rgb.putpixel((5, 3), (255, 0, 0))
    m = load_mask(_save(rgb, tmp_path / "rgb.png"))
    assert m.sum() == 1 and m[3, 5]

    pal = Image.new("P", (W, H), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    m = load_mask(_save(pal, tmp_path / "p.png"))
    assert m.sum() == 1 and m[1, 1]

    np.testing.assert_array_equal(load_mask(arr), arr > 0)
    with pytest.raises(DataError):
        load_mask(np.zeros((H, W, 3), np.uint8))


def test_image_size_reads_header(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (W, H)), tmp_path / "a.png")
    assert image_size(path) == (H, W)
    assert image_size(np.zeros((H, W, 3))) == (H, W)


# --------------------------------------------------------------------------------- listing


def test_list_images(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "c.tiff", ".hidden.png", "._a.png", "notes.txt", "x.png.bak"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tiff"]
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(DataError, match="found a file"):
        list_images(tmp_path / "b.png")


# --------------------------------------------------------------------------------- formats and large frames
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture
def no_other_decoder(monkeypatch):
    """Every Pillow opener outside SUPPORTED_FORMATS replaced by one that fails the test if it is reached."""
    from anomalens.data.io import SUPPORTED_FORMATS

    Image.init()

    def reached(*args, **kwargs):
        raise AssertionError("a decoder outside SUPPORTED_FORMATS was used")

    for name, (factory, accept) in list(Image.OPEN.items()):
        if name not in SUPPORTED_FORMATS:
            monkeypatch.setitem(Image.OPEN, name, (reached, lambda prefix: True))


@pytest.mark.parametrize("content", [
    EPS,
    b"GIF89a",  # replaced below by a real GIF
    b"P6\n8 8\n255\n" + bytes(8 * 8 * 3),  # PPM
])
def test_a_file_of_another_format_is_never_handed_to_its_decoder(tmp_path: Path, content: bytes, no_other_decoder) -> None:
    path = tmp_path / "looks.png"
    if content == b"GIF89a":
        buffer = tmp_path / "real.gif"
        Image.new("L", (8, 8)).save(buffer, format="GIF")
        content = buffer.read_bytes()
    path.write_bytes(content)
    for read in (load_image, load_mask, image_size):
        with pytest.raises(DataError) as excinfo:
            read(path)
        assert _one_line_error(excinfo, path).endswith("not a recognised image format")


def test_every_supported_format_opens_under_the_allow_list(tmp_path: Path, no_other_decoder) -> None:
    from anomalens.data.io import SUPPORTED_FORMATS, supported_formats

    assert set(supported_formats()) <= set(SUPPORTED_FORMATS) and "PNG" in supported_formats()
    for suffix in (".png", ".jpg", ".bmp", ".tif", ".webp"):
        path = _save(Image.new("RGB", (W, H), (10, 200, 30)), tmp_path / f"a{suffix}")
        assert load_image(path).shape == (H, W, 3) and image_size(path) == (H, W)
    # A PNG named .jpg is read by content, as before.
    misnamed = tmp_path / "png.jpg"
    misnamed.write_bytes((tmp_path / "a.png").read_bytes())
    assert load_image(misnamed).shape == (H, W, 3)


def test_the_service_accepts_the_same_formats() -> None:
    from anomalens.data.io import SUPPORTED_FORMATS
    from anomalens.serve import uploads

    assert tuple(getattr(uploads, "ACCEPTED_FORMATS", SUPPORTED_FORMATS)) == SUPPORTED_FORMATS


@pytest.fixture
def small_pillow_limit(monkeypatch):
    """Pillow's limit at 1000 pixels: it warns above, refuses above 2000 (as at 89 / 179 megapixels)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def test_a_large_frame_below_pillows_refusal_is_read_without_a_warning(tmp_path: Path, small_pillow_limit) -> None:
    import warnings

    from anomalens.data.io import read_pixels

    path = _save(Image.new("RGB", (40, 40), (1, 2, 3)), tmp_path / "big.png")  # 1600 pixels: Pillow would warn
    tif = _save(Image.new("L", (40, 40), 7), tmp_path / "big.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(path).shape == (40, 40, 3) and read_pixels(tif).shape == (40, 40)
        assert image_size(path) == (40, 40) and load_mask(tif).shape == (40, 40)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # Outside anomalens' reads, Pillow's warning is the user's again.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(path).close()
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_frame_beyond_pillows_refusal_is_one_line(tmp_path: Path, small_pillow_limit) -> None:
    path = _save(Image.new("RGB", (50, 50)), tmp_path / "huge.png")  # 2500 pixels
    for read in (load_image, image_size):
        with pytest.raises(DataError) as excinfo:
            read(path)
        assert "image too large" in _one_line_error(excinfo, path)


def test_quiet_large_frames_is_thread_safe_and_leaves_the_filters_as_they_were() -> None:
    import threading
    import warnings

    from anomalens.data.io import quiet_large_frames

    before = list(warnings.filters)
    on: list[bool] = []

    def work() -> None:
        for _ in range(200):
            with quiet_large_frames(), quiet_large_frames():  # nested, as open + decode are
                on.append(warnings.filters[0][:3] == ("ignore", None, Image.DecompressionBombWarning))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(on) == 1600 and all(on)
    assert warnings.filters == before
