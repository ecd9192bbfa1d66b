"""The testbed's exceptions. Each says what failed, why, and what to do about it."""

from __future__ import annotations


class TestbedError(Exception):
    """Base class of every error the testbed raises."""

    __test__ = False  # not a pytest test class, despite the name


class NotRootError(TestbedError):
    """The testbed needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to make namespaces."""


class TopologyError(TestbedError):
    """A topology declaration is impossible; raised before anything is created."""


class FeatureMissing(TestbedError):
    """The kernel or the machine lacks a feature and there is nothing to fall back on."""


class CommandFailed(TestbedError):
    """A command run inside a namespace exited non-zero or timed out."""

    def __init__(self, message: str, *, returncode: int | None, stdout: str, stderr: str):
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class KernelMptcpError(TestbedError):
    """A kernel MPTCP path-manager request was refused."""
