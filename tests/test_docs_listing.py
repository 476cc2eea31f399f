"""docs/development.md's table of the documentation blocks the docs test skips is up to date.

It lives outside the docs tier (``make test`` runs it, in well under a second) so that a page edited above a
skipped block — which moves the block's line — fails the ordinary suite, not only the slow documentation run.
``python tests/test_docs_listing.py`` rewrites the table from the pages.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root on the path, for ``tests.``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_docs_run import REPO, SKIPPED  # the parser and the page list, written once

LISTING_PAGE = REPO / "docs" / "development.md"
_TABLE = re.compile(r"(?P<head>\| block \| why it is not run \|\n\|---\|---\|\n)(?P<rows>(?:\|.*\|\n)*)")


def listing_rows() -> str:
    """The table's rows as the pages say today: one per skipped runnable block, in page order."""
    return "".join(f"| `{block.where}` | {block.skip_reason} |\n" for block in SKIPPED)


def test_every_skip_is_listed_in_the_development_page():
    """Each skipped block is listed as ``page:line`` with its reason — a skip nobody sees would let a command
    rot; a line number that moved shows here (rewrite the table with ``python tests/test_docs_listing.py``)."""
    table = _TABLE.search(LISTING_PAGE.read_text(encoding="utf-8"))
    assert table, "docs/development.md has no 'block | why it is not run' table"
    listed = set(re.findall(r"`([\w./-]+\.md:\d+)`", table["rows"]))
    wanted = {block.where for block in SKIPPED}
    missing = [f"`{block.where}` — {block.skip_reason}" for block in SKIPPED if block.where not in listed]
    stale = sorted(listed - wanted)
    assert not missing and not stale and table["rows"] == listing_rows(), (
        "docs/development.md, 'Blocks the docs test skips', is out of date (python tests/test_docs_listing.py "
        "rewrites it):\n" + "".join(f"  add: {row}\n" for row in missing)
        + "".join(f"  remove: `{row}`\n" for row in stale))


if __name__ == "__main__":
    text = LISTING_PAGE.read_text(encoding="utf-8")
    table = _TABLE.search(text)
    if not table:
        sys.exit("docs/development.md: no 'block | why it is not run' table to rewrite")
    LISTING_PAGE.write_text(text[:table.start("rows")] + listing_rows() + text[table.end("rows"):], encoding="utf-8")
    print(f"docs/development.md: {len(SKIPPED)} skipped blocks listed")
