"""The manual builds as a site, offline, with no warning (issue 29, item 4): ``mkdocs build --strict``.

Strict mode fails on a link to a page or anchor that does not exist, on a page left out of the navigation and
on a docstring the API reference (mkdocstrings) cannot render. The README is the home page (``docs/_hooks.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed: pip install -e '.[docs]'")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                            "-d", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


def test_the_readme_is_the_home_page_and_links_into_the_manual(site):
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "A 5-minute tour" in home
    assert 'href="cli/"' in home  # the README's docs/cli.md, rewritten for the site
    # a repository file outside docs/ is named by its path, not linked to a page the site does not hold
    assert "<code>benchmarks/results/results.md</code>" in home


def test_every_page_of_the_navigation_is_built(site):
    for page in ("cli", "evaluation", "predicting", "python", "exports", "serve", "distributed", "errors",
                 "detectors", "tiling", "layouts", "benchmarks", "performance", "development", "api"):
        assert (site / page / "index.html").is_file(), page


def test_the_api_reference_is_generated_from_the_docstrings(site):
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("anomalens.create_detector", "anomalens.detector", "anomalens.exported", "anomalens.data"):
        assert name in api, name
    assert "Write an MVTec-AD-layout category" in api  # make_synthetic_category's docstring, rendered
