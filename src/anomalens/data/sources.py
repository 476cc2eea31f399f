"""DATA as the command line gives it: a dataset argument together with how to read it (``--layout``,
``--normal``, ``--abnormal``, ``--test-normal``, ``--masks``, ``--unified``), loaded only when a workflow function
has locked its output folder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from anomalens.data.layouts import layout_named, load_dataset
from anomalens.data.records import AnomalyDataset
from anomalens.data.unified import load_unified
from anomalens.errors import ConfigError

__all__ = ["DatasetSource", "data_source"]


@dataclass(frozen=True)
class DatasetSource:
    """A DATA argument together with how to read it — what ``--layout``, ``--normal``, ``--abnormal``,
    ``--test-normal`` and ``--masks`` say on the command line — loaded only when :meth:`load` is called
    (``fit_run`` / ``test_run`` / ``calibrate_run`` do that once their output folder is locked).

    ``str()`` gives it back as command-line text, which is what run.json records as the run's data.
    """

    path: str | Path
    layout: str | None = None
    abnormal_dirs: tuple[str | Path, ...] = ()
    test_normal_dir: str | Path | None = None
    mask_dir: str | Path | None = None
    unified: bool = False  # every category under the root as one dataset (anomalens.data.unified)

    def __post_init__(self) -> None:
        if self.layout is not None:
            layout_named(self.layout)
        if self.unified and (self.abnormal_dirs or self.test_normal_dir is not None or self.mask_dir is not None
                             or self.layout == "folder"):
            raise ConfigError("--unified reads the categories of a dataset root; it does not combine with --normal, "
                              "--abnormal, --test-normal or --masks")
        folder_options = bool(self.abnormal_dirs) or self.test_normal_dir is not None or self.mask_dir is not None
        if folder_options and self.layout not in (None, "folder"):
            raise ConfigError(f"--abnormal, --test-normal and --masks read plain folders; they do not combine "
                              f"with --layout {self.layout}")
        if self.mask_dir is not None and not self.abnormal_dirs:
            raise ConfigError("--masks holds the masks of the --abnormal images; give --abnormal DIR too")

    def __str__(self) -> str:
        parts = [f"--normal {self.path}" if self.layout == "folder" else str(self.path)]
        if self.layout not in (None, "folder"):
            parts.append(f"--layout {self.layout}")
        if self.abnormal_dirs:
            parts.append("--abnormal " + " ".join(str(d) for d in self.abnormal_dirs))
        if self.test_normal_dir is not None:
            parts.append(f"--test-normal {self.test_normal_dir}")
        if self.mask_dir is not None:
            parts.append(f"--masks {self.mask_dir}")
        if self.unified:
            parts.append("--unified")
        return " ".join(parts)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every folder it reads, for the output-folder checks (an output never goes into its own input)."""
        extra = (self.test_normal_dir, self.mask_dir)
        return tuple(Path(p) for p in (self.path, *self.abnormal_dirs, *extra) if p is not None)

    def load(self, name: str | None = None) -> AnomalyDataset:
        """Read the dataset (see :func:`load_dataset`; with ``unified``, :func:`anomalens.data.unified.load_unified`)."""
        if self.unified:
            return load_unified(self.path, layout=self.layout, name=name)
        kw: dict[str, object] = {}
        if self.abnormal_dirs:
            kw["abnormal_dirs"] = tuple(self.abnormal_dirs)
        if self.test_normal_dir is not None:
            kw["test_normal_dir"] = self.test_normal_dir
        if self.mask_dir is not None:
            kw["mask_dir"] = self.mask_dir
        return load_dataset(self.path, name=name, layout=self.layout, **kw)


def data_source(
    data: str | None,
    layout: str | None = None,
    normal: str | None = None,
    abnormal: Iterable[str] = (),
    test_normal: str | None = None,
    masks: str | None = None,
    unified: bool = False,
) -> str | DatasetSource:
    """The command line's data options as one DATA value: ``data`` itself when no option is given (so a
    plain DATA argument reads as it always did), else a :class:`DatasetSource`.

    ``--normal DIR`` is the plain-folder form of DATA (training normals), so exactly one of the two is
    needed; conflicting options are a ConfigError that says which.
    """
    abnormal = tuple(abnormal or ())
    if data is not None and normal is not None:
        raise ConfigError(f"give DATA ({data}) or --normal DIR ({normal}), not both")
    if data is None and normal is None:
        raise ConfigError("no data: give DATA (a dataset folder, or a protocol such as mnist:abnormal=0) or "
                          "--normal DIR with the normal training images")
    if normal is not None and layout not in (None, "folder"):
        raise ConfigError(f"--normal reads a plain folder of normal images; it does not combine with --layout {layout}")
    if normal is None and layout is None and not abnormal and test_normal is None and masks is None and not unified:
        assert data is not None
        return data
    path = normal if normal is not None else data
    assert path is not None
    return DatasetSource(path=path, layout="folder" if normal is not None else layout, abnormal_dirs=abnormal,
                         test_normal_dir=test_normal, mask_dir=masks, unified=unified)
