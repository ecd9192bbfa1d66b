"""The catalogue as a pytest suite: one test per case per IUT (`pytest conformance/`).

The gate is the committed baseline (conformance/baseline.json): a verdict that differs
from it fails, either way; a known deviation is an expected failure (xfail, with what
was seen); not-applicable is a skip with its reason; `error` always fails. An IUT that
cannot run here (e.g. the stack without its CLI) is skipped with the driver's reason.
"""

from __future__ import annotations

import pytest

from conformance import baseline
from conformance.cases import catalogue
from conformance.iut import DRIVERS
from conformance.iut.vm import VmKernelIut
from conformance.model import Case, Verdict
from conformance.runner import DEFAULT_ARTIFACTS, run_one

CASES = catalogue()
EXPECTED = baseline.load()
# The kernels in VMs (minutes under TCG) are gated by .ci/run and sampled by
# conformance/tests/test_vm_iut.py; here, the IUTs of this host.
HOST_IUTS = [name for name, driver in DRIVERS.items() if not issubclass(driver, VmKernelIut)]
PARAMS = [pytest.param(c, name, id=f"{name}:{c.id}") for c in CASES for name in HOST_IUTS]


@pytest.mark.netns
@pytest.mark.parametrize(("case", "iut"), PARAMS)
def test_case(case: Case, iut: str) -> None:
    reason = DRIVERS[iut].unavailable()
    if reason:
        pytest.skip(f"{iut}: {reason}")
    result = run_one(case, iut, DEFAULT_ARTIFACTS)
    expected = EXPECTED.get(iut, {}).get(case.id)
    seen = f"{result.verdict.value}: {result.detail}" if result.detail else result.verdict.value
    if result.counters:
        seen += f" (counters {result.counters})"
    if result.artifacts:
        seen += f" [artifacts: {', '.join(result.artifacts)}]"
    if result.verdict is Verdict.ERROR:
        pytest.fail(f"harness error: {seen}")
    if expected is not None and result.verdict.value != expected:
        pytest.fail(f"verdict changed from the baseline's {expected}: {seen}")
    if result.verdict is Verdict.NOT_APPLICABLE:
        pytest.skip(result.detail)
    if result.verdict is Verdict.DEVIATES:
        if expected is None:
            pytest.fail(f"deviates, and the baseline has no verdict for it: {seen}")
        pytest.xfail(f"known deviation (baseline): {seen}")
