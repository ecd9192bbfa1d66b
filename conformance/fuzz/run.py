"""The fuzzing loop: batches of sequences against both IUTs, compared, checked, reported.

For each batch: generate the next `batch` sequences (`seeds.generate`), run each against
both IUTs at once (`engine`), compare the outcomes (`observe.diff`). A difference whose
class is known (`known`) or already seen is counted; a new one is run again, and if it
diverges the same way it is minimised (`reproduce.minimise`) and becomes a finding with
its case skeleton; if it does not, it is counted as flaky. Then the health checks run
(`health`). The run ends when the budget (sequences or seconds) is spent, or at a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.fuzz import known as known_file
from conformance.fuzz.engine import Engine, Run
from conformance.fuzz.health import RSS_LIMIT_MB, Finding, Health
from conformance.fuzz.observe import Difference, Outcome, class_id, diff
from conformance.fuzz.reproduce import minimise, skeleton
from conformance.fuzz.seeds import SEEDS, Sequence, generate
from conformance.fuzz.session import Session
from stack.wire.scapy_bridge import describe_option
from stack.wire.tcp import flags_text, parse_tcp_options

# A test hook: change an IUT's outcome (iut name, sequence, outcome) -> outcome
Inject = Callable[[str, Sequence, Outcome], Outcome]


@dataclass
class Config:
    seed: int = 0
    cases: int | None = 500  # the budget in sequences, or
    seconds: float | None = None  # in seconds
    iuts: tuple[str, str] = ("kernel", "stack-v1")
    known: Path = known_file.DEFAULT_PATH
    seeds: tuple[str, ...] = tuple(SEEDS)
    batch: int = 400
    concurrency: int = 96
    wait: float = 0.3  # s for an answer that does not come
    confirm_wait: float = 1.0  # the same, when a divergence is run again
    rss_limit_mb: float = RSS_LIMIT_MB
    minimise: bool = True
    inject: Inject | None = None
    progress: Callable[[str], None] | None = None


@dataclass
class DivergenceClass:
    class_id: str
    count: int = 0
    known: str | None = None  # the reason, when listed
    flaky: bool = False  # diverged once, not when run again
    example: str = ""
    reproducer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.class_id,
            "count": self.count,
            "known": self.known,
            "flaky": self.flaky,
            "example": self.example,
            "reproducer": self.reproducer,
        }


@dataclass
class Report:
    config: Config
    sequences: int = 0
    divergent: int = 0
    fuzz_s: float = 0.0  # running batches (the rate's denominator)
    wall_s: float = 0.0
    classes: dict[str, DivergenceClass] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    health: Health | None = None

    @property
    def rate(self) -> float:
        """Sequences per second, each run against both IUTs."""
        return self.sequences / self.fuzz_s if self.fuzz_s else 0.0

    @property
    def exit_status(self) -> int:
        return 1 if self.findings else 0

    def summary(self) -> str:
        new = sum(1 for f in self.findings if f.kind == "divergence")
        other = len(self.findings) - new
        known = sum(1 for c in self.classes.values() if c.known)
        flaky = sum(1 for c in self.classes.values() if c.flaky)
        live = self.health.liveness if self.health else {}
        return (
            f"fuzz: {self.sequences} sequences x {len(self.config.iuts)} IUTs in "
            f"{self.wall_s:.1f} s ({self.rate:.0f} sequences/s), {self.divergent} divergent, "
            f"{len(self.classes)} classes ({new} new, {known} known, {flaky} flaky), "
            f"{other} crash/hang/growth findings; liveness echoes "
            + ", ".join(f"{k} {v}" for k, v in live.items())
            + f"; seed {self.config.seed}"
        )

    def to_json(self) -> dict[str, Any]:
        health = self.health
        return {
            "seed": self.config.seed,
            "iuts": list(self.config.iuts),
            "sequences": self.sequences,
            "divergent": self.divergent,
            "fuzz_s": round(self.fuzz_s, 3),
            "wall_s": round(self.wall_s, 3),
            "sequences_per_s": round(self.rate, 1),
            "findings": [f.to_json() for f in self.findings],
            "classes": [c.to_json() for c in self.classes.values()],
            "liveness": health.liveness if health else {},
            "rss_peak_mb": health.rss_peak_mb if health else {},
            "rss_limit_mb": self.config.rss_limit_mb,
            "cpu_settle_s": health.settle_s if health else {},
        }


def describe_sent(run: Run) -> list[str]:
    """The segments a run sent, one line each (for reproducers)."""
    lines = []
    for name, packet in run.sent:
        options = parse_tcp_options(packet.options_area(), version=1)
        text = "; ".join(describe_option(o, packet.flags) for o in options if o.emit() != b"\x01")
        lines.append(
            f"{name:<10} {flags_text(packet.flags):<3} len {len(packet.payload):<3} <{text}>"
        )
    return lines


class Fuzzer:
    def __init__(self, config: Config, sessions: list[Session]) -> None:
        self.config = config
        self.sessions = sessions
        self.engine = Engine(sessions, wait=config.wait, concurrency=config.concurrency)
        self.known = known_file.load(config.known)
        self.report = Report(config)
        self.report.health = Health(self.engine, sessions, config.rss_limit_mb)
        self._alias: dict[str, str] = {}  # a class as found -> its class with one mutation

    def _say(self, text: str) -> None:
        if self.config.progress:
            self.config.progress(text)

    def outcomes(
        self, sequences: list[Sequence], wait: float | None = None
    ) -> list[tuple[list[Outcome], list[Run]]]:
        """Each sequence against every IUT: the outcomes (hook applied) and the runs."""
        jobs = [(sequence, session) for sequence in sequences for session in self.sessions]
        runs = self.engine.execute(jobs, wait)
        out = []
        width = len(self.sessions)
        for k, sequence in enumerate(sequences):
            group = runs[k * width : (k + 1) * width]
            found = []
            for run in group:
                outcome = run.observed.outcome()
                if self.config.inject is not None:
                    outcome = self.config.inject(run.session.name, sequence, outcome)
                found.append(outcome)
            out.append((found, group))
        return out

    def differences(self, sequences: list[Sequence]) -> list[Difference]:
        """Run again (to confirm, reduce, minimise): with the longer `confirm_wait`, so
        that a late answer is not taken for a behaviour."""
        return [diff(o[0], o[1]) for o, _ in self.outcomes(sequences, self.config.confirm_wait)]

    def run(self) -> Report:
        config, report = self.config, self.report
        started = time.monotonic()
        index = 0
        while True:
            elapsed = time.monotonic() - started
            if config.seconds is not None and elapsed >= config.seconds:
                break
            size = config.batch
            if config.cases is not None:
                size = min(size, config.cases - index)
            if size <= 0:
                break
            for session in self.sessions:
                session.announce()
            batch_started = time.monotonic()
            sequences = [generate(config.seed, index + k, config.seeds) for k in range(size)]
            results = self.outcomes(sequences)
            report.fuzz_s += time.monotonic() - batch_started
            report.sequences += size
            index += size
            divergent = []
            for sequence, (outcomes, _) in zip(sequences, results, strict=True):
                difference = diff(outcomes[0], outcomes[1])
                if difference:
                    divergent.append((sequence, difference))
            report.divergent += len(divergent)
            self._triage(divergent)
            assert report.health is not None
            problems = report.health.check()
            report.findings += problems
            self._say(
                f"[{index:>6}] {time.monotonic() - started:6.1f} s  "
                f"{report.rate:5.0f} sequences/s  {report.divergent} divergent, "
                f"{len(report.classes)} classes, {len(report.findings)} findings"
                + "".join(f", {n} RSS {mb:.0f} MB" for n, mb in report.health.rss_now_mb.items())
            )
            for problem in problems:
                self._say(f"  {problem.kind} ({problem.iut}): {problem.detail}")
            if any(p.kind == "crash" and "exited" in p.detail for p in problems):
                break
        report.wall_s = time.monotonic() - started
        return report

    def _triage(self, divergent: list[tuple[Sequence, Difference]]) -> None:
        """Count a batch's divergences under their classes. The new ones are run again,
        without its mutations and, with two, with each one alone, all at once: a class
        that does not come back is flaky; one that comes back without mutation is the
        seed's own, one that comes back with a single mutation is that mutation's. What
        is still new is minimised and reported."""
        classes = self.report.classes
        fresh: dict[str, tuple[Sequence, Difference]] = {}
        counts: dict[str, int] = {}
        for sequence, difference in divergent:
            raw = class_id(sequence, difference)
            cid = self._alias.get(raw, raw)
            if cid in classes:
                classes[cid].count += 1
            elif (listed := known_file.match(self.known, cid)) is not None:
                classes[cid] = DivergenceClass(cid, 1, listed.reason, example=sequence.describe())
            else:
                fresh.setdefault(raw, (sequence, difference))
                counts[raw] = counts.get(raw, 0) + 1
        if not fresh:
            return
        trials: list[tuple[str, Sequence]] = []
        for raw, (sequence, _) in fresh.items():
            variants = [unmutated(sequence), *single_mutations(sequence)]
            trials += [(raw, sequence), *((raw, v) for v in variants)]
        confirmed: set[str] = set()
        reduced: dict[str, Sequence] = {}
        again: dict[str, Difference] = {}
        found = self.differences([t for _, t in trials])
        for (raw, trial), difference in zip(trials, found, strict=True):
            sequence, wanted = fresh[raw]
            if trial is sequence:
                again[raw] = difference
            if difference != wanted:
                continue
            if trial is sequence:
                confirmed.add(raw)
            else:
                reduced.setdefault(raw, trial)
        for raw, (sequence, difference) in fresh.items():
            if raw not in confirmed:
                seen = "; ".join(f"{n}={a}/{b}" for n, a, b in again[raw]) or "no difference"
                classes[raw] = DivergenceClass(
                    raw, counts[raw], flaky=True, example=f"{sequence.describe()} (again: {seen})"
                )
                self._say(f"  flaky: {raw} (again: {seen})")
                continue
            base = reduced.get(raw, sequence)
            cid = self._alias[raw] = class_id(base, difference)
            if cid in classes:
                classes[cid].count += counts[raw]
            elif (listed := known_file.match(self.known, cid)) is not None:
                classes[cid] = DivergenceClass(
                    cid, counts[raw], listed.reason, example=base.describe()
                )
            else:
                self._new_class(cid, base, difference, counts[raw])

    def _new_class(self, cid: str, sequence: Sequence, difference: Difference, count: int) -> None:
        entry = self.report.classes[cid] = DivergenceClass(cid, count, example=sequence.describe())
        minimal = sequence
        if self.config.minimise:
            minimal = minimise(sequence, difference, self.differences)
        wait = self.config.confirm_wait
        ((final, final_runs),) = self.outcomes([minimal], wait)
        if diff(final[0], final[1]) != difference:  # the minimal one: flaky in the end
            minimal = sequence
            ((final, final_runs),) = self.outcomes([minimal], wait)
        names = [s.name for s in self.sessions]
        entry.reproducer = skeleton(
            minimal,
            dict(zip(names, final, strict=True)),
            difference,
            describe_sent(final_runs[0]),
            self.config.seed,
        )
        detail = f"{sequence.describe()} -> minimised: {minimal.describe()}"
        self.report.findings.append(
            Finding("divergence", "/".join(names), detail, cid, entry.reproducer)
        )
        self._say(f"  new divergence class: {cid}\n{entry.reproducer}")


def unmutated(sequence: Sequence) -> Sequence:
    return dataclasses.replace(
        sequence, steps=tuple(dataclasses.replace(s, mutations=()) for s in sequence.steps)
    )


def single_mutations(sequence: Sequence) -> list[Sequence]:
    """With several mutations: the sequence with each one alone (the others dropped)."""
    where = [(i, j) for i, step in enumerate(sequence.steps) for j in range(len(step.mutations))]
    if len(where) < 2:
        return []
    out = []
    for keep in where:
        variant = sequence
        for i, j in reversed(where):  # from the last, so the earlier indices stay valid
            if (i, j) != keep:
                variant = variant.without_mutation(i, j)
        out.append(variant)
    return out


def fuzz(config: Config) -> Report:
    """Open both IUTs, fuzz them within the budget, close them; the report."""
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(Session(name)) for name in config.iuts]
        return Fuzzer(config, sessions).run()
