"""What a benchmark runs: detectors × dataset categories × seeds, as a list of jobs and the configuration
that a results folder records (``benchmark.json``) so that a rerun can resume it — or refuse a change.

Categories come from ``--data`` (a category folder in any layout anomalens reads, a dataset root holding
several, or a one-class protocol such as ``fmnist:normal=0``) or ``--synthetic`` (the built-in synthetic
MVTec-layout categories of :mod:`anomalens.data.synthetic`, built once where the caller says).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from anomalens.errors import ConfigError, DataError

__all__ = ["BenchmarkPlan", "Category", "Job", "SYNTHETIC_COUNTS", "data_categories", "parse_overrides",
           "synthetic_categories"]

#: The synthetic categories of the README's detector table: 120 training images, 30 normal + 40 defective
#: test images, 256 px, seed 0 (``benchmarks/harness/datasets.py`` builds the same).
SYNTHETIC_COUNTS = {"n_train": 120, "n_test_good": 30, "n_test_defect": 40}
SYNTHETIC_IMAGE_SIZE = 256
_LABEL = re.compile(r"[A-Za-z0-9_-]+")  # no '.': -p LABEL.KEY=VALUE splits at the first one


@dataclass(frozen=True)
class Category:
    """One test set: its name in the tables, what ``load_dataset`` reads, and the layout (None: recognised)."""

    name: str
    data: str
    layout: str | None = None


@dataclass(frozen=True)
class Job:
    """One (detector, category, seed): fitted and scored in its own process."""

    detector: str  # its label in the tables: the registry name, or a LABEL of -m LABEL=NAME
    category: Category
    seed: int
    params: dict = field(hash=False)
    model: str | None = None  # the registry name when the label is not one


    @property
    def key(self) -> str:
        """The job's folder name under ``jobs/``."""
        return f"{self.detector}--{self.category.name}--seed{self.seed}"

    def worker_spec(self) -> dict[str, Any]:
        return {"detector": self.detector, "model": self.model or self.detector,
                "params": {**self.params, "seed": self.seed}, "data": self.category.data,
                "layout": self.category.layout, "category": self.category.name}


@dataclass
class BenchmarkPlan:
    """Detectors, their settings, categories and seeds; :meth:`jobs` in the order they run."""

    detectors: list[str]
    categories: list[Category]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, dict] = field(default_factory=dict)
    image_size: int | None = None
    synthetic: dict | None = None
    #: label -> registry name, for the detectors given as ``-m LABEL=NAME`` (one detector under several settings)
    models: dict[str, str] = field(default_factory=dict)

    def model(self, detector: str) -> str:
        """The registry name behind a detector's label."""
        return self.models.get(detector, detector)

    def params(self, detector: str) -> dict[str, Any]:
        """The detector's settings (without the seed): ``image_size`` from the plan, then its overrides."""
        return {**({"image_size": self.image_size} if self.image_size else {}), **self.overrides.get(detector, {})}

    def jobs(self) -> list[Job]:
        """Every job: categories outermost, so that the first results to appear compare detectors."""
        return [Job(d, c, s, self.params(d), self.models.get(d)) for c in self.categories for s in self.seeds
                for d in self.detectors]

    def config(self) -> dict[str, Any]:
        """What decides the jobs' results (``benchmark.json``): a rerun with another one is refused."""
        return {"detectors": list(self.detectors), "params": {d: self.params(d) for d in self.detectors},
                "seeds": list(self.seeds),
                "categories": [{"name": c.name, "data": c.data, "layout": c.layout} for c in self.categories],
                "synthetic": self.synthetic,
                # only with labels, so that a folder written before labels existed still resumes
                **({"models": {d: self.model(d) for d in self.detectors}} if self.models else {})}

    def check(self) -> None:
        """Refuse, in one line each, what would fail in every job: an unknown detector, a bad setting."""
        from anomalens import create_detector

        if not self.detectors:
            raise ConfigError("benchmark: give at least one detector (-m NAME)")
        if len(set(self.detectors)) != len(self.detectors):
            raise ConfigError(f"benchmark: a detector is given twice ({', '.join(self.detectors)})")
        unknown = sorted(set(self.overrides) - set(self.detectors))
        if unknown:
            raise ConfigError(f"-p {unknown[0]}.…: {unknown[0]} is not one of the detectors benchmarked "
                              f"({', '.join(self.detectors)})")
        for detector in self.detectors:
            if "seed" in self.overrides.get(detector, {}):
                raise ConfigError(f"-p {detector}.seed: give the seeds with --seeds")
            create_detector(self.model(detector), **self.params(detector), seed=self.seeds[0])  # checks every setting
        names = [c.name for c in self.categories]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"benchmark: two categories are named {twice[0]}; give each dataset once")


