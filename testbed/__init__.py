"""Multi-homed network namespace testbeds for MPTCP, built on pyroute2.

Names are loaded on first use (PEP 562), so that `import testbed.apps` or
`testbed.netns` does not pull in pyroute2 through `testbed.builder`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.builder import HostHandle, Interface, LinkHandle, Topology, build
    from testbed.errors import (
        CommandFailed,
        FeatureMissing,
        KernelMptcpError,
        NotRootError,
        TestbedError,
        TopologyError,
    )

_HOME = {
    "HostHandle": "testbed.builder",
    "Interface": "testbed.builder",
    "LinkHandle": "testbed.builder",
    "Topology": "testbed.builder",
    "build": "testbed.builder",
    "CommandFailed": "testbed.errors",
    "FeatureMissing": "testbed.errors",
    "KernelMptcpError": "testbed.errors",
    "NotRootError": "testbed.errors",
    "TestbedError": "testbed.errors",
    "TopologyError": "testbed.errors",
}

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


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'testbed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
