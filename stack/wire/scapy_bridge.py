"""Between our codec and scapy 2.8, for the tester and the reports.

scapy has no MPTCP layer: it dissects TCP option kind 30 as `(30, value)`, the bytes
after kind and length, and builds it back the same way, recomputing the length from
the value. Both directions keep the bytes exact (tests/test_scapy_bridge.py checks it),
so an option goes to scapy as `(30, emit()[2:])`. To read options back we parse the
TCP layer's own bytes with our walker rather than scapy's list, so that offsets are
right and options scapy could not make sense of still show up as MalformedOption.

This module imports no scapy: it works on whatever object has the TCP layer's bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stack.wire.errors import EncodeError, MalformedHeader, MalformedOption
from stack.wire.mptcp import (
    AddAddrV0,
    AddAddrV1,
    Dss,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MpTcpRst,
    RemoveAddr,
    UnknownMptcpOption,
)
from stack.wire.tcp import (
    ACK,
    MPTCP_OPTION_TYPES,
    SYN,
    EndOfOptionList,
    MaxSegmentSize,
    NoOperation,
    Sack,
    SackPermitted,
    TcpOption,
    Timestamps,
    UnknownTcpOption,
    WindowScale,
    parse_tcp,
    parse_tcp_options,
)

TCPRST_REASONS = {
    0: "unspecified",
    1: "MPTCP-specific error",
    2: "lack of resources",
    3: "administratively prohibited",
    4: "too much outstanding data",
    5: "unacceptable performance",
    6: "middlebox interference",
}


def to_scapy_option(option: TcpOption) -> tuple[Any, Any]:
    """The entry for scapy's `TCP(options=[...])` list that produces `option.emit()`."""
    if isinstance(option, MPTCP_OPTION_TYPES):
        return (30, option.emit()[2:])
    if isinstance(option, MaxSegmentSize):
        return ("MSS", option.mss)
    if isinstance(option, WindowScale):
        return ("WScale", option.shift)
    if isinstance(option, SackPermitted):
        return ("SAckOK", b"")
    if isinstance(option, Timestamps):
        return ("Timestamp", (option.tsval, option.tsecr))
    if isinstance(option, Sack):
        return ("SAck", tuple(edge for block in option.blocks for edge in block))
    if isinstance(option, NoOperation):
        return ("NOP", None)
    if isinstance(option, EndOfOptionList):
        return ("EOL", None)
    if isinstance(option, UnknownTcpOption):
        return (option.kind, option.emit()[2:])
    raise EncodeError(
        f"{option!r} cannot go into scapy's option list (scapy recomputes lengths); "
        "send malformed bytes as a raw TCP header instead"
    )


def _tcp_bytes(packet: Any) -> bytes:
    """The raw bytes of the TCP layer of a scapy packet (or of the TCP layer itself)."""
    layer = packet
    if hasattr(packet, "getlayer"):
        found = packet.getlayer("TCP")
        if found is not None:
            layer = found
    return bytes(layer)


def tcp_options_from_scapy(packet: Any, version: int | None = None) -> list[TcpOption]:
    """All TCP options of a scapy packet (or TCP layer), parsed by our walker."""
    tcp = parse_tcp(_tcp_bytes(packet))
    if isinstance(tcp, MalformedHeader):
        return [MalformedOption(0, f"no TCP header: {tcp.reason}", None, b"", None)]
    return parse_tcp_options(tcp.options, version=version)


def mptcp_options_from_scapy(
    packet: Any, version: int | None = None
) -> list[MptcpOption | MalformedOption]:
    """The MPTCP options (and malformed kind-30 options) of a scapy packet or TCP layer."""
    found: list[MptcpOption | MalformedOption] = []
    for option in tcp_options_from_scapy(packet, version):
        if isinstance(option, MalformedOption):
            if option.kind in (30, None):
                found.append(option)
        elif isinstance(option, MPTCP_OPTION_TYPES):
            found.append(option)  # type: ignore[arg-type]
    return found


def _flag_letters(flags: int, letters: str) -> str:
    """`[a,h]` for set bits, most significant first, one letter per bit."""
    width = len(letters)
    return "[" + ",".join(c for i, c in enumerate(letters) if flags >> (width - 1 - i) & 1) + "]"


def _hex(value: bytes | int) -> str:
    return "0x" + (value.hex() if isinstance(value, bytes) else f"{value:x}")


def _endpoint(option: AddAddrV0 | AddAddrV1) -> str:
    text = str(option.address) if option.address.version == 4 else f"[{option.address}]"
    return text if option.port is None else f"{text}:{option.port}"


