"""The stack's application interface: a host with MPTCP sockets, blocking or asyncio.

    with Stack([InterfaceConfig.parse("veth0=192.0.2.1/24")], netns="client") as stack:
        sock = stack.connect(("192.0.2.2", 8000))
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(65536)
        print(sock.info())  # version, fallback, tokens, keys, subflows, counters
        sock.close()

One `Stack` owns its interfaces and runs one I/O loop thread (`stack.host.Host`); every
protocol object lives on that thread. `MptcpSocket` methods may be called from any other
thread (one reader and one writer at a time, as with a kernel socket); they hand work to
the loop and wait on a condition the loop signals. `AsyncMptcpSocket` offers the same as
coroutines for asyncio code, woken by the loop through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from stack import faults
from stack.host import Host, Timer
from stack.mptcp.connection import MptcpConfig, MptcpConnection, send_ack_now
from stack.mptcp.listener import MptcpListener
from stack.mptcp.pm import Endpoint, Limits, PathManager, PeerAddress
from stack.mptcp.subflow import Address as SubflowAddress
from stack.mptcp.subflow import Subflow
from stack.mptcp.token import TokenTable
from stack.route import InterfaceConfig, IPAddress, RoutingError
from stack.tcp.segment import Segment
from stack.tcp_host import GSO_MAX_SIZE, segment_from_header, transmit, with_path_mss
from stack.wire.ip import IPv4Header, IPv6Header
from stack.wire.mptcp import MpJoinSyn
from stack.wire.tcp import TcpHeader

Address = tuple[str, int]


def _send(msk: MptcpConnection, data: memoryview, now: float) -> int:
    return msk.send(data, now)


class _SubflowPort:
    """The host's receiver for one subflow's 4-tuple: it takes each read's segments as a
    batch (one ACK, one round of sending for the lot)."""

    __slots__ = ("arrived", "driver", "subflow")

    def __init__(self, driver: _Driver, subflow: Subflow):
        self.driver = driver
        self.subflow = subflow
        self.arrived: list[Segment] = []

    def on_segment(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> None:
        self.arrived.append(segment_from_header(tcp))

    def end_of_batch(self, now: float) -> None:
        arrived, self.arrived = self.arrived, []
        self.driver.run(now, self.driver.msk.handle_segments, self.subflow, arrived, now)


class _JoinPort:
    """The host's receiver for a half-open join's 4-tuple, until its third ACK."""

    __slots__ = ("arrived", "listener", "local", "remote")

    def __init__(self, listener: _ListenerDriver, local: SubflowAddress,
                 remote: SubflowAddress):  # fmt: skip
        self.listener = listener
        self.local = local
        self.remote = remote
        self.arrived: list[Segment] = []

    def on_segment(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> None:
        self.arrived.append(segment_from_header(tcp))

    def end_of_batch(self, now: float) -> None:
        arrived, self.arrived = self.arrived, []
        self.listener.on_join_segments(self.local, self.remote, arrived, now)


class _Driver:
    """Runs one connection on the loop: registrations, output, the timer, wake-ups."""

    def __init__(self, stack: Stack, msk: MptcpConnection, listener: _ListenerDriver | None):
        self.stack = stack
        self.msk = msk
        self.listener = listener
        self.changed = threading.Condition()
        self.watchers: list[Callable[[], None]] = []
        self._timer: Timer | None = None
        self._registered: set[tuple[Any, ...]] = set()
        self.failures = 0  # internal errors met (`fail`)

    @staticmethod
    def _key(sf: Subflow) -> tuple[Any, ...]:
        return (sf.local[0], sf.local[1], sf.remote[0], sf.remote[1])

    def run(self, now: float, fn: Callable[..., object], *args: Any) -> None:
        """fn(*args) on the connection, then pump. An exception (a bug of ours, or a send
        the kernel refused) resets this connection (`fail`) instead of leaving it
        silent with no timer armed while its application waits."""
        try:
            fn(*args)
        except Exception as exc:
            self.fail(exc, now)
            return
        self.pump(now)

    def pump(self, now: float) -> None:
        try:
            self._pump(now)
        except Exception as exc:
            self.fail(exc, now)

    def fail(self, exc: Exception, now: float) -> None:
        """Reset the connection after an internal error: RST (MP_FASTCLOSE, MP_TCPRST in
        v1) on every subflow, and the application's calls fail naming the exception. If
        even that raises, forget the connection: the host answers its segments with
        the closed port's RST from then on."""
        host = self.stack.host
        reason = f"internal error in the stack: {type(exc).__name__}: {exc} (connection reset)"
        host.note_internal_error(f"connection {self._name()}: ")
        self.failures += 1
        if self.failures > 1:  # it failed again after its reset: nothing more to try
            self._forget(reason)
            return
        try:
            self.msk.fail(reason, now)
            self._pump(now)
        except Exception:
            host.note_internal_error(f"connection {self._name()}, while resetting it: ")
            self._forget(reason)

    def _name(self) -> str:
        first = self.msk.first_subflow
        if first is None:
            return "(no subflow)"
        (la, lp), (ra, rp) = first.local, first.remote
        return f"{la}:{lp} -> {ra}:{rp}"

    def _forget(self, reason: str) -> None:
        msk = self.msk
        if not msk.error:
            msk.error = reason
        msk.closed = True
        if msk.local_token and msk.tokens.lookup(msk.local_token) is msk:
            msk.tokens.release(msk.local_token)  # no join finds it any more
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for key in list(self._registered):
            self.stack.host.unregister(key)
        self._registered.clear()
        self.stack._drivers.pop(id(msk), None)
        with self.changed:
            self.changed.notify_all()
        for watcher in self.watchers:
            watcher()

    def _pump(self, now: float) -> None:
        host, msk = self.stack.host, self.msk
        for sf in msk.poll_new_subflows():
            key = self._key(sf)
            host.register(key, _SubflowPort(self, sf))
            self._registered.add(key)
            if msk.config.small_queues:
                sf.tcp.queue_room = functools.partial(host.queue_room, sf.local[0],
                                                      sf.remote[0], sf.device)  # fmt: skip
        for sf, seg in msk.poll_segments():
            transmit(host, seg, sf.local[0], sf.remote[0], sf.tcp.snd_mss, sf.device)
        for sf in msk.poll_gone_subflows():
            if sf.tcp.next_timer() is None or sf.tcp.state.name == "CLOSED":
                self._unregister(sf)
        deadline = msk.next_timer()
        if self._timer is not None and (deadline is None or deadline != self._timer.deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = host.call_at(deadline, self._on_timer)
        if msk.closed:
            for sf in msk.subflows:
                if sf.tcp.state.name == "CLOSED":
                    self._unregister(sf)
            if not self._registered:
                self.stack._drivers.pop(id(msk), None)
        if self.listener is not None:
            self.listener.settled(self)
        with self.changed:
            self.changed.notify_all()
        for watcher in self.watchers:
            watcher()

    def _unregister(self, sf: Subflow) -> None:
        key = self._key(sf)
        if key in self._registered:
            self._registered.discard(key)
            self.stack.host.unregister(key)

    def _on_timer(self, now: float) -> None:
        self._timer = None
        self.run(now, self.msk.handle_timer, now)


class _ListenerDriver:
    """Runs an `MptcpListener` on the loop for one port."""

    def __init__(self, stack: Stack, listener: MptcpListener,
                 join_addresses: set[IPAddress] | None = None):  # fmt: skip
        self.stack = stack
        self.listener = listener
        self.changed = threading.Condition()
        self.half_open: dict[int, _Driver] = {}  # id(msk) -> driver, until accepted
        self._join_ports: set[tuple[Any, ...]] = set()  # 4-tuples of half-open joins
        self._timer: Timer | None = None  # the half-open joins' SYN/ACK retransmissions
        # Not None: the port of signal endpoints (`port=`), taking only joins to these
        # addresses, as the kernel's listening socket per such endpoint; anything else
        # gets the closed port's reset
        self.join_addresses = join_addresses
        # Not None: the one local address the listener is bound to (`listen(address=)`):
        # SYNs to another address, joins included, get the closed port's reset, as a
        # socket bound to one address takes nothing sent to another
        self.bound: IPAddress | None = None

    def on_syn(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> bool:
        local = (ipaddress.ip_address(ip.dst), tcp.dst_port)
        remote = (ipaddress.ip_address(ip.src), tcp.src_port)
        if self.bound is not None and local[0] != self.bound:
            return False
        seg = segment_from_header(tcp)
        if self.join_addresses is not None and (
            local[0] not in self.join_addresses
            or not any(isinstance(o, MpJoinSyn) for o in seg.extra_options)
        ):
            return False
        msk = self.listener.handle_syn(local, remote, seg, now)
        self._flush(now)
        drivers = self.stack._drivers
        for evicted in self.listener.poll_evicted():
            driver = drivers.get(id(evicted))
            if driver is not None:
                driver.pump(now)
        if msk is not None:
            driver = drivers.get(id(msk))
            if driver is None:
                driver = drivers[id(msk)] = _Driver(self.stack, msk, self)
                self.half_open[id(msk)] = driver
            driver.pump(now)
        return True

    def on_join_segments(self, local: SubflowAddress, remote: SubflowAddress,
                         segments: list[Segment], now: float) -> None:  # fmt: skip
        """Segments for a half-open join: the third ACK hands it to its connection."""
        joined = self.listener.handle_join_segments(local, remote, segments, now)
        if joined is not None:
            msk, sf = joined
            self._join_ports.discard((local[0], local[1], remote[0], remote[1]))
            driver = self.stack._drivers.get(id(msk))
            if driver is None:  # the connection was forgotten meanwhile
                self.stack.host.unregister((local[0], local[1], remote[0], remote[1]))
                self.listener._reset(local, remote, segments[-1])
            else:  # its driver registers the subflow in place of our `_JoinPort`
                driver.run(now, msk.handle_segments, sf, segments, now)
        self._flush(now)

    def _on_timer(self, now: float) -> None:
        self._timer = None
        self.listener.handle_timer(now)
        self._flush(now)

    def _flush(self, now: float) -> None:
        """Send what the listener owes, route its half-open joins, re-arm its timer."""
        host = self.stack.host
        for src, dst, seg in self.listener.poll_segments():
            transmit(host, seg, src[0], dst[0], 1460)
        for local, remote in self.listener.poll_new_joins():
            key = (local[0], local[1], remote[0], remote[1])
            self._join_ports.add(key)
            host.register(key, _JoinPort(self, local, remote))
        for local, remote in self.listener.poll_gone_joins():
            key = (local[0], local[1], remote[0], remote[1])
            if key in self._join_ports:
                self._join_ports.discard(key)
                host.unregister(key)
        deadline = self.listener.next_timer()
        if self._timer is not None and self._timer.deadline != deadline:
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = host.call_at(deadline, self._on_timer)

    def stop(self) -> None:
        """The port closes: its half-open joins go silently."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for key in self._join_ports:
            self.stack.host.unregister(key)
        self._join_ports.clear()
        self.listener.drop_joins()
        self.listener.poll_gone_joins()

    def settled(self, driver: _Driver) -> None:
        msk = driver.msk
        if msk.established or msk.closed:
            driver.listener = None  # no longer half-open: stop reporting here
            self.listener.settle(msk)
            if not msk.established:
                self.half_open.pop(id(msk), None)
            with self.changed:
                self.changed.notify_all()

    def take(self, now: float) -> _Driver | None:
        msk = self.listener.accept()
        return self.half_open.pop(id(msk)) if msk is not None else None


def _on_host(config: MptcpConfig, host: Host) -> MptcpConfig:
    """Subflows on a real link send super-segments that the kernel cuts (GSO), and
    their MSS fits the link's MTU (`Host.path_mss`: 1440 for IPv6 on 1500 bytes)."""
    tcp = with_path_mss(config.tcp, host)
    if tcp.gso_max_size is None:
        tcp = dataclasses.replace(tcp, gso_max_size=GSO_MAX_SIZE)
    return config if tcp is config.tcp else dataclasses.replace(config, tcp=tcp)


class Stack:
    """One userspace MPTCP host in a namespace (or the current one)."""

    def __init__(
        self,
        interfaces: list[InterfaceConfig],
        *,
        netns: str | None = None,
        config: MptcpConfig | None = None,
        endpoints: list[Endpoint] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.host = Host(interfaces, netns=netns)
        self.config = _on_host(config or MptcpConfig(), self.host)
        self.tokens: TokenTable[MptcpConnection] = TokenTable()
        self.paths = PathManager(endpoints or [], limits)
        self.paths.route_source = self._route_source
        self._secret = os.urandom(16)
        self._listeners: dict[int, _ListenerDriver] = {}
        self._drivers: dict[int, _Driver] = {}  # id(msk) -> its driver, while it lives
        self.host.link_listeners.append(self._on_link_change)
        self.host.start()
        self._on_loop(self._sync_join_ports)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.host.close()

    def _on_link_change(self, ifname: str, up: bool, now: float) -> None:
        """On the loop: every connection hears which of our addresses it concerns, and
        which of its subflows now leave through a link that is down. That is the way
        their route takes, not the link of their address: a join to our first address
        that arrived over our second link leaves through the second link."""
        addresses = {c.address.ip for c in self.host.routing.interfaces if c.ifname == ifname}
        for driver in list(self._drivers.values()):
            driver.run(now, driver.msk.on_link_change, addresses, up, now, self._way_down)

    def _way_down(self, sf: Subflow) -> bool:
        routing = self.host.routing
        try:
            ifname = routing.route(sf.remote[0], sf.local[0], sf.device).ifname
        except RoutingError:
            return True
        return routing.is_down(ifname)

    def connection_states(self) -> list[dict[str, Any]]:
        """Every live MPTCP connection's internals (`MptcpConnection.internals`), read on
        the loop: what a user asks when a transfer seems stuck."""

        def read(now: float) -> list[dict[str, Any]]:
            states = []
            for driver in self._drivers.values():
                first = driver.msk.first_subflow
                where = {} if first is None else {
                    "local": f"{first.local[0]}:{first.local[1]}",
                    "remote": f"{first.remote[0]}:{first.remote[1]}",
                }  # fmt: skip
                states.append({**where, **driver.msk.internals(now)})
            return states

        return list(self._on_loop(read))

    def _on_loop(self, fn: Callable[[float], Any]) -> Any:
        """Run fn(now) on the loop thread and return its result (or raise its error)."""
        result: list[Any] = []
        error: list[BaseException] = []
        done = threading.Event()

        def call() -> None:
            try:
                result.append(fn(self.host.clock()))
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)
            finally:
                done.set()

        if self.host.stopped:
            raise ConnectionAbortedError("the stack is closed")
        self.host.call_soon(call)
        deadline = time.monotonic() + 30.0
        while not done.wait(0.05):
            # A loop that stopped meanwhile will never run the call: say so at once.
            if self.host.stopped:
                raise ConnectionAbortedError("the stack is closed")
            if time.monotonic() > deadline:
                raise TimeoutError("the stack's I/O loop did not answer within 30 s")
        if error:
            raise error[0]
        return result[0] if result else None

    def connect(self, remote: Address, *, source: str | None = None, timeout: float = 10.0,
                config: MptcpConfig | None = None) -> MptcpSocket:  # fmt: skip
        address = ipaddress.ip_address(remote[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:ADDR is the IPv4 node ADDR (RFC 4291 §2.5.5.2): an IPv4 connection, as
            # an IPv6 socket's connect() to it is on Linux
            address = address.ipv4_mapped
        route = self.host.routing.route(address, ipaddress.ip_address(source) if source else None)
        config = _on_host(config, self.host) if config is not None else self.config

        def start(now: float) -> _Driver:
            port = self.host.allocate_port(route.source, address, remote[1])
            paths = self.paths.connection(route.source, PeerAddress(0, address, remote[1]))
            msk = MptcpConnection.connect(
                (route.source, port), (address, remote[1]), config, self.tokens,
                isn_secret=self._secret, now=now, allocate_port=self._allocate, paths=paths,
            )  # fmt: skip
            driver = self._drivers[id(msk)] = _Driver(self, msk, None)
            driver.pump(now)
            return driver

        sock = MptcpSocket(self, self._on_loop(start))
        try:
            sock._wait(lambda: sock._driver.msk.established, timeout,
                       f"connect to {remote[0]}:{remote[1]}")  # fmt: skip
        except BaseException:
            sock.abort()
            raise
        return sock

    def _route_source(self, destination: IPAddress) -> IPAddress | None:
        try:
            return self.host.routing.route(destination).source
        except RoutingError:
            return None

    def _allocate(self, local: IPAddress, remote: IPAddress, port: int) -> int:
        return self.host.allocate_port(local, remote, port)

    def _listener(self, port: int, backlog: int = 128,
                  join_addresses: set[IPAddress] | None = None) -> _ListenerDriver:  # fmt: skip
        listener = MptcpListener(port, self.config, self.tokens, isn_secret=self._secret,
                                 paths=self.paths, allocate_port=self._allocate,
                                 backlog=backlog)  # fmt: skip
        driver = _ListenerDriver(self, listener, join_addresses)
        self.host.listen(port, driver)
        self._listeners[port] = driver
        return driver

    def listen(
        self, port: int, *, backlog: int = 128, address: str | None = None
    ) -> MptcpServerSocket:
        """Accept connections on `port`: at every local address, or (`address`) at that
        one only, joins included (a join to another address gets a reset)."""
        bound = None if address is None else ipaddress.ip_address(address)

        def start(now: float) -> _ListenerDriver:
            driver = self._listeners.get(port)
            if driver is not None and driver.join_addresses is not None:
                driver.join_addresses = None  # an endpoint's join port becomes a full listener
                driver.listener.backlog = backlog
            else:
                driver = self._listener(port, backlog)
            driver.bound = bound
            return driver

        return MptcpServerSocket(self, self._on_loop(start))

    def _sync_join_ports(self, now: float = 0.0) -> None:
        """Every signal endpoint with a port takes joins on that port (RFC 8684 §3.4.1:
        the announced port is where the peer joins), while it is an endpoint."""
        wanted: dict[int, set[IPAddress]] = {}
        for endpoint in self.paths.endpoints:
            if endpoint.signal and endpoint.port is not None:
                wanted.setdefault(endpoint.port, set()).add(endpoint.address)
        for port, driver in list(self._listeners.items()):
            if driver.join_addresses is not None and port not in wanted:
                self.host.unlisten(port)
                del self._listeners[port]
                driver.stop()
        for port, addresses in wanted.items():
            current = self._listeners.get(port)
            if current is None:
                self._listener(port, join_addresses=addresses)
            elif current.join_addresses is not None:
                current.join_addresses = addresses

    def counters(self) -> dict[str, int]:
        return dict(vars(self.host.counters))

    def remove_endpoint(self, address: str) -> Endpoint:
        """Stop using a local address as an endpoint: every connection sends REMOVE_ADDR
        for it and resets its subflows from it (as `ip mptcp endpoint delete`)."""
        ip = ipaddress.ip_address(address)

        def remove(now: float) -> Endpoint:
            endpoint = self._endpoint(address)
            self.paths.endpoints.remove(endpoint)
            self._sync_join_ports(now)
            for driver in list(self._drivers.values()):
                driver.run(now, driver.msk.remove_local_address, endpoint.id, ip, now)
            return endpoint

        return self._on_loop(remove)

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """A new endpoint on one of the stack's addresses (as `ip mptcp endpoint add`):
        each live connection announces it (signal) and opens subflows from it (subflow)."""
        owned = [c.address.ip for c in self.host.routing.interfaces]
        if endpoint.address not in owned:
            raise ValueError(f"{endpoint.address} is not an address of this stack "
                             f"(addresses: {', '.join(map(str, owned))})")  # fmt: skip

        def add(now: float) -> None:
            self.paths.add(endpoint)
            self._sync_join_ports(now)
            for driver in list(self._drivers.values()):
                driver.run(now, driver.msk.add_local_endpoint, endpoint, now)

        self._on_loop(add)

    def _endpoint(self, address: str) -> Endpoint:
        endpoint = self.paths.endpoint_for(ipaddress.ip_address(address))
        if endpoint is None:
            known = ", ".join(str(e.address) for e in self.paths.endpoints) or "none"
            raise ValueError(f"{address} is not an endpoint of this stack (endpoints: {known})")
        return endpoint

    def set_backup(self, address: str, backup: bool) -> int:
        """Change an endpoint's backup flag, as `ip mptcp endpoint change ADDR backup`:
        later joins from it carry the new B bit, and every live subflow from the address
        whose flag changes gets MP_PRIO (RFC 8684 §3.3.8). Returns how many did."""

        def change(now: float) -> int:
            endpoint = self._endpoint(address)
            position = self.paths.endpoints.index(endpoint)
            self.paths.endpoints[position] = dataclasses.replace(endpoint, backup=backup)
            sent: list[int] = []

            def prio(msk: MptcpConnection) -> None:
                targets = [sf for sf in msk.subflows if sf.local[0] == endpoint.address]
                sent.append(_send_prio(msk, targets, backup, now))

            for driver in list(self._drivers.values()):
                driver.run(now, prio, driver.msk)
            return sum(sent)

        return self._on_loop(change)


def _send_prio(msk: MptcpConnection, targets: list[Subflow], backup: bool, now: float,
               force: bool = False) -> int:  # fmt: skip
    """MP_PRIO with `backup` on each established subflow of `targets` (on all of them when
    `force`, else on those whose flag changes); returns how many."""
    sent = 0
    for sf in targets:
        if sf.gone or not (sf.usable or sf.phase.value == "established"):
            continue
        if not force and sf.backup_local == backup:
            continue
        sf.backup_local = backup
        if faults.ACTIVE and faults.on("backup_no_mp_prio_tx"):
            continue  # the flag changes here, the peer is never told
        sf.prio_due = backup
        msk._count("MPPrioTx")
        send_ack_now(sf.tcp, now)
        sent += 1
    return sent


class MptcpServerSocket:
    def __init__(self, stack: Stack, driver: _ListenerDriver):
        self.stack = stack
        self._driver = driver

    @property
    def port(self) -> int:
        return self._driver.listener.port

    def accept(self, timeout: float | None = None) -> MptcpSocket:
        driver = self._driver
        while True:
            with driver.changed:
                if not driver.changed.wait_for(lambda: bool(driver.listener.accept_queue),
                                               timeout):  # fmt: skip
                    raise TimeoutError(f"no connection on port {self.port} within {timeout} s")
            accepted = self.stack._on_loop(driver.take)
            if accepted is not None:
                return MptcpSocket(self.stack, accepted)

    def close(self) -> None:
        def stop(now: float) -> None:
            self.stack.host.unlisten(self.port)
            self.stack._listeners.pop(self.port, None)
            self._driver.stop()
            self.stack._sync_join_ports(now)  # an endpoint's port still takes joins

        self.stack._on_loop(stop)


class MptcpSocket:
    """A connected MPTCP socket (which may have fallen back to TCP)."""

    def __init__(self, stack: Stack, driver: _Driver):
        self.stack = stack
        self._driver = driver
        # set when close() had to abort with our data not all acknowledged (close
        # returns like a kernel socket's; a report says what was lost)
        self.close_error = ""

    @property
    def msk(self) -> MptcpConnection:
        return self._driver.msk

    def _wait(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> None:
        msk = self._driver.msk
        with self._driver.changed:
            done = self._driver.changed.wait_for(lambda: predicate() or msk.finished, timeout)
        if not done:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        if not predicate() and msk.error:
            raise ConnectionError(msk.error)

    def _call(self, fn: Callable[[float], Any]) -> Any:
        driver = self._driver

        def run(now: float) -> Any:
            try:
                return fn(now)
            except ConnectionError:
                raise  # the connection's own answer (reset, closed, not established)
            except Exception as exc:  # a bug of ours: the connection is reset
                driver.fail(exc, now)
                raise ConnectionError(driver.msk.error) from exc
            finally:
                driver.pump(now)

        return self.stack._on_loop(run)

    def sendall(self, data: bytes | bytearray | memoryview, timeout: float | None = 120.0) -> None:
        view = memoryview(data).cast("B")
        msk = self._driver.msk
        while view:
            taken: int = self._call(functools.partial(_send, msk, view))
            view = view[taken:]
            if view:
                self._wait(lambda: msk.send_space > 0, timeout, "send space")

    send = sendall

    def recv(self, max_bytes: int = 65536, timeout: float | None = 120.0) -> bytes:
        msk = self._driver.msk
        self._wait(lambda: msk.readable > 0 or msk.eof, timeout, "data")
        data: bytes = self._call(lambda now: msk.receive(max_bytes, now))
        if not data and msk.error and not msk.eof:
            raise ConnectionError(msk.error)
        return data

    def wait_readable(self, timeout: float | None = 120.0) -> None:
        """Block until data can be read (or the peer finished), reading nothing."""
        msk = self._driver.msk
        self._wait(lambda: bool(msk.readable) or msk.eof, timeout, "data to read")

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        data = self.recv(nbytes or len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            msk = self._driver.msk
            self._call(msk.shutdown_write)

    def close(self, timeout: float = 10.0) -> None:
        """Orderly close: DATA_FIN, then wait (bounded) for the peer's, as a lingering
        kernel socket would; an abort (MP_FASTCLOSE) if the peer never finishes."""
        msk = self._driver.msk
        self._call(msk.close)
        with contextlib.suppress(TimeoutError, ConnectionError):
            self._wait(lambda: msk.finished, timeout, "close")
        if not msk.finished:
            lost = not msk.sent_done
            self.abort()
            if lost:  # what the application wrote may not have arrived: say so
                self.close_error = (f"close: the peer had not acknowledged all our data "
                                    f"within {timeout:g} s; connection aborted")  # fmt: skip

    def abort(self) -> None:
        self._call(self._driver.msk.abort)

    def getsockname(self) -> tuple[str, int]:
        first = self._driver.msk.first_subflow
        assert first is not None  # every connection starts with its initial subflow
        return str(first.local[0]), first.local[1]

    def getpeername(self) -> tuple[str, int]:
        first = self._driver.msk.first_subflow
        assert first is not None
        return str(first.remote[0]), first.remote[1]

    def info(self) -> dict[str, Any]:
        """Tokens, keys, version, fallback, subflows and counters (like MPTCP_INFO)."""
        info: dict[str, Any] = self.stack._on_loop(lambda now: self._driver.msk.describe())
        return info

    def set_backup(self, backup: bool, subflow: int | None = None) -> None:
        """Change our backup flag on one subflow (index) or all, and tell the peer with
        MP_PRIO (RFC 8684 §3.3.8)."""

        def change(now: float) -> None:
            msk = self._driver.msk
            targets = msk.subflows if subflow is None else [msk.subflows[subflow]]
            _send_prio(msk, targets, backup, now, force=True)

        self._call(change)


class AsyncMptcpSocket:
    """asyncio view of an `MptcpSocket`: the loop thread wakes waiters through
    `call_soon_threadsafe`, so no executor thread blocks per call."""

    def __init__(self, sock: MptcpSocket):
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        sock._driver.watchers.append(self._wake)

    def _wake(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def _until(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        msk = self.sock.msk

        async def wait() -> None:
            while not (predicate() or msk.finished):
                self._event.clear()
                if predicate() or msk.finished:
                    break
                await self._event.wait()

        await asyncio.wait_for(wait(), timeout)
        if not predicate() and msk.error:
            raise ConnectionError(msk.error)

    async def send_all(self, data: bytes, timeout: float | None = 120.0) -> None:
        view = memoryview(data)
        msk = self.sock.msk
        while view:
            taken: int = self.sock._call(functools.partial(_send, msk, view))
            view = view[taken:]
            if view:
                await self._until(lambda: msk.send_space > 0, timeout)

    async def receive(self, max_bytes: int = 65536, timeout: float | None = 120.0) -> bytes:
        msk = self.sock.msk
        await self._until(lambda: msk.readable > 0 or msk.eof, timeout)
        data: bytes = self.sock._call(lambda now: msk.receive(max_bytes, now))
        return data

    async def shutdown(self) -> None:
        self.sock.shutdown()

    async def close(self, timeout: float = 10.0) -> None:
        msk = self.sock.msk
        self.sock._call(msk.close)
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await self._until(lambda: msk.finished, timeout)
        if not msk.finished:
            self.sock.abort()

    def info(self) -> dict[str, Any]:
        return self.sock.info()


async def open_connection(stack: Stack, remote: Address, timeout: float = 10.0) -> AsyncMptcpSocket:
    """asyncio: connect without blocking the event loop."""
    loop = asyncio.get_running_loop()
    sock = await loop.run_in_executor(None, lambda: stack.connect(remote, timeout=timeout))
    return AsyncMptcpSocket(sock)


async def accept(server: MptcpServerSocket, timeout: float | None = None) -> AsyncMptcpSocket:
    loop = asyncio.get_running_loop()
    sock = await loop.run_in_executor(None, lambda: server.accept(timeout))
    return AsyncMptcpSocket(sock)
