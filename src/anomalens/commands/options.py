"""Options and argument types that several commands share, and the hyper-parameters of ``fit``'s options."""

from __future__ import annotations

import argparse
import json
from typing import Any

from anomalens.devices import DEVICE_NAMES, check_device_name
from anomalens.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
RAY_ADDRESS_HELP = ("--engine ray: the Ray cluster (HOST:PORT of its head, ray://HOST:10001, or auto; default "
                    "$RAY_ADDRESS, else a local cluster on this machine)")


# -- argument types ------------------------------------------------------------------------------------
def device_name(text: str) -> str:
    """``--device``: a name the library accepts (``anomalens.devices``: auto, cpu, cuda, cuda:N)."""
    try:
        check_device_name(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def param_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with value read as JSON when it parses (numbers, lists, null), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def image_size(text: str) -> int | list[int]:
    """``N`` (square) or ``HxW`` (height x width, also ``H,W``) → 256 or [224, 320]."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels (e.g. 256 or 224x320), got '{text}'")
    return sizes[0] if len(sizes) == 1 else sizes


def worker_count(text: str) -> int:
    """``--workers``: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return value


def positive_count(text: str) -> int:
    """A count option (``--trials``, ``--queue``, ``--max-images``, ...): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return value


def positive_number(text: str) -> float:
    """A limit or rate option (``--timeout``, ``--fps``): a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got '{text}'")
    return value


def seconds(text: str) -> float:
    """A duration option (``--settle``, ``--duration``): a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got '{text}'")
    return value


# -- options -------------------------------------------------------------------------------------------
def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """``-q`` and ``--log-level``: every command has both."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or progress log lines; warnings and errors only")
    add_log_level_argument(p)


def add_log_level_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help="what the log shows on stderr (default: warning on a terminal, where progress bars "
                        "show, and with -q; info elsewhere: stage starts and ends, progress, timings)")


def add_device_argument(p: argparse.ArgumentParser, help: str = "where to run (default: auto = CUDA if available)") -> None:
    p.add_argument("--device", type=device_name, default=None, metavar="DEVICE", help=f"{DEVICE_NAMES}: {help}")


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--device, -q, --log-level and --workers: the commands that run a model on images."""
    add_device_argument(p)
    add_log_arguments(p)
    p.add_argument("--workers", type=worker_count, default=None, metavar="N",
                   help="image-decoding worker processes (default: on CUDA min(8, cores - 1); on the CPU the cores "
                        "torch's threads leave free, usually 0; 0 decodes in the main process)")


def add_data_arguments(p: argparse.ArgumentParser, data_help: str) -> None:
    """DATA, its layout and the labelled-folder form of DATA (fit, test, calibrate)."""
    p.add_argument("data", nargs="?", help=data_help)
    p.add_argument("--layout", metavar="NAME",
                   help="read DATA as this layout instead of recognising it: mvtec, mvtec_ad2, mvtec_loco, visa, "
                        "btad or folder")
    p.add_argument("--normal", metavar="DIR", help="instead of DATA: a folder of normal training images")
    p.add_argument("--abnormal", nargs="+", default=[], metavar="DIR",
                   help="folders of anomalous test images, the defect type being the folder name")
    p.add_argument("--test-normal", dest="test_normal", metavar="DIR", help="a folder of normal test images (read by test and calibrate; fit says it does not read it)")
    p.add_argument("--masks", metavar="DIR",
                   help="masks of the --abnormal images: <stem>.png or <stem>_mask.png in DIR/<defect>/ or DIR/")
    p.add_argument("--unified", action="store_true",
                   help="DATA is a dataset root: every category under it as one dataset (one model for many products; "
                        "test reports each category and the whole)")


def data_source(args: argparse.Namespace) -> Any:
    """DATA as the workflow takes it: the argument itself, or a DatasetSource carrying the data options."""
    from anomalens.data.sources import data_source as source

    return source(args.data, layout=args.layout, normal=args.normal, abnormal=args.abnormal,
                  test_normal=args.test_normal, masks=args.masks, unified=args.unified)


# -- fit's hyper-parameters ----------------------------------------------------------------------------
def fit_params(args: argparse.Namespace) -> dict[str, Any]:
    """The hyper-parameters of ``fit``: --config (``anomalens.params.read_param_file``), overridden by -p and
    the named options (each given once)."""
    from anomalens.params import read_param_file, short_repr

    params: dict[str, Any] = {}
    for key, value in args.param or []:  # the command line overrides --config; twice on it is an error
        if key in params and params[key] != value:
            raise ConfigError(f"-p {key} is given twice ({short_repr(params[key])} and {short_repr(value)}); give it once")
        params[key] = value
    for key in ("backbone", "weights", "image_size", "batch_size", "seed", "device"):
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in params and params[key] != value:
            option = "--" + key.replace("_", "-")
            raise ConfigError(f"{key} is given twice, as {option} {value} and as -p {key}={short_repr(params[key])}; "
                              "give it once")
        params[key] = value
    if getattr(args, "config", None):
        return {**read_param_file(args.config, args.model), **params}
    return params
