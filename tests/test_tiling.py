"""Tiling (tile_size / tile_overlap) and the aspect-preserving resize (resize=keep_aspect)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from anomalens.catalog import create_detector, load_detector
from anomalens.cli import main
from anomalens.data import ImageRecord, iterate_batches
from anomalens.errors import ConfigError
from anomalens.report import to_original_size
from anomalens.tiling import TiledInference, TileLayout, is_tile_records
from tests.conftest import FIT, make_records

TINY = {"batch_size": 16, "device": "cpu"}


# -- geometry and blending -------------------------------------------------------------------------------
@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 0.25), (130, 32, 0.5), (64, 64, 0.25), (97, 40, 0.0)])
def test_tiles_cover_the_axis_evenly_with_at_least_the_asked_overlap(length, tile, overlap):
    starts = TileLayout.plan((length, length), (tile, tile), overlap).rows
    assert starts[0] == 0 and starts[-1] == length - tile
    gaps = np.diff(starts)
    assert (tile - gaps >= round(overlap * tile)).all()  # neighbours overlap at least that much
    assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # spread evenly
    if len(starts) > 2:  # the fewest tiles: one fewer, spread evenly, would overlap less than asked
        assert tile - (length - tile) / (len(starts) - 2) < round(overlap * tile)


def _placed_weights(layout: TileLayout) -> np.ndarray:
    """(T, H, W): every tile's blending weights placed at its position in the working image."""
    rows, cols = layout.axis_weights()
    out = np.zeros((len(layout), *layout.image_size))
    (th, tw), n_cols = layout.tile_size, len(layout.cols)
    for k, (top, left) in enumerate(layout.boxes):
        out[k, top : top + th, left : left + tw] = np.outer(rows[k // n_cols], cols[k % n_cols])
    return out


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_blending_weights_are_positive_and_sum_to_one_everywhere(overlap):
    layout = TileLayout.plan((90, 130), (32, 48), overlap)
    placed = _placed_weights(layout)
    np.testing.assert_allclose(placed.sum(0), 1.0, rtol=1e-6)
    covered = np.zeros(layout.image_size, bool)
    for k, (top, left) in enumerate(layout.boxes):
        assert (placed[k, top : top + 32, left : left + 48] > 0).all()
        covered[top : top + 32, left : left + 48] = True
    assert covered.all()


class _MeanMap(torch.nn.Module):
    """A tile-level module: map = channel mean, score = map maximum; counts the tiles of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(int(images.shape[0]))
        maps = images.mean(1)
        return maps.flatten(1).amax(1), maps


def test_a_map_cut_into_tiles_stitches_back_exactly():
    layout = TileLayout.plan((70, 110), (32, 32), 0.3)
    module = TiledInference(_MeanMap(), layout, tile_batch=4, score_from_map=True)
    full = torch.rand(2, 70, 110)
    tiles = torch.stack([full[:, t : t + 32, l : l + 32] for t, l in layout.boxes])  # (T, N, h, w)
    blended = module.add_tiles(None, tiles, range(len(layout)))
    torch.testing.assert_close(blended, full, rtol=1e-6, atol=1e-6)


def test_tiles_of_constant_maps_keep_their_value_where_alone_and_blend_in_between():
    layout = TileLayout.plan((64, 96), (32, 32), 0.25)
    module = TiledInference(_MeanMap(), layout, tile_batch=4, score_from_map=True)
    values = torch.arange(1.0, len(layout) + 1)
    tiles = values.view(-1, 1, 1, 1).expand(-1, 1, 32, 32)
    blended = module.add_tiles(None, tiles, range(len(layout)))[0]
    assert blended[0, 0] == values[0] and blended[-1, -1] == values[-1]  # corners: one tile each
    assert values.min() <= blended.min() and blended.max() <= values.max()
    # Along a row the blend goes smoothly from one tile's value to the next: no jump between pixels.
    assert blended[2].diff().abs().max() <= (values[1] - values[0]) / 4


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")  # tracing is the point
def test_eager_chunks_and_the_traced_graph_give_the_same_numbers_for_any_batch():
    layout = TileLayout.plan((80, 96), (32, 32), 0.25)
    tile_module = _MeanMap()
    module = TiledInference(tile_module, layout, tile_batch=5, score_from_map=True).eval()
    images = torch.rand(3, 3, 80, 96)
    with torch.inference_mode():
        scores, maps = module(images)
    assert max(tile_module.calls) <= 5  # never more than tile_batch tiles at once
    np.testing.assert_allclose(maps.numpy(), images.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.numpy(), maps.flatten(1).amax(1).numpy())
    traced = torch.jit.trace(module, torch.rand(2, 3, 80, 96), check_trace=False)  # the export path
    with torch.no_grad():
        traced_scores, traced_maps = traced(images)  # another batch size than traced with
    torch.testing.assert_close(traced_maps, maps)
    torch.testing.assert_close(traced_scores, scores)


# -- detectors --------------------------------------------------------------------------------------------
SIDE = 192


def _images(n: int, seed: int, defect: bool = False) -> list[ImageRecord]:
    """Stripe textures of SIDE px; with ``defect`` a dark 5 × 5 spot (0.07 % of the image) at (130, 80)."""
    records = []
    for i, normal in enumerate(make_records(n, 0, seed=seed, size=SIDE)):
        image, mask = normal.source.copy(), np.zeros((SIDE, SIDE), bool)
        if defect:
            mask[130:135, 80:85] = True
            image[mask] = [20, 160, 30]
        records.append(ImageRecord(image, int(defect), mask, f"{'defect' if defect else 'normal'}/{i}"))
    return records


@pytest.fixture(scope="module")
def highres():
    return {"train": _images(6, seed=1), "normal": _images(3, seed=2), "defect": _images(3, seed=3, defect=True)}


@pytest.fixture(scope="module")
def tiled_padim(highres):
    detector = create_detector("padim", image_size=SIDE, tile_size=64, threshold_folds=3, **TINY)
    return detector.fit(highres["train"], progress=False)


def test_tiled_padim_finds_a_small_defect_that_the_squashed_model_misses(tiled_padim, highres):
    test = highres["normal"] + highres["defect"]
    result = tiled_padim.predict(test, progress=False)
    assert result.maps.shape == (6, SIDE, SIDE)  # maps at image_size, not at the tile size
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for amap in result.maps[3:]:
        y, x = np.unravel_index(np.argmax(amap), amap.shape)
        assert 124 <= y <= 141 and 74 <= x <= 91  # the peak is on the 5 × 5 spot
    squashed = create_detector("padim", image_size=64, threshold_folds=3, **TINY).fit(highres["train"], progress=False)
    assert squashed.predict(test, progress=False).labels[3:].sum() < result.labels[3:].sum()


def test_fit_blends_the_tiles_as_the_tiled_module_does(tiled_padim, highres):
    """The threshold's out-of-fold maps come from tile records blended in fit; predict blends the tiled
    module's own crops: the same tiles, the same blend."""
    module = tiled_padim.inference_module()
    assert isinstance(module, TiledInference) and len(module.layout) == 16
    images = highres["defect"][:2]
    tiles = module.layout.tile_records(images)
    assert is_tile_records(tiles) and not is_tile_records(images) and len(tiles) == 32
    tile_scores, tile_maps = [], []
    with torch.inference_mode():
        for batch in iterate_batches(tiles, tiled_padim.model_input_size, 8):
            scores, maps = module.tile_module(batch["image"])
            tile_scores.append(scores.numpy())
            tile_maps.append(maps.numpy())
    scores, maps = module.blend_outputs(np.concatenate(tile_scores), np.concatenate(tile_maps))
    expected_scores, expected_maps = tiled_padim.score(images, progress=False)
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-4 * float(expected_maps.max()))
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)


