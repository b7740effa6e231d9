"""Live migration of a guest using its AHCI disk and its e1000e, with the image
shared by source and destination (as on shared storage): the source's writes,
some in flight during the switch-over, are on the image the destination reads.

The destination opens the image while the source still writes it: it must
open it inactive (-incoming), take it over only when the state is loaded, and
re-read the qcow2 metadata the source changed meanwhile."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest

# The live migration itself (migrate, -incoming) comes with pemu.migration.migration and its tests.
pytest.importorskip("pemu.migration.migration", reason="live migration (pemu.migration.migration) is not in this tree")
from tests.integration.disk_guest import free_tcp_port  # noqa: E402
from tests.integration.test_migration import MIGRATE_TIMEOUT, Pemu, _status  # noqa: E402

pytestmark = [pytest.mark.guest, pytest.mark.skipif(shutil.which("qemu-img") is None,
                                                     reason="qemu-img (Debian package qemu-utils) is not installed")]
BOOT_TIMEOUT = 300
SECTORS = 16384


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_live_migration_with_a_disk_on_shared_storage(guest_images: Guest, tmp_path: Path, fmt: str) -> None:
    disk = tmp_path / f"shared.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(disk), str(SECTORS * 512)], check=True)
    devices = ("-drive", f"file={disk},format={fmt},if=none,id=d0", "-device", "ide-hd,drive=d0,bus=ide.0",
               "-netdev", "user,id=n0", "-device", "e1000e,netdev=n0,id=nic0")
    src = Pemu(guest_images, tmp_path, "src", devices)
    dst = None
    try:
        src.vm.expect(READY_MARKER, BOOT_TIMEOUT)
        src.shell("modprobe ahci; modprobe sd_mod; modprobe e1000e", timeout=120)
        src.shell("i=0; while [ ! -b /dev/sda ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done", timeout=60)
        src.shell("ip link set eth0 up")
        src.shell("echo written-before-migration | dd of=/dev/sda bs=512 seek=10 conv=fsync 2>/dev/null")
        # A writer that keeps the disk busy through the switch-over.
        src.shell("(i=0; while :; do echo block $i | dd of=/dev/sda bs=512 seek=$((1000 + i % 64)) conv=fsync "
                  "2>/dev/null; i=$((i+1)); done) &")
        port = free_tcp_port()
        dst = Pemu(guest_images, tmp_path, "dst", (*devices, "-incoming", f"tcp:127.0.0.1:{port}"))
        deadline = time.monotonic() + 60
        while "inmigrate" not in _status(dst):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        reply = src.hmp(f"migrate tcp:127.0.0.1:{port}", timeout=MIGRATE_TIMEOUT)
        assert reply.strip() == "", reply
        assert "Migration status: completed" in src.hmp("info migrate")
        deadline = time.monotonic() + MIGRATE_TIMEOUT
        while "running" not in (status := _status(dst)):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        dst.vm.sendline("")
        dst.shell("kill %1; sleep 0.5; sync; echo 3 > /proc/sys/vm/drop_caches", timeout=60)
        got = dst.shell("dd if=/dev/sda bs=512 skip=10 count=1 2>/dev/null | head -c 24; echo")
        assert got.strip() == "written-before-migration"
        blocks = dst.shell("for s in $(seq 1000 1063); do dd if=/dev/sda bs=512 skip=$s count=1 2>/dev/null "
                           "| head -n1; done")
        lines = [line.strip() for line in blocks.splitlines()][-64:]
        numbers = [int(line.split()[1]) if line.startswith("block ") else None for line in lines]
        written = [(i, n) for i, n in enumerate(numbers) if n is not None]
        assert written and all(n % 64 == i for i, n in written), blocks
        dst.shell("echo written-after-migration | dd of=/dev/sda bs=512 seek=20 conv=fsync 2>/dev/null")
        assert "eth0" in dst.shell("ip link show eth0")
        dst.quit()
        raw = tmp_path / "check.raw"
        subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(disk), str(raw)], check=True)
        if fmt == "qcow2":
            check = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
        data = raw.read_bytes()
        assert data[10 * 512:10 * 512 + 24] == b"written-before-migration"
        assert data[20 * 512:20 * 512 + 23] == b"written-after-migration"
        assert "postmigrate" in _status(src)
        src.quit()
    finally:
        src.vm.kill()
        if dst is not None:
            dst.vm.kill()
