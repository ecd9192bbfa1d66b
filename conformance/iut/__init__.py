"""Drivers of the implementations under test, by name (`--iut kernel,stack-v1,stack-v0`)."""

from __future__ import annotations

from conformance.iut.base import AppReport, Iut, IutError, NotSupported
from conformance.iut.kernel import KernelIut
from conformance.iut.stack import StackV0Iut, StackV1Iut

DRIVERS: dict[str, type[Iut]] = {
    driver.name: driver for driver in (KernelIut, StackV1Iut, StackV0Iut)
}

__all__ = ["DRIVERS", "AppReport", "Iut", "IutError", "KernelIut", "NotSupported"]
