"""The adversarial suite of issue 15: what a careful QA engineer throws at the command line, as data.

Each :class:`Case` runs ``anomalens ...`` (in this process through ``cli.main``, or in a child process for
signals and races) inside a private workspace holding a small MVTec-layout category, a fitted PaDiM run
(with a PatchCore run and the ensemble of the two), a folder of images and a file of the user's.
:func:`run_case` then classifies what happened, by what the command *did*, not by what it printed alone:

- ``clean error``     bad input refused: exit 2, one line naming the problem, nothing new left behind;
- ``correct``         valid (if unusual) input handled: exit 0 and the case's own check of the result holds;
- ``traceback``       an exception escaped, or an exit status other than 0 / 2 (/ 130 / 143 on a signal);
- ``multi-line``      refused, but with more than one line (or a line that does not say what was expected);
- ``silently wrong``  exit 0 where the input is bad, or a result that fails its check;
- ``refused valid``   a clean error for input that should have worked;
- ``half-written``    a failed command left a new file or folder, or something that looks like a result;
- ``data lost``       a file that existed before (data, run, the user's file) was changed or removed.

``tests/test_adversarial.py`` runs every case (each must be ``clean error`` or ``correct``);
``tools/adversarial.py`` (``python -m tools.adversarial``) runs them all and writes the table of the README's Errors section.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FIT = ["--image-size", "64", "--batch-size", "8", "--device", "cpu", "-q"]
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
OUTCOMES = ("clean error", "correct", "traceback", "multi-line", "silently wrong", "refused valid", "half-written",
            "data lost")
GOOD_OUTCOMES = ("clean error", "correct")


@dataclass(frozen=True)
class Case:
    """One adversarial input. ``argv`` items may hold ``{ws}`` (the workspace), ``{cat}`` (the category),
    ``{run}``, ``{imgs}``; ``setup(ws)`` damages or prepares the workspace first; ``expect`` is ``"error"``
    (with ``says``: words the error line must contain) or ``"ok"`` (with ``check(ws, stderr)`` returning a
    problem or None); ``may_change`` lists workspace paths the command is allowed to rewrite, ``may_leave`` the prefixes of new
    entries a failed command may leave on purpose (predict's resumable stage, which its message names); ``fault`` is a
    context manager injected around an in-process run; ``custom(ws)`` replaces argv for the child-process
    cases and returns (outcome, detail)."""

    id: str
    family: str
    argv: Sequence[str] = ()
    setup: Callable[[Path], None] | None = None
    expect: str = "error"
    says: Sequence[str] = ()
    check: Callable[[Path, str], str | None] | None = None
    may_change: Sequence[str] = ()
    fault: Callable[[Path], contextlib.AbstractContextManager] | None = None
    may_leave: Sequence[str] = ()
    custom: Callable[[Path], tuple[str, str]] | None = None


@dataclass
class Outcome:
    case: str
    family: str
    kind: str
    detail: str = ""
    seconds: float = 0.0
    stderr: str = field(default="", repr=False)


# ---------------------------------------------------------------------------------------- workspace
def make_template(root: Path) -> Path:
    """The pristine workspace every case copies: ``cat`` (a tiny category), ``run`` (PaDiM fitted on it),
    ``run_b`` (PatchCore fitted on it) and ``ens`` (the ensemble of the two, ``anomalens ensemble``), ``imgs``
    (six images to predict on) and ``user.txt`` (a file of the user's)."""
    from anomalens.cli import main
    from anomalens.data import make_synthetic_category

    ws = root / "template"
    ws.mkdir(parents=True)
    made = make_synthetic_category(ws / "data", source="brick", n_train=10, n_test_good=3, n_test_defect=3,
                                   image_size=64, seed=0)
    os.rename(made, ws / "cat")
    shutil.rmtree(ws / "data")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["fit", "padim", str(ws / "cat"), "-o", str(ws / "run"), *FIT]) == 0
        # The ensemble's members: PaDiM and PatchCore (its threshold from the hold-out: no cross-fit in every fold).
        assert main(["fit", "patchcore", str(ws / "cat"), "-o", str(ws / "run_b"), *FIT, "-p", "threshold_folds=1"]) == 0
        assert main(["ensemble", str(ws / "run"), str(ws / "run_b"), "-o", str(ws / "ens"), "--data", str(ws / "cat"),
                     "-p", "threshold_folds=2", "-q"]) == 0
    (ws / "imgs").mkdir()
    defect = first_defect(ws)
    for path in sorted((ws / "cat" / "test" / "good").iterdir())[:3] + sorted((ws / "cat" / "test" / defect).iterdir())[:3]:
        shutil.copy(path, ws / "imgs" / f"{path.parent.name}_{path.name}")
    (ws / "user.txt").write_text("the user's own notes\n")
    return ws


def first_defect(ws: Path) -> str:
    return sorted(p.name for p in (ws / "cat" / "test").iterdir() if p.name != "good")[0]


def _snapshot(ws: Path) -> dict[str, tuple]:
    """Every entry under ``ws`` → what it is and its content hash (links are not followed)."""
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(ws):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.fsdecode(path.relative_to(ws))
            st = path.lstat()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir",)
            else:
                entries[rel] = ("file", st.st_size, hashlib.sha1(path.read_bytes()).hexdigest())
    return entries


def _under(rel: str, prefixes: Sequence[str]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


# ---------------------------------------------------------------------------------------- running
def _run_in_process(argv: list[str], fault) -> tuple[int | None, str, str]:
    from anomalens.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            with fault() if fault is not None else contextlib.nullcontext():
                rc = main(argv)
        except SystemExit as exc:  # what a console script would exit with
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the point is to see what escapes
            import traceback

            return None, out.getvalue(), err.getvalue() + "".join(traceback.format_exception(exc))
    return rc, out.getvalue(), err.getvalue()


def _error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not warnings (the library's warnings are one line each by design)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("anomalens: warning:")]


def _without_the_ensemble(template: Path) -> Callable[[str, list[str]], list[str]]:
    return lambda folder, names: ["ens"] if Path(folder) == template else []


def run_case(case: Case, template: Path, scratch: Path) -> Outcome:
    """Run ``case`` in a fresh copy of ``template`` under ``scratch`` and classify it."""
    ws = scratch / case.id
    # The ensemble run (half the template's 11 MB) goes only to the cases that name it: copying and hashing it for
    # every case cost ~6 s of the suite.
    needs_ensemble = case.family == ENSEMBLE or any("{ws}/ens" in a for a in case.argv)
    shutil.copytree(template, ws, symlinks=True, ignore=None if needs_ensemble else _without_the_ensemble(template))
    if case.setup is not None:
        case.setup(ws)
    start = time.perf_counter()
    if case.custom is not None:
        kind, detail = case.custom(ws)
        return Outcome(case.id, case.family, kind, detail, time.perf_counter() - start)
    before = _snapshot(ws)
    values = {"ws": str(ws), "cat": str(ws / "cat"), "run": str(ws / "run"), "imgs": str(ws / "imgs")}
    argv = [a.format(**values) for a in case.argv]
    fault = (lambda: case.fault(ws)) if case.fault is not None else None
    rc, stdout, stderr = _run_in_process(argv, fault)
    seconds = time.perf_counter() - start
    after = _snapshot(ws)

    def outcome(kind: str, detail: str = "") -> Outcome:
        return Outcome(case.id, case.family, kind, detail, seconds, stderr)

    lost = [rel for rel, entry in before.items() if after.get(rel) != entry and not _under(rel, case.may_change)]
    if rc is None or rc not in (0, 2):
        return outcome("traceback", stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {rc}")
    if lost:
        return outcome("data lost", ", ".join(sorted(lost)[:5]))
    lines = _error_lines(stderr)
    if rc == 2:
        new = sorted(rel for rel in after if rel not in before and not any(rel.startswith(p) for p in case.may_leave))
        if new:
            return outcome("half-written", ", ".join(new[:5]))
        if case.expect == "ok":
            return outcome("refused valid", " | ".join(lines))
        if len(lines) != 1 or not lines[0].startswith("anomalens: error: "):
            return outcome("multi-line", " | ".join(lines)[:300])
        missing = [w for w in case.says if w.lower() not in lines[0].lower()]
        if missing:
            return outcome("multi-line", f"the line does not say {missing}: {lines[0]}")
        return outcome("clean error", lines[0])
    # exit 0
    if case.expect == "error":
        return outcome("silently wrong", f"exit 0 for bad input; stdout: {stdout.strip()[:200]}")
    if lines:
        return outcome("silently wrong", f"exit 0 but stderr says: {' | '.join(lines)[:300]}")
    problem = case.check(ws, stderr) if case.check is not None else None
    if problem:
        return outcome("silently wrong", problem)
    return outcome("correct", stdout.strip().splitlines()[-1] if stdout.strip() else "")


# ---------------------------------------------------------------------------------------- damage
def _train(ws: Path) -> Path:
    return ws / "cat" / "train" / "good"


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file())[0]


def _zero_bytes(path_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    return lambda ws: path_of(ws).write_bytes(b"")


def _truncate(path_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = path_of(ws)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return setup


def _text_as_png(ws: Path) -> None:
    _first(_train(ws)).write_text("this is not an image\n")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb(ws: Path) -> None:
    """A valid PNG header announcing 30000 x 30000 pixels, with almost no data (a decompression bomb)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    body = _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b"")
    _first(_train(ws)).write_bytes(b"\x89PNG\r\n\x1a\n" + header + body)


def _empty_train(ws: Path) -> None:
    for path in _train(ws).iterdir():
        path.unlink()


def _keep_train(n: int) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for path in sorted(_train(ws).iterdir())[n:]:
            path.unlink()

    return setup


def _identical_train(ws: Path) -> None:
    paths = sorted(_train(ws).iterdir())
    for path in paths[1:]:
        shutil.copy(paths[0], path)


def _mixed_formats(ws: Path) -> None:
    """The same photos as grayscale, 16-bit, palette, RGBA, JPEG, BMP and TIFF files."""
    paths = sorted(_train(ws).iterdir())
    picture = Image.open(paths[0]).convert("RGB")
    conversions = [
        ("gray.png", picture.convert("L")),
        ("deep.png", Image.fromarray((np.asarray(picture.convert("L"), np.uint16) * 257))),
        ("palette.png", picture.convert("P")),
        ("alpha.png", picture.convert("RGBA")),
        ("photo.jpg", picture),
        ("bitmap.bmp", picture),
        ("scan.tif", picture),
    ]
    for (name, image), old in zip(conversions, paths[1:]):
        old.unlink()
        image.save(_train(ws) / name)


def _odd_sizes(ws: Path) -> None:
    paths = sorted(_train(ws).iterdir())
    picture = Image.open(paths[0]).convert("RGB")
    picture.resize((1, 1)).save(paths[1])
    picture.resize((4000, 3)).save(paths[2])
    picture.resize((3, 900)).save(paths[3])


def _non_utf8_copy(folder_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        folder = folder_of(ws)
        source = _first(folder)
        shutil.copy(source, os.path.join(os.fsencode(folder), b"caf\xe9-latin1.png"))

    return setup


def _names_that_print_alike(ws: Path) -> None:
    """A Latin-1 ``café.png`` beside a file literally named ``caf\\xe9.png``: both print as ``caf\\xe9.png``."""
    folder = ws / "imgs"
    source = _first(folder)
    shutil.copy(source, os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    shutil.copy(source, folder / "caf\\xe9.png")


def _one_row_each(ws: Path, stderr: str) -> str | None:
    import csv

    with open(ws / "out" / "predictions.csv", encoding="utf-8", newline="") as fh:
        names = [row["image"] for row in csv.DictReader(fh)]
    images = len(os.listdir(ws / "imgs"))
    if len(names) != images or len(set(names)) != images:
        return f"{images} images gave {len(names)} rows with {len(set(names))} distinct names"
    return None


def _folder_named_like_an_image(ws: Path) -> None:
    (_train(ws) / "folder.png").mkdir()


def _mask_path(ws: Path) -> Path:
    return _first(ws / "cat" / "ground_truth" / first_defect(ws))


def _mask_of_wrong_size(ws: Path) -> None:
    Image.new("L", (10, 10)).save(_mask_path(ws))


def _no_test(ws: Path) -> None:
    shutil.rmtree(ws / "cat" / "test")
    shutil.rmtree(ws / "cat" / "ground_truth")


def _only_normal_tests(ws: Path) -> None:
    shutil.rmtree(ws / "cat" / "ground_truth")
    for folder in (ws / "cat" / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)


def _one_broken_image(ws: Path) -> None:
    (ws / "imgs" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def _all_broken_images(ws: Path) -> None:
    for path in (ws / "imgs").iterdir():
        path.write_bytes(b"not an image")


def _empty_images(ws: Path) -> None:
    for path in (ws / "imgs").iterdir():
        path.unlink()


def _notes_folder(ws: Path) -> None:
    (ws / "notes").mkdir()
    (ws / "notes" / "readme.txt").write_text("no images here\n")


def _user_folder(ws: Path) -> None:
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("mine\n")


def _normals_folder(ws: Path) -> None:
    shutil.copytree(ws / "cat" / "test" / "good", ws / "normals")


# ---------------------------------------------------------------------------------------- tampering
def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / "run" / "detector.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))

    return setup


def _set_threshold(value) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        config["decision"]["image_threshold"] = value

    return change


def _set_param(key: str, value) -> Callable[[dict], None]:
    return lambda config: config["params"].__setitem__(key, value)


def _rewrite_weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Change the tensors, keep the metadata and put the new hash in detector.json (a deliberate edit)."""

    def setup(ws: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        from anomalens.persistence import file_sha256

        path = ws / "run" / "weights.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path), metadata=metadata)
        _edit_config(lambda c: c.update(weights_sha256=file_sha256(path)))(ws)

    return setup


def _nan_weight(tensors: dict) -> None:
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name].view(-1)[0] = float("nan")


def _flip_a_byte(ws: Path) -> None:
    path = ws / "run" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _pickle_beside(ws: Path) -> None:
    import pickle

    (ws / "run" / "weights.pt").write_bytes(pickle.dumps({"os": os.getcwd}))


# ---------------------------------------------------------------------------------------- checks
def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _predictions_complete(errors: int = 0) -> Callable[[Path, str], str | None]:
    """A row for every readable image of ``imgs`` (with a finite score) and ``errors`` rows in errors.csv."""

    def check(ws: Path, stderr: str) -> str | None:
        out = ws / "out"
        n = len(list((ws / "imgs").iterdir())) - errors
        rows = _read_csv(out / "predictions.csv")
        if len(rows) != n:
            return f"{len(rows)} prediction rows, expected {n}"
        if any(not np.isfinite(float(r["score"])) for r in rows):
            return "a non-finite score"
        error_rows = _read_csv(out / "errors.csv") if (out / "errors.csv").exists() else []
        if len(error_rows) != errors:
            return f"{len(error_rows)} error rows, expected {errors}"
        return None

    return check


def _fitted(ws: Path, stderr: str) -> str | None:
    from anomalens.catalog import load_detector

    detector = load_detector(ws / "out")
    if not np.isfinite(detector.threshold_):
        return f"threshold {detector.threshold_}"
    return None


def _warned(*words: str) -> Callable[[Path, str], str | None]:
    def check(ws: Path, stderr: str) -> str | None:
        problem = _fitted(ws, stderr)
        if problem:
            return problem
        warnings = [line for line in stderr.splitlines() if line.startswith("anomalens: warning:")]
        if not any(all(w.lower() in line.lower() for w in words) for line in warnings):
            return f"no warning saying {words}: {warnings}"
        return None

    return check


def _metrics(predicate: Callable[[dict], str | None]) -> Callable[[Path, str], str | None]:
    def check(ws: Path, stderr: str) -> str | None:
        def refuse(constant):
            raise ValueError(constant)

        metrics = json.loads((ws / "out" / "metrics.json").read_text(), parse_constant=refuse)
        return predicate(metrics)

    return check


def _names_escaped(csv_name: str) -> Callable[[Path, str], str | None]:
    def check(ws: Path, stderr: str) -> str | None:
        text = (ws / "out" / csv_name).read_text(encoding="utf-8")
        return None if "caf\\xe9-latin1.png" in text else "the non-UTF-8 name is not in the output, escaped"

    return check


# ---------------------------------------------------------------------------------------- faults
@contextlib.contextmanager
def _disk_full_on_csv(ws: Path) -> Iterator[None]:
    import anomalens.outputs.predictions as workflow

    real = workflow.csv.DictWriter

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(ws / "out" / "predictions.csv"))

    workflow.csv.DictWriter = disk_full
    try:
        yield
    finally:
        workflow.csv.DictWriter = real


@contextlib.contextmanager
def _disk_full_on_weights(ws: Path) -> Iterator[None]:
    import safetensors.torch

    real = safetensors.torch.save_file

    def disk_full(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    safetensors.torch.save_file = disk_full
    try:
        yield
    finally:
        safetensors.torch.save_file = real


# ---------------------------------------------------------------------------------------- child processes
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anomalens.cli", *args]


def _wait_for_stage(proc: subprocess.Popen, parent: Path, prefix: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not any(p.name.startswith(prefix) for p in parent.iterdir()):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _signal_during(command: str, sig: int) -> Callable[[Path], tuple[str, str]]:
    """Start ``fit`` or ``predict`` in a child, send ``sig`` once it is writing, then check that nothing
    looks like a result and that the next run cleans up and succeeds."""

    def custom(ws: Path) -> tuple[str, str]:
        from anomalens.cli import main

        target = ws / "out"
        if command == "fit":
            args = ["fit", "padim", str(ws / "cat"), "-o", str(target), "--image-size", "256", "-q"]  # long enough
        else:
            many = ws / "many"
            many.mkdir()
            for i in range(16):  # 96 images: two chunks of 64, so the signal lands mid-run
                for path in (ws / "imgs").iterdir():
                    shutil.copy(path, many / f"{i:02d}_{path.name}")
            args = ["predict", str(ws / "run"), str(many), "-o", str(target), "--heatmaps", "all", "-q"]
        proc = subprocess.Popen(_cli(*args), env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if not _wait_for_stage(proc, ws, ".out.partial-"):
                return "traceback", f"the child ended before staging: {proc.communicate()[1][-300:]}"
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
            stderr = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
        if sig == signal.SIGTERM and (rc != 143 or "Traceback" in stderr):
            return "traceback", f"exit {rc}: {stderr.strip()[-300:]}"
        if sig == signal.SIGTERM and "anomalens: terminated" not in stderr:
            return "multi-line", f"SIGTERM without its one line: {stderr.strip()[-300:]}"
        if sig == signal.SIGTERM and [p.name for p in ws.iterdir() if p.name.startswith(".out.partial-")]:
            return "half-written", "SIGTERM: the staging folder was left behind (it is removed on the way out)"
        if target.exists():
            return "half-written", f"{target} exists after the {signal.Signals(sig).name}"
        quiet = io.StringIO()
        with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(io.StringIO()):
            again = main(args) if command == "predict" else main([*args[:-3], *FIT])
        if again != 0:
            return "refused valid", f"the next run failed: {quiet.getvalue().strip()}"
        leftovers = [p.name for p in ws.iterdir() if p.name.startswith(".out.partial-")]
        if leftovers:
            return "half-written", f"leftovers after the next run: {leftovers}"
        return "correct", f"{signal.Signals(sig).name}: nothing left that looks like a result; the next run cleaned up"

    return custom


def _resume_right_after_kill_9(ws: Path) -> tuple[str, str]:
    """kill -9 of a predict that has written results (its decoding worker alive), then ``--resume`` at once:
    the dead command's worker must not keep the folder locked, and the resumed rows equal a whole run's."""
    from anomalens.cli import main

    many = ws / "many"
    many.mkdir()
    for i in range(16):  # 96 images, given twice: three chunks of 64, so the kill lands mid-run
        for path in (ws / "imgs").iterdir():
            shutil.copy(path, many / f"{i:02d}_{path.name}")
    args = ["predict", str(ws / "run"), str(many), str(many), "-o", str(ws / "out"), "--heatmaps", "all",
            "--workers", "1", "-q"]
    proc = subprocess.Popen(_cli(*args), env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".out.partial-") and (p / "predictions.jsonl").is_file()
                      and (p / "predictions.jsonl").stat().st_size for p in ws.iterdir()):
            if proc.poll() is not None or time.monotonic() > deadline:
                return "traceback", f"the child ended before writing results: {proc.communicate()[1][-300:]}"
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(io.StringIO()):
        again = main([*args, "--resume"])
    if again != 0:
        return "refused valid", f"--resume right after kill -9 failed: {quiet.getvalue().strip()}"
    rows = (ws / "out" / "predictions.jsonl").read_text().splitlines()
    expected = 2 * len(list(many.iterdir()))  # the folder is given twice: every image is scored twice
    if len(rows) != expected:
        return "silently wrong", f"{len(rows)} rows after --resume, {expected} expected"
    return "correct", "resumed at once after kill -9; every image (listed twice) has its rows"


def _race(command: str) -> Callable[[Path], tuple[str, str]]:
    """Two identical commands into one output folder at once: exactly one wins, the other says so."""

    def custom(ws: Path) -> tuple[str, str]:
        target = ws / "out"
        if command == "fit":
            args = _cli("fit", "padim", str(ws / "cat"), "-o", str(target), *FIT)
        else:
            args = _cli("predict", str(ws / "run"), str(ws / "imgs"), "-o", str(target), "-q")
        procs = [subprocess.Popen(args, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(rc for rc, _ in results)
        if codes != [0, 2]:
            kind = "traceback" if any(rc not in (0, 2) for rc in codes) else "data lost"
            return kind, f"exit codes {codes}: {[e.strip()[-200:] for _, e in results]}"
        loser = next(e for rc, e in results if rc == 2)
        if len(_error_lines(loser)) != 1 or not loser.strip().startswith("anomalens: error:"):
            return "multi-line", loser.strip()[-300:]
        if "another anomalens command" not in loser and "already exists" not in loser:
            return "multi-line", f"the line does not say why it lost: {loser.strip()}"
        if not (target / ("detector.json" if command == "fit" else "predictions.csv")).exists():
            return "data lost", "the winner's result is missing"
        leftovers = sorted(p.name for p in ws.iterdir() if p.name.startswith(".out"))
        if leftovers:
            return "half-written", f"staging folder or lock file left behind: {leftovers}"
        return "correct", f"one wins, the other: {loser.strip()}"

    return custom


# ---------------------------------------------------------------------------------------- the cases
def _fit(*extra: str, data: str = "{cat}") -> list[str]:
    return ["fit", "padim", data, "-o", "{ws}/out", *FIT, *extra]


def _predict(*extra: str, run: str = "{run}", images: str = "{imgs}") -> list[str]:
    return ["predict", run, images, "-o", "{ws}/out", "-q", *extra]


def _test(*extra: str, data: str = "{cat}") -> list[str]:
    return ["test", "{run}", data, "-o", "{ws}/out", "-q", *extra]


def _fit_second_run(ws: Path) -> None:
    from anomalens.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["fit", "padim", str(ws / "cat"), "-o", str(ws / "run2"), *FIT, "-p", "seed=1"]) == 0


def _edit_export_threshold(ws: Path) -> None:
    path = ws / "exp" / "export.json"
    manifest = json.loads(path.read_text())
    manifest["decision"]["image_threshold"] = manifest["decision"]["image_threshold"] * 100
    path.write_text(json.dumps(manifest, indent=2))


def _api(action: Callable[[Path], object], expect: str) -> Callable[[Path], tuple[str, str]]:
    """A Python API call: ``expect`` "ok" (it must return without error, and a truthy result means a problem
    it found), or words the one-line AnomalensError must contain; any other exception is a traceback."""
    from anomalens.errors import AnomalensError

    def custom(ws: Path) -> tuple[str, str]:
        try:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                problem = action(ws)
        except AnomalensError as exc:
            text = str(exc)
            if expect == "ok":
                return "refused valid", text
            if "\n" in text or expect.lower() not in text.lower():
                return "multi-line", text[:300]
            return "clean error", text
        except Exception as exc:  # noqa: BLE001 — what the classification is for
            return "traceback", f"{type(exc).__name__}: {exc}"[:300]
        if expect != "ok":
            return "silently wrong", "returned without the error expected"
        return ("silently wrong", str(problem)) if problem else ("correct", "")

    return custom


def _api_fit(ws: Path, folder: Path) -> str | None:
    from anomalens.catalog import create_detector

    detector = create_detector("padim", image_size=64, batch_size=8, device="cpu").fit(str(folder), progress=False)
    return None if detector.threshold_ > 0 else "no threshold after fit"


def _api_predict_test_split(ws: Path) -> str | None:
    from anomalens.catalog import load_detector

    result = load_detector(ws / "run").predict(str(ws / "cat" / "test"), progress=False)
    expected = len(list((ws / "cat" / "test").rglob("*.png")))
    return None if len(result.scores) == expected else f"{len(result.scores)} scores for {expected} images"


def _api_predict_empty(ws: Path) -> None:
    from anomalens.catalog import load_detector

    (ws / "empty").mkdir()
    load_detector(ws / "run").predict(str(ws / "empty"), progress=False)


def _api_calibrate_area_logged(ws: Path) -> str | None:
    import logging

    from anomalens.catalog import load_detector
    from anomalens.data import load_dataset

    logger = logging.getLogger("anomalens")
    handler = logging.StreamHandler(io.StringIO())  # progress to a log, not a terminal
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        dataset = load_dataset(ws / "cat")
        info = load_detector(ws / "run").calibrate(dataset.test, method="area", progress=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return None if info else "no calibration record"


def _api_export_over_user_folder(ws: Path) -> None:
    from anomalens.export import export_run

    _user_folder(ws)
    try:
        export_run(ws / "run", ws / "mine", overwrite=True, progress=False)
    finally:
        if (ws / "mine" / "notes.txt").read_text() != "mine\n":
            raise RuntimeError("the user's file was changed")


def _serve_bad_requests(ws: Path) -> tuple[str, str]:
    """A real ``anomalens serve`` on 127.0.0.1: a non-image, an empty body, a foreign Host, a cross-origin
    POST each get a 4xx with a one-line JSON error, and the server still answers a good image."""
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(_cli("serve", str(ws / "run"), "--port", str(port), "-q"), env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        request = urllib.request.Request(url + "/predict", data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream", **headers})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    return "traceback", f"the server did not start: {proc.communicate()[1][-300:]}"
                time.sleep(0.2)
        image = sorted((ws / "imgs").iterdir())[0].read_bytes()
        bad = {"not an image": (b"hello", {}), "empty body": (b"", {}),
               "foreign Host": (image, {"Host": "evil.example"}),
               "cross-origin POST": (image, {"Origin": "http://evil.example"})}
        for what, (body, headers) in bad.items():
            status, text = post(body, headers)
            if not 400 <= status < 500:
                return "silently wrong" if status < 400 else "traceback", f"{what}: HTTP {status} {text[:200]}"
            if "\n" in json.loads(text).get("detail", "\n"):
                return "multi-line", f"{what}: {text[:200]}"
        status, text = post(image, {})
        if status != 200 or "score" not in json.loads(text):
            return "refused valid", f"a good image after the bad ones: HTTP {status} {text[:200]}"
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    if "Traceback" in stderr:
        return "traceback", stderr.strip().splitlines()[-1]
    return "correct", "4 bad requests: 4xx with one-line errors; the good image after them scored"


def _ray_unreadable_image_under_q(ws: Path) -> tuple[str, str]:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "correct", "Ray is not installed (the case needs the ray extra)"
    (ws / "imgs" / "m_broken.png").write_bytes(b"not a png")
    proc = subprocess.run(_cli("predict", str(ws / "run"), str(ws / "imgs"), "-o", str(ws / "out"), "--engine", "ray",
                               "--workers", "1", "-q"), env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 2 or "Traceback" in proc.stderr:
        return "traceback", f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    if len(lines) != 1 or "m_broken.png" not in lines[0]:
        return "multi-line", " | ".join(lines)[:300]
    if (ws / "out").exists():
        return "half-written", "out exists"
    return "clean error", lines[0]


# ---------------------------------------------------------------------------------------- issue 27's detectors
def _fit_as(model: str, *extra: str, data: str = "{cat}") -> list[str]:
    """``fit MODEL`` with the tiny settings (no epochs given: a case that trains adds ``-p epochs=1``)."""
    return ["fit", model, data, "-o", "{ws}/out", *FIT, *extra]


def _supervised(*extra: str, model: str = "supersimplenet", abnormal: Sequence[str] = ("{cat}/test/scratch",),
                masks: str | None = "{cat}/ground_truth", epochs: Sequence[str] = ("-p", "epochs=1")) -> list[str]:
    """``fit MODEL --normal train/good --abnormal ... [--masks ...]``: labelled defects (the supervised setting)."""
    return ["fit", model, "--normal", "{cat}/train/good", "--abnormal", *abnormal,
            *(["--masks", masks] if masks else []), "-o", "{ws}/out", *FIT, *epochs, *extra]


def _defects_folder(damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """``defects/scratch``: a copy of the category's scratch images (then ``damage(folder)``)."""

    def setup(ws: Path) -> None:
        folder = ws / "defects" / "scratch"
        shutil.copytree(ws / "cat" / "test" / "scratch", folder)
        if damage is not None:
            damage(folder)

    return setup


def _masks_folder(write: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    """``masks/scratch``: ``write(image, mask folder)`` for every scratch image."""

    def setup(ws: Path) -> None:
        folder = ws / "masks" / "scratch"
        folder.mkdir(parents=True)
        for image in sorted((ws / "cat" / "test" / "scratch").iterdir()):
            write(image, folder)

    return setup


def _mask_named_otherwise(image: Path, folder: Path) -> None:
    Image.new("L", Image.open(image).size).save(folder / f"other-{image.stem}_mask.png")


def _mask_too_small(image: Path, folder: Path) -> None:
    Image.new("L", (10, 10)).save(folder / f"{image.stem}_mask.png")


def _labelled_run(ws: Path, stderr: str) -> str | None:
    info = json.loads((ws / "out" / "run.json").read_text())
    defects = len(list((ws / "cat" / "test" / "scratch").iterdir()))
    if info.get("n_labelled_defects") != defects or info.get("n_labelled_defect_masks") != defects:
        return f"run.json: {info.get('n_labelled_defects')} labelled defects, {info.get('n_labelled_defect_masks')} masks"
    return _fitted(ws, stderr)


def _quiet_main(*argv: str) -> None:
    from anomalens.cli import main

    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    assert rc == 0, err.getvalue()


def _member_run(model: str, *extra: str, name: str = "run_c") -> Callable[[Path], None]:
    """A second member run ``name``, fitted in the case's setup (a cheap detector, 64 px unless ``extra`` says)."""
    return lambda ws: _quiet_main("fit", model, ws / "cat", "-o", ws / name, *FIT, *extra)


def _products(*categories: str) -> Callable[[Path], None]:
    """``products/``: a dataset root holding the category once per name (the same images under each)."""

    def setup(ws: Path) -> None:
        for category in categories:
            shutil.copytree(ws / "cat", ws / "products" / category)

    return setup


def _unified_run(*categories: str, then: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A PaDiM run ``urun`` fitted with ``--unified`` on ``products`` of ``categories``; then ``then(ws)``."""

    def setup(ws: Path) -> None:
        _products(*categories)(ws)
        _quiet_main("fit", "padim", ws / "products", "--unified", "-o", ws / "urun", *FIT)
        if then is not None:
            then(ws)

    return setup


def _per_category(expected: Sequence[str]) -> Callable[[Path, str], str | None]:
    def check(ws: Path, stderr: str) -> str | None:
        metrics = json.loads((ws / "out" / "metrics.json").read_text())
        found = sorted(metrics.get("per_category") or {})
        return None if found == sorted(expected) else f"per_category {found}, expected {sorted(expected)}"

    return check


def _unified_categories(expected: Sequence[str]) -> Callable[[Path, str], str | None]:
    def check(ws: Path, stderr: str) -> str | None:
        found = json.loads((ws / "out" / "run.json").read_text()).get("categories")
        return None if found == sorted(expected) else f"run.json categories {found}, expected {sorted(expected)}"

    return check


def _api_padim_with_defects(ws: Path) -> None:
    from anomalens.catalog import create_detector

    create_detector("padim", image_size=64, batch_size=8, device="cpu").fit(
        str(ws / "cat" / "train" / "good"), progress=False, abnormal=str(ws / "cat" / "test" / "scratch"))


def _ensemble(*runs: str, out: str = "{ws}/out", extra: Sequence[str] = ()) -> list[str]:
    return ["ensemble", *runs, "-o", out, "--data", "{cat}", "-q", *extra]


def _edit_member_threshold(ws: Path) -> None:
    _edit_config(lambda c: c["decision"].update(image_threshold=c["decision"]["image_threshold"] * 100))(ws)



def _export(out: str, *extra: str) -> list[str]:
    return ["export", "{run}", "--format", "onnx", "-o", out, "-q", *extra]


BAD_DATA = "bad data"
BAD_PARAMS = "bad parameters"
TAMPERED = "tampered runs"
FILES = "file system"
SIGNALS = "signals and races"
EXPORTS = "export"
API = "python api"
SERVICE = "serve"
RAY = "ray"
ENSEMBLE = "ensemble"
UNIFIED = "unified"

CASES: list[Case] = [
    # ------------------------------------------------------------------ broken images and folders
    Case("fit-zero-byte-image", BAD_DATA, _fit(), _zero_bytes(lambda ws: _first(_train(ws))), says=["000.png"]),
    Case("fit-truncated-png", BAD_DATA, _fit(), _truncate(lambda ws: _first(_train(ws))), says=["000.png"]),
    Case("fit-text-named-png", BAD_DATA, _fit(), _text_as_png, says=["000.png", "not a recognised image"]),
    Case("fit-decompression-bomb", BAD_DATA, _fit(), _bomb, says=["000.png"]),
    Case("fit-empty-train-folder", BAD_DATA, _fit(), _empty_train, says=["train/good", "no images"]),
    Case("fit-missing-data-folder", BAD_DATA, _fit(data="{ws}/nowhere"), says=["nowhere"]),
    Case("fit-data-is-a-file", BAD_DATA, _fit(data="{ws}/user.txt"), says=["user.txt"]),
    Case("fit-no-train-split", BAD_DATA, _fit(), lambda ws: shutil.rmtree(_train(ws).parent), says=["cat"]),
    Case("fit-one-training-image", BAD_DATA, _fit(), _keep_train(1), says=["training image"]),
    Case("fit-two-training-images", BAD_DATA, _fit(), _keep_train(2), says=["at least 2", "holdout_fraction"]),
    Case("fit-two-training-images-none-held-out", BAD_DATA, _fit("-p", "holdout_fraction=0"), _keep_train(2),
         expect="ok", check=_warned("threshold", "only")),
    Case("fit-batch-size-given-twice", BAD_PARAMS, _fit("-p", "batch_size=4"), says=["batch_size", "twice"]),
    Case("fit-identical-training-images", BAD_DATA, _fit(), _identical_train, expect="ok",
         check=_warned("identical")),
    Case("fit-mixed-formats-and-depths", BAD_DATA, _fit(), _mixed_formats, expect="ok", check=_fitted),
    Case("fit-1x1-and-extreme-aspect-images", BAD_DATA, _fit(), _odd_sizes, expect="ok", check=_fitted),
    Case("fit-non-utf8-file-name", BAD_DATA, _fit(), _non_utf8_copy(_train), expect="ok", check=_fitted),
    Case("fit-folder-named-like-an-image", BAD_DATA, _fit(), _folder_named_like_an_image, expect="ok", check=_fitted),
    Case("fit-broken-test-mask-it-never-reads", BAD_DATA, _fit(), _zero_bytes(_mask_path), expect="ok", check=_fitted),
    Case("test-mask-of-wrong-size", BAD_DATA, _test(), _mask_of_wrong_size, says=["mask", "size"]),
    Case("test-zero-byte-mask", BAD_DATA, _test(), _zero_bytes(_mask_path), says=["_mask.png"]),
    Case("test-missing-mask", BAD_DATA, _test(), lambda ws: _mask_path(ws).unlink(), says=["mask missing"]),
    Case("test-without-test-split", BAD_DATA, _test(), _no_test, says=["test"]),
    Case("test-only-normal-images", BAD_DATA, _test(), _only_normal_tests, expect="ok",
         check=_metrics(lambda m: None if m["image_auroc"] is None and m["n_anomalous"] == 0 else str(m))),
    Case("test-non-utf8-file-name", BAD_DATA, _test(), _non_utf8_copy(lambda ws: ws / "cat" / "test" / "good"),
         expect="ok", check=_names_escaped("scores.csv")),
    Case("predict-empty-folder", BAD_DATA, _predict(), _empty_images, says=["imgs", "no images"]),
    Case("predict-missing-path", BAD_DATA, _predict(images="{ws}/nowhere"), says=["nowhere"]),
    Case("predict-one-broken-image-with-skip-bad", BAD_DATA, _predict("--skip-bad"), _one_broken_image, expect="ok",
         check=_predictions_complete(errors=1)),
    Case("predict-one-broken-image-stops-resumably", BAD_DATA, _predict(), _one_broken_image,
         says=["zz_broken.png", "--resume"], may_leave=[".out.partial-"]),
    Case("predict-only-broken-images", BAD_DATA, _predict(), _all_broken_images, says=["cannot read"]),
    Case("predict-non-utf8-file-name", BAD_DATA, _predict(), _non_utf8_copy(lambda ws: ws / "imgs"), expect="ok",
         check=_names_escaped("predictions.csv")),
    Case("predict-names-that-print-alike", BAD_DATA, _predict(), _names_that_print_alike, expect="ok",
         check=_one_row_each),
    Case("calibrate-on-the-training-images", BAD_DATA, ["calibrate", "{run}", "{cat}/train/good", "-q"],
         says=["training"]),
    Case("calibrate-normals-it-never-saw", BAD_DATA, ["calibrate", "{run}", "{ws}/normals", "-q"], _normals_folder,
         expect="ok", may_change=["run"], check=lambda ws, err: None),
    Case("fit-folder-of-no-known-layout", BAD_DATA, _fit(data="{ws}/notes"), _notes_folder,
         says=["notes", "known layout"]),
    Case("fit-layout-whose-split-is-missing", BAD_DATA, _fit("--layout", "btad"), says=["train/ok", "missing"]),
    Case("fit-unknown-layout", BAD_DATA, _fit("--layout", "nope"), says=["nope"]),
    Case("fit-unknown-one-class-class", BAD_DATA, _fit(data="mnist:normal=11"), says=["11"]),
    Case("fit-malformed-one-class-spec", BAD_DATA, _fit(data="fashion-mnist:normal"), says=["normal"]),
    # ------------------------------------------------------------------ parameters
    *[Case(f"fit-param-{key}-{value}".replace("[", "").replace("]", "").replace(",", "_"), BAD_PARAMS,
           _fit("-p", f"{key}={value}"), says=[key])
      for key, value in [("n_features", "abc"), ("n_features", "1.5"), ("n_features", "0"), ("epsilon", "abc"),
                         ("epsilon", "-1"), ("blur_sigma", "-1"), ("layers", "5"), ("layers", "[9]"),
                         ("batch_size", "abc"), ("batch_size", "0"), ("false_alarm_rate", "2"),
                         ("holdout_fraction", "0.95"), ("image_size", "[64,64,64]"), ("threshold_folds", "-2"),
                         ("no_such_parameter", "1")]],
    Case("fit-param-without-equals", BAD_PARAMS, _fit("-p", "n_features"), says=["n_features"]),
    Case("fit-image-size-7", BAD_PARAMS, _fit("--image-size", "7"), says=["7"]),
    Case("fit-image-size-0", BAD_PARAMS, _fit("--image-size", "0"), says=["image"]),
    Case("fit-unknown-detector", BAD_PARAMS, ["fit", "padin", "{cat}", "-o", "{ws}/out", "-q"], says=["padim"]),
    Case("fit-cuda-without-a-gpu", BAD_PARAMS, _fit("--device", "cuda"), says=["cuda"]),
    Case("fit-unknown-device", BAD_PARAMS, _fit("--device", "tpu"), says=["tpu"]),
    Case("fit-unknown-backbone", BAD_PARAMS, _fit("--backbone", "resnet9000"), says=["resnet9000"]),
    Case("fit-hub-backbone-refused", BAD_PARAMS, _fit("--backbone", "hf-hub:someone/model"), says=["hf-hub"]),
    Case("fit-missing-weights-file", BAD_PARAMS, _fit("--weights", "{ws}/none.pth"), says=["none.pth"]),
    Case("fit-garbage-weights-file", BAD_PARAMS, _fit("--weights", "{ws}/user.txt"), says=["user.txt"]),
    Case("fit-tile-larger-than-the-image", BAD_PARAMS, _fit("-p", "tile_size=128"), says=["tile_size", "larger"]),
    Case("fit-config-not-yaml", BAD_PARAMS, _fit("--config", "{ws}/user.txt"), says=["user.txt"]),
    Case("fit-config-missing", BAD_PARAMS, _fit("--config", "{ws}/none.yaml"), says=["none.yaml"]),
    Case("patchcore-coreset-fraction-0", BAD_PARAMS,
         ["fit", "patchcore", "{cat}", "-o", "{ws}/out", *FIT, "-p", "coreset_fraction=0"], says=["coreset_fraction"]),
    Case("stpm-epochs-0", BAD_PARAMS, ["fit", "stpm", "{cat}", "-o", "{ws}/out", *FIT, "-p", "epochs=0"],
         says=["epochs"]),
    Case("reverse-distillation-epochs-0", BAD_PARAMS,
         ["fit", "reverse_distillation", "{cat}", "-o", "{ws}/out", *FIT, "-p", "epochs=0"], says=["epochs"]),
    Case("efficientad-image-too-small", BAD_PARAMS,
         ["fit", "efficientad", "{cat}", "-o", "{ws}/out", "--image-size", "32", *FIT[2:]], says=["efficientad"]),
    Case("efficientad-penalty-folder-missing", BAD_PARAMS,
         ["fit", "efficientad", "{cat}", "-o", "{ws}/out", *FIT, "-p", "penalty_images={ws}/missing"],
         says=["missing"]),
    Case("draem-anomaly-source-missing", BAD_PARAMS,
         ["fit", "draem", "{cat}", "-o", "{ws}/out", *FIT, "-p", "anomaly_source={ws}/missing"], says=["missing"]),
    Case("predict-negative-workers", BAD_PARAMS, _predict("--workers", "-1"), says=["workers"]),
    # ------------------------------------------------------------------ tampered runs
    Case("run-weights-deleted", TAMPERED, _predict(), lambda ws: (ws / "run" / "weights.safetensors").unlink(),
         says=["weights.safetensors"]),
    Case("run-weights-truncated", TAMPERED, _predict(), _truncate(lambda ws: ws / "run" / "weights.safetensors"),
         says=["weights.safetensors"]),
    Case("run-weights-one-byte-flipped", TAMPERED, _predict(), _flip_a_byte, says=["weights.safetensors"]),
    Case("run-nan-in-a-weight", TAMPERED, _predict(), _rewrite_weights(_nan_weight), says=["nan"]),
    Case("run-nan-threshold", TAMPERED, _predict(), _edit_config(_set_threshold(float("nan"))), says=["threshold"]),
    Case("run-infinite-threshold", TAMPERED, _predict(), _edit_config(_set_threshold(float("inf"))),
         says=["threshold"]),
    Case("run-boolean-threshold", TAMPERED, _predict(), _edit_config(_set_threshold(True)), says=["threshold"]),
    Case("run-text-threshold", TAMPERED, _predict(), _edit_config(_set_threshold("high")), says=["threshold"]),
    Case("run-threshold-times-100", TAMPERED, _predict(),
         _edit_config(lambda c: c["decision"].update(image_threshold=c["decision"]["image_threshold"] * 100)),
         says=["detector.json", "decision rule", "edited"]),
    Case("run-threshold-edited-and-its-record-deleted", TAMPERED, _predict(),
         _edit_config(lambda c: (c["decision"].update(image_threshold=c["decision"]["image_threshold"] * 100),
                                 c.pop("decision_sha256"), c.update(format_version=2))),
         says=["detector.json", "decision_sha256"]),
    Case("run-backbone-changed", TAMPERED, _predict(), _edit_config(_set_param("backbone", "efficientnet_lite2")),
         says=["detector.json"]),
    Case("run-image-size-changed", TAMPERED, _predict(), _edit_config(_set_param("image_size", 96)),
         says=["detector.json"]),
    Case("run-layers-changed", TAMPERED, _predict(), _edit_config(_set_param("layers", [1, 2])),
         says=["detector.json"]),
    Case("run-unknown-detector-name", TAMPERED, _predict(), _edit_config(lambda c: c.update(detector="evil")),
         says=["evil"]),
    Case("run-class-path-as-name", TAMPERED, _predict(), _edit_config(lambda c: c.update(detector="os.system")),
         says=["os.system"]),
    Case("run-future-format", TAMPERED, _predict(), _edit_config(lambda c: c.update(format_version=99)),
         says=["99"]),
    Case("run-config-not-json", TAMPERED, _predict(), lambda ws: (ws / "run" / "detector.json").write_text("{oops"),
         says=["detector.json"]),
    Case("run-config-empty", TAMPERED, _predict(), _zero_bytes(lambda ws: ws / "run" / "detector.json"),
         says=["detector.json"]),
    Case("run-config-a-list", TAMPERED, _predict(), lambda ws: (ws / "run" / "detector.json").write_text("[1, 2]"),
         says=["detector.json"]),
    Case("run-missing-folder", TAMPERED, _predict(run="{ws}/norun"), says=["norun"]),
    Case("run-is-a-data-folder", TAMPERED, _predict(run="{cat}"), says=["cat"]),
    Case("run-with-a-pickle-beside-it", TAMPERED, _predict(), _pickle_beside, expect="ok",
         check=_predictions_complete()),
    # ------------------------------------------------------------------ output folders and the file system
    Case("out-is-an-existing-file", FILES, ["fit", "padim", "{cat}", "-o", "{ws}/user.txt", *FIT], says=["user.txt"]),
    Case("out-under-a-file", FILES, ["fit", "padim", "{cat}", "-o", "{ws}/user.txt/run", *FIT], says=["user.txt"]),
    Case("out-is-the-input-images-with-overwrite", FILES,
         ["predict", "{run}", "{imgs}", "-o", "{imgs}", "--overwrite", "-q"], says=["imgs"]),
    Case("out-is-the-run-with-overwrite", FILES, ["predict", "{run}", "{imgs}", "-o", "{run}", "--overwrite", "-q"],
         says=["run"]),
    Case("out-inside-the-input-images", FILES, ["predict", "{run}", "{imgs}", "-o", "{imgs}/out", "-q"],
         says=["imgs"]),
    Case("out-is-the-data-for-fit-with-overwrite", FILES,
         ["fit", "padim", "{cat}", "-o", "{cat}", "--overwrite", *FIT], says=["cat"]),
    Case("test-report-into-the-data", FILES, ["test", "{run}", "{cat}", "-o", "{cat}/report", "-q"], says=["cat"]),
    Case("out-is-a-user-folder", FILES, ["predict", "{run}", "{imgs}", "-o", "{ws}/mine", "-q"], _user_folder,
         says=["mine"]),
    Case("out-is-a-user-folder-with-overwrite", FILES,
         ["predict", "{run}", "{imgs}", "-o", "{ws}/mine", "--overwrite", "-q"], _user_folder,
         says=["not a folder anomalens wrote"]),
    Case("out-is-a-folder-holding-the-run", FILES, ["predict", "{run}", "{imgs}", "-o", "{ws}", "--overwrite", "-q"],
         says=["contains an input"]),
    Case("out-is-a-dangling-link", FILES, _predict("--overwrite"),
         lambda ws: (ws / "out").symlink_to(ws / "missing"), says=["symbolic link"]),
    Case("out-is-a-link-loop", FILES, _predict("--overwrite"), lambda ws: (ws / "out").symlink_to(ws / "out"),
         says=["symbolic link"]),
    Case("out-on-a-read-only-file-system", FILES, ["fit", "padim", "{cat}", "-o", "/proc/anomalens-run", *FIT],
         says=["/proc"]),
    Case("disk-full-while-writing-predictions", FILES, _predict(), fault=_disk_full_on_csv,
         says=["No space left on device"]),
    Case("disk-full-while-saving-a-run", FILES, _fit(), fault=_disk_full_on_weights, says=["No space left on device"]),
    Case("overwrite-replaces-an-anomalens-run", FILES, ["fit", "padim", "{cat}", "-o", "{run}", "--overwrite", *FIT],
         expect="ok", may_change=["run"], check=lambda ws, err: None),
    Case("predict-into-an-existing-result-without-overwrite", FILES,
         ["predict", "{run}", "{imgs}", "-o", "{ws}/out", "-q"], setup=lambda ws: _predict_once(ws),
         says=["out"]),
    # ------------------------------------------------------------------ export: the output protocol, its inputs
    Case("export-overwrite-into-a-user-folder", EXPORTS, _export("{ws}/mine", "--overwrite"), _user_folder,
         says=["not a folder anomalens wrote"]),
    Case("export-overwrite-into-the-run", EXPORTS, _export("{run}", "--overwrite"), says=["run", "input"]),
    Case("export-overwrite-inside-the-run", EXPORTS, _export("{run}/export", "--overwrite"), says=["run", "input"]),
    Case("export-overwrite-into-the-dataset", EXPORTS, _export("{cat}", "--overwrite"), says=["cat"]),
    Case("export-overwrite-into-the-workspace-holding-the-run", EXPORTS, _export("{ws}", "--overwrite"),
         says=["contains an input"]),
    Case("export-overwrite-into-predictions", EXPORTS, _export("{ws}/out", "--overwrite"),
         setup=lambda ws: _predict_once(ws), says=["not an export folder"]),
    Case("export-into-an-existing-file", EXPORTS, _export("{ws}/user.txt"), says=["user.txt"]),
    Case("export-into-an-existing-empty-folder", EXPORTS, _export("{ws}/exp"), lambda ws: (ws / "exp").mkdir(),
         expect="ok", may_change=["exp"], check=lambda ws, err: None if (ws / "exp" / "export.json").is_file()
         else "no export.json"),
    Case("export-over-an-earlier-export", EXPORTS, _export("{ws}/exp", "--overwrite"), lambda ws: _export_once(ws),
         expect="ok", may_change=["exp"], check=lambda ws, err: None if (ws / "exp" / "export.json").is_file()
         else "no export.json"),
    Case("export-unknown-format", EXPORTS, ["export", "{run}", "--format", "tflite", "-o", "{ws}/exp", "-q"],
         says=["tflite"]),
    Case("export-of-a-missing-run", EXPORTS, ["export", "{ws}/norun", "--format", "onnx", "-o", "{ws}/exp", "-q"],
         says=["norun"]),
    Case("export-of-a-data-folder", EXPORTS, ["export", "{cat}", "--format", "onnx", "-o", "{ws}/exp", "-q"],
         says=["cat"]),
    Case("verify-export-of-a-folder-with-sub-folders", EXPORTS, ["verify-export", "{ws}/exp", "{cat}/test", "-q"],
         lambda ws: _export_once(ws), expect="ok", may_change=["exp"], check=lambda ws, err: None),
    Case("verify-export-of-a-missing-export", EXPORTS, ["verify-export", "{ws}/noexp", "{imgs}", "-q"],
         says=["noexp"]),
    Case("verify-export-against-another-run", EXPORTS, ["verify-export", "{ws}/exp", "{imgs}", "--run", "{ws}/run2", "-q"],
         lambda ws: (_export_once(ws), _fit_second_run(ws)), says=["run2"]),
    Case("verify-export-with-a-threshold-edited-in-export-json", EXPORTS, ["verify-export", "{ws}/exp", "{imgs}", "-q"],
         lambda ws: (_export_once(ws), _edit_export_threshold(ws)), says=["export.json"]),
    Case("predict-with-an-export-whose-model-file-is-truncated", EXPORTS,
         ["predict", "{ws}/exp", "{imgs}", "-o", "{ws}/out", "-q"],
         lambda ws: (_export_once(ws), _truncate(lambda w: w / "exp" / "model.onnx")(ws)), says=["model.onnx"]),
    # ------------------------------------------------------------------ the Python API (in this process)
    Case("api-fit-on-a-folder", API, custom=_api(lambda ws: _api_fit(ws, ws / "cat" / "train" / "good"), "ok")),
    Case("api-fit-on-a-missing-folder", API, custom=_api(lambda ws: _api_fit(ws, ws / "nothing"), "nothing")),
    Case("api-predict-on-a-folder-with-sub-folders", API, custom=_api(_api_predict_test_split, "ok")),
    Case("api-predict-on-an-empty-folder", API, custom=_api(_api_predict_empty, "no image")),
    Case("api-calibrate-area-with-progress-in-a-log", API, custom=_api(_api_calibrate_area_logged, "ok")),
    Case("api-export-over-a-users-folder", API, custom=_api(_api_export_over_user_folder, "not a folder anomalens wrote")),
    # ------------------------------------------------------------------ the service (a real uvicorn on 127.0.0.1)
    Case("serve-with-an-impossible-port", SERVICE, ["serve", "{run}", "--port", "99999", "-q"], says=["port"]),
    Case("serve-with-a-nan-upload-limit", SERVICE, ["serve", "{run}", "--max-upload-mb", "nan", "-q"],
         says=["max-upload-mb"]),
    Case("serve-answers-bad-requests-with-4xx-and-keeps-serving", SERVICE, custom=_serve_bad_requests),
    # ------------------------------------------------------------------ Ray (a local cluster in a child process)
    Case("ray-predict-with-an-unreadable-image-under-q", RAY, custom=_ray_unreadable_image_under_q),
    # ------------------------------------------------------------------ signals and races (child processes)
    Case("kill-9-during-fit", SIGNALS, custom=_signal_during("fit", signal.SIGKILL)),
    Case("sigterm-during-fit", SIGNALS, custom=_signal_during("fit", signal.SIGTERM)),
    Case("sigterm-during-predict", SIGNALS, custom=_signal_during("predict", signal.SIGTERM)),
    Case("kill-9-during-predict", SIGNALS, custom=_signal_during("predict", signal.SIGKILL)),
    Case("kill-9-during-predict-then-resume-at-once", SIGNALS, custom=_resume_right_after_kill_9),
    Case("two-fits-into-one-folder", SIGNALS, custom=_race("fit")),
    Case("two-predicts-into-one-folder", SIGNALS, custom=_race("predict")),
    # ------------------------------------------------------------------ issue 27's detectors: their parameters
    *[Case(f"{model}-param-{key}-{value}".replace("[", "").replace("]", "").replace(",", "_").replace("{ws}/", ""),
           BAD_PARAMS, _fit_as(model, "-p", f"{key}={value}"), says=[key])
      for model, key, value in [
          ("simplenet", "epochs", "0"), ("simplenet", "noise_std", "-0.015"), ("simplenet", "noise_std", "0"),
          ("simplenet", "discriminator_hidden", "0"), ("simplenet", "patch_size", "0"),
          ("simplenet", "layers", "[9]"), ("simplenet", "margin_normal", "-1"),
          ("glass", "epochs", "0"), ("glass", "ascent_steps", "-1"), ("glass", "radius_quantile", "0"),
          ("glass", "perlin_scales", "[6,0]"), ("glass", "blend", "[0.8,1.5]"), ("glass", "constraint", "ball"),
          ("glass", "anomaly_source", "{ws}/missing"),
          ("supersimplenet", "epochs", "0"), ("supersimplenet", "noise_std", "-1"),
          ("supersimplenet", "perlin_threshold", "2"), ("supersimplenet", "classifier_kernel", "4"),
          ("supersimplenet", "anomaly_probability", "1.5"), ("supersimplenet", "image_score", "mean"),
          ("fastflow", "epochs", "0"), ("fastflow", "flow_steps", "0"), ("fastflow", "clamp", "0"),
          ("fastflow", "hidden_ratio", "-1"), ("fastflow", "layers", "[7]"),
          ("cflow", "epochs", "0"), ("cflow", "coupling_blocks", "0"), ("cflow", "condition_channels", "6"),
          ("cflow", "fiber_batch_size", "0"), ("cflow", "clamp", "-1"), ("cflow", "layers", "[]")]],
    *[Case(f"{model}-image-too-small-for-the-blur", BAD_PARAMS,
           ["fit", model, "{cat}", "-o", "{ws}/out", "--image-size", "8", *FIT[2:], "-p", "epochs=1"],
           says=[model, "blur_sigma"]) for model in ("simplenet", "glass", "supersimplenet")],
    # The flows' encoder pads: a 2-pixel side still gives every level one cell, a (useless but) working model.
    *[Case(f"{model}-image-of-2x300-pixels", BAD_PARAMS,
           ["fit", model, "{cat}", "-o", "{ws}/out", "--image-size", "2x300", *FIT[2:], "-p", "epochs=1"],
           expect="ok", check=_fitted) for model in ("fastflow", "cflow")],
    # ------------------------------------------------------------------ labelled defects (fit --abnormal)
    Case("supersimplenet-abnormal-folder-missing", BAD_DATA, _supervised(abnormal=["{ws}/nodefects"], masks=None),
         says=["nodefects"]),
    Case("supersimplenet-abnormal-folder-empty", BAD_DATA, _supervised(abnormal=["{ws}/defects/scratch"], masks=None),
         lambda ws: (ws / "defects" / "scratch").mkdir(parents=True), says=["scratch", "no images"]),
    Case("supersimplenet-abnormal-truncated-png", BAD_DATA, _supervised(abnormal=["{ws}/defects/scratch"], masks=None),
         _defects_folder(lambda folder: _truncate(lambda ws: _first(folder))(folder)), says=["000.png"]),
    Case("supersimplenet-abnormal-is-the-normal-folder", BAD_DATA,
         _supervised(abnormal=["{cat}/train/good"], masks=None), says=["good"]),
    Case("supersimplenet-two-abnormal-folders-of-one-name", BAD_DATA,
         _supervised(abnormal=["{cat}/test/scratch", "{ws}/defects/scratch"], masks=None), _defects_folder(),
         says=["scratch", "twice"]),
    Case("supersimplenet-masks-named-after-no-abnormal-image", BAD_DATA,
         _supervised(masks="{ws}/masks"), _masks_folder(_mask_named_otherwise), says=["mask missing"]),
    Case("supersimplenet-mask-of-the-wrong-size", BAD_DATA, _supervised(masks="{ws}/masks"),
         _masks_folder(_mask_too_small), says=["mask", "size"]),
    Case("supersimplenet-masks-without-abnormal", BAD_DATA,
         ["fit", "supersimplenet", "--normal", "{cat}/train/good", "--masks", "{cat}/ground_truth", "-o", "{ws}/out",
          *FIT], says=["--masks", "--abnormal"]),
    Case("supersimplenet-labelled-defects-with-tiling", BAD_PARAMS, _supervised("-p", "tile_size=32"),
         says=["tile_size"]),
    Case("supersimplenet-labelled-defects-and-masks", BAD_DATA,
         _supervised(abnormal=["{cat}/test/scratch"]), expect="ok", check=_labelled_run),
    Case("padim-given-labelled-defects", BAD_PARAMS, _supervised(model="padim", masks=None, epochs=()),
         says=["padim", "--abnormal"]),
    Case("simplenet-given-labelled-defects", BAD_PARAMS, _supervised(model="simplenet", masks=None),
         says=["simplenet", "--abnormal"]),
    Case("api-padim-fit-with-abnormal", API, custom=_api(_api_padim_with_defects, "normal images only")),
    # ------------------------------------------------------------------ ensemble RUN RUN ... -o OUT
    Case("ensemble-a-member-run-missing", ENSEMBLE, _ensemble("{run}", "{ws}/norun"), says=["norun"]),
    Case("ensemble-a-member-is-a-data-folder", ENSEMBLE, _ensemble("{run}", "{cat}"), says=["cat"]),
    Case("ensemble-a-member-weights-one-byte-flipped", ENSEMBLE, _ensemble("{run}", "{ws}/run_b"), _flip_a_byte,
         says=["weights.safetensors"]),
    Case("ensemble-a-member-threshold-edited", ENSEMBLE, _ensemble("{run}", "{ws}/run_b"), _edit_member_threshold,
         says=["detector.json"]),
    Case("ensemble-a-single-member", ENSEMBLE, _ensemble("{run}"), says=["two or more"]),
    Case("ensemble-the-same-run-twice", ENSEMBLE, _ensemble("{run}", "{run}"), says=["padim"]),
    Case("ensemble-of-an-ensemble", ENSEMBLE, _ensemble("{ws}/ens", "{run}"), says=["ens", "ensemble"]),
    Case("ensemble-members-of-different-image-sizes", ENSEMBLE, _ensemble("{run}", "{ws}/run_c"),
         _member_run("spade", "--image-size", "48"), says=["image_size"]),
    Case("ensemble-members-of-different-channels", ENSEMBLE, _ensemble("{run}", "{ws}/run_c"),
         _member_run("mvtec_cae", "-p", "epochs=1", "-p", "channels=1"), says=["channels"]),
    Case("ensemble-a-member-without-anomaly-maps", ENSEMBLE, _ensemble("{run}", "{ws}/run_c"),
         _member_run("mahalanobis"), says=["mahalanobis"]),
    Case("ensemble-unknown-combine-rule", ENSEMBLE, _ensemble("{run}", "{ws}/run_b", extra=["--combine", "median"]),
         says=["median"]),
    Case("ensemble-members-given-as-a-parameter", ENSEMBLE,
         _ensemble("{run}", "{ws}/run_b", extra=["-p", "members=padim,spade"]), says=["members"]),
    Case("ensemble-threshold-folds-1", ENSEMBLE, _ensemble("{run}", "{ws}/run_b", extra=["-p", "threshold_folds=1"]),
         says=["threshold_folds"]),
    Case("ensemble-data-missing", ENSEMBLE, ["ensemble", "{run}", "{ws}/run_b", "-o", "{ws}/out", "--data",
                                             "{ws}/nowhere", "-q"], says=["nowhere"]),
    Case("ensemble-output-is-a-member-run", ENSEMBLE, _ensemble("{run}", "{ws}/run_b", out="{run}"), says=["run"]),
    Case("ensemble-output-is-a-member-run-with-overwrite", ENSEMBLE,
         _ensemble("{run}", "{ws}/run_b", out="{run}", extra=["--overwrite"]), says=["run", "input"]),
    Case("ensemble-output-inside-a-member-run", ENSEMBLE, _ensemble("{run}", "{ws}/run_b", out="{run}/ensemble"),
         says=["run", "input"]),
    Case("ensemble-output-is-a-user-folder-with-overwrite", ENSEMBLE,
         _ensemble("{run}", "{ws}/run_b", out="{ws}/mine", extra=["--overwrite"]), _user_folder,
         says=["not a folder anomalens wrote"]),
    Case("ensemble-output-is-a-file", ENSEMBLE, _ensemble("{run}", "{ws}/run_b", out="{ws}/user.txt"),
         says=["user.txt"]),
    Case("ensemble-run-predicts", ENSEMBLE, _predict(run="{ws}/ens"), expect="ok", check=_predictions_complete()),
    Case("export-an-ensemble-into-its-member-run", EXPORTS,
         ["export", "{ws}/ens", "--format", "onnx", "-o", "{run}", "--overwrite", "-q"], says=["not an export folder"]),
    # ------------------------------------------------------------------ fit / test --unified (a root of categories)
    Case("unified-on-a-folder-of-plain-images", UNIFIED, _fit("--unified", data="{imgs}"), says=["imgs", "categor"]),
    Case("unified-on-a-category-itself", UNIFIED, _fit("--unified"), says=["cat", "one dataset category"]),
    Case("unified-on-a-root-of-one-category", UNIFIED, _fit("--unified", data="{ws}/products"), _products("brick"),
         says=["one category", "brick"]),
    Case("unified-with-an-unreadable-image-in-one-category", UNIFIED, _fit("--unified", data="{ws}/products"),
         lambda ws: (_products("brick", "coffee")(ws),
                     _truncate(lambda w: _first(w / "products" / "coffee" / "train" / "good"))(ws)),
         says=["coffee", "000.png"]),
    Case("unified-with-labelled-folders", UNIFIED,
         _fit("--unified", "--abnormal", "{cat}/test/scratch", data="{ws}/products"), _products("brick", "coffee"),
         says=["--unified", "--abnormal"]),
    Case("unified-fit-on-two-categories", UNIFIED, _fit("--unified", data="{ws}/products"), _products("brick", "coffee"),
         expect="ok", check=_unified_categories(["brick", "coffee"])),
    # A unified run tested on another set of categories scores what is there, each category reported on its own.
    Case("unified-test-on-a-root-missing-a-category", UNIFIED,
         ["test", "{ws}/urun", "{ws}/products", "-o", "{ws}/out", "--no-report", "-q"],
         _unified_run("brick", "coffee", "grass", then=lambda ws: shutil.rmtree(ws / "products" / "grass")),
         expect="ok", check=_per_category(["brick", "coffee"])),
    Case("unified-test-on-a-root-with-a-category-it-never-saw", UNIFIED,
         ["test", "{ws}/urun", "{ws}/products", "-o", "{ws}/out", "--no-report", "-q"],
         _unified_run("brick", "coffee", then=_products("grass")), expect="ok",
         check=_per_category(["brick", "coffee", "grass"])),
    Case("unified-test-on-a-root-left-with-one-category", UNIFIED,
         ["test", "{ws}/urun", "{ws}/products", "-o", "{ws}/out", "--no-report", "-q"],
         _unified_run("brick", "coffee", then=lambda ws: shutil.rmtree(ws / "products" / "coffee")),
         says=["one category (brick)", "own folder"]),
    Case("unified-test-on-one-category-folder", UNIFIED,
         ["test", "{ws}/urun", "{ws}/products/brick", "-o", "{ws}/out", "--no-report", "-q"],
         _unified_run("brick", "coffee"), expect="ok", check=_metrics(lambda m: None if m["n_anomalous"] else str(m))),
]


def _export_once(ws: Path) -> None:
    from anomalens.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", str(ws / "run"), "--format", "onnx", "-o", str(ws / "exp")]) == 0


def _predict_once(ws: Path) -> None:
    from anomalens.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["predict", str(ws / "run"), str(ws / "imgs"), "-o", str(ws / "out"), "-q"]) == 0


def table(outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    """{family (and "all"): {"cases": n, outcome kind: count}}."""
    rows: dict[str, dict[str, int]] = {}
    for family in [*dict.fromkeys(o.family for o in outcomes), "all"]:
        chosen = [o for o in outcomes if family in ("all", o.family)]
        rows[family] = {"cases": len(chosen), **{k: sum(o.kind == k for o in chosen) for k in OUTCOMES}}
    return rows