def test_threshold_folds_are_whole_images(tiled_padim):
    rule = tiled_padim.decision_
    assert rule.evidence["n_normal"] == 6 and rule.evidence["folds"] == 3  # image scores, image folds
    layout = tiled_padim.sizing.tile_layout()
    assert layout.tile_indices([0, 2]).tolist() == [*range(0, 16), *range(32, 48)]


def test_a_tiled_run_saves_and_loads(tiled_padim, highres, tmp_path):
    tiled_padim.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.params["tile_size"] == 64 and loaded.sizing.tiling
    config = json.loads((tmp_path / "run" / "detector.json").read_text())
    tiles = config["preprocessing"]["tiles"]
    assert tiles["size"] == [64, 64] and tiles["rows"] == [0, 43, 85, 128] and tiles["image_score"] == "max of the blended map"
    before = tiled_padim.score(highres["defect"], progress=False)
    after = loaded.score(highres["defect"], progress=False)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5)
    np.testing.assert_allclose(after[1], before[1], rtol=1e-5, atol=1e-5)


def test_without_map_max_the_image_score_is_the_largest_tile_score(highres):
    detector = create_detector("patchcore", image_size=128, tile_size=64, tile_overlap=0.0, threshold_folds=2, **TINY)
    detector.fit(highres["train"][:3], progress=False)
    images = torch.from_numpy(np.stack([r.source for r in highres["defect"][:2]])).permute(0, 3, 1, 2).float() / 255
    images = torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear", antialias=True).clamp(0, 1)
    module = detector.inference_module().eval()
    with torch.inference_mode():
        scores, maps = module(images)
        tile_scores = torch.stack([module.tile_module(images[:, :, t : t + 64, l : l + 64])[0] for t, l in module.layout.boxes])
    torch.testing.assert_close(scores, tile_scores.amax(0))
    assert maps.shape == (2, 128, 128)


