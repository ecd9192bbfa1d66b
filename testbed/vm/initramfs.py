"""The guest's initramfs: busybox, the modules needed to reach the shared root, and
`init` (a shell script) that mounts the host's root read-only over virtiofs, puts tmpfs
(overlays where the kernel has overlayfs) on /etc, /var, /tmp and /run, and hands over to
the agent (`testbed.vm.agent`) run by the project's own Python.

Modules are found in the kernel's modules directory by name, with the dependencies their
`.modinfo` names, decompressed here (busybox's insmod takes plain `.ko`), in load order;
a module the kernel has built in (`modules.builtin`) is skipped. The archive is written
as cpio "newc" by hand (no cpio on the host) and cached beside the kernel by content.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import stat
from pathlib import Path

from testbed.errors import TestbedError

# What the guest needs before its root is mounted (and the agent's port, the NICs)
WANTED = ("virtio_pci", "virtio_console", "virtio_net", "fuse", "virtiofs", "overlay")
BUSYBOX = "/usr/bin/busybox"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules.order); do
    insmod "/modules/$module.ko" || echo "init: insmod $module failed"
done
arg() {
    for word in $(cat /proc/cmdline); do case "$word" in "$1="*) echo "${word#*=}";; esac; done
}
fail() { echo "init: $*"; echo o > /proc/sysrq-trigger; sleep 5; poweroff -f; }
python=$(arg mptl.python)
root=$(arg mptl.root)
mount -t virtiofs -o ro rootfs /newroot \
    || fail "cannot mount the shared root (virtiofs): if fuse, virtiofs or virtio_pci" \
            "are modules, give their directory (kernel-vm:IMAGE:MODULES)"
# /etc, /var and /tmp are the host's, writable through an overlay (a checkout or a
# virtualenv under /tmp stays visible: CI clones often live there)
for dir in etc var tmp; do
    mkdir -p /overlay/$dir
    mount -t tmpfs -o mode=0755 tmpfs /overlay/$dir
    mkdir -p /overlay/$dir/upper /overlay/$dir/work
    layers=lowerdir=/newroot/$dir,upperdir=/overlay/$dir/upper,workdir=/overlay/$dir/work
    mount -t overlay -o "$layers" overlay /newroot/$dir \
        || mount -t tmpfs -o mode=0755 tmpfs /newroot/$dir
done
chmod 1777 /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
cd /newroot
export PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$root"  # the host's checkout, whatever the venv was installed from
exec switch_root /newroot "$python" -m testbed.vm.agent
"""


class InitramfsError(TestbedError):
    pass


def _module_files(modules: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in modules.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        files[name] = path
    return files


def _builtin(modules: Path) -> set[str]:
    try:
        text = (modules / "modules.builtin").read_text()
    except OSError:
        return set()
    return {Path(line).name.split(".ko")[0].replace("-", "_") for line in text.split()}


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        import subprocess

        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _depends(blob: bytes) -> list[str]:
    at = blob.find(b"\0depends=")
    if at < 0:
        return []
    end = blob.index(b"\0", at + 1)
    text = blob[at + len(b"\0depends=") : end].decode()
    return [d.replace("-", "_") for d in text.split(",") if d]


def resolve(modules: Path | None) -> list[tuple[str, bytes]]:
    """The modules to load, dependencies first, as (name, plain .ko bytes)."""
    if modules is None:
        return []
    files, builtin = _module_files(modules), _builtin(modules)
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            return  # neither a module nor listed as built in: the kernel may not need it
        blob = _read_module(files[name])
        for dependency in _depends(blob):
            visit(dependency)
        ordered.append((name, blob))

    for name in WANTED:
        visit(name)
    return ordered


class _Cpio:
    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0]
        self.inode += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + encoded)
        self.out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.out.getvalue()


def build(modules: Path | None, cache: Path) -> Path:
    """The initramfs for a kernel whose modules are in `modules`, cached under `cache`."""
    if not os.path.exists(BUSYBOX):
        raise InitramfsError(
            f"{BUSYBOX} is missing: apt-get install busybox-static (.ci/bootstrap does it)"
        )
    loaded = resolve(modules)
    busybox = Path(BUSYBOX).read_bytes()
    digest = hashlib.sha256(INIT.encode() + busybox)
    for name, blob in loaded:
        digest.update(name.encode() + hashlib.sha256(blob).digest())
    path = cache / f"initramfs-{digest.hexdigest()[:16]}.cpio.gz"
    if path.exists():
        return path
    cpio = _Cpio()
    for directory in ("bin", "modules", "dev", "proc", "sys", "newroot"):
        cpio.add(directory, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    cpio.add("init", stat.S_IFREG | 0o755, INIT.encode())
    cpio.add("modules.order", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n, _ in loaded).encode())
    for name, blob in loaded:
        cpio.add(f"modules/{name}.ko", stat.S_IFREG | 0o644, blob)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as f:
        f.write(gzip.compress(cpio.finish(), compresslevel=1))
    os.replace(partial, path)
    return path
