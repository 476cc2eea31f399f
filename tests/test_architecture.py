"""The layout rules of the package, checked on its source: no import cycle, no private name used
outside its module, one registry that refuses duplicates."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import anomalens
from anomalens.registry import register_detector

PACKAGE_DIR = Path(anomalens.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
BENCHMARKS = ROOT.parent / "benchmarks"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache  # parsed once per test process: every test of the import graph reads the same files
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """module → the anomalens modules it imports, anywhere in the file (function-level imports included)."""
    sources = _sources()
    modules = set(sources)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, tree) in sources.items():
        skipped = _type_checking_blocks(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    package = name if is_package else name.rsplit(".", 1)[0]
                    for _ in range(node.level - 1):
                        package = package.rsplit(".", 1)[0]
                    base = f"{package}.{base}" if base else package
                # "from pkg import mod" imports the submodule; "from mod import name" the module.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]  # "anomalens.models.padim.PaDiM" → its module
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "anomalens.detector" in graph and graph["anomalens.models.padim"], "the import graph was not built"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_contract_and_the_registry_import_no_model():
    graph = import_graph()
    for module in ("anomalens.detector", "anomalens.registry", "anomalens.decision", "anomalens.params",
                   "anomalens.persistence"):
        reachable, todo = set(), [module]
        while todo:
            for nxt in graph[todo.pop()] - reachable:
                reachable.add(nxt)
                todo.append(nxt)
        assert not any(m.startswith("anomalens.models") for m in reachable), f"{module} imports a model"


MAX_MODULE_LINES = 400
# Written by `python -m anomalens.catalog` (one table row per detector parameter), never edited by hand.
GENERATED_MODULES = {"builtin_detectors.py"}


def test_no_module_is_over_400_lines():
    """Each module does one job: one grown past 400 lines usually holds a second job, to be split out."""
    long = [f"{path.relative_to(ROOT)}: {n} lines" for path in sorted(PACKAGE_DIR.rglob("*.py"))
            if path.name not in GENERATED_MODULES and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def _private_uses(path: Path) -> list[str]:
    """``from x import _name`` and ``obj._name`` with obj not self / cls / super() — in one file."""
    tree = ast.parse(path.read_text(), str(path))
    # Names this file defines itself (functions, methods, classes, attributes it assigns) are its own.
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    # Attributes it stores on self / cls are its own too; one stored on another object is a use of that
    # object's private state like any read (no loophole for `other._name = value`).
    own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anomalens"):
            found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if node.attr in own:
                continue
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            found.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
    return found


# Private attributes of other libraries that anomalens reads on purpose, each with its reason.
ALLOWED_FOREIGN = {
    # timm's EfficientNet keeps the index of each stage's last block only in this attribute.
    "model._stage_out_idx",
}


@pytest.mark.parametrize("where", ["src", "benchmarks"])
def test_no_private_name_is_used_outside_its_module(where):
    files = (sorted(PACKAGE_DIR.rglob("*.py")) if where == "src"
             else sorted(BENCHMARKS.rglob("*.py")) + sorted((BENCHMARKS.parent / "tools").rglob("*.py")))
    files = [f for f in files if "_work" not in f.parts]
    uses = [use for f in files for use in _private_uses(f) if use.split(" uses ")[-1] not in ALLOWED_FOREIGN]
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


def test_a_taken_registry_name_is_refused():
    from anomalens.catalog import detector_class

    padim = detector_class("padim")
    assert register_detector(padim) is padim  # registering the same class again is harmless

    with pytest.raises(ValueError, match="already registered"):
        @register_detector
        class Impostor(padim):
            """Same name, another class."""

    assert detector_class("padim") is padim


def test_a_detector_without_a_name_is_refused():
    from anomalens.detector import Detector

    with pytest.raises(ValueError, match="name"):
        register_detector(Detector)


# Calls that delete or move a path. Outside anomalens/outputs/ none may appear: every file anomalens writes
# and every folder it replaces goes through the output-folder protocol (anomalens.outputs.folders).
_REMOVING_FUNCTIONS = {"shutil.rmtree", "shutil.move", "os.remove", "os.unlink", "os.rmdir", "os.removedirs",
                       "os.rename", "os.renames", "os.replace"}
_REMOVING_METHODS = {"unlink", "rmdir", "rename", "replace"}  # pathlib.Path's; str.replace is told apart below


def _removals(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = ast.unparse(node.func)
        method = node.func.attr
        is_path_method = method in _REMOVING_METHODS and not (
            # str.replace(old, new) takes two arguments and dataclasses.replace(obj, **changes) keywords;
            # Path.replace(target) one argument alone
            method == "replace" and (len(node.args) != 1 or node.keywords))
        if name in _REMOVING_FUNCTIONS or (is_path_method and not name.startswith(("os.", "shutil."))):
            found.append(f"{path.relative_to(root)}:{node.lineno} {name}(...)")
    return found


def test_only_the_outputs_package_removes_or_renames_paths():
    outputs = PACKAGE_DIR / "outputs"
    files = [p for p in sorted(PACKAGE_DIR.rglob("*.py")) if outputs not in p.parents]
    found = [use for f in files for use in _removals(f)]
    assert not found, "paths removed or renamed outside anomalens/outputs:\n" + "\n".join(found)


def test_the_removal_check_sees_removals(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os, shutil\nshutil.rmtree(p)\nos.replace(a, b)\nPath(x).unlink()\n"
                      "name.replace('a', 'b')\ndataclasses.replace(settings, port=1)\n")
    found = [use.split(" ")[-1] for use in _removals(sample, root=tmp_path)]
    assert found == ["shutil.rmtree(...)", "os.replace(...)", "Path(x).unlink(...)"]


# Engines are strategies passed in (anomalens.engines): the code that runs a fit elsewhere never sets anything on
# the detector it runs — it hands the detector a strategy in the call instead.
_DETECTOR_NAMES = {"detector", "fitted", "det", "model"}


def test_engines_set_no_attribute_on_the_detector_they_run():
    files = [PACKAGE_DIR / "engines.py", *sorted((PACKAGE_DIR / "distributed").glob("*.py"))]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and node.args:
                targets = [ast.Attribute(value=node.args[0], attr="?", ctx=ast.Store())]
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id in _DETECTOR_NAMES):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(target)}")
    assert not found, "an engine sets attributes on the detector it runs:\n" + "\n".join(found)
    from anomalens.catalog import detector_class

    for name in ("padim", "patchcore", "stpm"):  # nor does a model keep a slot for one
        assert not hasattr(detector_class(name), "shard_runner") and not hasattr(detector_class(name), "data_parallel")


def test_the_private_name_check_sees_state_stored_on_another_object(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def wire(model, runner):\n    model._runner = runner\n\n"
                      "class Own:\n    def __init__(self):\n        self._mine = 1\n\n    def read(self, other):\n"
                      "        return self._mine\n")
    uses = _private_uses(module)
    assert uses == ["m.py:2 uses model._runner"]
