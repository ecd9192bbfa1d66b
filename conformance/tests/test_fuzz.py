"""The differential fuzzer: deterministic generation, mutators on the codec, the outcome
classifier, a run against a scripted peer, the minimiser, the skeleton, the known file,
the CLI's usage errors; and a real run against the kernel and stack-v1 in namespaces."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from conformance.__main__ import main, parse_budget
from conformance.fuzz import known
from conformance.fuzz.engine import Run
from conformance.fuzz.mutate import EXTRAS, KINDS, Mutation, Packet, apply, edge, fuzzed
from conformance.fuzz.observe import Observed, Outcome, class_id, diff
from conformance.fuzz.reproduce import candidates, minimise, skeleton
from conformance.fuzz.run import single_mutations, unmutated
from conformance.fuzz.seeds import SEEDS, STEPS, Sequence, generate, payload, plain
from stack import crypto
from stack.wire.errors import MalformedOption
from stack.wire.mptcp import AddAddrV1, Dss, MpCapable, MpTcpRst, UnknownMptcpOption
from stack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TcpHeader,
    emit_tcp,
    parse_tcp,
    parse_tcp_options,
)

# --------------------------------------------------------------------------- generation


def test_the_same_seed_gives_the_same_sequences() -> None:
    first = [generate(7, i) for i in range(300)]
    assert first == [generate(7, i) for i in range(300)]
    assert first != [generate(8, i) for i in range(300)]
    assert all(s.index == i for i, s in enumerate(first))


def test_generation_covers_every_seed_kind_and_subtype() -> None:
    sequences = [generate(1, i) for i in range(3000)]
    mutations = [m for s in sequences for step in s.steps for m in step.mutations]
    assert {s.seed for s in sequences} == set(SEEDS)
    assert {m.kind for m in mutations} == set(KINDS)
    subtypes = {int(m.op) for m in mutations if m.kind == "subtype"}
    subtypes |= {type(EXTRAS[m.target]).subtype if not isinstance(EXTRAS[m.target],
                 UnknownMptcpOption) else EXTRAS[m.target].subtype
                 for m in mutations if m.kind == "extra"}  # fmt: skip
    assert subtypes == set(range(16))
    fields = {m.target for m in mutations if m.kind == "field"}
    assert {"data_ack", "dsn", "subflow_seq", "hmac", "token", "sender_key", "flags"} <= fields
    assert all(1 <= sum(len(st.mutations) for st in s.steps) <= 2 for s in sequences)
    assert not any(st.mutations for s in sequences for st in s.steps if st.name == "probe")


# --------------------------------------------------------------------------- mutators


def _dss_packet() -> Packet:
    dss = Dss(data_ack=5, data_ack_64=True, dsn=9, dsn_64=True, subflow_seq=1,
              data_level_length=3)  # fmt: skip
    return Packet(PSH | ACK, 100, 200, [dss], b"abc")


def test_edge_values() -> None:
    assert edge("zero", 77, 8) == 0
    assert edge("max", 77, 8) == 255
    assert edge("max-1", 0, 64) == 2**64 - 2
    assert edge("+1", 2**32 - 1, 32) == 0
    assert edge("-1", 0, 16) == 0xFFFF
    assert edge("top", 1, 8) == 0x81
    assert edge("+2^32", 2**64 - 1, 64) == 2**32 - 1
    assert edge("xor:4", 1, 8) == 5


def test_field_mutation_goes_through_the_codec() -> None:
    out = apply(Mutation("field", "data_ack", "max"), _dss_packet())
    (option,) = parse_tcp_options(out.options_area())[:1]
    assert isinstance(option, Dss) and option.data_ack == 2**64 - 1 and option.dsn == 9
    narrowed = apply(Mutation("field", "dsn_64", "toggle"), _dss_packet())
    option = parse_tcp_options(narrowed.options_area())[0]
    assert isinstance(option, Dss) and not option.dsn_64 and option.dsn == 9
    echo = apply(Mutation("field", "echo", "toggle"),
                 Packet(ACK, 1, 1, [AddAddrV1(1, EXTRAS["add_addr_echo"].address,
                                              hmac=bytes(8))]))  # fmt: skip
    option = parse_tcp_options(echo.options_area(), version=1)[0]
    assert isinstance(option, AddAddrV1) and option.echo and option.hmac is None


def test_raw_mutations() -> None:
    packet = _dss_packet()
    emitted = packet.options[0].emit()
    sub = apply(Mutation("subtype", "", "11"), packet).options_area()
    assert sub[2] >> 4 == 11 and sub[3 : len(emitted)] == emitted[3:]
    length = apply(Mutation("length", "", "40"), packet).options_area()
    assert length[1] == 40
    assert isinstance(parse_tcp_options(length)[0], MalformedOption)
    cut = apply(Mutation("truncate", "", "7"), packet).options_area()
    assert len(cut) == 40 and cut[-7:] == emitted[:7]
    last = parse_tcp_options(cut)[-1]
    assert isinstance(last, MalformedOption) and last.offset == 33
    assert not apply(Mutation("drop"), packet).options
    assert len(apply(Mutation("duplicate"), packet).options) == 2
    extra = parse_tcp_options(apply(Mutation("extra", "mp_tcprst"), packet).options_area())
    assert any(isinstance(o, MpTcpRst) for o in extra)
    flags = apply(Mutation("tcp", "flags", f"xor:{FIN}"), packet)
    assert flags.flags == PSH | ACK | FIN and packet.flags == PSH | ACK
    assert apply(Mutation("tcp", "seq", "-1"), packet).seq == 99
    # the skeletons' helper gives the same bytes
    assert fuzzed(packet.options, Mutation("subtype", "", "11")) == sub


def test_a_mutation_of_an_absent_option_changes_nothing() -> None:
    packet = Packet(ACK, 1, 1, [])
    assert apply(Mutation("field", "data_ack", "max"), packet) == packet


# --------------------------------------------------------------------------- classifier


def test_outcome_and_class() -> None:
    observed = Observed()
    observed.reset.add("join")
    observed.tcprst.add(1)
    observed.data_steps = [("first_data", b"<a>", 10), ("data", b"<b>", 20)]
    observed.streams[0] += b"xx<a>"
    observed.probe = b"<p>"
    observed.acked_before_probe = 10
    observed.data_ack = 30  # the probe reuses DSNs: what counts is before it
    outcome = observed.outcome()
    assert outcome == Outcome(reset=("join",), tcprst=(1,), delivered=("first_data",),
                              acked=("first_data",), usable=False)  # fmt: skip
    other = dataclasses.replace(outcome, usable=True, tcprst=())
    difference = diff(outcome, other)
    assert difference == (("tcprst", "1", "-"), ("usable", "no", "yes"))
    sequence = generate(3, 0)
    assert class_id(sequence, difference) == (
        f"{sequence.seed} | {' '.join(sequence.labels)} | tcprst=1/-; usable=no/yes"
    )
    assert diff(outcome, outcome) == ()


# --------------------------------------------------------------------------- a run


class ScriptedSession:
    """Stands for a Session: records what the run sends; the test plays the IUT."""

    name = "scripted"

    def __init__(self) -> None:
        self.sent: list[tuple[int, Packet]] = []
        self.closed: list[int] = []  # ports whose connection the IUT's application let go
        self.ports = iter(range(30000, 30100))

    def allocate(self) -> int:
        return next(self.ports)

    def release(self, port: int) -> None:
        pass

    def send(self, lport: int, packet: Packet) -> None:
        self.sent.append((lport, packet))

    def close_peer(self, port: int) -> None:
        self.closed.append(port)


def _segment(flags: int, seq: int, ack: int, options: list, data: bytes = b"") -> TcpHeader:
    area = b"".join(o.emit() for o in options)
    area += b"\x01" * (-len(area) % 4)
    parsed = parse_tcp(emit_tcp(5001, 30000, seq, ack, flags, 65535, options=area, payload=data))
    assert isinstance(parsed, TcpHeader)
    return parsed


def _shape(option: object) -> tuple[str, tuple[str, ...]]:
    present = tuple(f.name for f in dataclasses.fields(option) if getattr(option, f.name) is None)
    return type(option).__name__, present


def test_a_run_plays_the_data_seed_against_a_scripted_peer() -> None:
    session = ScriptedSession()
    sequence = plain("data", 0)
    run = Run(sequence, session, wait=0.3)  # type: ignore[arg-type]
    key, irs = 0x1122334455667788, 5000
    run.advance(0.0)
    ((_, syn),) = session.sent
    assert syn.flags == SYN and syn.seq == sequence.iss[0]
    run.receive(0, _segment(SYN | ACK, irs, syn.seq + 1, [MpCapable(1, 1, key)]))
    run.advance(0.0)
    ack, first = (p for _, p in session.sent[1:])
    assert ack.flags == ACK and ack.options == [MpCapable(1, 1, sequence.key, key)]
    assert first.payload == payload(2, "first_data")
    idsn = crypto.key_idsn(key, 1)
    local = crypto.key_idsn(sequence.key, 1) + 1
    seq, dsn, acked = irs + 1, idsn + 1, local
    for step, name in ((2, "first_data"), (3, "data"), (4, "probe")):
        data = payload(step, name)
        acked += len(data)
        mapping = Dss(data_ack=acked, data_ack_64=True, dsn=dsn, dsn_64=True,
                      subflow_seq=seq - irs, data_level_length=len(data))  # fmt: skip
        run.receive(0, _segment(PSH | ACK, seq, session.sent[-1][1].seq + len(data), [mapping],
                                data))  # fmt: skip
        seq, dsn = seq + len(data), dsn + len(data)
        our_ack = session.sent[-1][1]
        assert our_ack.flags == ACK and our_ack.ack == seq
        assert our_ack.options == [Dss(data_ack=dsn, data_ack_64=True)]
        run.advance(0.0)
    assert run.done
    # mutations are chosen on the steps' templates: what a run builds has their shape
    for name, packet in run.sent:
        assert [_shape(o) for o in packet.options] == [_shape(o) for o in STEPS[name].template]
    outcome = run.observed.outcome()
    assert outcome == Outcome(delivered=("first_data", "data"), acked=("first_data", "data"),
                              usable=True)  # fmt: skip
    run.cleanup()
    rst = session.sent[-1][1]
    assert rst.flags == RST | ACK and rst.options[0].emit()[2] >> 4 == 7  # MP_FASTCLOSE
    assert session.closed == [sf.lport for sf in run.subflows]  # and its application lets go


def test_a_run_skips_what_a_reset_leaves_impossible() -> None:
    session = ScriptedSession()
    run = Run(plain("join", 0), session, wait=0.3)  # type: ignore[arg-type]
    run.advance(0.0)
    run.receive(0, _segment(RST | ACK, 0, run.subflows[0].snd_nxt, [MpTcpRst(reason=3)]))
    run.advance(0.0)
    assert run.done and len(session.sent) == 1
    outcome = run.observed.outcome()
    assert outcome.reset == ("first",) and outcome.tcprst == (3,) and outcome.usable is None


def test_a_timed_out_step_moves_on_at_its_deadline() -> None:
    session = ScriptedSession()
    run = Run(plain("handshake", 0), session, wait=0.3)  # type: ignore[arg-type]
    run.advance(10.0)
    run.advance(10.2)
    assert len(session.sent) == 1 and not run.done  # still waiting for the SYN/ACK
    run.advance(10.31)
    assert run.done and run.observed.outcome() == Outcome()


# --------------------------------------------------------------------------- minimiser


def test_minimise_keeps_only_what_the_divergence_needs() -> None:
    base = plain("add_addr", 0)
    mutation = Mutation("field", "hmac", "zero")
    steps = tuple(dataclasses.replace(s, mutations=(mutation,)) if s.name == "add_addr" else s
                  for s in base.steps)  # fmt: skip
    noisy = Mutation("tcp", "window", "zero")
    steps = (steps[0], dataclasses.replace(steps[1], mutations=(noisy,)), *steps[2:])
    sequence = dataclasses.replace(base, steps=steps)
    difference = (("add_addr_echo", "yes", "no"),)
    rounds = []

    def differences_of(sequences: list[Sequence]) -> list[tuple]:
        rounds.append(len(sequences))
        return [difference if any(st.name == "add_addr" and mutation in st.mutations
                                  for st in s.steps)
                and "syn" in [st.name for st in s.steps] else () for s in sequences]  # fmt: skip

    minimal = minimise(sequence, difference, differences_of)
    assert [(s.name, s.mutations) for s in minimal.steps] == [
        ("syn", ()),
        ("add_addr", (mutation,)),
    ]
    assert rounds == [7, 3, 2, 1]  # one removal a round, its candidates run together
    assert len(candidates(minimal)) == 1  # only the syn could go, and it is needed


def test_reductions_before_classing() -> None:
    """A new divergence is tried without mutations and with each of two alone."""
    sequence = next(s for s in (generate(4, i) for i in range(100))
                    if sum(len(st.mutations) for st in s.steps) == 2)  # fmt: skip
    assert not any(st.mutations for st in unmutated(sequence).steps)
    alone = single_mutations(sequence)
    assert len(alone) == 2
    assert [[m for st in s.steps for m in st.mutations] for s in alone] == [
        [m] for st in sequence.steps for m in st.mutations
    ]
    one = next(s for s in (generate(4, i) for i in range(100))
               if sum(len(st.mutations) for st in s.steps) == 1)  # fmt: skip
    assert single_mutations(one) == []


def test_skeleton_is_python_in_the_catalogue_style() -> None:
    sequence = generate(5, 11)
    outcomes = {"kernel": Outcome(), "stack-v1": Outcome(usable=True)}
    text = skeleton(sequence, outcomes, (("usable", "n/a", "yes"),), ["syn S len 0 <>"], 5)
    tree = ast.parse(text)
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert function.name.startswith(f"fuzz_{sequence.seed}_")
    assert "--seed 5" in text and "usable: kernel n/a, stack-v1 yes" in text
    assert "ctx.iut.listen(ctx.port)" in text


# --------------------------------------------------------------------------- known, CLI


def test_known_divergences_file(tmp_path: Path) -> None:
    entries = known.load()
    assert all(entry.reason for entry in entries)
    path = tmp_path / "known.json"
    path.write_text(json.dumps({"divergences": [{"class": "join | * | usable=no/yes",
                                                 "reason": "because"}]}))  # fmt: skip
    listed = known.load(path)
    assert known.match(listed, "join | join_ack.field:hmac | usable=no/yes").reason == "because"
    assert known.match(listed, "data | data.drop | usable=no/yes") is None
    # a list of patterns; a trigger pattern does not match a longer label
    path.write_text(json.dumps({"divergences": [{"class": ["* ack.length *", "x"],
                                                 "reason": "trigger"}]}))  # fmt: skip
    listed = known.load(path)
    assert known.match(listed, "join | ack.length | fallback=no/yes").reason == "trigger"
    assert known.match(listed, "join | ack.length data.drop | fallback=no/yes")
    assert known.match(listed, "join | data.drop ack.length | fallback=no/yes")
    assert known.match(listed, "tcprst | join_ack.length | reset=-/join") is None
    path.write_text(json.dumps({"divergences": [{"class": "x"}]}))
    with pytest.raises(known.KnownError, match="reason"):
        known.load(path)


def test_budget() -> None:
    assert parse_budget("500") == (500, None)
    assert parse_budget("60s") == (None, 60.0)
    for bad in ("", "s", "-3", "0", "1m"):
        with pytest.raises(ValueError):
            parse_budget(bad)


@pytest.mark.parametrize("argv", [
    ["--budget", "lots"], ["--iut", "kernel"], ["--iut", "kernel,kernel"],
    ["--iut", "kernel,nope"], ["--seeds", "nope"], ["--batch", "0"],
])  # fmt: skip
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", *argv]) == 2
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- real IUTs


def _inject_tcprst_99(iut: str, sequence: Sequence, outcome: Outcome) -> Outcome:
    """A planted divergence: stack-v1 "answers" any mutated data step with reason 99."""
    if iut == "stack-v1" and any(s.name == "data" and s.mutations for s in sequence.steps):
        return dataclasses.replace(outcome, tcprst=(*outcome.tcprst, 99))
    return outcome


@pytest.mark.netns
@pytest.mark.kernel
@pytest.mark.slow
def test_fuzz_finds_an_injected_divergence_and_checks_liveness(tmp_path: Path) -> None:
    from conformance.fuzz.run import Config, fuzz

    config = Config(seed=3, cases=120, batch=60, seeds=("data",), inject=_inject_tcprst_99)
    report = fuzz(config)
    assert report.sequences == 120 and report.rate > 0
    planted = [f for f in report.findings if f.kind == "divergence" and "99" in f.class_id]
    assert planted, [c.class_id for c in report.classes.values()]
    finding = planted[0]
    assert report.exit_status == 1
    # minimised, and what the divergence needs is kept: the mutated data step
    found, minimal = finding.detail.split(" -> minimised: ")
    assert " data[" in f" {minimal.split(': ', 1)[1]}"
    assert len(minimal.split()) <= len(found.split())
    tree = ast.parse(finding.reproducer)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert names[0].startswith("fuzz_data")
    assert report.health is not None
    assert report.health.liveness == {"kernel": 2, "stack-v1": 2}
    assert not [f for f in report.findings if f.kind != "divergence"], report.findings
    assert report.health.rss_peak_mb["stack-v1"] < config.rss_limit_mb

    # listed with a reason, the same class is known: counted, no longer a finding
    listed = tmp_path / "known.json"
    entries = json.loads(known.DEFAULT_PATH.read_text())["divergences"]
    entries.append({"class": "* | *tcprst=*99*", "reason": "planted by the test"})
    listed.write_text(json.dumps({"divergences": entries}))
    again = fuzz(dataclasses.replace(config, known=listed, cases=60))
    assert not [f for f in again.findings if "99" in f.class_id]
    assert any(c.known == "planted by the test" for c in again.classes.values())


@pytest.mark.netns
@pytest.mark.kernel
@pytest.mark.slow
def test_fuzz_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    status = main(["fuzz", "--budget", "40", "--seeds", "handshake", "--seed", "2",
                   "--json", str(out), "-q"])  # fmt: skip
    data = json.loads(out.read_text())
    assert status == (1 if data["findings"] else 0)
    assert data["sequences"] == 40 and data["sequences_per_s"] > 0
    assert data["liveness"] == {"kernel": 1, "stack-v1": 1}
    assert data["rss_peak_mb"]["stack-v1"] < data["rss_limit_mb"]
