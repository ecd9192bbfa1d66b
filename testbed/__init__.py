"""Multi-homed network namespace testbeds for MPTCP, built on pyroute2."""

from testbed.build import HostHandle, Interface, LinkHandle, Topology, build
from testbed.errors import (
    CommandFailed,
    FeatureMissing,
    KernelMptcpError,
    NotRootError,
    TestbedError,
    TopologyError,
)

__all__ = [
    "CommandFailed",
    "FeatureMissing",
    "HostHandle",
    "Interface",
    "KernelMptcpError",
    "LinkHandle",
    "NotRootError",
    "TestbedError",
    "Topology",
    "TopologyError",
    "build",
]
