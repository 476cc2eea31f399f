"""Annotated pictures, drawn with Pillow into RGB arrays: a heatmap with its score, verdict and colour bar,
the report's thumbnails and case figures (a Pillow picture costs a few milliseconds where a matplotlib figure
costs ~0.3 s; matplotlib only lends its font file and tick placement)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from anomalens.report.overlay import as_float_rgb, colour_lut, draw_boundaries, overlay_heatmap
from anomalens.report.templating import format_number

__all__ = ["annotate_heatmap", "case_thumbnail", "case_figure", "CASE_PANEL_PX"]

_PAPER = (255, 255, 255)
_INK = (25, 25, 25)
_ALARM = (176, 0, 32)
_PASS = (27, 94, 32)


def _font(size: int):
    """Pillow's bundled scalable font at ``size`` px: no font file needed on the machine, and loading it
    costs microseconds, so each call (and each writer thread) takes its own."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _figure_font(size: int):
    """DejaVu Sans (the font matplotlib ships and drew the report's figures with) at ``size`` px: unlike
    Pillow's bundled font it has the arrows, ≤ and accented letters of titles and file names. Pillow's
    font when the file is missing."""
    import os

    import matplotlib
    from PIL import ImageFont

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return _font(size)


def annotate_heatmap(
    overlay: ArrayLike,
    *,
    score: float,
    normalized_score: float,
    threshold: float,
    anomalous: bool,
    vmin: float,
    vmax: float,
    pixel_threshold: float | None = None,
    cmap: str = "jet",
) -> np.ndarray:
    """A heatmap overlay (uint8 (H, W, 3)) with a colour scale bar on its right and a text strip below.

    The strip reads the image's score, its normalised score (0.5 at the threshold) and the threshold,
    and the verdict, so a PNG copied out of the predictions folder still says what it shows. The bar
    maps colours back to anomaly-map values: ``vmin`` at the bottom, ``vmax`` at the top, with a tick
    at ``pixel_threshold`` (where the white outline is drawn). Text and bar scale with the picture
    (about 1/45 of its width, at least 11 px), and everything is drawn with Pillow, not matplotlib:
    ``anomalens predict`` writes one of these per image, and a matplotlib figure costs ~100 ms.
    Returns a new uint8 (H + strip, W + bar, 3) array; the overlay itself is left as it is.
    """
    from PIL import Image, ImageDraw

    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    picture = np.asarray(overlay)
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"overlay must be uint8 (H, W, 3), got {picture.dtype} {picture.shape}")
    height, width = picture.shape[:2]
    size = int(np.clip(round(width / 45), 11, 64))
    font = _font(size)
    pad = max(3, size // 3)

    # The colour bar: a strip of the colour map's table, vmax at the top, and its tick labels.
    ticks = [(vmax, format_number(vmax)), (vmin, format_number(vmin))]
    if pixel_threshold is not None and vmin < pixel_threshold < vmax:
        ticks.insert(1, (pixel_threshold, f"{format_number(pixel_threshold)} outline"))
    bar_width = max(8, size)
    label_width = int(max(font.getlength(text) for _, text in ticks)) + pad
    bar_area = pad + bar_width + pad + label_width + pad

    # The text strip: one line when it fits, else as few lines as fit.
    verdict = "ANOMALOUS" if anomalous else "normal"
    items = [f"score {format_number(score)}", f"normalised {normalized_score:.3f}",
             f"threshold {format_number(threshold)}", verdict]
    canvas_width = width + bar_area
    lines = _fit_lines(items, font, canvas_width - 2 * pad)
    line_height = int(size * 1.35)
    strip = pad + line_height * len(lines) + pad

    canvas = Image.new("RGB", (canvas_width, height + strip), _PAPER)
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    # The ends need no mark; the outline value gets one across the bar.
    _draw_colour_bar(canvas, draw, (width + pad, 0), bar_width, height, vmin, vmax,
                     [(value, text, value not in (vmin, vmax)) for value, text in ticks], font, pad, cmap)
    y = height + pad
    for line in lines:
        x = pad
        for k, item in enumerate(line):
            colour = (_ALARM if anomalous else _PASS) if item == verdict else _INK
            text = item if k == len(line) - 1 else item + "  ·  "
            draw.text((x, y), text, fill=colour, font=font)
            x += font.getlength(text)
        y += line_height
    return np.asarray(canvas)


def _colour_column(height: int, width: int, cmap: str) -> np.ndarray:
    """A colour scale as a uint8 (height, width, 3) picture: the colour map's top colour in the first row."""
    lut = colour_lut(cmap)
    levels = np.linspace(1.0, 0.0, height)  # top row = vmax
    column = np.round(lut[np.minimum((levels * len(lut)).astype(np.intp), len(lut) - 1)] * 255).astype(np.uint8)
    return np.repeat(column[:, None, :], width, axis=1)


def _draw_colour_bar(canvas, draw, origin: tuple[int, int], bar_width: int, height: int, vmin: float, vmax: float,
                     ticks: Sequence[tuple[float, str, bool]], font, pad: int, cmap: str, tick_length: int = 0) -> None:
    """Paste a colour bar (vmax at the top) at ``origin`` and label it: ``ticks`` are (value, text, across); a
    tick ``across`` gets a black-and-white mark over the whole bar (it shows on any colour), the others a
    ``tick_length`` px mark on the bar's right (none when 0). Labels sit right of the marks, kept inside the
    bar's height at its ends."""
    from PIL import Image

    x0, y0 = origin
    canvas.paste(Image.fromarray(_colour_column(height, bar_width, cmap)), (x0, y0))
    right = x0 + bar_width
    for value, text, across in ticks:
        y = int(round((vmax - value) / (vmax - vmin) * (height - 1)))
        if across and 0 < y < height - 1:
            draw.line([(x0, y0 + y), (right - 1, y0 + y)], fill=_INK, width=max(2, font.size // 6))
            draw.line([(x0, y0 + y), (right - 1, y0 + y)], fill=_PAPER, width=1)
        elif tick_length:
            draw.line([(right, y0 + y), (right + tick_length - 1, y0 + y)], fill=_INK, width=1)
        anchor = "lt" if y < font.size else "lb" if y > height - font.size else "lm"
        draw.text((right + tick_length + pad, y0 + y), text, fill=_INK, font=font, anchor=anchor)


def _fit_lines(items: list[str], font, width: int) -> list[list[str]]:
    """The items on as few lines as fit in ``width`` px (each line joined by "  ·  "), greedily."""
    separator = font.getlength("  ·  ")
    lines: list[list[str]] = [[]]
    used = 0.0
    for item in items:
        length = font.getlength(item)
        if lines[-1] and used + separator + length > width:
            lines.append([])
            used = 0.0
        used += (separator if lines[-1] else 0.0) + length
        lines[-1].append(item)
    return lines


def case_thumbnail(
    image: ArrayLike,
    amap: ArrayLike | None,
    vmin: float | None,
    vmax: float | None,
    *,
    predicted_mask: ArrayLike | None = None,
    true_mask: ArrayLike | None = None,
    size: int = 200,
) -> np.ndarray:
    """A small picture of one test image for the report's case grid: the heatmap overlay (the image alone
    without a map) scaled to fit ``size`` px, predicted defect outlined in white and the ground truth in
    green. The outlines are drawn after scaling down, so they stay one crisp line at any image size.
    """
    from PIL import Image

    if amap is not None:
        if vmin is None or vmax is None:
            raise ValueError("vmin and vmax are needed with an anomaly map")
        picture = overlay_heatmap(image, amap, vmin, vmax)
    else:
        picture = np.round(as_float_rgb(image) * 255.0).astype(np.uint8)
    height, width = picture.shape[:2]
    scale = min(1.0, size / max(height, width))
    thumb_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = np.asarray(Image.fromarray(picture).resize(thumb_size, Image.LANCZOS)).copy()

    def scaled(mask: ArrayLike) -> np.ndarray:
        return np.asarray(Image.fromarray(np.asarray(mask, dtype=bool)).resize(thumb_size, Image.NEAREST))

    if predicted_mask is not None:
        draw_boundaries(thumb, scaled(predicted_mask), (255, 255, 255), 1)
    if true_mask is not None:
        draw_boundaries(thumb, scaled(true_mask), (0, 255, 0), 1)
    return thumb


# --------------------------------------------------------------------------- the report's case figure
#: Panel sizes of a case figure (px, longer side): smaller images are enlarged by a whole factor (pixels stay
#: sharp squares), larger ones scaled down to the upper bound, 256 px images shown as they are.
CASE_PANEL_PX = (192, 384)
_CASE_GAP = 28
_CASE_MARGIN = 12
_PREDICTED_RGB = (255, 255, 255)  # white stands out on the jet colour map
_TRUTH_RGB = (0, 255, 0)  # bright green on the plain input image


def case_figure(
    image: ArrayLike,
    *,
    title: str,
    amap: ArrayLike | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    predicted_mask: ArrayLike | None = None,
    true_mask: ArrayLike | None = None,
    wrong: bool = False,
    pixel_threshold: float | None = None,
    reconstruction: ArrayLike | None = None,
    cmap: str = "jet",
) -> np.ndarray:
    """The full figure of one test image in the report, as uint8 (H, W, 3): a title (the lines of
    ``title``, in red when ``wrong``), then one row of captioned panels:

    input | heatmap overlay (fixed range [vmin, vmax], predicted defect outlined in white) with its colour
    scale | ground truth (``true_mask`` outlined in green on the input).

    The map panel is left out without ``amap``, the ground-truth panel without ``true_mask``. With
    ``reconstruction`` (an autoencoder's output, (H, W) or (H, W, 1|3) in [0, 1]) the row is input /
    reconstruction / residual: the map panel shows the colour-mapped map alone, so what the model failed to
    reconstruct is seen unmixed. The colour scale carries round ticks and, at ``pixel_threshold``, a mark
    across it labelled "outline". Panels are :data:`CASE_PANEL_PX` px; outlines are drawn after scaling, so
    they stay a crisp 2 px line at any image size. Drawn with Pillow in ~15 ms for 256 px images (a matplotlib
    figure of the same row took ~0.3 s, most of ``anomalens test``'s report time).
    """
    from PIL import Image, ImageDraw

    rgb = np.round(as_float_rgb(image) * 255.0).astype(np.uint8)
    height, width = rgb.shape[:2]
    panel_size = _panel_size(height, width)

    def shown(picture: np.ndarray) -> np.ndarray:
        if picture.shape[1::-1] == panel_size:
            return picture
        enlarge = panel_size[0] > width
        return np.asarray(Image.fromarray(picture).resize(panel_size, Image.NEAREST if enlarge else Image.LANCZOS))

    def outlined(picture: np.ndarray, mask: ArrayLike, colour: tuple[int, int, int]) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask of shape {mask.shape} does not match the image {(height, width)}")
        if mask.shape[::-1] != panel_size:
            mask = np.asarray(Image.fromarray(mask).resize(panel_size, Image.NEAREST))
        out = picture.copy()
        draw_boundaries(out, mask, colour, 2)
        return out

    panels: list[tuple[str, np.ndarray]] = [("input", shown(rgb))]
    if reconstruction is not None:
        recon = np.round(as_float_rgb(reconstruction) * 255.0).astype(np.uint8)
        if recon.shape != rgb.shape:
            raise ValueError(f"reconstruction of shape {recon.shape[:2]} does not match the image {rgb.shape[:2]}")
        panels.append(("reconstruction", shown(recon)))
    map_panel = len(panels) if amap is not None else None
    if amap is not None:
        if vmin is None or vmax is None:
            raise ValueError("vmin and vmax are needed with an anomaly map")
        # alpha 1 with a reconstruction: the colour-mapped residual alone.
        picture = shown(overlay_heatmap(rgb, amap, vmin, vmax, alpha=1.0 if reconstruction is not None else 0.5,
                                        cmap=cmap))
        caption = "residual (anomaly map)" if reconstruction is not None else "anomaly map"
        if predicted_mask is not None:
            picture = outlined(picture, predicted_mask, _PREDICTED_RGB)
            caption += "\nwhite: predicted defect" if np.any(predicted_mask) else "\nno predicted defect"
        panels.append((caption, picture))
    if true_mask is not None:
        caption = "ground truth\ngreen: defect" if np.any(true_mask) else "ground truth\nno defect"
        panels.append((caption, outlined(panels[0][1], true_mask, _TRUTH_RGB)))

    title_font, caption_font, tick_font = _figure_font(15), _figure_font(13), _figure_font(11)
    title_lines = title.split("\n")
    title_step, caption_step = int(15 * 1.4), int(13 * 1.35)
    caption_rows = max(len(caption.split("\n")) for caption, _ in panels)
    panel_w, panel_h = panel_size

    # The colour scale beside the map panel: bar, ticks and their labels, and the scale's name turned upright.
    bar_width, tick_length, pad = 14, 4, 4
    bar_ticks: list[tuple[float, str, bool]] = []
    scale_name = None
    bar_area = 0
    if map_panel is not None:
        bar_ticks = _round_ticks(vmin, vmax, panel_h, tick_font.size)
        if pixel_threshold is not None and vmin < pixel_threshold < vmax:
            spacing = 1.5 * tick_font.size * (vmax - vmin) / panel_h  # keep labels from overlapping
            bar_ticks = [t for t in bar_ticks if abs(t[0] - pixel_threshold) > spacing]
            bar_ticks.append((pixel_threshold, f"{format_number(pixel_threshold)} outline", True))
        scale_name = next(text for text in ("anomaly score (same scale for all images)", "anomaly score",
                                            "score") if tick_font.getlength(text) <= panel_h or text == "score")
        labels_width = max((tick_font.getlength(text) for _, text, _ in bar_ticks), default=0)
        bar_area = 8 + bar_width + tick_length + pad + int(labels_width) + pad + tick_font.size + 2

    content = len(panels) * panel_w + (len(panels) - 1) * _CASE_GAP + bar_area
    title_width = int(max(title_font.getlength(line) for line in title_lines))
    canvas_w = max(content, title_width) + 2 * _CASE_MARGIN
    panels_top = _CASE_MARGIN + title_step * len(title_lines) + 8 + caption_step * caption_rows + 4
    canvas_h = panels_top + panel_h + _CASE_MARGIN
    canvas = Image.new("RGB", (canvas_w, canvas_h), _PAPER)
    draw = ImageDraw.Draw(canvas)

    colour = _ALARM if wrong else _INK
    for k, line in enumerate(title_lines):
        draw.text((canvas_w / 2, _CASE_MARGIN + k * title_step), line, fill=colour, font=title_font, anchor="ma")
    x = (canvas_w - content) // 2
    for k, (caption, picture) in enumerate(panels):
        lines = caption.split("\n")
        caption_top = panels_top - 4 - caption_step * len(lines)  # captions end just above their panel
        for j, line in enumerate(lines):
            draw.text((x + panel_w / 2, caption_top + j * caption_step), line, fill=_INK, font=caption_font,
                      anchor="ma")
        canvas.paste(Image.fromarray(np.ascontiguousarray(picture)), (x, panels_top))
        x += panel_w
        if k == map_panel:
            bar_x = x + 8
            _draw_colour_bar(canvas, draw, (bar_x, panels_top), bar_width, panel_h, vmin, vmax, bar_ticks,
                             tick_font, pad, cmap, tick_length)
            name = Image.new("RGB", (int(tick_font.getlength(scale_name)) + 2, tick_font.size + 4), _PAPER)
            ImageDraw.Draw(name).text((1, 1), scale_name, fill=_INK, font=tick_font)
            name = name.rotate(90, expand=True)
            canvas.paste(name, (x + bar_area - name.width, panels_top + (panel_h - name.height) // 2))
            x += bar_area
        x += _CASE_GAP
    return np.asarray(canvas)


def _panel_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) of a case-figure panel for an image of ``height`` x ``width`` (see CASE_PANEL_PX)."""
    low, high = CASE_PANEL_PX
    longest = max(height, width)
    if longest < low:
        factor = float(-(-low // longest))  # whole factor: every image pixel becomes an equal square
    elif longest > high:
        factor = high / longest
    else:
        return width, height
    return max(1, round(width * factor)), max(1, round(height * factor))


def _round_ticks(vmin: float, vmax: float, height: int, font_px: int) -> list[tuple[float, str, bool]]:
    """Round tick values inside [vmin, vmax] for a colour bar ``height`` px tall (matplotlib's tick placement),
    labelled in the shortest form ("20", "0.25", "1e-05")."""
    from matplotlib.ticker import MaxNLocator

    bins = int(np.clip(height // (2 * font_px), 2, 10))
    values = MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
    tolerance = 1e-9 * (vmax - vmin)
    return [(float(v), f"{float(v):g}", False) for v in values if vmin - tolerance <= v <= vmax + tolerance]
