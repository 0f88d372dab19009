"""The fault suite's tally: every test adds what it injected, generated and observed
(`tally.add("faults.operator_kill", 1)`, `tally.add("observed.duplicate_job_creations", 0)`);
at the end of the session the totals and the per-test numbers are written to
tests/reliability/counts.json, which `python -m tests.reliability.report` turns into the
table of docs/reliability.md. Also the fixtures of the tests on the real control plane: a namespace
of the test's own whose operator the chart's RBAC never refused (`c`), and the fault proxy (`proxy`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube import Kube
from tests.operator.e2e import E2E, e2e
from tests.reliability.fault_proxy import FaultProxy, fault_proxy
from tests.reliability.real_cluster import iso

COUNTS_FILE = Path(__file__).parent / "counts.json"

_by_test: dict[str, Counter[str]] = {}
_outcomes: dict[str, str] = {}


class Tally:
    def __init__(self, test: str) -> None:
        self.test = test
        self.counter = _by_test.setdefault(test, Counter())

    def add(self, key: str, n: int = 1) -> None:
        """Add n to a count; n = 0 still records the key (e.g. "duplicates seen: 0")."""
        self.counter[key] += int(n)


@pytest.fixture()
def tally(request: pytest.FixtureRequest) -> Tally:
    return Tally(request.node.nodeid.split("tests/reliability/", 1)[-1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        nodeid = item.nodeid.split("tests/reliability/", 1)[-1]
        state = "xfailed" if hasattr(rep, "wasxfail") and rep.skipped else rep.outcome
        _outcomes[nodeid] = state


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _by_test:
        return
    totals: Counter[str] = Counter()
    for c in _by_test.values():
        totals.update(c)
    for key in {k for c in _by_test.values() for k in c}:  # keep zero counts
        totals.setdefault(key, 0)
    doc = {
        "format": 1,
        "totals": dict(sorted(totals.items())),
        "tests": {t: {"outcome": _outcomes.get(t, "?"), "counts": dict(sorted(c.items()))} for t, c in sorted(_by_test.items())},
    }
    COUNTS_FILE.write_text(json.dumps(doc, indent=2) + "\n")


# --------------------------------------------------------------------------- the real control plane


@pytest.fixture()
def outages() -> list[tuple[str, str]]:
    """(from, to) of the test's control-plane crashes: a restarted apiserver serves requests before
    its RBAC authorizer's caches are filled and answers them 403 for a moment (seen here: kopf's CRD
    watch re-sent at once after the restart), which is no fault of the chart's rules."""
    return []


@pytest.fixture()
def c(kube: Kube, outages: list[tuple[str, str]]) -> Iterator[E2E]:
    """A namespace of the test's own, the instant image's control reset; afterwards no request of
    the operator's was refused by the chart's RBAC (outside `outages`)."""
    started = iso()
    with e2e(kube) as run:
        yield run
    refused = [(e["stageTimestamp"], e["objectRef"]) for e in kube.rbac_refused(started, outages)]
    assert not refused, f"the chart's RBAC refused the operator: {refused}"


@pytest.fixture()
def proxy(kube: Kube) -> Iterator[FaultProxy]:
    with fault_proxy(kube.state) as p:
        yield p
