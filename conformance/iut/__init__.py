"""Drivers of the implementations under test, by name (`--iut kernel,stack-v1,stack-v0`)."""

from __future__ import annotations

from conformance.iut.base import AppReport, Iut, IutError, NotSupported
from conformance.iut.kernel import KernelIut
from conformance.iut.stack import StackV0Iut, StackV1Iut
from conformance.iut.vm import Kernel61Iut, Kernel612Iut, custom_driver


class _Drivers(dict[str, type[Iut]]):
    """The registered drivers, and `kernel-vm:IMAGE[:MODULES]` made on demand."""

    def __missing__(self, name: str) -> type[Iut]:
        if name.startswith("kernel-vm:"):
            return custom_driver(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or str(name).startswith("kernel-vm:")


DRIVERS: dict[str, type[Iut]] = _Drivers(
    {
        driver.name: driver
        for driver in (KernelIut, StackV1Iut, StackV0Iut, Kernel61Iut, Kernel612Iut)
    }
)

__all__ = ["DRIVERS", "AppReport", "Iut", "IutError", "KernelIut", "NotSupported"]