def describe_option(option: object, tcp_flags: int | None = None) -> str:
    """One MPTCP option in tcpdump's style; `tcp_flags` names the MP_CAPABLE stage."""
    if isinstance(option, MpCapable):
        if option.sender_key is None:
            text = f"mp_capable v{option.version} syn"
        elif option.receiver_key is None:
            stage = {SYN: "syn", SYN | ACK: "synack"}.get(
                (tcp_flags or 0) & (SYN | ACK), "syn/synack"
            )
            text = f"mp_capable v{option.version} {stage}"
        else:
            stage = "ack" if option.data_level_length is None else "data"
            text = f"mp_capable v{option.version} {stage}"
        text += f" flags {_flag_letters(option.flags, 'abcdefgh')}"
        if option.sender_key is not None:
            text += f" key {_hex(option.sender_key)}"
        if option.receiver_key is not None:
            text += f" key {_hex(option.receiver_key)}"
        if option.data_level_length is not None:
            text += f" len {option.data_level_length}"
        if option.checksum is not None:
            text += f" csum {_hex(option.checksum)}"
        return text
    if isinstance(option, MpJoinSyn):
        return (
            f"mp_join syn{' backup' if option.backup else ''} id {option.address_id} "
            f"token {_hex(option.token)} nonce {_hex(option.nonce)}" + _reserved(option.reserved)
        )
    if isinstance(option, MpJoinSynAck):
        return (
            f"mp_join synack{' backup' if option.backup else ''} id {option.address_id} "
            f"hmac {_hex(option.hmac)} nonce {_hex(option.nonce)}" + _reserved(option.reserved)
        )
    if isinstance(option, MpJoinAck):
        return f"mp_join ack hmac {_hex(option.hmac)}" + _reserved(option.reserved)
    if isinstance(option, Dss):
        parts = ["dss"]
        if option.data_fin:
            parts.append("fin")
        if option.data_ack is not None:
            parts.append(f"ack{'64' if option.data_ack_64 else ''} {option.data_ack}")
        if option.dsn is not None:
            parts.append(
                f"seq{'64' if option.dsn_64 else ''} {option.dsn} "
                f"subseq {option.subflow_seq} len {option.data_level_length}"
            )
        if option.checksum is not None:
            parts.append(f"csum {_hex(option.checksum)}")
        return " ".join(parts) + _reserved(option.reserved)
    if isinstance(option, AddAddrV1):
        text = f"add_addr v1{' echo' if option.echo else ''} id {option.address_id} "
        text += _endpoint(option)
        if option.hmac is not None:
            text += f" hmac {_hex(option.hmac)}"
        return text + _reserved(option.reserved)
    if isinstance(option, AddAddrV0):
        return f"add_addr v0 id {option.address_id} {_endpoint(option)}"
    if isinstance(option, RemoveAddr):
        return (
            "remove_addr id " + ",".join(map(str, option.address_ids)) + _reserved(option.reserved)
        )
    if isinstance(option, MpPrio):
        text = "mp_prio" + (" backup" if option.backup else " regular")
        if option.address_id is not None:
            text += f" id {option.address_id}"
        return text + _reserved(option.reserved)
    if isinstance(option, MpFail):
        return f"mp_fail seq {option.dsn}" + _reserved(option.reserved)
    if isinstance(option, MpFastclose):
        return f"mp_fastclose key {_hex(option.receiver_key)}" + _reserved(option.reserved)
    if isinstance(option, MpTcpRst):
        reason = TCPRST_REASONS.get(option.reason, "unknown")
        return (
            f"mp_tcprst reason {option.reason} ({reason}) "
            f"flags {_flag_letters(option.flags, 'uvwt')}"
        )
    if isinstance(option, UnknownMptcpOption):
        return f"mptcp subtype {option.subtype} raw {option.raw.hex()}"
    if isinstance(option, MalformedOption):
        return f"malformed option at {option.offset}: {option.reason} (raw {option.raw.hex()})"
    return repr(option)


def _reserved(bits: int) -> str:
    return f" reserved {_hex(bits)}" if bits else ""


def describe_mptcp(packet_or_options: Any, version: int | None = None) -> str:
    """A packet's MPTCP options on one line, tcpdump style, joined by '; '.

    Takes a scapy packet (or its TCP layer) or an iterable of our option values.
    """
    tcp_flags = None
    if (
        isinstance(packet_or_options, Iterable)
        and not isinstance(packet_or_options, bytes | bytearray)
        and not hasattr(packet_or_options, "getlayer")
    ):
        options: list[Any] = list(packet_or_options)
    else:
        options = mptcp_options_from_scapy(packet_or_options, version)
        tcp = parse_tcp(_tcp_bytes(packet_or_options))
        if not isinstance(tcp, MalformedHeader):
            tcp_flags = tcp.flags
    if not options:
        return "no mptcp options"
    return "; ".join(describe_option(option, tcp_flags) for option in options)
