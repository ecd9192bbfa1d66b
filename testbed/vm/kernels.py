"""Kernel images for virtual machines: fetch Debian's cloud kernels into a cache, and
find a kernel (a fetched one by its short version, or any bzImage with its modules).

`python -m testbed vm fetch 6.1 6.12` runs `apt-get download` for the newest
`linux-image-6.1.0-N-cloud-amd64-unsigned` / `linux-image-6.12.N+deb12-cloud-amd64-unsigned`
that apt knows and unpacks it with `dpkg-deb -x` into the cache, never installing it on
the host. The cache is `$MPTL_VM_CACHE`, else `$XDG_CACHE_HOME/mptcp-testbed/kernels`,
else `~/.cache/mptcp-testbed/kernels`; one directory per short version holds the
unpacked package and `kernel.json` (the package, the release, the image and modules
paths). The guest reads its modules from there over the shared root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import TestbedError

# short version -> regular expression of the Debian package names that provide it
PACKAGES = {
    "6.1": r"^linux-image-6\.1\.0-([0-9]+)-cloud-amd64-unsigned$",
    "6.12": r"^linux-image-6\.12\.([0-9]+)\+deb12-cloud-amd64-unsigned$",
}


class KernelError(TestbedError):
    """A kernel could not be fetched or found."""


@dataclass(frozen=True)
class Kernel:
    """A kernel a VM can boot: its image and the modules directory of its release."""

    name: str  # "6.1", "6.12", or the image's path for a kernel of one's own
    image: Path
    modules: Path | None  # .../lib/modules/<release>; None: everything built in
    release: str = ""
    package: str = ""

    def check(self) -> None:
        if not self.image.is_file():
            raise KernelError(f"kernel image {self.image} does not exist")
        if self.modules is not None and not self.modules.is_dir():
            raise KernelError(f"modules directory {self.modules} does not exist")


def cache_dir() -> Path:
    if os.environ.get("MPTL_VM_CACHE"):
        return Path(os.environ["MPTL_VM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "mptcp-testbed" / "kernels"


def fetched(version: str) -> Kernel | None:
    """The fetched kernel of a short version ("6.1"), or None."""
    meta = cache_dir() / version / "kernel.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    kernel = Kernel(
        version, Path(info["image"]), Path(info["modules"]), info["release"], info["package"]
    )
    return kernel if kernel.image.is_file() else None


def not_fetched_reason(version: str) -> str | None:
    if fetched(version) is None:
        return f"kernel {version} not fetched: run python -m testbed vm fetch {version}"
    return None


def custom(path: str) -> Kernel:
    """`kernel-vm:IMAGE[:MODULES]`: a bzImage, and the directory of its modules (as
    `make modules_install` leaves it, `lib/modules/<release>`). Without MODULES: the
    image's own tree's when it is `.../boot/vmlinuz-<release>` beside
    `.../lib/modules/<release>` (an unpacked package), else none (all built in)."""
    image_text, _, modules_text = path.partition(":")
    image = Path(image_text).resolve()
    modules: Path | None = Path(modules_text).resolve() if modules_text else None
    if modules is None and image.name.startswith("vmlinuz-"):
        beside = image.parent.parent / "lib" / "modules" / image.name.removeprefix("vmlinuz-")
        modules = beside if beside.is_dir() else None
    return Kernel(path, image, modules)


def newest_package(version: str) -> str:
    """The newest package apt knows for a short version."""
    if version not in PACKAGES:
        raise KernelError(f"unknown kernel {version!r}: choose from {', '.join(PACKAGES)}")
    pattern = re.compile(PACKAGES[version])
    try:
        listing = subprocess.run(
            ["apt-cache", "pkgnames", "linux-image-"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelError(f"apt-cache failed ({error}): is this Debian or Ubuntu?") from None
    found = [(int(m.group(1)), name) for name in listing.split() if (m := pattern.match(name))]
    if not found:
        raise KernelError(
            f"apt knows no package for kernel {version} ({PACKAGES[version]}); "
            "run apt-get update, or add Debian bookworm (and bookworm-backports for 6.12)"
        )
    return max(found)[1]


def fetch(version: str, *, force: bool = False) -> Kernel:
    """Download and unpack the newest package of a short version into the cache."""
    package = newest_package(version)
    have = fetched(version)
    if have is not None and have.package == package and not force:
        return have
    target = cache_dir() / version
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as work:
        try:
            subprocess.run(
                ["apt-get", "download", "-q", package],
                cwd=work, capture_output=True, text=True, timeout=600, check=True,
            )  # fmt: skip
            (deb,) = Path(work).glob("*.deb")
            tree = Path(work) / "tree"
            subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(tree)],
                capture_output=True, text=True, timeout=600, check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            raise KernelError(
                f"{' '.join(map(str, error.cmd))} failed: {error.stderr.strip()}"
            ) from None
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelError(f"fetching {package} failed: {error}") from None
        images = sorted((tree / "boot").glob("vmlinuz-*"))
        if not images:
            raise KernelError(f"{package} holds no /boot/vmlinuz-*")
        release = images[0].name.removeprefix("vmlinuz-")
        deb.unlink()
        if target.exists():
            shutil.rmtree(target)
        tree.rename(target)
    info = {
        "package": package,
        "release": release,
        "image": str(target / "boot" / f"vmlinuz-{release}"),
        "modules": str(target / "lib" / "modules" / release),
    }
    (target / "kernel.json").write_text(json.dumps(info, indent=1) + "\n")
    kernel = fetched(version)
    assert kernel is not None
    return kernel
