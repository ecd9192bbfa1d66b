"""The initial subflow's own backup flag (RFC 8684 §3.3.8): no join carries its B bit,
so a host whose initial address is a backup endpoint tells the peer with MP_PRIO B=1
once the connection is established, as Linux does (mptcp_join.sh, "mpc backup").
Found by `backup.initial_subflow_backup_from_endpoint`."""

from __future__ import annotations

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.pm import Endpoint, Limits, PathManager, PeerAddress
from stack.mptcp.token import TokenTable
from stack.sim import Simulator
from stack.tests.test_mptcp_sim import CLIENT, SERVER, ClientEnd, ServerEnd


def _connect(backup: bool) -> tuple[MptcpConnection, ServerEnd]:
    manager = PathManager([Endpoint(1, CLIENT[0], "eth0", subflow=True, backup=backup)],
                          Limits(subflows=2))  # fmt: skip
    paths = manager.connection(CLIENT[0], PeerAddress(0, SERVER[0], SERVER[1]))
    config = MptcpConfig()
    client = MptcpConnection.connect(CLIENT, SERVER, config, TokenTable(), isn_secret=b"a",
                                     now=0.0, paths=paths)  # fmt: skip
    server = ServerEnd(MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b"))
    sim = Simulator(ClientEnd(client), server)
    sim.run(until=1.0, stop=lambda: False)  # no data, no close: the subflow stays
    return client, server


def test_backup_initial_address_sends_mp_prio_once_established() -> None:
    client, server = _connect(backup=True)
    assert client.first_subflow is not None and client.first_subflow.backup_local
    assert client.counters["MPPrioTx"] == 1
    assert server.msk is not None and server.msk.subflows[0].backup_remote


def test_regular_initial_address_sends_no_mp_prio() -> None:
    client, server = _connect(backup=False)
    assert client.counters.get("MPPrioTx", 0) == 0
    assert server.msk is not None and not server.msk.subflows[0].backup_remote
