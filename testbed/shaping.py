"""Rate limiting with tbf, and the choice of delay mechanism.

tbf is in every kernel we meet; netem is not (FACTS.md), so delay falls back to the
userspace forwarder of `testbed.delay`. The choice is probed once per process.
"""

from __future__ import annotations

import functools
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from testbed.netns import Namespace, shielded


def tbf_parameters(rate_bps: int, mtu: int) -> dict[str, int]:
    """tbf settings that let one TCP flow fill the rate.

    The bucket holds 4 ms of traffic (at least two 64 KB GSO frames, which tbf would
    otherwise have to split), and the queue holds 50 ms, a bandwidth-delay product
    large enough for a veth RTT plus our delay element.
    """
    bytes_per_second = rate_bps / 8
    burst = max(int(bytes_per_second * 0.004), 2 * 65536, 4 * mtu)
    limit = max(int(bytes_per_second * 0.05), burst + 10 * mtu)
    return {"rate": int(bytes_per_second), "burst": burst, "limit": limit}


def set_rate(ipr: IPRoute, index: int, rate_bps: int | None, mtu: int) -> None:
    """Install, change or (with None) remove the tbf on an interface's egress."""
    if rate_bps is None:
        try:
            ipr.tc("del", index=index, handle="1:", parent=0xFFFFFFFF)
        except NetlinkError as error:
            if error.code not in (2, 22):  # no qdisc of ours to remove
                raise
        return
    params = tbf_parameters(rate_bps, mtu)
    ipr.tc("replace", kind="tbf", index=index, handle="1:", **params)


@functools.cache
def netem_available() -> bool:
    """Whether this kernel has netem, tried on a scratch namespace's loopback (a few
    ms, shielded from SIGTERM: the scratch namespace is never left behind)."""
    with shielded():
        return _netem_probe()


def _netem_probe() -> bool:
    ns = Namespace.create(f"mptl-probe-{os.getpid()}")
    try:
        with ns.entered():
            ipr = IPRoute()
        try:
            ipr.tc("add", kind="netem", index=1, handle="1:", delay=1000)
            return True
        except NetlinkError:
            return False
        finally:
            ipr.close()
    finally:
        ns.delete()


def delay_mechanism() -> str:
    return "netem" if netem_available() else "userspace forwarder (no netem in this kernel)"
