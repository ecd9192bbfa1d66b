"""Planted faults: deliberate RFC violations for the conformance harness's self-test.

`STACK_FAULTS=name1,name2` in the environment switches faults on; it is read once, at
import (and again by `configure()`, which the harness's fork server calls in each child
it starts, since the server imported the stack before the child's environment existed).
With it unset, `ACTIVE` is an empty frozenset and every hook is one test of a module
attribute that is false (`if faults.ACTIVE and "name" in faults.ACTIVE:`); nothing else
of a fault's code runs. Hooks sit where a decision is made (a handshake, an option
read or built), not in the per-byte data path.

Each fault names the RFC 8684 section it violates and the catalogue area whose cases
should see it on the wire; `python -m conformance selftest` runs the catalogue against
stack-v1 with each one and reports which cases catch it (docs/conformance.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENVIRONMENT = "STACK_FAULTS"


@dataclass(frozen=True)
class Fault:
    name: str
    area: str  # the catalogue area whose cases should see it (conformance/cases/<area>.py)
    section: str  # RFC 8684 section it violates
    description: str


def _table(*faults: Fault) -> dict[str, Fault]:
    return {fault.name: fault for fault in faults}


FAULTS: dict[str, Fault] = _table(
    # MP_CAPABLE
    Fault("mpc_accept_b_flag", "mp_capable", "3.1",
          "a listener answers a SYN whose MP_CAPABLE has B (extensibility) set with "
          "MP_CAPABLE instead of ignoring the option"),
    Fault("mpc_accept_no_h_flag", "mp_capable", "3.1",
          "a listener answers MP_CAPABLE to a SYN without H (no HMAC algorithm it knows)"),
    Fault("mpc_ignore_a_flag", "mp_capable", "3.1",
          "a listener ignores A in the SYN: no checksums although the peer requires them"),
    Fault("mpc_third_ack_keys_swapped", "mp_capable", "3.1",
          "the initiator's third ACK carries the keys in the wrong order (Key-B first)"),
    Fault("mpc_no_keys_on_first_data", "mp_capable", "3.1",
          "the v1 initiator's first data carries a DSS instead of MP_CAPABLE with both keys"),
    Fault("mpc_ignore_c_flag", "mp_capable", "3.1",
          "the initiator joins the peer's initial address although the SYN/ACK had C set"),
    Fault("mpc_accept_higher_version", "mp_capable", "3.1",
          "the initiator takes a SYN/ACK offering a higher version than its SYN's"),
    # token and IDSN
    Fault("token_wrong_hash", "token", "3.2",
          "tokens are the most significant 32 bits of the wrong hash (SHA-1 in v1)"),
    Fault("idsn_wrong_bits", "token", "3.1",
          "the IDSN is the most significant 64 bits of H(key), not the least significant"),
    # MP_JOIN
    Fault("join_accept_bad_hmac_a", "mp_join", "3.2",
          "a listener accepts a join whose third ACK carries a wrong HMAC-A"),
    Fault("join_accept_bad_hmac_b", "mp_join", "3.2",
          "a joining host accepts a SYN/ACK whose HMAC-B is wrong"),
    Fault("join_hmac_b_keys_swapped", "mp_join", "3.2",
          "HMAC-B is computed with Key-A‖Key-B and R-A‖R-B (the initiator's roles)"),
    Fault("join_hmac_a_keys_swapped", "mp_join", "3.2",
          "HMAC-A is computed with Key-B‖Key-A and R-B‖R-A (the responder's roles)"),
    Fault("join_wrong_address_id", "mp_join", "3.2",
          "the SYN/ACK of a join carries the address ID plus one"),
    Fault("join_no_subflow_limit", "mp_join", "3.2",
          "joins beyond the subflow limit are accepted"),
    Fault("join_to_fallen_back", "mp_join", "3.7",
          "a connection that fell back to TCP keeps its token and accepts joins"),
    Fault("join_data_before_fourth_ack", "mp_join", "3.2",
          "a joining host sends data before its third ACK is acknowledged"),
    Fault("join_no_third_ack_retransmit", "mp_join", "3.2",
          "a joining host never retransmits its third ACK"),
    Fault("join_third_ack_fixed_timer", "mp_join", "3.2",
          "a joining host retransmits its third ACK on a fixed timer (one RTO), no backoff"),
    Fault("join_fixed_nonce", "mp_join", "3.2",
          "every MP_JOIN nonce is the same number instead of a fresh random one"),
    # backup and MP_PRIO
    Fault("backup_mirror_b", "backup", "3.2",
          "the SYN/ACK of a join echoes the SYN's B bit instead of saying its own"),
    Fault("backup_endpoint_b_not_sent", "backup", "3.2",
          "a join to a backup endpoint gets a SYN/ACK with B=0"),
    Fault("backup_ignore_b", "backup", "3.2",
          "the B bit of a join SYN is ignored: data goes on the peer's backup subflow"),
    Fault("backup_ignore_mp_prio", "backup", "3.3.8",
          "MP_PRIO is ignored: the subflow stays regular"),
    Fault("backup_no_mp_prio_tx", "backup", "3.3.8",
          "no MP_PRIO is sent when the host's own endpoint becomes backup"),
    # DSS
    Fault("dss_dsn32_not_expanded", "dss", "3.3.1",
          "a 4-byte DSN or DATA_ACK is taken as the whole 64-bit number (upper bits zero)"),
    Fault("dss_data_ack_stuck", "dss", "3.3.2",
          "the DATA_ACK never advances past the peer's IDSN+1"),
    Fault("dss_checksum_not_verified", "dss", "3.3.6",
          "the DSS checksum of received data is not verified"),
    Fault("dss_checksum_wrong", "dss", "3.3.6",
          "the DSS checksum sent leaves the pseudo-header out"),
    Fault("dss_subflow_seq_absolute", "dss", "3.3.1",
          "mappings carry the absolute subflow sequence number, not relative to the ISN"),
    Fault("dss_subflow_fin_is_data_fin", "dss", "3.3.3",
          "a subflow FIN ends the connection's data as if it were a DATA_FIN"),
    Fault("dss_data_fin_not_retransmitted", "close", "3.3.3",
          "a DATA_FIN that is not acknowledged is never sent again"),
    # ADD_ADDR and REMOVE_ADDR
    Fault("add_addr_no_echo", "add_addr", "3.4.1",
          "a valid ADD_ADDR is not echoed"),
    Fault("add_addr_accept_bad_hmac", "add_addr", "3.4.1",
          "an ADD_ADDR with a wrong HMAC is accepted (and echoed)"),
    Fault("add_addr_hmac_keys_swapped", "add_addr", "3.4.1",
          "ADD_ADDR's HMAC is computed with the receiver's key first"),
    Fault("add_addr_no_retransmit", "add_addr", "3.4.1",
          "an ADD_ADDR that is not echoed is never sent again"),
    Fault("add_addr_echo_ignored", "add_addr", "3.4.1",
          "an echo does not stop the ADD_ADDR's retransmissions"),
    Fault("add_addr_port_dropped", "add_addr", "3.4.1",
          "an endpoint with a port is announced without its port"),
    Fault("remove_addr_ignored", "add_addr", "3.4.2",
          "REMOVE_ADDR is ignored: the subflows using the address stay"),
    Fault("remove_addr_not_sent", "add_addr", "3.4.2",
          "no REMOVE_ADDR is sent when an announced endpoint is removed"),
    # closing, MP_TCPRST, fallback, MP_FAIL
    Fault("fastclose_accept_wrong_key", "close", "3.5",
          "an MP_FASTCLOSE carrying a wrong key resets the connection"),
    Fault("fastclose_ignored", "close", "3.5",
          "an MP_FASTCLOSE with the right key is ignored"),
    Fault("fastclose_one_subflow", "close", "3.5",
          "MP_FASTCLOSE resets only the subflow it arrived on"),
    Fault("tcprst_no_reason", "close", "3.6",
          "refusals carry MP_TCPRST with reason 0 (unspecified) instead of the specific one"),
    Fault("tcprst_kills_connection", "close", "3.6",
          "a RST with MP_TCPRST on one subflow resets the whole connection"),
    Fault("fallback_refused", "close", "3.7",
          "data without a DSS on the only subflow resets it instead of falling back"),
    Fault("mp_fail_without_rst", "dss", "3.7",
          "a checksum failure with several subflows discards the data without a RST"),
    Fault("mp_fail_infinite_map_off_line", "close", "3.7",
          "after MP_FAIL the infinite mapping puts the MP_FAIL DSN on the first new "
          "packet, as a sender that resends the failed bytes would (off their line)"),
    Fault("mp_fail_wrong_dsn", "dss", "3.7",
          "MP_FAIL carries the DSN after the failed mapping instead of its start"),
    Fault("infinite_mapping_kept_mptcp", "close", "3.7",
          "a peer's infinite mapping with a subflow sequence number maps the bytes on its "
          "line but the connection stays MPTCP (no fallback)"),
)  # fmt: skip


def parse(value: str | None) -> frozenset[str]:
    """The fault names in a `STACK_FAULTS` value; an unknown name is an error."""
    names = frozenset(n.strip() for n in (value or "").split(",") if n.strip())
    unknown = sorted(names - FAULTS.keys())
    if unknown:
        raise ValueError(
            f"{ENVIRONMENT}: unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}"
        )
    return names


ACTIVE: frozenset[str] = parse(os.environ.get(ENVIRONMENT))


def configure(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Read `STACK_FAULTS` again (a forked child whose environment was just set)."""
    global ACTIVE
    ACTIVE = parse(environ.get(ENVIRONMENT))
    return ACTIVE


def on(name: str) -> bool:
    """Whether fault `name` is planted. Hot paths test `ACTIVE` first (empty: false)."""
    if name not in FAULTS:
        raise KeyError(f"no planted fault {name!r}")
    return name in ACTIVE
