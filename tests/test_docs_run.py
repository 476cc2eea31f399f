"""Every shell and Python block of the README and of ``docs/**/*.md`` runs as written (issue 29, item 4).

One test per page. The rules (also stated for writers in ``docs/development.md``):

* **Which blocks run.** Fenced blocks tagged ``bash``, ``sh`` or ``shell`` run in bash; ``python`` or ``py``
  in the virtual environment's Python. Every other fence is shown, not run: ``console`` and ``text`` (sample
  output), ``json``, ``yaml``, untagged blocks (folder layouts).
* **In order, in one fresh folder per page.** The page's blocks run one after the other in an empty temporary
  folder, so a page must create what it uses (its own synthetic data) and no page can lean on another's files.
  Files persist from block to block; nothing else does: each bash block is one ``bash`` process with
  ``set -e`` (a failing command fails the block), each Python block one ``python -c`` process (its own imports,
  no variables from the block before — what a reader pasting it into a fresh interpreter gets).
* **The reader's environment.** ``PATH`` starts with the virtual environment's ``bin`` (``anomalens``,
  ``python``, ``torchrun`` as after ``source .venv/bin/activate``); the folder also holds a ``.venv`` link to it,
  so ``.venv/bin/anomalens`` works as in the repository's root. Offline: ``HF_HUB_OFFLINE=1``.
* **Skipping.** A block that cannot run in CI (a GPU, a cluster, a real dataset path, hours of compute) is
  preceded by ``<!-- docs-test: skip (reason) -->`` on the line before its fence; it is reported as a skipped
  test with the reason, and every skip must be listed in ``docs/development.md``.
* **Background processes.** Each block runs in its own process group; a page that starts a server stops it
  itself, and whatever is still running when the page ends is killed with its group.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the tests run with the venv's python: its bin/ is the reader's PATH
BLOCK_TIMEOUT_S = 600  # one block; a hang (a server never stopped, a prompt) fails instead of blocking the suite
PAGE_TIMEOUT_S = 1200  # pytest-timeout's limit for one page (the suite's default, 300 s, is for one test of code)

RUNNERS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str  # the fence's first word, lower case ("" when untagged)
    code: str
    skip_reason: str | None  # None: runs (when its language runs)

    @property
    def runs(self) -> bool:
        return self.language in RUNNERS and self.skip_reason is None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO).as_posix()}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order. A fence may be indented (inside a list item): its indentation
    is removed from the block's lines. An unclosed fence or a skip marker without a reason raises ValueError."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].split() or [""])[0].lower().lstrip(".{").rstrip("}")
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = _SKIP.match(previous)
        if marker and not (marker["reason"] or "").strip():
            raise ValueError(f"{page.name}:{i}: a docs-test skip marker needs a reason: "
                             "<!-- docs-test: skip (why this block cannot run in CI) -->")
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = lines[j].strip()
            if closing and set(closing) == {fence[0]} and len(closing) >= len(fence):
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        else:
            raise ValueError(f"{page.name}:{i + 1}: the ``` fence opened here is never closed")
        blocks.append(Block(page, i + 1, language, "\n".join(body) + "\n",
                            marker["reason"].strip() if marker else None))
        i = j + 1
    return blocks


def documentation_pages() -> list[Path]:
    """README.md, then every page under docs/ (sorted)."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env["HF_HUB_OFFLINE"] = "1"
    env["MPLBACKEND"] = "Agg"
    env.pop("PYTHONPATH", None)  # the reader's Python sees the installed package, not the test's path
    return env


