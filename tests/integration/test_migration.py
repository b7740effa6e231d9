"""Migration end to end with real guests (issue 15's acceptance).

One busybox guest is booted once and then moves from process to process:

1. at its shell, with a variable set: ``migrate "exec:cat > FILE"``, quit;
   a new pemu with ``-incoming "exec:cat FILE"`` continues the same shell
   (the variable is set, uptime went on, the timer interrupts keep coming);
2. the same again with ``file:`` (the mapped-ram layout);
3. live over tcp to a pemu on 127.0.0.1 while the guest counts on its console:
   the two consoles together count without a gap or a repeat, the source
   reports completed with a downtime and ends in postmigrate;
4. ``migrate_cancel`` halfway: the source keeps running and counting, the
   destination, whose stream was cut, ends with one line and status 1.

The stream saved in 1 is then fed, damaged, to new processes: truncated, a
byte flipped, another ``-m``, a device missing, a device extra: one line on
stderr naming the problem, exit status 1, no traceback.

Last, the test guest counting under kvm moves live between two processes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.disk_guest import free_tcp_port
from tests.integration.harness import PROMPT, GuestProcess, default_guest_args, hmp_command

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 300
MIGRATE_TIMEOUT = 300
MARK = "survived-the-migration-42"
# Devices the guest has, with ids, so that the stream's sections name them.
DEVICES = ("-device", "edu,id=edu0")
COUNT_LINE = re.compile(r"count (\d+)\r?\n")


def timer_count(interrupts: str) -> int:
    """The local APIC timer's count (LOC) in /proc/interrupts."""
    m = re.search(r"^\s*LOC:\s+(\d+)", interrupts, re.M)
    assert m, interrupts
    return int(m.group(1))


