"""Run many sequences at once against the IUTs: one event loop, one select, no sleeps.

A `Run` is one sequence against one IUT: it builds each step's segment from what the
IUT said so far (its ISN, key, nonce, ACKs), applies the step's mutations, sends it,
and waits for the step's answer (a SYN/ACK, the echo, ...) or for its deadline,
whichever comes first. It acknowledges the IUT's data as a normal peer does, and fills
an `Observed`. At the end it resets what it opened (RST with MP_FASTCLOSE), so the IUT
keeps no state of it.

The `Engine` keeps up to `concurrency` runs in flight per IUT, each on its own tester
ports, and waits on all the IUTs' sockets with one deadline: the earliest of the runs'.
"""

from __future__ import annotations

import collections
import select
import time
from collections.abc import Callable, Sequence

from conformance.fuzz.mutate import Packet, apply
from conformance.fuzz.observe import ROLES, Observed
from conformance.fuzz.seeds import ADD_ADDR_ADDRESS, ADD_ADDR_ID, MSS, Step, payload
from conformance.fuzz.seeds import Sequence as FuzzSequence
from conformance.fuzz.session import Session
from stack import crypto
from stack.wire.mptcp import (
    MPC_FLAG_H,
    AddAddrV1,
    Dss,
    MpCapable,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
)
from stack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpHeader, TcpOption, parse_tcp_options

M32 = 0xFFFFFFFF
M64 = 2**64 - 1
Built = tuple[int, Packet, Callable[[], bool] | None]  # subflow, segment, what to wait for


class SubflowState:
    __slots__ = (
        "answers",
        "closed",
        "irs",
        "iss",
        "iut_ack",
        "lport",
        "rcv_nxt",
        "remote_nonce",
        "reset",
        "snd_nxt",
        "started",
    )

    def __init__(self, lport: int, iss: int) -> None:
        self.lport = lport
        self.iss = iss
        self.snd_nxt = iss
        self.irs: int | None = None
        self.rcv_nxt = 0
        self.iut_ack: int | None = None
        self.remote_nonce: int | None = None
        self.reset = False  # by the IUT
        self.closed = False  # by the tester (MP_TCPRST step)
        self.started = False  # a SYN went out
        self.answers = 0  # segments the IUT sent on it

    @property
    def open(self) -> bool:
        return self.irs is not None and not self.reset and not self.closed