def _stop_group(pgid: int) -> None:
    """Ends what a block left running (a server it started): SIGTERM to the group, SIGKILL after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_page(page: Path, workdir: Path) -> list[tuple[Block, float, float]]:
    """Runs the page's blocks in order in ``workdir / 'page'`` (fresh); returns (block, wall seconds, CPU
    seconds of its processes) of each block run — CPU time, unlike wall time, barely moves with the machine's
    load. A block that fails or times out fails the test with the page, the line and the end of its output."""
    folder, logs = workdir / "page", workdir / "logs"
    folder.mkdir()
    logs.mkdir()
    (folder / ".venv").symlink_to(VENV, target_is_directory=True)
    env = _environment()
    groups: list[int] = []
    timings: list[tuple[Block, float, float]] = []
    try:
        for number, block in enumerate(b for b in code_blocks(page) if b.runs):
            if RUNNERS[block.language] == "bash":
                command = ["bash", "-e", "-c", block.code, block.where]
            else:
                command = [str(VENV / "bin" / "python"), "-c", block.code]
            log = logs / f"block-{number}.log"
            started, cpu_before = time.monotonic(), _children_cpu_seconds()
            # Output to a file, not a pipe: a server the block leaves in the background would hold a pipe open.
            with open(log, "wb") as out:
                process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            groups.append(process.pid)
            try:
                status = process.wait(timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                status = None
            seconds = time.monotonic() - started
            if status != 0:
                output = log.read_text(encoding="utf-8", errors="replace")
                what = f"timed out after {BLOCK_TIMEOUT_S} s" if status is None else f"exited {status}"
                pytest.fail(f"{block.where}: this {block.language} block {what} ({seconds:.1f} s).\n"
                            f"--- block ---\n{block.code}--- output (end) ---\n{_tail(output)}", pytrace=False)
            timings.append((block, seconds, _children_cpu_seconds() - cpu_before))
    finally:
        for pgid in groups:
            _stop_group(pgid)
    return timings


PAGES = documentation_pages()


@pytest.mark.timeout(PAGE_TIMEOUT_S)
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_page_runs_as_written(page, tmp_path, record_property):
    if not any(block.runs for block in code_blocks(page)):
        pytest.skip(f"{_page_id(page)}: no block to run")
    started = time.monotonic()
    timings = run_page(page, tmp_path)
    record_property("seconds", round(time.monotonic() - started, 1))
    record_property("cpu_seconds", round(sum(cpu for _, _, cpu in timings), 1))
    for block, seconds, cpu in timings:
        record_property(block.where, f"{seconds:.1f} s wall, {cpu:.1f} s CPU")


SKIPPED = [block for page in PAGES for block in code_blocks(page)
           if block.skip_reason is not None and block.language in RUNNERS]


@pytest.mark.parametrize("block", SKIPPED, ids=lambda block: block.where)
def test_skipped_block(block):
    """Reported, with its reason, so a skip is seen in every run (pytest -ra lists them)."""
    pytest.skip(f"{block.where}: {block.skip_reason}")


def test_the_block_parser_reads_fences_markers_and_indentation(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "intro\n\n```bash\necho one\n```\n\n- a list item:\n\n  ```python\n  print('two')\n  ```\n\n"
        "<!-- docs-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n```text\noutput only\n```\n"
        "````markdown\n```bash\nnested\n```\n````\n", encoding="utf-8")
    blocks = code_blocks(page)
    assert [(b.language, b.code, b.skip_reason) for b in blocks] == [
        ("bash", "echo one\n", None), ("python", "print('two')\n", None), ("bash", "nvidia-smi\n", "needs a GPU"),
        ("text", "output only\n", None), ("markdown", "```bash\nnested\n```\n", None)]
    assert [b.runs for b in blocks] == [True, True, False, False, False]
    page.write_text("<!-- docs-test: skip -->\n```bash\nls\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs a reason"):
        code_blocks(page)
    page.write_text("```bash\nls\n", encoding="utf-8")
    with pytest.raises(ValueError, match="never closed"):
        code_blocks(page)


def test_a_failing_command_fails_its_page_and_a_background_server_is_stopped(tmp_path, monkeypatch):
    """The runner's own promises: set -e (a failing command in the middle fails the block), files kept from
    block to block but not variables, and a process a block leaves behind is killed with its group."""
    page = tmp_path / "page.md"
    page.write_text("```bash\necho kept > note.txt\nsleep 300 &\necho $! > sleeper.pid\n```\n\n"
                    "```python\nprint(open('note.txt').read())\n```\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    assert len(run_page(page, work)) == 2
    sleeper = int((work / "page" / "sleeper.pid").read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(sleeper, 0)
    page.write_text("```bash\nfalse\necho never\n```\n", encoding="utf-8")
    failing = tmp_path / "failing"
    failing.mkdir()
    with pytest.raises(pytest.fail.Exception, match=r"page.md:1: this bash block exited 1"):
        run_page(page, failing)
