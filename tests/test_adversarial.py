"""Issue 15's adversarial suite: every case of ``tests/adversarial_cases.py`` must end as a clean error (exit 2,
one line naming the problem, nothing left behind, nothing of the user's touched) or a correct result.
``tools/adversarial.py`` (``python -m tools.adversarial``) runs the same cases and writes the table of the README's Errors section."""

from __future__ import annotations

import pytest

from tests.adversarial_cases import CASES, EXPORTS, GOOD_OUTCOMES, RAY, SERVICE, make_template, run_case


def tier(case) -> tuple:
    """The slow tier a case belongs to (conftest.TIERS: ``make test-fast`` leaves them out; ``make test`` runs all):
    Ray's local cluster, an export and its runtime (ONNX Runtime / OpenVINO), or ``anomalens serve`` started as a
    process (the service's cases run in this process otherwise)."""
    if case.family == RAY:
        return (pytest.mark.ray,)
    if case.family == EXPORTS or "export" in case.id:
        return (pytest.mark.export,)
    if case.family == SERVICE and case.custom is not None:
        return (pytest.mark.serve,)
    return ()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(tmp_path_factory.mktemp("adversarial"))


@pytest.mark.parametrize("case", [pytest.param(c, marks=tier(c), id=c.id) for c in CASES])
def test_adversarial_case(case, template, tmp_path):
    outcome = run_case(case, template, tmp_path)
    expected = "clean error" if case.expect == "error" and case.custom is None else GOOD_OUTCOMES
    assert outcome.kind in expected, f"{case.id}: {outcome.kind}: {outcome.detail}\n{outcome.stderr[-2000:]}"