def parse_detectors(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``-m`` values: ``NAME`` or ``LABEL=NAME`` (the same detector benchmarked under several settings, each
    under its own label, its settings given as ``-p LABEL.KEY=VALUE``) → (labels, {label: name} for the
    labelled ones)."""
    labels: list[str] = []
    models: dict[str, str] = {}
    for item in items:
        label, sep, name = item.partition("=")
        label, name = label.strip(), name.strip()
        if sep and (not name or not _LABEL.fullmatch(label)):
            raise ConfigError(f"-m {item}: expected NAME or LABEL=NAME, the label made of letters, digits, '-' "
                              "and '_' (e.g. -m patchcore-384=patchcore)")
        labels.append(label)
        if sep:
            models[label] = name
    return labels, models


def parse_overrides(items: Sequence[str]) -> dict[str, dict]:
    """``["patchcore.coreset_ratio=0.01"]`` → ``{"patchcore": {"coreset_ratio": 0.01}}`` (values read as
    JSON when they parse: numbers, lists, null; else strings)."""
    overrides: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        detector, dot, name = key.strip().partition(".")
        if not sep or not dot or not detector or not name:
            raise ConfigError(f"-p {item}: expected DETECTOR.KEY=VALUE, e.g. -p patchcore.coreset_ratio=0.01")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(detector, {})[name.replace("-", "_")] = value
    return overrides


def data_categories(paths: Sequence[str], layout: str | None = None) -> list[Category]:
    """The categories of ``--data``: each path a category (its layout recognised, or ``layout``), a
    dataset root (every category found inside), or a one-class protocol name."""
    from anomalens.data import LAYOUT_HELP, detect_layout, find_categories
    from anomalens.data.layouts import LAYOUTS
    from anomalens.data.oneclass import is_builtin_spec

    found: list[Category] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            if is_builtin_spec(text):
                found.append(Category(text.replace(":", "_").replace("=", "-").replace(",", "+"), text, None))
                continue
            raise DataError(f"{text}: does not exist (--data takes dataset folders, a dataset root, or a one-class "
                            "protocol such as fmnist:normal=0)")
        if not path.is_dir():
            raise DataError(f"{text}: is a file, not a dataset folder")
        if layout is not None and layout not in LAYOUTS:
            raise ConfigError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
        own = layout if layout is not None and LAYOUTS[layout].detect(path) else None
        if own is None and layout is None:
            detected = detect_layout(path)
            own = detected if detected != "folder" else None
        if own is not None:
            found.append(Category(path.resolve().name, str(path.resolve()), own))
            continue
        inside = find_categories(path, layout)
        if not inside:
            raise DataError(f"{text}: neither a dataset category nor a folder of categories; {LAYOUT_HELP}")
        found += [Category(name, str(folder.resolve()), kind) for name, folder, kind in inside]
    return found


def synthetic_categories(names: Sequence[str], root: Path, image_size: int, counts: dict[str, int]) -> list[Category]:
    """The synthetic categories ``names`` under ``root`` (built when missing, seed 0); an existing one made
    with other sizes is refused rather than mixed in."""
    from anomalens.data.synthetic import SYNTHETIC_SOURCES, make_synthetic_category

    unknown = [n for n in names if n not in SYNTHETIC_SOURCES]
    if unknown:
        raise ConfigError(f"--synthetic {unknown[0]}: not a synthetic category; choose from {', '.join(SYNTHETIC_SOURCES)}")
    wanted = {"seed": 0, "image_size": image_size, **counts}
    categories = []
    for name in names:
        folder = root / name
        if not folder.exists():
            make_synthetic_category(root, source=name, **wanted)
        else:
            try:
                made = json.loads((folder / "synthetic.json").read_text())
            except (OSError, ValueError):
                raise DataError(f"{folder}: exists and is not a synthetic category anomalens built; choose another "
                                "--synthetic-data folder") from None
            differ = {k: made.get(k) for k in wanted if made.get(k) != wanted[k]}
            if differ:
                raise DataError(f"{folder}: was built with other settings ({', '.join(f'{k}={v}' for k, v in differ.items())}"
                                f" instead of {', '.join(f'{k}={wanted[k]}' for k in differ)}); choose another "
                                "--synthetic-data folder")
        categories.append(Category(name, str(folder.resolve()), "mvtec"))
    return categories
