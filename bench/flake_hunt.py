"""The README's test command, again and again on fresh clones: does the gate flake?

    python -m bench.flake_hunt [--runs 10] [--load] [--json FILE] [--source DIR]

Each run clones the repository (`--source`, default this checkout's committed HEAD) into
a scratch directory and runs exactly the README's second command there, `.ci/bootstrap
&& .venv/bin/python -m pytest -n 2`, with a fresh virtualenv. With `--load`, another
namespace-heavy job runs meanwhile: the conformance catalogue in a loop from this
checkout (`python -m conformance run -n 1 -q`), as when CI shares a machine. Reported:
each run's exit status, wall time and failed tests (from its JUnit XML), and the total
of failures. Goal (issue 11): 0 failures in 10 runs, half of them loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = ".ci/bootstrap && .venv/bin/python -m pytest -n 2"


@contextlib.contextmanager
def background_load(enabled: bool) -> Iterator[None]:
    """The conformance catalogue in a loop (its own process group), while enabled."""
    if not enabled:
        yield
        return
    loop = "while :; do .venv/bin/python -m conformance run -n 1 -q >/dev/null 2>&1; done"
    load = subprocess.Popen(["sh", "-c", loop], cwd=ROOT, start_new_session=True)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(load.pid, signal.SIGTERM)
        load.wait(30)


def failed_tests(junit: Path) -> list[str]:
    if not junit.exists():
        return []
    failed = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    return failed


def one_run(source: Path, scratch: Path, index: int) -> dict[str, Any]:
    clone = scratch / f"clone-{index}"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    junit = scratch / f"run-{index}.xml"
    log = scratch / f"run-{index}.log"
    started = time.monotonic()
    with log.open("w") as out:
        command = ["sh", "-c", f"{TEST_COMMAND} -q --junitxml={junit}"]
        status = subprocess.run(command, cwd=clone, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    failed = failed_tests(junit)
    shutil.rmtree(clone, ignore_errors=True)
    return {"run": index, "exit": status, "wall_s": round(wall, 1), "failed": failed,
            "log": str(log)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flake_hunt")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--load", action="store_true", help="a conformance loop meanwhile")
    parser.add_argument("--source", type=Path, default=ROOT, help="the repository to clone")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="flake-hunt-"))
    results = []
    with background_load(args.load):
        for index in range(1, args.runs + 1):
            result = one_run(args.source, scratch, index)
            results.append(result)
            print(f"run {index}/{args.runs}{' (loaded)' if args.load else ''}: exit "
                  f"{result['exit']}, {result['wall_s']} s, failed: "
                  f"{', '.join(result['failed']) or 'none'}", flush=True)  # fmt: skip
    failures = sum(1 for r in results if r["exit"] != 0)
    print(f"flake_hunt: {len(results)} runs{' under load' if args.load else ''}, "
          f"{failures} failed (logs in {scratch})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"loaded": args.load, "runs": results}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
