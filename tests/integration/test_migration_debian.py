"""The seed's Debian VM saved and restored in another process (issue 15's
acceptance on the real thing): the Debian (systemd) image on Debian's stock
kernel with its root initramfs, on the seed's command line (q35, -m 4096,
e1000e on user networking with ssh forwarded, the disk as -hda).

The guest is reached by ssh, since its serial line has a login prompt and
root has no password.  Before the move the guest gets state that lives only
in its RAM (a file in /run, a tmpfs) and a background job that appends a
line to that file every 200 ms.  ``migrate "exec:cat > FILE"`` and ``quit``;
a new pemu with the same command line and ``-incoming "exec:cat FILE"``
takes over the same disk: the file and the job are still there and the job
goes on, uptime continued, the local APIC timer still ticks, and sshd answers
new connections (user networking's connections are not migrated: the guest's
TCP stack and a new connection recover)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.build_disk import DiskImage, RootInitrd
from tests.integration.disk_guest import SshTarget, disk_boot_args, disk_copy, free_tcp_port
from tests.integration.harness import GuestProcess, hmp_command

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 900  # systemd under TCG on 2 shared cores
MIGRATE_TIMEOUT = 300
MARK = "seed-vm-survived-42"


def _hmp(monitor: Path, command: str, timeout: float = MIGRATE_TIMEOUT) -> str:
    return hmp_command(monitor, command, timeout)


def _wait_for(path: Path, vm: GuestProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert vm.returncode is None, vm.tail()
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.1)


def _loc(interrupts: str) -> int:
    m = re.search(r"^\s*LOC:\s+(\d+)", interrupts, re.M)
    assert m, interrupts
    return int(m.group(1))


@pytest.fixture
def processes() -> Iterator[list[GuestProcess]]:
    procs: list[GuestProcess] = []
    yield procs
    for proc in procs:
        proc.kill()


def test_seed_debian_vm_continues_in_a_new_process(root_initrd: RootInitrd, debian_disk: DiskImage,
                                                     tmp_path: Path, processes: list[GuestProcess]) -> None:
    disk = disk_copy(debian_disk, tmp_path)
    port = free_tcp_port()
    snapshot = tmp_path / "seed.vmstate"

    def start(name: str, extra: tuple[str, ...] = ()) -> tuple[GuestProcess, Path]:
        monitor = tmp_path / f"{name}.mon"
        args = disk_boot_args(disk, kernel=root_initrd.kernel, initrd=root_initrd.initrd, port=port,
                              memory="4096",
                              extra=("-monitor", f"unix:{monitor},server=on,wait=off", *extra))
        vm = GuestProcess(args)
        processes.append(vm)
        return vm, monitor

    src, src_mon = start("src")
    ssh = SshTarget(port, disk.key)
    ssh.wait_until_up(src, timeout=BOOT_TIMEOUT)
    ssh.run(f"echo {MARK} > /run/pemu-mark; "
            "nohup sh -c 'while :; do echo tick >> /run/pemu-mark; sleep 0.2; done' >/dev/null 2>&1 & "
            "echo $! > /run/pemu-job")
    time.sleep(1)
    before = ssh.run("cut -d' ' -f1 /proc/uptime; wc -l < /run/pemu-mark; cat /proc/interrupts").stdout
    uptime_before, lines_before = float(before.split()[0]), int(before.split()[1])
    loc_before = _loc(before)

    _wait_for(src_mon, src)
    assert _hmp(src_mon, f'migrate "exec:cat > {snapshot}"').strip() == ""
    info = _hmp(src_mon, "info migrate")
    assert "Migration status: completed" in info, info
    assert "postmigrate" in _hmp(src_mon, "info status")
    _hmp(src_mon, "quit", timeout=30)  # the reply ends when the monitor closes
    assert src.wait(60) == 0, src.tail()
    print(f"snapshot of the 4 GiB Debian VM: {snapshot.stat().st_size / (1 << 20):.0f} MiB")

    started = time.monotonic()
    dst, dst_mon = start("dst", ("-incoming", f"exec:cat {snapshot}"))
    _wait_for(dst_mon, dst)
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    while "running" not in (status := _hmp(dst_mon, "info status")):
        assert "inmigrate" in status, status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    print(f"restored and running {time.monotonic() - started:.2f} s after the process started")
    ssh.wait_until_up(dst, timeout=120)
    after = ssh.run("head -n1 /run/pemu-mark; kill -0 $(cat /run/pemu-job) && echo job-alive; "
                    "cut -d' ' -f1 /proc/uptime; wc -l < /run/pemu-mark; cat /proc/interrupts").stdout
    words = after.split()
    assert words[0] == MARK, after            # RAM-only state (tmpfs) came along
    assert words[1] == "job-alive", after     # the same background job, not a new boot
    uptime_after, lines_after = float(words[2]), int(words[3])
    assert uptime_before < uptime_after < uptime_before + 300, after
    assert lines_after > lines_before, after  # the job kept appending on the destination
    assert _loc(after) > loc_before, after
    time.sleep(1)
    later = ssh.run("wc -l < /run/pemu-mark").stdout
    assert int(later) > lines_after
    dmesg = ssh.run("dmesg").stdout
    for bad in ("I/O error", "EXT4-fs error", "hard resetting link", "Detected Tx Unit Hang"):
        assert bad not in dmesg, dmesg
    ssh.run("systemctl poweroff", check=False)
    assert dst.wait(300) == 0, dst.tail()
