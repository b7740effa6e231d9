"""A seeded, bounded fuzzer for the whole q35 board.

It builds the board in-process (``qemu_init([... "-S"])``: no vCPU runs)
and plays the guest: every access goes through the CPU's address spaces,
``cpu.io.dispatch_read/dispatch_write`` and ``cpu.memory.dispatch_*``, the
same entry points the tcg and kvm accelerators call on an ``in``/``out`` or
an MMIO exit.  Surfaces, each run for a number of operations from its own
seeded generator after a system reset:

``pio``         port I/O, mostly at the board's devices' ports
``mmio``        MMIO at the fixed windows (HPET, IOAPIC, APIC, RCBA, VGA, BIOS), and anywhere
``fw_cfg_dma``  fw_cfg DMA descriptors built in guest RAM (or not), started through 0x514/0x518
``pci_config``  configuration space through 0xCF8/0xCFC and through MMCONFIG
``timers``      timer devices programmed and the virtual clock advanced, running their callbacks

After each operation it checks that nothing escaped (an exception, or the
VM stopped in ``internal-error``), that the operation took less than
``--slow-op`` seconds (and a watchdog interrupts one that runs past
``--hang``), and every ``--check-every`` operations that the timer lists,
the process's RSS and the ROM contents are within bounds.  Reset and
shutdown requests a guest can make are carried out (reset) or taken (shutdown)
after each operation, as the main loop does.

    PYTHONPATH=$PWD python3 tests/fuzz/q35_fuzz.py --seed 1 --ops 1000000

The exit status is 1 when something was found; each finding names the seed,
surface and operation number, so ``--surface S --ops N+1`` replays it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

SURFACES = ("pio", "mmio", "fw_cfg_dma", "pci_config", "timers")
RAM_MIB = 128
BOARD_ARGS = ["-machine", "q35", "-m", str(RAM_MIB), "-nodefaults", "-display", "none", "-S"]

# Ports of the board's devices (base, length), after the chipset setup SeaBIOS does.
DEVICE_PORTS = [
    (0x20, 2), (0xA0, 2), (0x4D0, 2),          # 8259s, ELCR
    (0x40, 4), (0x61, 1),                       # 8254, speaker/gate port
    (0x60, 1), (0x64, 1),                       # i8042
    (0x70, 2), (0x80, 1), (0x92, 1),            # RTC, POST port, port 92
    (0x3F8, 8), (0x2F8, 8),                     # UARTs
    (0x510, 12),                                # fw_cfg with DMA
    (0xCF8, 8),                                 # PCI configuration mechanism #1, 0xCF9 reset control
    (0x600, 0x80), (0x700, 0x20), (0xB2, 2),    # ICH9 PM block, SMBus host interface, APM
]
MMIO_WINDOWS = [
    (0xFED00000, 0x400),                        # HPET
    (0xFEC00000, 0x1000),                       # IOAPIC
    (0xFEE00000, 0x1000),                       # local APIC / MSI
    (0xFED1C000, 0x4000),                       # ICH9 RCBA
    (0xA0000, 0x20000),                         # VGA window
    (0xC0000, 0x40000),                         # option ROMs and BIOS below 1M (PAM)
    (0xFFFC0000, 0x40000),                      # BIOS at the top of 4G
    (0xB0000000, 0x100000),                     # MMCONFIG bus 0
]
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF]
DMA_CONTROL_BITS = (0x01, 0x02, 0x04, 0x08, 0x10)   # ERROR READ SKIP SELECT WRITE
PCI_REGS = [0x04, 0x06, 0x0C, 0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30, 0x3C,
            0x40, 0x44, 0x48, 0x4C, 0x54, 0x60, 0x64, 0x68, 0x6B, 0x90, 0x91, 0x95, 0x96,
            0x9D, 0x9E, 0xA0, 0xAC, 0xF0]
MiB = 1 << 20


class OpHang(BaseException):
    """Raised in the fuzzing thread by the watchdog: one operation ran too long."""


@dataclass
class Limits:
    slow_op_s: float = 1.0          # an operation slower than this is a finding
    hang_s: float = 10.0            # ... and one this long is interrupted
    timer_entries: int = 4096       # entries the timer lists may hold
    rss_growth: int = (RAM_MIB + 256) * MiB  # over the RSS after the board is built (all of RAM may be touched)
    check_every: int = 500          # operations between the timer-list/RSS/ROM checks


@dataclass
class Finding:
    kind: str          # exception, internal-error, slow, hang, timer-list, rss, rom
    surface: str
    op_index: int
    op: str
    detail: str
    count: int = 1


@dataclass
class SurfaceResult:
    surface: str
    ops: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    slowest_op: str = ""
    resets: int = 0
    shutdowns: int = 0
    max_timer_entries: int = 0
    max_rss_growth_mib: int = 0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _be32_as_le_value(value: int) -> int:
    """The value an ``out`` must carry so that fw_cfg's big-endian register sees ``value``."""
    return int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "big"), "little")


