"""Start-up: each command imports only what it uses, and the top-level API is what ``__all__`` says.

The checks run the command in a fresh interpreter and look at ``sys.modules`` afterwards: they assert which
modules were imported, never a time (benchmarks/ measures the times).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import anomalens
from tests.conftest import FIT

# Modules that a command which runs no model has no use for (each costs from 0.1 s to seconds of start-up).
HEAVY = ("torch", "numpy", "scipy", "PIL", "timm", "torchvision", "sklearn", "skimage", "matplotlib", "onnxruntime",
         "openvino", "anomalens.models", "anomalens.detector", "anomalens.workflow")

# Runs the CLI's main() on each argv of ARGVS in this interpreter, then prints the heavy modules it imported.
_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from anomalens.cli import main
    codes = []
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()):
            codes.append(main(argv))
    heavy = json.loads(sys.argv[2])
    print(json.dumps({"codes": codes, "imported": sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)}))
""")


def _imports_of(*argvs: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argvs), json.dumps(HEAVY)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _commands() -> list[str]:
    from anomalens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def test_list_params_and_every_help_import_neither_torch_nor_numpy():
    argvs = [["list"], ["list", "stpm"], ["params", "padim"], ["params", "padimm"], ["--help"], ["--version"],
             *[[command, "--help"] for command in _commands()]]
    result = _imports_of(*argvs)
    assert result["codes"] == [0, 0, 0, 2, 0, 0] + [0] * len(_commands())
    assert result["imported"] == [], f"imported by list / params / --help: {result['imported']}"


def test_import_anomalens_is_light():
    done = subprocess.run([sys.executable, "-c", "import json, sys, anomalens; "
                           f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(HEAVY)!r})))"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_dir_shows_what_all_promises():
    assert set(anomalens.__all__) <= set(dir(anomalens))
    for name in anomalens.__all__:
        assert getattr(anomalens, name) is not None, name
    assert "keep_freed_memory" not in dir(anomalens) and not hasattr(anomalens, "keep_freed_memory")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        anomalens.no_such_name  # noqa: B018


def test_the_table_of_builtin_detectors_matches_the_model_files():
    from anomalens.builtin_detectors import DETECTORS
    from anomalens.catalog import builtin_table

    assert builtin_table() == DETECTORS, ("src/anomalens/builtin_detectors.py is out of date with the model files: "
                                          "run 'python -m anomalens.catalog' to rewrite it")


def test_creating_a_detector_imports_its_own_model_file_only():
    code = textwrap.dedent("""
        import json, sys
        from anomalens import create_detector
        create_detector("padim")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(("anomalens.models.", "torchvision", "torch._dynamo"))
                                and not m.startswith("anomalens.models.components"))))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # not the other models, nor what Reverse Distillation's ResNet blocks pull in (torchvision.ops, torch._dynamo)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["anomalens.models.padim"]


def test_a_builtin_name_is_refused_to_another_class_even_before_its_module_is_loaded():
    code = textwrap.dedent("""
        from anomalens.registry import register_detector
        class Impostor:
            name = "patchcore"
        try:
            register_detector(Impostor)
        except ValueError as exc:
            print("refused:", exc)
        import sys
        print("loaded" if "anomalens.models.patchcore" in sys.modules else "not loaded")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "refused: detector name 'patchcore' is already registered by the built-in detector in " \
           "anomalens.models.patchcore" in done.stdout
    assert done.stdout.strip().endswith("not loaded")


def test_pytest_does_not_collect_test_run_imported_in_a_user_test_file(tmp_path):
    (tmp_path / "test_users_own.py").write_text(textwrap.dedent("""
        from anomalens import test_run

        def test_something():
            assert callable(test_run)
    """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_users_own.py")], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout, done.stdout


def _test_images(category: Path) -> list[str]:
    return sorted(str(p) for p in (category / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def onnx_export(run, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from anomalens.cli import main

    export = tmp_path_factory.mktemp("exports") / "padim-onnx"
    assert main(["export", str(run), "-o", str(export), "-q"]) == 0
    return export


def test_predict_with_an_onnx_export_imports_no_torch(onnx_export, category, tmp_path):
    out = tmp_path / "predictions"
    result = _imports_of(["predict", str(onnx_export), *_test_images(category), "-o", str(out), "-q"])
    assert result["codes"] == [0]
    assert (out / "predictions.csv").is_file()
    assert not any(m.split(".")[0] == "torch" for m in result["imported"]), result["imported"]


# Runs the CLI with every import of torch refused (and reported on stderr): for a long-running command.
_WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class RefuseTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                print(f"torch was imported: {name}", file=sys.stderr, flush=True)
                raise ImportError(f"{name}: refused by the test")
            return None

    sys.meta_path.insert(0, RefuseTorch())
    from anomalens.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_serve_with_an_onnx_export_imports_no_torch(onnx_export, category):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = subprocess.Popen([sys.executable, "-c", _WITHOUT_TORCH, "serve", str(onnx_export), "--port", str(port), "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert service.poll() is None, f"the service stopped: {service.stderr.read()}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not answer within 120 s"
            time.sleep(0.2)
        image = Path(_test_images(category)[0])
        answer = httpx.post(f"{url}/predict", files={"file": (image.name, image.read_bytes(), "image/png")}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert "score" in answer.json()
    finally:
        service.terminate()
        service.wait(timeout=60)
    errors = service.stderr.read()
    assert "torch was imported" not in errors, errors


def test_export_takes_quiet_and_the_device_option_takes_what_the_library_takes(capsys):
    from anomalens.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["export", "RUN", "-o", "OUT", "-q"]).quiet
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert parser.parse_args(["fit", "padim", "DATA", "-o", "OUT", *FIT[:4], "--device", device]).device == device
        assert parser.parse_args(["predict", "RUN", "x.png", "-o", "OUT", "--device", device]).device == device
        assert parser.parse_args(["serve", "RUN", "--device", device]).device == device
    assert main(["test", "RUN", "DATA", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'gpu'; use auto, cpu, cuda or cuda:N" in err and "\n" not in err.strip()


def test_every_command_has_quiet_and_its_own_argument_function():
    from anomalens.cli import COMMANDS, build_parser

    for name, _, add_arguments in COMMANDS:
        assert add_arguments.__name__ == f"add_{name.replace('-', '_')}_arguments"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert "-q, --quiet" in parser.format_help(), f"anomalens {name} has no -q"
