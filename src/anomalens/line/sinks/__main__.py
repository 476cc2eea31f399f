"""``python -m anomalens.line.sinks SPEC [SPEC ...]``: check sink specs without connecting; one line each.

Exit status 0 when every spec is valid, 2 (with ``error: <what>`` on stderr) at the first that is not.
"""

from __future__ import annotations

import sys

from anomalens.errors import AnomalensError
from anomalens.line.sinks.specs import SPEC_FORMS, parse_sink_specs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m anomalens.line.sinks SPEC [SPEC ...]\n  SPEC: {SPEC_FORMS}")
        return 0 if argv else 2
    try:
        specs = parse_sink_specs(argv)
    except AnomalensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for spec in specs:
        print(f"{spec.name}: {spec.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