class Pemu:
    """A pemu process with the guest's console on stdio and a human monitor on a socket."""

    def __init__(self, guest: Guest, workdir: Path, name: str, extra: tuple[str, ...] = ()) -> None:
        self.monitor = workdir / f"{name}.mon"
        self.vm = GuestProcess(default_guest_args(guest, extra=(
            *DEVICES, "-monitor", f"unix:{self.monitor},server=on,wait=off", *extra)))

    def hmp(self, command: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + 30
        while not self.monitor.exists():
            if time.monotonic() > deadline or self.vm.returncode is not None:
                raise AssertionError(f"no monitor socket\n{self.vm.tail()}")
            time.sleep(0.1)
        return hmp_command(self.monitor, command, timeout)

    def quit(self) -> None:
        hmp_command(self.monitor, "quit", 30)  # the reply ends when the monitor closes
        assert self.vm.wait(60) == 0, self.vm.tail()

    def shell(self, command: str, timeout: float = 60) -> str:
        return self.vm.run(command, timeout)


def _status(proc: Pemu) -> str:
    return proc.hmp("info status").strip()


class Chain:
    """The one guest and the process it lives in now."""

    def __init__(self, guest: Guest, workdir: Path) -> None:
        self.guest, self.workdir = guest, workdir
        self.current: Pemu | None = None
        self.saved: Path | None = None  # the stream of step 1, for the damaged-stream tests
        self.processes: list[Pemu] = []

    def start(self, name: str, extra: tuple[str, ...] = ()) -> Pemu:
        proc = Pemu(self.guest, self.workdir, name, extra)
        self.processes.append(proc)
        return proc


@pytest.fixture(scope="module")
def chain(guest_images: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    c = Chain(guest_images, tmp_path_factory.mktemp("migration"))
    first = c.start("boot")
    try:
        first.vm.expect(READY_MARKER, BOOT_TIMEOUT)
        first.shell(f"export PEMU_MARK={MARK}")
        c.current = first
        yield c
    finally:
        for proc in c.processes:
            proc.vm.kill()


def _shell_state(proc: Pemu) -> tuple[float, int]:
    uptime = float(proc.shell("cut -d' ' -f1 /proc/uptime"))
    return uptime, timer_count(proc.shell("cat /proc/interrupts"))


def _restore_and_check(chain: Chain, name: str, incoming: str, before: tuple[float, int]) -> Pemu:
    """Start the next process on ``incoming`` and check the same shell goes on."""
    proc = chain.start(name, ("-incoming", incoming))
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    while "running" not in (status := _status(proc)):
        assert time.monotonic() < deadline, status
        assert "inmigrate" in status, status
        time.sleep(0.2)
    chain.current = proc
    proc.vm.sendline("")  # a new prompt from the same shell (the old one was printed by the old process)
    assert proc.shell("echo $PEMU_MARK").strip() == MARK
    uptime, ticks = _shell_state(proc)
    assert uptime > before[0], "uptime went back: the guest was rebooted or its clock reset"
    assert uptime < before[0] + 120
    assert ticks > before[1]
    proc.shell("sleep 1")
    assert timer_count(proc.shell("cat /proc/interrupts")) > ticks
    assert proc.shell("echo still here").strip() == "still here"
    return proc


def test_exec_snapshot_continues_the_shell(chain: Chain) -> None:
    src = chain.current
    assert src is not None
    before = _shell_state(src)
    saved = chain.workdir / "exec.stream"
    reply = src.hmp(f'migrate "exec:cat > {saved}"', timeout=MIGRATE_TIMEOUT)
    assert reply.strip() == "", reply
    assert "postmigrate" in _status(src)
    info = src.hmp("info migrate")
    assert "Migration status: completed" in info
    assert re.search(r"^downtime: \d+ ms$", info, re.M), info
    src.quit()
    assert saved.stat().st_size > 0
    chain.saved = saved
    _restore_and_check(chain, "exec", f"exec:cat {saved}", before)


def test_file_snapshot_continues_the_shell(chain: Chain) -> None:
    src = chain.current
    assert src is not None and chain.saved is not None, "the exec: step failed"
    before = _shell_state(src)
    saved = chain.workdir / "vm.snapshot"
    src.hmp(f"migrate file:{saved}", timeout=MIGRATE_TIMEOUT)
    assert "Migration status: completed" in src.hmp("info migrate")
    src.quit()
    _restore_and_check(chain, "file", f"file:{saved}", before)


def _counts(text: str) -> list[int]:
    return [int(n) for n in COUNT_LINE.findall(text)]


def _start_counting(proc: Pemu) -> None:
    proc.vm.expect(re.escape(PROMPT), 30)
    proc.vm.sendline("i=0; while true; do i=$((i+1)); echo count $i; usleep 20000; done")
    proc.vm.expect(r"count 5\r?\n", 60)


def _stop_counting(proc: Pemu) -> None:
    proc.vm.send("\x03")  # Ctrl-C
    proc.vm.sendline("")
    proc.vm.expect(re.escape(PROMPT), 30)


def test_live_tcp_migration_counts_on_without_gap_or_repeat(chain: Chain) -> None:
    src = chain.current
    assert src is not None and chain.saved is not None, "an earlier step failed"
    port = free_tcp_port()
    dst = chain.start("live-dst", ("-incoming", f"tcp:127.0.0.1:{port}"))
    assert "inmigrate" in _status(dst)
    mark = len(src.vm.output)
    _start_counting(src)
    reply = src.hmp(f"migrate tcp:127.0.0.1:{port}", timeout=MIGRATE_TIMEOUT)
    assert reply.strip() == "", reply
    info = src.hmp("info migrate")
    assert "Migration status: completed" in info, info
    downtime = re.search(r"^downtime: (\d+) ms$", info, re.M)
    assert downtime, info
    assert "postmigrate" in _status(src)
    # The destination goes on counting where the source stopped.
    dst.vm.expect(COUNT_LINE, 60)
    dst.vm.expect(COUNT_LINE, 60)
    assert "running" in _status(dst)
    time.sleep(1)
    source_counts = _counts(src.vm.output[mark:])
    both = _counts(src.vm.output[mark:] + dst.vm.output)
    assert len(source_counts) >= 5
    assert len(both) > len(source_counts) + 2
    assert both == list(range(both[0], both[0] + len(both))), (source_counts[-3:], both[len(source_counts):][:3])
    chain.current = dst
    src.quit()


def test_migrate_cancel_leaves_the_source_running(chain: Chain) -> None:
    src = chain.current
    assert src is not None, "an earlier step failed"
    port = free_tcp_port()
    dst = chain.start("cancel-dst", ("-incoming", f"tcp:127.0.0.1:{port}"))
    assert "inmigrate" in _status(dst)
    assert src.hmp("migrate_set_parameter max-bandwidth 1").strip() == ""  # 1 MiB/s: it takes a while
    assert "max-bandwidth: 1048576 bytes/second" in src.hmp("info migrate_parameters")
    src.hmp(f"migrate -d tcp:127.0.0.1:{port}")
    time.sleep(2)
    assert "Migration status: active" in src.hmp("info migrate")
    src.hmp("migrate_cancel")
    deadline = time.monotonic() + 30
    while "Migration status: cancelled" not in (info := src.hmp("info migrate")):
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert _status(src) == "VM status: running"
    counting = _counts(src.vm.output)[-1]
    src.vm.expect(rf"count {counting + 3}\r?\n", 30)  # still counting
    # The destination's stream was cut: one line, status 1.
    assert dst.vm.wait(60) == 1
    lines = dst.vm.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("pemu: load of migration failed: "), dst.vm.stderr
    assert "Traceback" not in dst.vm.stderr
    _stop_counting(src)
    assert src.shell("echo $PEMU_MARK").strip() == MARK


def test_a_restored_guest_reboots(chain: Chain) -> None:
    """A destination unpacks the kernel only when the guest reboots (x86_load_linux under -incoming)."""
    proc = chain.current
    assert proc is not None, "an earlier step failed"
    proc.vm.expect(re.escape(PROMPT), 30)
    proc.vm.sendline("reboot -f")
    proc.vm.expect(r"Linux version", BOOT_TIMEOUT)
    proc.vm.expect(READY_MARKER, BOOT_TIMEOUT)
    assert proc.shell("echo ${PEMU_MARK:-unset}").strip() == "unset"  # a new shell


# --- damaged streams -----------------------------------------------------------------------


def _load(guest: Guest, stream: Path, *, memory: str = "512", devices: tuple[str, ...] = DEVICES,
          ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pemu", *default_guest_args(guest, memory=memory, extra=(
        *devices, "-monitor", "none", "-incoming", f"exec:cat {stream}"))]
    return subprocess.run(argv, capture_output=True, text=True, timeout=MIGRATE_TIMEOUT, stdin=subprocess.DEVNULL)