def test_stpm_trains_and_scores_on_tiles(highres):
    detector = create_detector("stpm", image_size=128, tile_size=64, epochs=1, batch_size=8, device="cpu")
    detector.fit(highres["train"][:4], progress=False)
    scores, maps = detector.score(highres["defect"][:1], progress=False)
    assert maps.shape == (1, 128, 128) and np.isclose(scores[0], maps[0].max())


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, words", [
    ({"image_size": 64, "tile_size": 128}, ["tile_size 128x128", "working image 64x64"]),
    ({"image_size": [64, 96], "tile_size": [80, 32]}, ["tile_size 80x32", "working image 64x96"]),
    ({"tile_size": [0, 32]}, ["tile_size must be 0 or null"]),
    ({"tile_overlap": 1.0}, ["tile_overlap must be a number in [0, 0.9]"]),
    ({"tile_size": -1}, ["tile_size must be"]),
])
def test_bad_tiling_parameters_are_one_clear_line(params, words):
    with pytest.raises(ConfigError) as info:
        create_detector("padim", **params)
    message = str(info.value)
    assert "\n" not in message and message.startswith("padim: ")
    for word in words:
        assert word in message


def test_tile_size_on_a_detector_that_does_not_tile_is_refused():
    with pytest.raises(ConfigError, match="mahalanobis: does not tile"):
        create_detector("mahalanobis", tile_size=32)
    assert "tile_size" not in create_detector("mahalanobis").params
    assert "tile_size" in create_detector("patchcore").params and create_detector("padim").sizing.tile_shape is None
    assert create_detector("padim", tile_size=0).sizing.tile_shape is None  # 0 = off, as null
    assert create_detector("padim", image_size=[64, 256], tile_size=[32, 128]).sizing.tile_shape == (32, 128)


