#!/usr/bin/env python3
"""Network benchmark: TCP throughput through an e1000e and user networking,
pemu against QEMU's TCG on the same guest.

Each emulator boots the test guest with ``-device e1000e,netdev=n0 -netdev
user,id=n0,hostfwd=tcp:127.0.0.1:PORT-:5555``; the guest loads e1000e and
takes 10.0.2.15.  Then, per run, SIZE MiB go host -> guest (busybox ``nc -l``
in the guest writing to /dev/null; timed from the host's connect to the
guest's shell prompt after nc ends) and guest -> host (``nc -l`` in the
guest reading a file of random bytes in its RAM; timed from connect to the
last byte).  Runs are interleaved between the emulators; the report gives
median MiB/s with their range and pemu/QEMU ratios as a Markdown table.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.boot import BenchError, ensure_qemu, guest_args, machine_description, utc_now  # noqa: E402
from tests.fixtures.build_guest import DEFAULT_APPEND, PROMPT, READY_MARKER, ensure_guest  # noqa: E402
from tests.integration.harness import GuestError, GuestProcess  # noqa: E402

GUEST_PORT = 5555


@dataclass
class Emulator:
    name: str
    argv: list[str]
    to_guest: list[float] = field(default_factory=list)    # MiB/s
    from_guest: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, timeout: float) -> socket.socket:
    """A connection the guest's nc accepted (user networking accepts for the
    guest and closes at once while nothing listens there yet)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.settimeout(0.5)
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                s.close()
                if time.monotonic() > deadline:
                    raise BenchError("the guest's nc never accepted")
                time.sleep(0.3)
                continue
        except TimeoutError:
            pass
        s.settimeout(timeout)
        return s


def _at_prompt(vm: GuestProcess, command: str) -> None:
    vm.expect(PROMPT, 60)
    vm.sendline(command)


def boot(emu: Emulator, size_mib: int, timeout: float) -> tuple[GuestProcess, int]:
    """Boot the guest with its NIC up and SIZE MiB of random bytes in /tmp/out."""
    port = _free_port()
    argv = [*emu.argv, "-device", "e1000e,netdev=n0", "-netdev",
            f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}"]
    vm = GuestProcess(argv=argv)
    vm.expect(READY_MARKER, timeout)
    vm.run("modprobe e1000e && ip link set eth0 up && sleep 2 && "
           "busybox udhcpc -i eth0 -n -q -s /bin/true >/dev/null && ip addr add 10.0.2.15/24 dev eth0", 300)
    vm.run(f"dd if=/dev/urandom of=/tmp/out bs=1M count={size_mib} 2>/dev/null", 300)
    return vm, port


def one_run(vm: GuestProcess, port: int, size: int, timeout: float) -> tuple[float, float]:
    payload = bytes(size)
    _at_prompt(vm, f"busybox nc -l -p {GUEST_PORT} > /dev/null; echo TO-GUEST-DONE")
    time.sleep(0.5)
    with _connect(port, timeout) as s:
        start = time.monotonic()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        vm.expect("\nTO-GUEST-DONE", timeout)
        to_guest = time.monotonic() - start
    _at_prompt(vm, f"busybox nc -l -p {GUEST_PORT} < /tmp/out; echo FROM-GUEST-DONE")
    time.sleep(0.5)
    got = 0
    with _connect(port, timeout) as s:
        start = time.monotonic()
        while got < size:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        from_guest = time.monotonic() - start
    vm.expect("\nFROM-GUEST-DONE", timeout)
    if got != size:
        raise BenchError(f"{got} of {size} bytes came back from the guest")
    mib = size / (1 << 20)
    return mib / to_guest, mib / from_guest


def _summary(values: list[float]) -> str:
    middle = statistics.median(values)
    return f"{middle:.2f}" if len(values) == 1 else f"{middle:.2f} ({min(values):.2f}–{max(values):.2f})"


def report(emulators: list[Emulator], runs: int, size_mib: int, release: str) -> str:
    lines = [
        f"### TCP through e1000e + user networking (hostfwd), {utc_now()}",
        "",
        f"- Machine: {machine_description()}",
        f"- Guest: Debian kernel {release} + busybox initramfs; `-machine q35 -m 512 -device e1000e,netdev=n0 "
        f"-netdev user,id=n0,hostfwd=tcp:127.0.0.1:PORT-:{GUEST_PORT}`; busybox nc in the guest",
        f"- {size_mib} MiB each way, {runs} interleaved runs; median (min–max) MiB/s",
        "",
        "| Emulator | host → guest (MiB/s) | guest → host (MiB/s) | → guest / QEMU's | → host / QEMU's |",
        "|---|---:|---:|---:|---:|",
    ]
    qemu = next((e for e in emulators if e.name.startswith("QEMU")), None)
    for emu in emulators:
        ratios = ["", ""]
        if qemu is not None and emu is not qemu:
            ratios = [f"**{statistics.median(emu.to_guest) / statistics.median(qemu.to_guest):.2f}×**",
                      f"**{statistics.median(emu.from_guest) / statistics.median(qemu.from_guest):.2f}×**"]
        lines.append(f"| {emu.name} | {_summary(emu.to_guest)} | {_summary(emu.from_guest)} | "
                     f"{ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=3, help="runs per emulator (default 3)")
    parser.add_argument("--size", type=int, default=16, help="MiB each way per run (default 16)")
    parser.add_argument("--pemu-only", action="store_true", help="do not run QEMU")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a boot or a transfer may take")
    parser.add_argument("--pemu", default=f"{shlex.quote(sys.executable)} -m pemu",
                        help="command that starts pemu (default: this Python's -m pemu)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size < 1:
        parser.error("--runs and --size must be at least 1")
    guest = ensure_guest()
    common = guest_args(guest.kernel, guest.initrd, DEFAULT_APPEND)
    emulators = [Emulator("pemu", [*shlex.split(args.pemu), *common])]
    if not args.pemu_only:
        qemu = ensure_qemu()
        emulators.append(Emulator("QEMU (`-accel tcg`)", [qemu, "-accel", "tcg", *common]))
    vms: dict[str, tuple[GuestProcess, int]] = {}
    try:
        for emu in emulators:
            vms[emu.name] = boot(emu, args.size, args.timeout)
        for run in range(1, args.runs + 1):
            for emu in emulators:
                vm, port = vms[emu.name]
                to_guest, from_guest = one_run(vm, port, args.size << 20, args.timeout)
                emu.to_guest.append(to_guest)
                emu.from_guest.append(from_guest)
                print(f"bench: run {run}/{args.runs} {emu.name}: -> guest {to_guest:.2f} MiB/s, "
                      f"-> host {from_guest:.2f} MiB/s", file=sys.stderr, flush=True)
    except (BenchError, GuestError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        for vm, _port in vms.values():
            vm.kill()
    print(report(emulators, args.runs, args.size, guest.release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