class Run:
    """One sequence against one IUT."""

    def __init__(self, sequence: FuzzSequence, session: Session, wait: float) -> None:
        self.sequence = sequence
        self.session = session
        self.wait = wait
        self.subflows = [
            SubflowState(session.allocate(), sequence.iss[0]),
            SubflowState(session.allocate(), sequence.iss[1]),
        ]
        self.observed = Observed()
        self.remote_key: int | None = None
        self.data_snd_nxt = (crypto.key_idsn(sequence.key, 1) + 1) & M64
        self.data_rcv_nxt = 0
        self.step = 0
        self.deadline = 0.0
        self.waiting: Callable[[], bool] | None = None
        self.done = False
        self.sent: list[tuple[str, Packet]] = []  # the segments as sent, for reproducers

    @property
    def mptcp(self) -> bool:
        return self.remote_key is not None

    # -- stepping --

    def advance(self, now: float) -> None:
        """Send the next steps whose turn has come; stop at one that waits for an answer."""
        steps = self.sequence.steps
        while not self.done:
            if self.waiting is not None:
                if not self.waiting() and now < self.deadline:
                    return
                self.waiting = None
            if self.step >= len(steps):
                self.done = True
                return
            step = steps[self.step]
            built = self._build(self.step, step)
            self.step += 1
            if built is None:
                continue  # what it needs did not happen (no SYN/ACK, a reset): skipped
            n, packet, waiting = built
            for mutation in step.mutations:
                packet = apply(mutation, packet)
            self.session.send(self.subflows[n].lport, packet)
            self.sent.append((step.name, packet))
            if waiting is not None:
                self.waiting, self.deadline = waiting, now + self.wait

    def _build(self, index: int, step: Step) -> Built | None:
        name = step.name
        if name in ("first_data", "data", "join_data"):
            return self._data(index, name)
        builder: Callable[[int], Built | None] = getattr(self, f"_{name}")
        return builder(index)

    def _syn(self, index: int) -> Built:
        sf = self.subflows[0]
        packet = Packet(SYN, sf.snd_nxt, 0, [MSS, MpCapable(version=1, flags=MPC_FLAG_H)])
        sf.snd_nxt = (sf.snd_nxt + 1) & M32
        sf.started = True
        return 0, packet, lambda: sf.irs is not None or sf.reset

    def _ack(self, index: int) -> Built | None:
        sf = self.subflows[0]
        if not sf.open:
            return None
        options: list[TcpOption] = []
        if self.remote_key is not None:
            options = [MpCapable(1, MPC_FLAG_H, self.sequence.key, self.remote_key)]
        return 0, Packet(ACK, sf.snd_nxt, sf.rcv_nxt, options), None

    def _data(self, index: int, name: str) -> Built | None:
        n = 1 if name == "join_data" else 0
        sf = self.subflows[n]
        if not sf.open:
            return None
        data = payload(index, name)
        dsn = self.data_snd_nxt
        options: list[TcpOption] = []
        if self.remote_key is not None and name == "first_data":
            options = [MpCapable(1, MPC_FLAG_H, self.sequence.key, self.remote_key, len(data))]
        elif self.remote_key is not None:
            options = [self._mapping(dsn, (sf.snd_nxt - sf.iss) & M32, len(data))]
        self.data_snd_nxt = (dsn + len(data)) & M64
        self.observed.data_steps.append((name, data, self.data_snd_nxt))
        packet = Packet(PSH | ACK, sf.snd_nxt, sf.rcv_nxt, options, data)
        sf.snd_nxt = (sf.snd_nxt + len(data)) & M32
        return n, packet, lambda: self.observed.came_back(data) or sf.reset

    def _mapping(self, dsn: int, subflow_seq: int, length: int) -> Dss:
        return Dss(
            data_ack=self.data_rcv_nxt,
            data_ack_64=True,
            dsn=dsn,
            dsn_64=True,
            subflow_seq=subflow_seq,
            data_level_length=length,
        )

    def _probe(self, index: int) -> Built | None:
        """Data where the IUT expects it: at its TCP ACK and its DATA_ACK."""
        sf = self.subflows[0]
        if not sf.open:
            return None
        data = payload(index, "probe")
        seq = sf.iut_ack if sf.iut_ack is not None else sf.snd_nxt
        dsn = self.observed.data_ack  # no DATA_ACK yet: a new connection's, IDSN + 1
        if dsn is None:
            dsn = (crypto.key_idsn(self.sequence.key, 1) + 1) & M64
        options: list[TcpOption] = []
        if self.remote_key is not None:
            options = [self._mapping(dsn, (seq - sf.iss) & M32, len(data))]
        self.observed.probe = data
        self.observed.acked_before_probe = self.observed.data_ack
        sf.snd_nxt = (seq + len(data)) & M32
        return (
            0,
            Packet(PSH | ACK, seq, sf.rcv_nxt, options, data),
            lambda: self.observed.came_back(data) or sf.reset,
        )

    def _join_syn(self, index: int) -> Built | None:
        if self.remote_key is None or not self.subflows[0].open:
            return None
        sf = self.subflows[1]
        token = crypto.key_token(self.remote_key, 1)
        option = MpJoinSyn(address_id=1, token=token, nonce=self.sequence.nonce)
        packet = Packet(SYN, sf.snd_nxt, 0, [MSS, option])
        sf.snd_nxt = (sf.snd_nxt + 1) & M32
        sf.started = True
        self.observed.join_answer = False
        return 1, packet, lambda: sf.irs is not None or sf.reset

    def _join_ack(self, index: int) -> Built | None:
        sf = self.subflows[1]
        if not sf.open or sf.remote_nonce is None or self.remote_key is None:
            return None
        hmac = crypto.join_ack_hmac(
            1, self.sequence.key, self.remote_key, self.sequence.nonce, sf.remote_nonce
        )
        mark = sf.answers
        packet = Packet(ACK, sf.snd_nxt, sf.rcv_nxt, [MpJoinAck(hmac=hmac)])
        return 1, packet, lambda: sf.answers > mark or sf.reset

    def _add_addr(self, index: int) -> Built | None:
        sf = self.subflows[0]
        if not sf.open or self.remote_key is None:
            return None
        hmac = crypto.add_addr_hmac(
            self.sequence.key, self.remote_key, ADD_ADDR_ID, ADD_ADDR_ADDRESS, None
        )
        self.observed.add_addr_sent = True
        option = AddAddrV1(ADD_ADDR_ID, ADD_ADDR_ADDRESS, hmac=hmac)
        return (
            0,
            Packet(ACK, sf.snd_nxt, sf.rcv_nxt, [option]),
            lambda: self.observed.add_addr_echo or sf.reset,
        )

    def _mp_prio(self, index: int) -> Built | None:
        sf = self.subflows[0]
        if not sf.open or self.remote_key is None:
            return None
        return 0, Packet(ACK, sf.snd_nxt, sf.rcv_nxt, [MpPrio(backup=True)]), None

    def _fastclose(self, index: int) -> Built | None:
        sf = self.subflows[0]
        if not sf.open or self.remote_key is None:
            return None
        packet = Packet(ACK, sf.snd_nxt, sf.rcv_nxt, [MpFastclose(receiver_key=self.remote_key)])
        return 0, packet, lambda: sf.reset

    def _tcprst(self, index: int) -> Built | None:
        sf = self.subflows[1]
        if not sf.open:
            return None
        sf.closed = True
        return 1, Packet(RST | ACK, sf.snd_nxt, sf.rcv_nxt, [MpTcpRst(reason=1)]), None

    # -- what the IUT sends --

    def receive(self, n: int, tcp: TcpHeader) -> None:
        sf = self.subflows[n]
        sf.answers += 1
        options = parse_tcp_options(tcp.options, version=1)
        observed = self.observed
        flags = tcp.flags
        if flags & RST:
            sf.reset = True
            observed.reset.add(ROLES[n])
            observed.tcprst.update(o.reason for o in options if isinstance(o, MpTcpRst))
            return
        if flags & ACK:
            sf.iut_ack = tcp.ack
        if flags & SYN:
            if flags & ACK and sf.irs is None:
                self._synack(n, sf, tcp.seq, options)
            return
        dss = None
        for option in options:
            if isinstance(option, Dss):
                dss = option
            elif isinstance(option, AddAddrV1) and option.echo:
                observed.add_addr_echo = True
        if dss is not None and dss.data_ack is not None:
            self._data_ack(dss.data_ack, dss.data_ack_64)
        data = bytes(tcp.payload)
        if not data and not flags & FIN:
            return
        if self.mptcp and data and (dss is None or dss.data_level_length == 0):
            observed.fallback = True  # data without a mapping, or an infinite mapping
        if tcp.seq == sf.rcv_nxt and sf.irs is not None:
            observed.streams[n] += data
            sf.rcv_nxt = (sf.rcv_nxt + len(data) + (1 if flags & FIN else 0)) & M32
            if dss is not None and dss.dsn is not None and dss.data_level_length:
                dsn = dss.dsn if dss.dsn_64 else dss.dsn | (self.data_rcv_nxt & ~M32)
                if dsn == self.data_rcv_nxt:
                    self.data_rcv_nxt = (dsn + dss.data_level_length) & M64
        if not sf.closed:
            ack: list[TcpOption] = []
            if self.mptcp and not observed.fallback:
                ack = [Dss(data_ack=self.data_rcv_nxt, data_ack_64=True)]
            self.session.send(sf.lport, Packet(ACK, sf.snd_nxt, sf.rcv_nxt, ack))

    def _synack(self, n: int, sf: SubflowState, seq: int, options: list[TcpOption]) -> None:
        sf.irs = seq
        sf.rcv_nxt = (seq + 1) & M32
        if n == 1:
            join = next((o for o in options if isinstance(o, MpJoinSynAck)), None)
            if join is not None:
                sf.remote_nonce = join.nonce
                self.observed.join_answer = True
            return
        capable = next((o for o in options if isinstance(o, MpCapable)), None)
        if capable is None or capable.sender_key is None:
            self.observed.fallback = True
            return
        self.remote_key = capable.sender_key
        self.data_rcv_nxt = (crypto.key_idsn(capable.sender_key, 1) + 1) & M64

    def _data_ack(self, value: int, wide: bool) -> None:
        if not wide:  # a 32-bit DATA_ACK: the upper bits of what the tester sent
            value |= self.data_snd_nxt & ~M32
        known = self.observed.data_ack
        if known is None or (value - known) % 2**64 < 2**63:
            self.observed.data_ack = value

    def cleanup(self) -> None:
        """Reset every subflow the run opened (RST, with MP_FASTCLOSE once MPTCP) and
        give its ports back."""
        for sf in self.subflows:
            if sf.started and not sf.reset and not sf.closed:
                options: list[TcpOption] = []
                if self.remote_key is not None:
                    options = [MpFastclose(receiver_key=self.remote_key)]
                flags = RST | ACK if sf.irs is not None else RST
                # at the IUT's own ACK: the one RST an IUT must take (RFC 5961 §3.2),
                # wherever the mutations left the tester's sequence
                seq = sf.iut_ack if sf.iut_ack is not None else sf.snd_nxt
                self.session.send(sf.lport, Packet(flags, seq, sf.rcv_nxt, options))
            # and its application lets the connection go: one whose subflows all died
            # without a DATA_FIN or MP_FASTCLOSE lives on (RFC 8684), as on Linux
            self.session.close_peer(sf.lport)
            self.session.release(sf.lport)


