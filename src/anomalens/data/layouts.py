"""The dataset layouts anomalens reads as they ship, how a folder's layout is recognised, and
:func:`load_dataset`, the single entry point for a DATA argument.

Each layout is one reader module (``mvtec``, ``mvtec_ad2``, ``loco``, ``visa``, ``btad``, ``folder``)
plus one line in :data:`LAYOUTS`: its name for ``--layout``, a test that recognises it and its loader.
Recognition tries them in the order of :data:`LAYOUTS`; the stricter MVTec LOCO / AD 2 tests come
before MVTec AD's (all three have ``train/good``), and the order of the two layouts anomalens read
before (MVTec AD, then a plain folder of images) is kept, so such folders load as they always did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomalens.data.btad import is_btad_product, load_btad_product
from anomalens.data.folder import has_images, load_folder_dataset
from anomalens.data.loco import is_loco_category, load_loco_category
from anomalens.data.mvtec import is_mvtec_category, load_mvtec_category
from anomalens.data.mvtec_ad2 import is_mvtec_ad2_category, load_mvtec_ad2_category
from anomalens.data.records import AnomalyDataset
from anomalens.data.visa import is_visa_object, is_visa_root, load_visa_object, visa_objects
from anomalens.errors import ConfigError, DataError

__all__ = [
    "LAYOUTS",
    "LAYOUT_HELP",
    "LAYOUT_NAMES",
    "Layout",
    "detect_layout",
    "layout_named",
    "find_categories",
    "load_dataset",
]


@dataclass(frozen=True)
class Layout:
    """One dataset layout: ``--layout`` name, what it is (for messages), its folder tree, test and loader."""

    name: str
    title: str
    tree: str
    detect: Callable[[Path], bool]
    load: Callable[..., AnomalyDataset]


#: Every layout, in the order recognition tries them.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("mvtec_loco", "an MVTec LOCO AD category",
               "train/good/, test/{good,logical_anomalies,structural_anomalies}/, "
               "ground_truth/<split>/<stem>/000.png, defects_config.json", is_loco_category, load_loco_category),
        Layout("mvtec_ad2", "an MVTec AD 2 object",
               "train/good/, validation/good/, test_public/{good,bad}/, test_public/ground_truth/bad/<stem>_mask.png, "
               "test_private/, test_private_mixed/", is_mvtec_ad2_category, load_mvtec_ad2_category),
        Layout("mvtec", "an MVTec AD category",
               "train/good/*.png, optional test/<defect>/*.png and ground_truth/<defect>/<stem>_mask.png",
               is_mvtec_category, load_mvtec_category),
        Layout("folder", "a plain folder of images", "a folder that directly contains normal images",
               has_images, load_folder_dataset),
        Layout("visa", "a VisA object folder",
               "<VisA>/<object>/Data/Images/{Normal,Anomaly}/, Data/Masks/Anomaly/, <VisA>/split_csv/1cls.csv",
               is_visa_object, load_visa_object),
        Layout("btad", "a BTAD product", "train/ok/, test/{ok,ko}/, ground_truth/ko/<stem>.png",
               is_btad_product, load_btad_product),
    )
}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)

#: Printed when a DATA argument matches no supported layout.
LAYOUT_HELP = (
    "expected " + "; ".join(f"{layout.title} ({layout.name}: {layout.tree})" for layout in LAYOUTS.values())
    + "; or a one-class protocol such as mnist:normal=7,8:abnormal=2 (--layout NAME names the layout instead "
    "of recognising it)"
)


def layout_named(name: str) -> Layout:
    """The layout called ``name``; ConfigError listing the names for any other."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown layout '{name}'; choose one of {', '.join(LAYOUT_NAMES)}") from None


def detect_layout(path: str | Path) -> str | None:
    """The name of the first layout of :data:`LAYOUTS` that ``path`` matches, or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    return next((layout.name for layout in LAYOUTS.values() if layout.detect(path)), None)


def find_categories(root: str | Path, layout: str | None = None) -> list[tuple[str, Path, str]]:
    """The dataset categories inside a dataset's root folder: ``(name, folder, layout)``, sorted by name.

    The VisA root gives the objects its ``split_csv/1cls.csv`` lists; any other root gives its
    sub-folders that match ``layout`` (by default: any layout but a plain folder of images, which has no
    test split to benchmark).
    """
    root = Path(root)
    if layout is not None:
        layout_named(layout)
    if layout in (None, "visa") and is_visa_root(root):
        return [(obj, root / obj, "visa") for obj in visa_objects(root) if (root / obj).is_dir()]
    found = []
    try:
        folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder: {exc.strerror or exc}") from None
    for folder in folders:
        if layout is not None:
            if LAYOUTS[layout].detect(folder):
                found.append((folder.name, folder, layout))
            continue
        name = next((n for n, spec in LAYOUTS.items() if n != "folder" and spec.detect(folder)), None)
        if name is not None:
            found.append((folder.name, folder, name))
    return found


def load_dataset(path: str | Path | Any, name: str | None = None, layout: str | None = None,
                 **kw: object) -> AnomalyDataset:
    """Load a DATA argument: a folder in one of :data:`LAYOUTS` (recognised, or named by ``layout``), a
    one-class protocol by name (``mnist:normal=7,8:abnormal=2``; see
    :func:`anomalens.data.oneclass.load_builtin`), or a :class:`DatasetSource`. An existing folder of
    the same name wins over a protocol name.

    Extra keyword arguments (``abnormal_dirs``, ``test_normal_dir``, ``mask_dir``) are passed to
    :func:`load_folder_dataset` for plain folders; they do not apply to the other layouts.
    ``name`` overrides the dataset name in every case.
    """
    from anomalens.data.oneclass import is_builtin_spec, load_builtin  # here, not at the top: oneclass imports records

    if callable(getattr(path, "load", None)):  # a source that knows how to read itself (data.sources.DatasetSource)
        if layout is not None or kw:
            raise ConfigError(f"{path}: give the layout and folder options in the DatasetSource, not again")
        return path.load(name=name)
    spec = layout_named(layout) if layout is not None else None
    if spec is None and not Path(path).exists() and is_builtin_spec(str(path)):
        if kw:
            raise DataError(f"{path}: options {', '.join(sorted(kw))} only apply to plain image folders")
        dataset = load_builtin(str(path))
        if name:
            dataset.name = name
        return dataset
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist (DATA is a dataset folder, or a one-class protocol such as "
                        "mnist:normal=7,8:abnormal=2)")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a dataset folder; {LAYOUT_HELP}")
    if spec is None:
        detected = detect_layout(path)
        if detected is None:
            # Nothing usable: say what was found, e.g. a dataset root with all its categories inside.
            categories = [c for c, _, _ in find_categories(path)]
            if categories:
                shown = ", ".join(categories[:5]) + (", ..." if len(categories) > 5 else "")
                raise DataError(f"{path}: holds {len(categories)} dataset categories ({shown}); pass one category folder")
            raise DataError(f"{path}: no images and not an MVTec AD category or any other known layout; {LAYOUT_HELP}")
        spec = LAYOUTS[detected]
    if kw and spec.name != "folder":
        raise DataError(f"{path}: is {spec.title}; options {', '.join(sorted(kw))} only apply to plain image folders")
    dataset = spec.load(path, **kw) if kw else spec.load(path)
    if name:
        dataset.name = name
    return dataset
