"""The Jinja2 environment of anomalens' HTML pages (the test report, the demo index).

Pages are templates in ``anomalens/report/templates`` (shipped as package data), rendered with
autoescaping always on: every name that reaches a page — an image file, a defect folder, a dataset —
comes from the user's disk and is shown as text, never read as markup (a folder called ``<script>``
is printed, not run). Numbers are formatted by one filter, so every page writes them alike.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import numpy as np

from anomalens.outputs.atomic import write_text

__all__ = ["render_page", "format_number", "write_text_atomic"]


def format_number(value: object) -> str:
    """A metric as a page shows it: rates and AUCs in [0, 1] with 3 decimals so columns line up, other
    floats with 4 significant digits (whole numbers from 10⁴ on, never an exponent for a score in the
    thousands), NaN as "n/a" (undefined on this test set), None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        if abs(number) <= 1.0:
            return f"{number:.3f}"
        return f"{number:.0f}" if 1e4 <= abs(number) < 1e9 else f"{number:.4g}"  # 23456, not 2.346e+04
    if isinstance(value, (list, tuple)):
        return " × ".join(format_number(v) for v in value)
    return str(value)


def _url(path: str) -> str:
    """A relative link to a file the page's folder holds, percent-encoded (autoescaping then makes it safe
    inside the attribute)."""
    return quote(str(path))


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    environment = Environment(
        loader=PackageLoader("anomalens.report", "templates"),
        autoescape=True,  # every template, whatever its name: names from disk are text, never markup
        undefined=StrictUndefined,  # a misspelt variable fails the render instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["num"] = format_number
    environment.filters["url"] = _url
    environment.filters["pct"] = lambda value: "n/a" if value is None or value != value else f"{value:.0%}"
    return environment


def render_page(template: str, **context: object) -> str:
    """The page ``template`` (a file name in ``anomalens/report/templates``) rendered with ``context``."""
    return _environment().get_template(template).render(**context)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename so readers never see a partial file."""
    write_text(path, text)