class Engine:
    """Runs sequences against sessions, up to `concurrency` at once per session."""

    def __init__(
        self, sessions: Sequence[Session], *, wait: float = 0.3, concurrency: int = 96
    ) -> None:
        self.sessions = list(sessions)
        self.wait = wait
        self.concurrency = concurrency
        self.executed = 0
        self._routes: dict[Session, dict[int, tuple[Run, int]]] = {s: {} for s in sessions}
        self._touched: set[Run] = set()  # runs that received something since they advanced

    def execute(
        self, jobs: Sequence[tuple[FuzzSequence, Session]], wait: float | None = None
    ) -> list[Run]:
        """Every (sequence, session) job, concurrently; the runs in the jobs' order.
        `wait`: how long a step waits for an answer that does not come (default the
        engine's)."""
        results: list[Run | None] = [None] * len(jobs)
        pending = collections.deque(range(len(jobs)))
        active: dict[int, Run] = {}
        load = dict.fromkeys(self.sessions, 0)
        while pending or active:
            now = time.monotonic()
            for _ in range(len(pending)):
                at = pending.popleft()
                sequence, session = jobs[at]
                if load[session] >= self.concurrency:
                    pending.append(at)
                    continue
                run = Run(sequence, session, self.wait if wait is None else wait)
                load[session] += 1
                active[at] = run
                for n, sf in enumerate(run.subflows):
                    self._routes[session][sf.lport] = (run, n)
            touched, self._touched = self._touched, set()
            for at in list(active):
                run = active[at]
                if run.waiting is not None and run.deadline > now and run not in touched:
                    continue  # nothing came for it and its time is not up
                run.advance(now)
                if run.done:
                    self._finish(run)
                    load[run.session] -= 1
                    results[at] = active.pop(at)
            waits = [r.deadline for r in active.values() if r.waiting is not None]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else 0.0
            if active:
                self._read(timeout)
        self.executed += len(jobs)
        return [r for r in results if r is not None]

    def _finish(self, run: Run) -> None:
        routes = self._routes[run.session]
        for sf in run.subflows:
            routes.pop(sf.lport, None)
        run.cleanup()

    def _read(self, timeout: float) -> None:
        readable, _, _ = select.select(self.sessions, [], [], timeout)
        for session in readable:
            routes = self._routes[session]
            for tcp in session.read():
                route = routes.get(tcp.dst_port)
                if route is not None:
                    route[0].receive(route[1], tcp)
                    self._touched.add(route[0])

    def idle(self, seconds: float) -> None:
        """Read (answering ARP, dropping the rest) for `seconds`: the IUTs are left alone."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._read(remaining)
