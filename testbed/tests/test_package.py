"""The package's lazy names: right objects, and applications start without pyroute2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_build_is_the_function_after_its_module_is_imported() -> None:
    # A submodule named like a package attribute would replace it once imported.
    _python(
        "import types, testbed.builder, testbed\n"
        "from testbed import build, Topology\n"
        "assert not isinstance(build, types.ModuleType), build\n"
        "assert build is testbed.builder.build and Topology is testbed.builder.Topology"
    )


def test_apps_and_the_stack_cli_load_without_pyroute2() -> None:
    # The conformance harness starts a stack process per case: pyroute2 costs ~0.25 s.
    _python(
        "import sys, testbed.apps, stack.__main__\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('pyroute2'))\n"
        "assert not loaded, loaded"
    )


def test_an_unknown_name_is_an_attribute_error() -> None:
    import testbed

    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = testbed.nonsense  # type: ignore[attr-defined]
