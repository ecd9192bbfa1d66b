"""Liveness and resources, checked after every batch: each is a finding when it fails.

- **Crash**: a stack process that exited (its stderr's tail in the finding); an
  "internal error" line on the stack's stderr.
- **Hang**: a normal client (the `data` seed, unmutated: MP_CAPABLE, data, echo) does
  not get its data echoed through the IUT, each answer awaited `LIVENESS_WAIT` s.
- **Growth**: the stack's resident memory (VmRSS) above `rss_limit_mb`; the kernel IUT
  keeping more live MPTCP connections than the fuzzer has in flight (every run resets
  what it opened).
- **CPU**: the stack's CPU use (utime + stime in /proc/PID/stat, over windows of
  `CPU_WINDOW` s while the fuzzer sends nothing) does not drop to `CPU_IDLE` of a
  core within `settle_within` s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.fuzz.engine import Engine
from conformance.fuzz.seeds import plain
from conformance.fuzz.session import Session

RSS_LIMIT_MB = 256
CPU_IDLE = 0.10  # of one core
CPU_WINDOW = 0.2  # s; the clock tick is 10 ms, so one window resolves 5% of a core
SETTLE_WITHIN = 3.0  # s
LIVENESS_WAIT = 3.0  # s for each answer of the normal client: slower is a hang
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Finding:
    kind: str  # divergence, crash, hang, growth, cpu
    iut: str
    detail: str
    class_id: str = ""
    reproducer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "iut": self.iut,
            "detail": self.detail,
            "class": self.class_id,
            "reproducer": self.reproducer,
        }


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Health:
    engine: Engine
    sessions: Sequence[Session]
    rss_limit_mb: float = RSS_LIMIT_MB
    settle_within: float = SETTLE_WITHIN
    liveness: dict[str, int] = field(default_factory=dict)  # echoes that came back, per IUT
    rss_peak_mb: dict[str, float] = field(default_factory=dict)
    rss_now_mb: dict[str, float] = field(default_factory=dict)
    settle_s: dict[str, float] = field(default_factory=dict)  # the slowest settle seen
    _errors_seen: dict[str, int] = field(default_factory=dict)
    _checks: int = 0

    def check(self) -> list[Finding]:
        """Every check on every IUT; what failed, as findings."""
        findings: list[Finding] = []
        for session in self.sessions:
            findings += self._process(session)
        findings += self._cpu()
        if any(f.kind == "crash" and "exited" in f.detail for f in findings):
            return findings
        self._checks += 1
        jobs = [(plain("data", -self._checks), s) for s in self.sessions]
        for run in self.engine.execute(jobs, LIVENESS_WAIT):
            outcome = run.observed.outcome()
            name = run.session.name
            if outcome.usable and "data" in outcome.delivered:
                self.liveness[name] = self.liveness.get(name, 0) + 1
            else:
                findings.append(
                    Finding(
                        "hang",
                        name,
                        f"a normal client's echo did not come back: {outcome.describe()}",
                    )
                )
        for session in self.sessions:
            states = session.connections()
            count = sum(states.values()) if states is not None else 0
            if states is not None and count > 2 * self.engine.concurrency:
                by_state = ", ".join(f"{n} {state}" for state, n in states.most_common())
                findings.append(
                    Finding(
                        "growth",
                        session.name,
                        f"{count} live MPTCP "
                        "connections after a batch whose runs all reset theirs "
                        f"(at most {self.engine.concurrency} in flight): {by_state}",
                    )
                )
        return findings

    def _process(self, session: Session) -> list[Finding]:
        exited = session.exited()
        if exited is not None:
            return [Finding("crash", session.name, exited)]
        findings = []
        errors = session.internal_errors
        if errors > self._errors_seen.get(session.name, 0):
            self._errors_seen[session.name] = errors
            tail = " | ".join(line for line in session.stderr if "internal error" in line)
            findings.append(
                Finding(
                    "crash",
                    session.name,
                    f"{errors} internal error(s) in the I/O loop: {tail[-300:]}",
                )
            )
        pid = session.pid()
        if pid is not None:
            rss = self.rss_now_mb[session.name] = rss_mb(pid)
            self.rss_peak_mb[session.name] = max(rss, self.rss_peak_mb.get(session.name, 0.0))
            if rss > self.rss_limit_mb:
                findings.append(
                    Finding(
                        "growth",
                        session.name,
                        f"resident memory {rss:.0f} MB "
                        f"is above the bound of {self.rss_limit_mb:.0f} MB",
                    )
                )
        return findings

    def _cpu(self) -> list[Finding]:
        """Wait (reading the sockets, sending nothing) until every IUT process is idle."""
        pids = {s.name: pid for s in self.sessions if (pid := s.pid()) is not None}
        if not pids:
            return []
        started = time.monotonic()
        busy = dict.fromkeys(pids, 0.0)
        last = {name: cpu_seconds(pid) for name, pid in pids.items()}
        while True:
            window_start = time.monotonic()
            self.engine.idle(CPU_WINDOW)
            elapsed = time.monotonic() - window_start
            for name, pid in list(pids.items()):
                try:
                    now = cpu_seconds(pid)
                except OSError:
                    pids.pop(name)
                    continue
                busy[name] = (now - last[name]) / elapsed
                last[name] = now
                if busy[name] <= CPU_IDLE:
                    took = time.monotonic() - started
                    self.settle_s[name] = max(took, self.settle_s.get(name, 0.0))
                    pids.pop(name)
            if not pids:
                return []
            if time.monotonic() - started >= self.settle_within:
                return [
                    Finding(
                        "cpu",
                        name,
                        f"still using {busy[name]:.0%} of a core "
                        f"{self.settle_within:g} s after the batch",
                    )
                    for name in pids
                ]
