"""MkDocs hooks (mkdocs.yml ``hooks:``): the README is the site's home page, written once.

* ``on_files`` adds ``README.md`` (outside ``docs/``) as ``index.md``.
* ``on_page_markdown`` rewrites relative links so that the same Markdown reads well on a forge and in the
  site: the README's ``docs/x.md`` becomes ``x.md``; a link to a file of the repository outside ``docs/``
  (benchmark results, tools) — which the site does not hold — becomes its path in code, e.g.
  ``benchmarks/results/results.md``. A link to nothing is left alone, so ``mkdocs build --strict`` still
  fails on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File

_LINK = re.compile(r"(?P<image>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _repo(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_files(files, config):
    readme = _repo(config) / "README.md"
    if readme.is_file() and files.get_file_from_path("index.md") is None:
        files.append(File.generated(config, "index.md", abs_src_path=str(readme)))
    return files


def _rewrite(match: re.Match, source_dir: Path, page_dir: Path, docs: Path, repo: Path) -> str:
    target = match["target"]
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
        return match[0]
    path_part, hash_, anchor = target.partition("#")
    resolved = (source_dir / path_part).resolve()
    if not resolved.exists():
        return match[0]  # broken: strict mode reports it
    if resolved == docs or docs in resolved.parents:
        new = os.path.relpath(resolved, page_dir).replace(os.sep, "/")
        return f"{match['image']}[{match['text']}]({new}{hash_}{anchor})"
    shown = resolved.relative_to(repo).as_posix() if repo in resolved.parents else path_part
    text = match["text"].strip("`")
    if match["image"] or text in (shown, Path(shown).name, Path(shown).name.rstrip("/"), path_part):
        return f"`{shown}`"
    return f"{match['text']} (`{shown}`)"


def on_page_markdown(markdown, page, config, files):
    repo, docs = _repo(config), Path(config["docs_dir"]).resolve()
    page_dir = (docs / page.file.src_uri).parent
    source = Path(page.file.abs_src_path).resolve() if page.file.abs_src_path else docs / page.file.src_uri
    lines, in_fence = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            line = _LINK.sub(lambda m: _rewrite(m, source.parent, page_dir, docs, repo), line)
        lines.append(line)
    return "\n".join(lines)
