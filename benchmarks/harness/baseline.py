"""The baseline: the code of another commit, measured beside the working tree in the same session.

:func:`checkout` makes (once) a ``git worktree`` of the revision under ``benchmarks/_work/baselines/`` and
returns its folder; a job runs that code with ``run_job(..., src=tree / "src")`` (its ``anomalens`` first on
``PYTHONPATH``), or that tree's own suite script. The working tree, its index and its branches are not
touched. ``git worktree prune`` forgets a baseline folder after it is deleted.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .paths import ROOT, WORK


def _git(*args: str, repo: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def short_commit(rev: str = "HEAD", repo: Path = ROOT) -> str:
    """The abbreviated hash of ``rev``."""
    return _git("rev-parse", "--short", f"{rev}^{{commit}}", repo=repo)


def commit_label(repo: Path = ROOT) -> str:
    """What the working tree holds: HEAD's short hash, with ``+changes`` when tracked files differ from it."""
    dirty = _git("status", "--porcelain", "--untracked-files=no", repo=repo)
    return short_commit("HEAD", repo) + ("+changes" if dirty else "")


def checkout(rev: str | Path, share_work: bool = False, repo: Path = ROOT, into: Path | None = None) -> Path:
    """The folder of a checkout of ``rev``: a git worktree (detached) under ``_work/baselines/``, made once.

    ``rev`` may also be the folder of a checkout already made (it is returned as it is). ``share_work``: the
    tree's ``benchmarks/_work`` is this one's (a link), so its suites read the same data and weights.
    """
    if Path(rev).is_dir():
        return Path(rev).resolve()
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}", repo=repo)
    tree = (into or WORK / "baselines") / commit[:10]
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        _git("worktree", "add", "--detach", str(tree), commit, repo=repo)
    work = tree / "benchmarks" / "_work"
    if share_work and (tree / "benchmarks").is_dir() and not os.path.lexists(work):
        work.symlink_to(WORK.resolve(), target_is_directory=True)
    return tree
