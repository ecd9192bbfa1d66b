"""The live command channel of `python -m stack ... --control stdin`.

One JSON object per line on stdin, each answered by exactly one line on stdout, in order:
`{"event": "control", "ok": true, "cmd": ..., ...}` or `{"event": "control", "ok": false,
"cmd": ..., "error": "what was wrong"}`. Commands, as `ip mptcp endpoint` on the kernel:

    {"cmd": "set_backup", "address": A, "backup": true}   # MP_PRIO on each subflow from A
    {"cmd": "remove_endpoint", "address": A}             # REMOVE_ADDR, A's subflows reset
    {"cmd": "add_endpoint", "address": A, "flags": ["signal"], "id": N, "port": P}
    {"cmd": "state"}                 # each live connection's data-level and subflow state

`add_endpoint` takes one of the stack's `--interface` addresses that has no endpoint
flags now (given without any, or removed before); `id` defaults to the ID the address
has, else the lowest free one. A bad line never stops
the process: it gets an answer naming the problem. End of input ends the channel only.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any

from stack.api import Stack
from stack.mptcp.pm import FLAG_NAMES, Endpoint

Answer = dict[str, Any]


class ControlError(ValueError):
    """A command that cannot be carried out; the message says why."""


def control_loop(stack: Stack, lines: Iterable[str], emit: Callable[[Answer], None]) -> None:
    """Answer every line of `lines` (until its end) through `emit`."""
    for line in lines:
        if line.strip():
            emit(handle_line(stack, line))


def handle_line(stack: Stack, line: str) -> Answer:
    try:
        command = json.loads(line)
    except ValueError as error:
        return _failed(None, f"not JSON ({error}): {line.strip()[:200]!r}")
    if not isinstance(command, dict):
        return _failed(None, f"expected a JSON object, got {line.strip()[:200]!r}")
    name = command.get("cmd")
    handler = COMMANDS.get(name) if isinstance(name, str) else None
    if handler is None:
        return _failed(name, f"unknown cmd {name!r}; commands: {', '.join(sorted(COMMANDS))}")
    try:
        result = handler(stack, command)
    except (ControlError, ValueError, OSError, TimeoutError) as error:
        return _failed(name, str(error))
    return {"event": "control", "ok": True, "cmd": name, **result}


def _failed(name: object, error: str) -> Answer:
    return {"event": "control", "ok": False, "cmd": name, "error": error}


def _field(command: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = command.get(key)
    # bool is an int in Python: never take true for a number
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ControlError(f"{command['cmd']} needs {key!r}: {what}, got {value!r}")
    return value


def _address(command: dict[str, Any]) -> str:
    text = _field(command, "address", str, "an IP address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ControlError(f"{command['cmd']}: {text!r} is not an IP address") from None
    # an IPv4-mapped IPv6 address (::ffff:198.51.100.2) is the IPv4 address it maps (RFC
    # 4291 §2.5.5.2), as Linux's path manager takes an endpoint given that way
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _set_backup(stack: Stack, command: dict[str, Any]) -> Answer:
    address = _address(command)
    backup = _field(command, "backup", bool, "true or false")
    return {"address": address, "backup": backup, "subflows": stack.set_backup(address, backup)}


def _remove_endpoint(stack: Stack, command: dict[str, Any]) -> Answer:
    address = _address(command)
    return {"address": address, "id": stack.remove_endpoint(address).id}


def _add_endpoint(stack: Stack, command: dict[str, Any]) -> Answer:
    address = _address(command)
    flags = command.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ControlError(f"add_endpoint: 'flags' must be a list of {', '.join(FLAG_NAMES)}")
    unknown = [f for f in flags if f not in FLAG_NAMES]
    if unknown:
        raise ControlError(f"add_endpoint: unknown flag(s) {', '.join(unknown)}; "
                           f"allowed: {', '.join(FLAG_NAMES)}")  # fmt: skip
    address_id = _field(command, "id", int, "1..255") if "id" in command else None
    port = _field(command, "port", int, "1..65535") if "port" in command else None
    ip = ipaddress.ip_address(address)
    ifname = next((c.ifname for c in stack.host.routing.interfaces if c.address.ip == ip), "")
    endpoint = Endpoint(address_id if address_id is not None else stack.paths.free_id(ip), ip,
                        ifname, port=port, **{f: True for f in flags})  # fmt: skip
    stack.add_endpoint(endpoint)
    return {"address": address, "id": endpoint.id, "flags": sorted(endpoint.flags),
            "port": port}  # fmt: skip


def _state(stack: Stack, command: dict[str, Any]) -> Answer:
    return {"connections": stack.connection_states()}


COMMANDS: dict[str, Callable[[Stack, dict[str, Any]], Answer]] = {
    "state": _state,
    "set_backup": _set_backup,
    "remove_endpoint": _remove_endpoint,
    "add_endpoint": _add_endpoint,
}