def test_cli_refuses_a_tile_larger_than_the_image_with_exit_2(category, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "padim", str(category), "-o", str(out), *FIT, "-p", "tile_size=96"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anomalens: error: padim: tile_size 96x96 is larger than the working image 64x64 (image_size; "
                   "height x width): use a tile_size of at most the image size, or a larger image_size"]
    assert not out.exists()


def test_cli_fit_test_and_predict_with_tiles(category, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "padim", str(category), "-o", str(run), *FIT, "-p", "tile_size=32", "-p", "tile_overlap=0.5"]) == 0
    assert json.loads((run / "detector.json").read_text())["params"]["tile_size"] == 32
    assert main(["test", str(run), str(category), "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pixel_auroc"] > 0.5 and metrics["image_auroc"] is not None
    holes = sorted((category / "test").glob("*/*.png"))[:2]
    assert main(["predict", str(run), *map(str, holes), "-o", str(tmp_path / "pred"), "-q", "--heatmaps", "all"]) == 0
    mask = sorted((tmp_path / "pred" / "masks").iterdir())[0]
    assert Image.open(mask).size == Image.open(holes[0]).size  # the 64 px map brought back to the image


# -- keep_aspect -----------------------------------------------------------------------------------------------
def _wide(n: int, seed: int, defect: bool = False) -> list[ImageRecord]:
    """Images of 64 × 128 (height × width): two stripe textures side by side; a defect at rows 20-31,
    columns 90-101."""
    records = []
    for i, record in enumerate(make_records(n, 0, seed=seed)):
        image = np.concatenate([record.source, record.source[:, ::-1]], axis=1)
        mask = np.zeros(image.shape[:2], bool)
        if defect:
            mask[20:32, 90:102] = True
            image[mask] = [20, 160, 30]
        records.append(ImageRecord(np.ascontiguousarray(image), int(defect), mask, f"wide/{i}"))
    return records


def test_keep_aspect_works_at_the_images_shape_and_maps_map_back_to_them(tmp_path):
    detector = create_detector("padim", image_size=64, resize="keep_aspect", threshold_folds=3, **TINY)
    assert detector.input_size == (64, 64)  # before fit: the bound
    detector.fit(_wide(6, seed=1), progress=False)
    assert detector.input_size == (32, 64)  # the largest 1:2 size inside 64 × 64
    result = detector.predict(_wide(2, seed=2, defect=True), progress=False)
    assert result.maps.shape == (2, 32, 64)
    full = to_original_size(result.maps[0], (64, 128))  # what predict's heatmaps draw on the image
    y, x = np.unravel_index(np.argmax(full), full.shape)
    assert 16 <= y <= 36 and 86 <= x <= 106
    assert detector.preprocessing()["working_size"] == [32, 64]
    detector.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.input_size == (32, 64)
    np.testing.assert_allclose(loaded.score(_wide(1, seed=3), progress=False)[0],
                               detector.score(_wide(1, seed=3), progress=False)[0], rtol=1e-5)


def test_keep_aspect_warns_about_mixed_shapes_and_checks_the_tile_against_the_chosen_size(caplog):
    mixed = _wide(3, seed=1) + make_records(2, 0, seed=4)  # 1:2 and square images
    with caplog.at_level(logging.WARNING, logger="anomalens"):
        detector = create_detector("padim", image_size=64, resize="keep_aspect", threshold_folds=2, **TINY)
        detector.fit(mixed, progress=False)
    assert detector.input_size == (32, 64)  # the median shape
    assert any("aspect ratios" in r.getMessage() and "distorted" in r.getMessage() for r in caplog.records)
    tiled = create_detector("padim", image_size=64, resize="keep_aspect", tile_size=48, **TINY)
    with pytest.raises(ConfigError, match=r"tile_size 48x48 is larger than the working image 32x64 \(image_size, aspect kept"):
        tiled.fit(_wide(4, seed=1), progress=False)


def test_squash_stays_the_default():
    detector = create_detector("padim", image_size=[48, 64])
    assert detector.params["resize"] == "squash" and detector.input_size == (48, 64)
    assert detector.model_input_size == (48, 64)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_export_of_a_tiled_padim_agrees_with_torch(highres, tmp_path):
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_run, verify_export

    # 2 × 2 overlapping tiles (112 px, tiles of 64): the traced graph unrolls every tile, and the 16 tiles of
    # tiled_padim took four times as long to export for the same blending code.
    detector = create_detector("padim", image_size=112, tile_size=64, threshold_folds=3, **TINY)
    detector.fit(highres["train"], progress=False)
    assert len(detector.sizing.tile_layout()) == 4
    paths = []
    for i, record in enumerate(highres["defect"][:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(record.source).save(paths[-1])
    out = export_run(detector.save(tmp_path / "run"), tmp_path / "export")
    report = verify_export(out, paths, runtime="onnxruntime")
    assert report["ok"], report