class Q35Fuzzer:
    """Drives one q35 board; :meth:`run` fuzzes one surface."""

    def __init__(self, seed: int, limits: Limits, dma_length_cap: int | None = None) -> None:
        from pemu.system import runstate, vl
        from pemu.system.runstate import RunState

        self.seed = seed
        self.limits = limits
        self.dma_length_cap = dma_length_cap
        self.vm = vl.qemu_init(BOARD_ARGS)
        # Stopped, not "prelaunch": a contained device fault must be able to move it to internal-error.
        runstate.runstate_set(RunState.PAUSED)
        machine = self.vm.machine
        self.cpu = machine.cpus[0]
        self.io = self.cpu.io
        self.mem = self.cpu.memory
        self.ram_size = machine.ram_size
        self.rom_regions = self._rom_regions()
        self.rom_digest = self._rom_digest()
        self.rss_base = _rss_bytes()
        self.findings: dict[tuple[str, str], Finding] = {}
        self._op_started = 0.0
        self._running = True
        self._hang_armed = False
        signal.signal(signal.SIGUSR1, self._on_hang_signal)
        self._main_ident = threading.get_ident()
        self._watchdog = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)
        self._watchdog.start()

    # -- board state ---------------------------------------------------------------------------
    def _rom_regions(self) -> list[Any]:
        from pemu.system.memory import RegionKind
        from pemu.system.physmem import get_system_memory

        found: dict[int, Any] = {}

        def walk(mr: Any) -> None:
            if mr.kind is RegionKind.ROM:
                found[id(mr)] = mr
            if mr.alias_target is not None:
                walk(mr.alias_target)
            for sub in mr.subregions:
                walk(sub)

        walk(get_system_memory())
        return list(found.values())

    def _rom_digest(self) -> str:
        h = hashlib.sha256()
        for mr in self.rom_regions:
            h.update(mr.name.encode())
            h.update(mr.ram_block.view)
        return h.hexdigest()

    def system_reset(self) -> None:
        from pemu.hw.i386.pc_q35 import q35_direct_boot_chipset_setup
        from pemu.system import vl

        vl.qemu_system_reset(self.vm.machine)
        machine = self.vm.machine
        smb = next((d for d in machine.pcibus.devices if d is not None and d.klass.device_id == 0x2930), None)
        # Put the PM block and the SMBus host interface where SeaBIOS does, so their ports answer.
        q35_direct_boot_chipset_setup(machine.lpc, smb, machine.i8042)

    def _take_requests(self, result: SurfaceResult) -> None:
        from pemu.system import runstate
        from pemu.system.runstate import ShutdownCause

        if runstate.take_shutdown_request() != ShutdownCause.NONE:
            result.shutdowns += 1
        if runstate.take_reset_request() != ShutdownCause.NONE:
            result.resets += 1
            self.system_reset()

    # -- the watchdog --------------------------------------------------------------------------
    def _on_hang_signal(self, signum: int, frame: Any) -> None:
        if self._hang_armed:
            self._hang_armed = False
            raise OpHang()

    def _watch(self) -> None:
        while self._running:
            time.sleep(min(0.5, self.limits.hang_s / 4))
            started = self._op_started
            if self._hang_armed and started and time.monotonic() - started > self.limits.hang_s:
                signal.pthread_kill(self._main_ident, signal.SIGUSR1)

    def close(self) -> None:
        self._running = False

    # -- findings ------------------------------------------------------------------------------
    def _record(self, kind: str, where: str, surface: str, index: int, op: Any, detail: str) -> None:
        key = (kind, where)
        if key in self.findings:
            self.findings[key].count += 1
            return
        finding = Finding(kind, surface, index, repr(op), detail)
        self.findings[key] = finding
        print(f"FINDING {kind} [{surface} #{index}] {finding.op}: {detail}", file=sys.stderr, flush=True)

    @staticmethod
    def _where(exc: BaseException) -> str:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/pemu/" in f.filename]
        last = frames[-1] if frames else None
        return f"{type(exc).__name__} at {last.filename.split('/pemu/')[-1]}:{last.lineno}" if last else type(exc).__name__

    def _periodic_checks(self, result: SurfaceResult, index: int, op: Any) -> None:
        from pemu.util.timer import QEMUClockType, timerlist_entries

        surface = result.surface
        entries = sum(timerlist_entries(clock) for clock in QEMUClockType)
        result.max_timer_entries = max(result.max_timer_entries, entries)
        if entries > self.limits.timer_entries:
            self._record("timer-list", "timer-list", surface, index, op,
                         f"{entries} timer-list entries (limit {self.limits.timer_entries})")
        growth = _rss_bytes() - self.rss_base
        result.max_rss_growth_mib = max(result.max_rss_growth_mib, growth // MiB)
        if growth > self.limits.rss_growth:
            self._record("rss", "rss", surface, index, op,
                         f"RSS grew by {growth // MiB} MiB (limit {self.limits.rss_growth // MiB} MiB)")
        digest = self._rom_digest()
        if digest != self.rom_digest:
            self._record("rom", "rom", surface, index, op, "ROM contents changed")
            self.rom_digest = digest

    # -- one surface ---------------------------------------------------------------------------
    def run(self, surface: str, ops: int, seconds: float) -> SurfaceResult:
        from pemu.system import runstate
        from pemu.system.runstate import RunState

        generator: Callable[[random.Random], Iterator[Any]] = getattr(self, f"_gen_{surface}")
        rng = random.Random(f"{self.seed}:{surface}")
        result = SurfaceResult(surface)
        self.system_reset()
        execute = self._execute
        limits = self.limits
        check_every = limits.check_every
        start = time.monotonic()
        deadline = start + seconds
        index = 0
        op: Any = None
        for index, op in zip(range(ops), generator(rng), strict=False):
            t0 = time.monotonic()
            self._op_started = t0
            self._hang_armed = True
            try:
                execute(op)
            except OpHang:
                self._record("hang", f"hang:{op[0]}", surface, index, op,
                             f"interrupted after {limits.hang_s:.0f} s")
            except Exception as e:  # noqa: BLE001 - the point: nothing may escape
                self._record("exception", self._where(e), surface, index, op, f"{e!r}")
            finally:
                self._hang_armed = False
            t1 = time.monotonic()
            took = t1 - t0
            if took > result.slowest_s:
                result.slowest_s, result.slowest_op = took, repr(op)
            if took > limits.slow_op_s:
                self._record("slow", f"slow:{op[0]}", surface, index, op, f"took {took:.2f} s")
            if runstate.runstate_get() == RunState.INTERNAL_ERROR:
                self._record("internal-error", f"internal-error:{op[0]}", surface, index, op,
                             "the VM stopped in internal-error (a contained device fault)")
                runstate.runstate_set(RunState.PAUSED)
            self._take_requests(result)
            if index % check_every == check_every - 1:
                self._periodic_checks(result, index, op)
            if t1 > deadline:
                break
        self._periodic_checks(result, index, op)
        result.ops = index + 1 if op is not None else 0
        result.seconds = time.monotonic() - start
        return result

    def _execute(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "in":
            self.io.dispatch_read(op[1], op[2])
        elif kind == "out":
            self.io.dispatch_write(op[1], op[3], op[2])
        elif kind == "read":
            self.mem.dispatch_read(op[1], op[2])
        elif kind == "write":
            self.mem.dispatch_write(op[1], op[3], op[2])
        elif kind == "ram":
            self.mem.write(op[1], op[2])
        elif kind == "dma":
            _, desc_addr, desc = op
            self.mem.write(desc_addr, desc)
            self.io.dispatch_write(0x514, _be32_as_le_value(desc_addr >> 32), 4)
            self.io.dispatch_write(0x518, _be32_as_le_value(desc_addr), 4)
        elif kind == "pci":
            _, address, port, size, value = op
            self.io.dispatch_write(0xCF8, address, 4)
            if value is None:
                self.io.dispatch_read(port, size)
            else:
                self.io.dispatch_write(port, value, size)
        elif kind == "clock":
            from pemu.util.timer import QEMU_CLOCK_VIRTUAL, qemu_clock_advance_virtual_time, qemu_clock_get_ns

            qemu_clock_advance_virtual_time(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) + op[1])
        else:
            raise AssertionError(f"unknown operation {op!r}")

    # -- generators ----------------------------------------------------------------------------
    @staticmethod
    def _value(rng: random.Random, size: int) -> int:
        mask = (1 << (8 * size)) - 1
        if rng.random() < 0.3:
            return rng.choice(INTERESTING) & mask
        return rng.getrandbits(8 * size)

    @staticmethod
    def _size(rng: random.Random, sizes: tuple[int, ...] = (1, 2, 4)) -> int:
        return rng.choice(sizes)

    def _gen_pio(self, rng: random.Random) -> Iterator[Any]:
        while True:
            if rng.random() < 0.85:
                base, length = rng.choice(DEVICE_PORTS)
                port = base + rng.randrange(length)
            else:
                port = rng.randrange(0x10000)
            size = self._size(rng)
            if rng.random() < 0.5:
                yield ("in", port, size)
            else:
                yield ("out", port, size, self._value(rng, size))

    def _mmio_address(self, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.8:
            base, length = rng.choice(MMIO_WINDOWS)
            return base + rng.randrange(length)
        if r < 0.9:
            return rng.randrange(1 << 32)
        return rng.randrange(1 << 40)

    def _gen_mmio(self, rng: random.Random) -> Iterator[Any]:
        while True:
            addr = self._mmio_address(rng)
            size = self._size(rng, (1, 2, 4, 8))
            if rng.random() < 0.5:
                yield ("read", addr, size)
            else:
                yield ("write", addr, size, self._value(rng, size))

    def _dma_target(self, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.6:
            return rng.randrange(0x1000, self.ram_size)
        if r < 0.8:
            return self._mmio_address(rng)
        if r < 0.9:
            return self.ram_size - rng.randrange(1, 0x2000)      # across the end of RAM
        return rng.choice([0, 0xFFFFFFF0, 0xFFFFFFFFFFFFFFF0, rng.getrandbits(64)])

    def _dma_length(self, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.4:
            length = rng.randrange(0x100)
        elif r < 0.8:
            length = rng.randrange(0x10000)
        elif r < 0.9:
            length = rng.choice([0x1000, 0x10000, 0x100000, 0x7FFFFFFF, 0xFFFFFFFF])
        else:
            length = rng.getrandbits(32)
        if self.dma_length_cap is not None:
            length = min(length, self.dma_length_cap)
        return length

    def _gen_fw_cfg_dma(self, rng: random.Random) -> Iterator[Any]:
        while True:
            r = rng.random()
            if r < 0.15:
                yield ("out", 0x510, 2, rng.choice([rng.randrange(0x40), 0x20 + rng.randrange(0x20),
                                                   0x8000 + rng.randrange(4), rng.getrandbits(16)]))
                continue
            if r < 0.3:
                yield ("in", 0x511, 1)
                continue
            control = 0
            for bit in DMA_CONTROL_BITS:
                if rng.random() < 0.35:
                    control |= bit
            key = rng.choice([rng.randrange(0x40), 0x19, 0x20 + rng.randrange(0x20), rng.getrandbits(16)])
            control |= key << 16
            desc = struct.pack(">IIQ", control, self._dma_length(rng), self._dma_target(rng))
            if rng.random() < 0.85:
                desc_addr = rng.randrange(0x1000, self.ram_size - 16) & ~rng.choice([0, 0xF])
            else:
                desc_addr = self._dma_target(rng)
            yield ("dma", desc_addr, desc)

    def _gen_pci_config(self, rng: random.Random) -> Iterator[Any]:
        while True:
            bus = 0 if rng.random() < 0.9 else rng.randrange(256)
            dev = rng.choice([0, 0x1F, 0x1F, rng.randrange(32)])
            fn = rng.choice([0, 3, rng.randrange(8)])
            reg = rng.choice(PCI_REGS) + rng.randrange(4) if rng.random() < 0.7 else rng.randrange(0x1000)
            size = self._size(rng)
            value = None if rng.random() < 0.4 else self._value(rng, size)
            if rng.random() < 0.5:
                address = 0x80000000 | (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xFC)
                if rng.random() < 0.05:
                    address = rng.getrandbits(32)
                yield ("pci", address, 0xCFC + (reg & 3), size, value)
            else:
                addr = 0xB0000000 + ((bus << 20) | (dev << 15) | (fn << 12) | reg)
                yield ("read", addr, size) if value is None else ("write", addr, size, value)

    def _gen_timers(self, rng: random.Random) -> Iterator[Any]:
        hpet = 0xFED00000
        while True:
            r = rng.random()
            if r < 0.35:
                # Log-uniform from 1 us to 10 ms, now and then up to 100 ms.
                top = 8 if rng.random() < 0.05 else 7
                yield ("clock", int(10 ** rng.uniform(3, top)))
            elif r < 0.6:
                timer = rng.randrange(4)
                reg = rng.choice([0x010, 0x020, 0x0F0, 0x0F4, 0x100 + 0x20 * timer, 0x108 + 0x20 * timer,
                                  0x10C + 0x20 * timer, 0x110 + 0x20 * timer])
                if rng.random() < 0.3:
                    yield ("read", hpet + reg, 4)
                else:
                    value = rng.choice([rng.randrange(0x10), 0x4C, 0x4E, 0x144, rng.randrange(100_000),
                                        rng.getrandbits(32)])
                    yield ("write", hpet + reg, 4, value)
            elif r < 0.75:
                port = rng.choice([0x40, 0x42, 0x43, 0x43, 0x61])
                value = rng.choice([0x34, 0x36, 0x30, 0xB6, 0xB0, 0x00, 0xC2, 0xE2,
                                    rng.randrange(4), rng.getrandbits(8)])
                yield ("out", port, 1, value)
            elif r < 0.9:
                index = rng.choice([0x0A, 0x0B, 0x0C, 0x01, 0x03, 0x05, rng.randrange(0x80)])
                yield ("out", 0x70, 1, index)
                if rng.random() < 0.5:
                    yield ("in", 0x71, 1)
                else:
                    yield ("out", 0x71, 1, rng.getrandbits(8))
            else:
                base = rng.choice([0x3F8, 0x2F8])
                yield ("out", base + rng.randrange(8), 1, rng.getrandbits(8))


def run(seed: int, surfaces: list[str], ops: int, seconds: float, limits: Limits,
        dma_length_cap: int | None) -> tuple[list[SurfaceResult], list[Finding]]:
    fuzzer = Q35Fuzzer(seed, limits, dma_length_cap)
    try:
        results = [fuzzer.run(surface, ops, seconds) for surface in surfaces]
    finally:
        fuzzer.close()
    return results, list(fuzzer.findings.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ops", type=int, default=10_000, help="operations per surface (default 10000)")
    p.add_argument("--time", type=float, default=math.inf, metavar="S", help="seconds per surface at most")
    p.add_argument("--surface", action="append", choices=SURFACES, help="fuzz only this surface (repeatable)")
    p.add_argument("--slow-op", type=float, default=Limits.slow_op_s, metavar="S")
    p.add_argument("--hang", type=float, default=Limits.hang_s, metavar="S")
    p.add_argument("--timer-entries", type=int, default=Limits.timer_entries, metavar="N")
    p.add_argument("--rss-growth", type=int, default=Limits.rss_growth // MiB, metavar="MIB")
    p.add_argument("--check-every", type=int, default=Limits.check_every, metavar="N")
    p.add_argument("--dma-length-cap", type=int, default=None, metavar="BYTES",
                   help="cap the fw_cfg DMA lengths generated (default: none, lengths up to 4 GiB)")
    p.add_argument("--json", metavar="FILE", help="write the results and findings as JSON")
    args = p.parse_args(argv)
    limits = Limits(slow_op_s=args.slow_op, hang_s=args.hang, timer_entries=args.timer_entries,
                    rss_growth=args.rss_growth * MiB, check_every=max(1, args.check_every))
    surfaces = args.surface or list(SURFACES)
    results, findings = run(args.seed, surfaces, args.ops, args.time, limits, args.dma_length_cap)
    print(f"q35 fuzz, seed {args.seed}")
    print(f"{'surface':<12} {'ops':>10} {'seconds':>9} {'ops/s':>9} {'slowest op (s)':>15} {'resets':>7}"
          f" {'timer entries':>14} {'RSS +MiB':>9}")
    for r in results:
        print(f"{r.surface:<12} {r.ops:>10} {r.seconds:>9.1f} {r.ops_per_s:>9.0f} {r.slowest_s:>15.3f} {r.resets:>7}"
              f" {r.max_timer_entries:>14} {r.max_rss_growth_mib:>9}")
    print(f"findings: {len(findings)}")
    for f in findings:
        print(f"  {f.kind} [{f.surface} #{f.op_index}] x{f.count}: {f.detail}\n    op: {f.op}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"seed": args.seed,
                       "results": [dict(asdict(r), ops_per_s=r.ops_per_s) for r in results],
                       "findings": [asdict(f) for f in findings]}, out, indent=2)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
