"""A listener bound to one address (`Stack.listen(port, address=)`, `serve --bind`)
takes nothing sent to another: the SYN, a join's included, is left to the host, which
answers it as a closed port (RST), as a Linux socket bound to one address."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

from stack.api import _ListenerDriver


def _syn_to(address: str) -> tuple[Any, Any]:
    ip = SimpleNamespace(src="192.0.2.1", dst=address)
    tcp = SimpleNamespace(src_port=40000, dst_port=5001)
    return ip, tcp


def test_a_bound_listener_leaves_syns_to_other_addresses_to_the_host() -> None:
    driver = _ListenerDriver(None, None)  # type: ignore[arg-type]
    driver.bound = ipaddress.ip_address("192.0.2.2")
    assert driver.on_syn(*_syn_to("198.51.100.2"), 0.0) is False