def _one_line_failure(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("pemu: load of migration failed: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def saved_stream(chain: Chain) -> Path:
    if chain.saved is None:
        pytest.fail("the exec: migration did not save a stream")
    return chain.saved


def test_truncated_stream_is_refused(guest_images: Guest, saved_stream: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.stream"
    data = saved_stream.read_bytes()
    cut.write_bytes(data[:len(data) * 2 // 3])
    line = _one_line_failure(_load(guest_images, cut))
    assert "truncated" in line


def test_corrupted_byte_is_refused(guest_images: Guest, saved_stream: Path, tmp_path: Path) -> None:
    bad = tmp_path / "flipped.stream"
    data = bytearray(saved_stream.read_bytes())
    data[len(data) - 200] ^= 0x40  # in the device sections near the end: caught by a check or the checksum
    bad.write_bytes(bytes(data))
    _one_line_failure(_load(guest_images, bad))


def test_other_memory_size_is_refused(guest_images: Guest, saved_stream: Path) -> None:
    line = _one_line_failure(_load(guest_images, saved_stream, memory="256"))
    assert "ram" in line.lower(), line


def test_missing_device_is_refused(guest_images: Guest, saved_stream: Path) -> None:
    line = _one_line_failure(_load(guest_images, saved_stream, devices=()))
    assert "edu0" in line, line


def test_extra_device_is_refused(guest_images: Guest, saved_stream: Path) -> None:
    line = _one_line_failure(_load(guest_images, saved_stream, devices=(*DEVICES, "-device", "pci-testdev,id=extra0")))
    assert "extra0" in line, line


# --- under kvm ---------------------------------------------------------------------------------


@pytest.mark.kvm
def test_live_migration_under_kvm(tmp_path: Path) -> None:
    """The test guest counting on its console moves between two processes under kvm."""
    from tests.guests.build import build_test_guest, tools_available

    if not tools_available():
        pytest.skip("gcc/ld are needed for the test guests")
    kernel = build_test_guest(tmp_path / "guest")
    port = free_tcp_port()

    def start(name: str, extra: tuple[str, ...] = ()) -> tuple[GuestProcess, Path]:
        monitor = tmp_path / f"{name}.mon"
        return GuestProcess(["-accel", "kvm", "-machine", "q35", "-m", "32", "-nodefaults", "-nographic",
                             "-serial", "stdio", "-display", "none", "-kernel", str(kernel),
                             "-append", "test=count delay=20000",
                             "-monitor", f"unix:{monitor},server=on,wait=off", *extra]), monitor

    def hmp(monitor: Path, command: str) -> str:
        return hmp_command(monitor, command, MIGRATE_TIMEOUT)

    src, src_mon = start("src")
    dst, dst_mon = start("dst", ("-incoming", f"tcp:127.0.0.1:{port}"))
    with src, dst:
        src.expect(r"count 3\r?\n", 120)
        for _ in range(100):
            if dst_mon.exists():
                break
            time.sleep(0.1)
        hmp(src_mon, f"migrate tcp:127.0.0.1:{port}")
        info = hmp(src_mon, "info migrate")
        assert "Migration status: completed" in info, info + src.tail()
        assert "postmigrate" in hmp(src_mon, "info status")
        dst.expect(COUNT_LINE, 120)
        dst.expect(COUNT_LINE, 120)
        both = _counts(src.output + dst.output)
        assert both == list(range(1, len(both) + 1)), both
        assert len(_counts(dst.output)) >= 2
