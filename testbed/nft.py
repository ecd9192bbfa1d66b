"""nftables scripts for link impairments and middleboxes, applied with `nft -f -`.

Each namespace gets at most two tables of ours: `netdev mptl_link` (one chain per
interface and hook: random loss and blackholing) and `inet mptl_mbox` (NAT, option
stripping). Chains are rewritten whole when a property changes, in one transaction.
"""

from __future__ import annotations

import shutil
import subprocess

from testbed.errors import CommandFailed, FeatureMissing
from testbed.netns import Namespace

LINK_TABLE = "mptl_link"
MBOX_TABLE = "mptl_mbox"
LOSS_SCALE = 10000  # loss is drawn per 10 000 frames: 0.01 % resolution
CAPTURE_MARKER = 0x88B5  # testbed.capture's stop marker (IEEE local experimental 1)


def nft_binary() -> str:
    path = shutil.which("nft")
    if path is None:
        raise FeatureMissing(
            "the `nft` command is missing: install the Debian package `nftables` "
            "(`python -m testbed.setup` does it), it is needed for loss, blackholing, "
            "NAT and MPTCP option stripping"
        )
    return path


def apply(ns: Namespace, script: str) -> None:
    """Run an nft script inside `ns` as one atomic transaction."""
    with ns.entered():
        result = subprocess.run(
            [nft_binary(), "-f", "-"], input=script, capture_output=True, text=True, timeout=20
        )
    if result.returncode != 0:
        raise CommandFailed(
            f"nft in {ns.name} failed: {result.stderr.strip()}\n--- script ---\n{script}",
            returncode=result.returncode,
            stdout=result.stdout,
            stderr=result.stderr,
        )


def chain_name(ifname: str, hook: str) -> str:
    return f"{hook}_{ifname.replace('-', '_').replace('.', '_')}"


def link_chain(ifname: str, hook: str, *, loss: float, blackhole: bool, create: bool) -> str:
    """Script that (re)writes the impairment chain of `ifname` at `hook` (ingress/egress)."""
    chain = chain_name(ifname, hook)
    lines = []
    if create:
        lines += [
            f"add table netdev {LINK_TABLE}",
            f"add chain netdev {LINK_TABLE} {chain} "
            f'{{ type filter hook {hook} device "{ifname}" priority 0 ; policy accept ; }}',
        ]
    lines.append(f"flush chain netdev {LINK_TABLE} {chain}")
    # a capture's stop marker (testbed.capture) always passes: it is no traffic under test
    lines.append(f"add rule netdev {LINK_TABLE} {chain} ether type {CAPTURE_MARKER:#06x} accept")
    if blackhole:
        lines.append(f"add rule netdev {LINK_TABLE} {chain} drop")
    elif loss > 0:
        threshold = round(loss / 100 * LOSS_SCALE)
        rule = f"numgen random mod {LOSS_SCALE} < {threshold} drop"
        lines.append(f"add rule netdev {LINK_TABLE} {chain} {rule}")
    return "\n".join(lines) + "\n"


def middlebox(nat_outside: list[str], strip: bool, strip_after_handshake: bool) -> str:
    """Script for a middlebox's NAT and MPTCP option stripping on forwarded traffic."""
    lines = [f"add table inet {MBOX_TABLE}"]
    if strip:
        lines.append(
            f"add chain inet {MBOX_TABLE} strip "
            "{ type filter hook forward priority mangle ; policy accept ; }"
        )
        if strip_after_handshake:
            # Conntrack counts packets per direction: the initiator's SYN and third ACK
            # are its first two, the responder's SYN/ACK its first. Needs nf_conntrack_acct.
            lines += [
                f"add rule inet {MBOX_TABLE} strip ct direction original ct original packets > 2 "
                "reset tcp option mptcp",
                f"add rule inet {MBOX_TABLE} strip ct direction reply ct reply packets > 1 "
                "reset tcp option mptcp",
            ]
        else:
            lines.append(f"add rule inet {MBOX_TABLE} strip reset tcp option mptcp")
    if nat_outside:
        lines.append(
            f"add chain inet {MBOX_TABLE} postrouting "
            "{ type nat hook postrouting priority srcnat ; policy accept ; }"
        )
        for ifname in nat_outside:
            lines.append(f'add rule inet {MBOX_TABLE} postrouting oifname "{ifname}" masquerade')
    return "\n".join(lines) + "\n"
