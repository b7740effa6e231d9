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
``ahci``        the ICH9 AHCI (a raw disk on port 0, a CD-ROM on port 2): its registers, and command
                lists, command tables and PRD tables built in guest RAM (or not), with the block
                layer's completions run as the main loop runs them
``e1000e``      the e1000e NIC: its BARs mapped and bus mastering on, registers written (rings
                placed in RAM or anywhere), descriptors written into RAM, frames received,
                MSI-X table and I/O window poked, the clock advanced

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

SURFACES = ("pio", "mmio", "fw_cfg_dma", "pci_config", "timers", "testdevs", "ahci", "e1000e")
RAM_MIB = 128
# QEMU's test devices are on the board too (the "testdevs" surface maps their BARs
# where EDU_BAR, TESTDEV_MMIO_BAR and TESTDEV_IO_BAR say); the debug console sits at
# SeaBIOS's 0x402, away from pc-testdev's ports 0xE0-0xEB.
BOARD_ARGS = ["-machine", "q35", "-m", str(RAM_MIB), "-nodefaults", "-display", "none", "-S",
              "-device", "edu,addr=5", "-device", "pci-testdev,addr=6", "-device", "pc-testdev",
              "-chardev", "null,id=dbg", "-device", "isa-debugcon,chardev=dbg,iobase=0x402",
              "-device", "e1000e,id=nic0"]
EDU_SLOT, TESTDEV_SLOT = 5, 6
EDU_BAR = 0xC0000000                            # 1 MiB
TESTDEV_MMIO_BAR = 0xC0100000                   # 4 KiB
TESTDEV_IO_BAR = 0xC000                         # 256 ports
PC_TESTDEV_IOMEM = 0xFF000000                   # 64 KiB
# Where the fuzzer maps the e1000e's BARs (free PCI space below the IOAPIC) and its ring area in RAM.
E1000E_MMIO = 0xFE000000
E1000E_MSIX = 0xFE020000
E1000E_IO = 0xD000  # pci-testdev's I/O BAR has 0xC000
E1000E_RAM = 0x100000
E1000E_REGS = [0x0000, 0x0008, 0x0010, 0x0014, 0x0018, 0x0020, 0x00C0, 0x00C4, 0x00C8, 0x00D0, 0x00D8,
               0x00DC, 0x00E0, 0x00E4, 0x0100, 0x0400, 0x1680, 0x1684, 0x1690, 0x2170, 0x2800, 0x2804,
               0x2808, 0x2810, 0x2818, 0x2900, 0x2908, 0x2910, 0x2918, 0x3800, 0x3804, 0x3808, 0x3810,
               0x3818, 0x3900, 0x3908, 0x3910, 0x3918, 0x4000, 0x4088, 0x408C, 0x40F8, 0x5000, 0x5008,
               0x5200, 0x5400, 0x5404, 0x5600, 0x0038, 0x0F00, 0x1010]

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
    (0xE0, 12), (0x2000, 24), (0x402, 1),       # pc-testdev, isa-debugcon
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
    (PC_TESTDEV_IOMEM, 0x10000),                # pc-testdev's memory window
]
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF]
DMA_CONTROL_BITS = (0x01, 0x02, 0x04, 0x08, 0x10)   # ERROR READ SKIP SELECT WRITE
PCI_REGS = [0x04, 0x06, 0x0C, 0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30, 0x3C,
            0x40, 0x44, 0x48, 0x4C, 0x54, 0x60, 0x64, 0x68, 0x6B, 0x90, 0x91, 0x95, 0x96,
            0x9D, 0x9E, 0xA0, 0xAC, 0xF0]
MiB = 1 << 20
AHCI_ABAR = 0xFEBF0000
AHCI_CONFIG = 0x80000000 | (0x1F << 11) | (2 << 8)   # 00:1f.2 through 0xCF8
AHCI_LISTS = 0x100000                                # each port's command list, FIS area and tables (64 KiB)
ATA_COMMANDS = [0xEC, 0xA1, 0x25, 0x35, 0xC8, 0xCA, 0x20, 0x24, 0x30, 0x34, 0xA0, 0xA0, 0xA0, 0xE7, 0xEA, 0xEF,
                0x40, 0x42, 0xE0, 0xE1, 0xE5, 0x91, 0x60, 0x61, 0xB0, 0x08, 0x00]
ATAPI_OPCODES = [0x00, 0x03, 0x12, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2B, 0x43, 0x46, 0x4A, 0x5A, 0xA8, 0xBB, 0xBD]


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
        import tempfile

        # Drives for the AHCI surface: a raw disk on port 0, a CD-ROM image on port 2 (deleted at close).
        self.tmpdir = tempfile.TemporaryDirectory(prefix="pemu-fuzz-")
        disk, cd = (os.path.join(self.tmpdir.name, name) for name in ("disk.raw", "cd.iso"))
        for path, size in ((disk, 4 * MiB), (cd, 1 * MiB)):
            with open(path, "wb") as f:
                f.truncate(size)
        self.vm = vl.qemu_init([*BOARD_ARGS, "-drive", f"file={disk},format=raw,index=0",
                                "-drive", f"file={cd},format=raw,media=cdrom,index=2"])
        # Stopped, not "prelaunch": a contained device fault must be able to move it to internal-error.
        runstate.runstate_set(RunState.PAUSED)
        machine = self.vm.machine
        self.cpu = machine.cpus[0]
        self.io = self.cpu.io
        self.mem = self.cpu.memory
        self.ram_size = machine.ram_size
        self.e1000e = machine.child("peripheral").child("nic0")
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
        self.tmpdir.cleanup()

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
        elif kind == "complete":
            from pemu.util.main_loop import main_loop

            for drive in self.vm.machine.block_devices.drives:
                drive.blk.drain()
            main_loop().run_once(0)
        elif kind == "rx":
            from pemu.net.net import qemu_receive_packet

            qemu_receive_packet(self.e1000e.nic, op[1])
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

    @staticmethod
    def _config_write(slot: int, reg: int, value: int, size: int = 4) -> tuple[Any, ...]:
        return ("pci", 0x80000000 | (slot << 11) | (reg & 0xFC), 0xCFC + (reg & 3), size, value)

    def _gen_testdevs(self, rng: random.Random) -> Iterator[Any]:
        """edu, pci-testdev, pc-testdev and isa-debugcon: BARs mapped, bus
        mastering on, then their registers hammered (edu's DMA with guest-chosen
        addresses and counts, fired by advancing the clock past its 100 ms)."""
        def map_bars() -> Iterator[Any]:
            yield self._config_write(EDU_SLOT, 0x10, EDU_BAR)
            yield self._config_write(EDU_SLOT, 0x04, 0x0006, 2)               # memory, bus master
            yield self._config_write(TESTDEV_SLOT, 0x10, TESTDEV_MMIO_BAR)
            yield self._config_write(TESTDEV_SLOT, 0x14, TESTDEV_IO_BAR | 1)
            yield self._config_write(TESTDEV_SLOT, 0x04, 0x0003, 2)

        yield from map_bars()
        edu_regs = [0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64, 0x80, 0x88, 0x90, 0x98]
        while True:
            r = rng.random()
            if r < 0.02:
                yield from map_bars()                                             # after a reset
            elif r < 0.35:
                reg = rng.choice(edu_regs) if rng.random() < 0.9 else rng.randrange(0x100000)
                size = self._size(rng, (4, 4, 8, 1, 2))
                if reg == 0x98 and rng.random() < 0.7:
                    value = rng.choice([1, 3, 5, 7]) | (rng.getrandbits(8) & ~7)
                elif reg in (0x80, 0x88):
                    value = rng.choice([0x40000 + rng.randrange(0x1000), self._dma_target(rng)])
                elif reg == 0x90:
                    value = self._dma_length(rng)
                else:
                    value = self._value(rng, size)
                yield ("read", EDU_BAR + reg, size) if rng.random() < 0.3 else ("write", EDU_BAR + reg, size, value)
            elif r < 0.45:
                yield ("clock", rng.choice([1000, 50_000_000, 100_000_000, 150_000_000]))
            elif r < 0.6:
                offset = rng.choice([0, 0, 131, 132, 133, 2048, 2049, 2050, rng.randrange(0x1000)])
                size = self._size(rng)
                if rng.random() < 0.5:
                    addr = TESTDEV_MMIO_BAR + offset
                    yield ("read", addr, size) if rng.random() < 0.4 else ("write", addr, size,
                                                                          rng.choice([0, 1, 2, 0xFA, 0xCE]))
                else:
                    port = TESTDEV_IO_BAR + (offset & 0xFF)
                    yield ("in", port, size) if rng.random() < 0.4 else ("out", port, size,
                                                                         rng.choice([0, 1, 2, 0xFA, 0xCE]))
            elif r < 0.8:
                port = rng.choice([0xE0 + rng.randrange(12), 0x2000 + rng.randrange(24), 0x402])
                size = self._size(rng)
                yield ("in", port, size) if rng.random() < 0.3 else ("out", port, size, self._value(rng, size))
            else:
                addr = PC_TESTDEV_IOMEM + rng.randrange(0x10000)
                size = self._size(rng, (1, 2, 4, 8))
                yield ("read", addr, size) if rng.random() < 0.5 else ("write", addr, size, self._value(rng, size))

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

    def _gen_ahci(self, rng: random.Random) -> Iterator[Any]:
        abar = AHCI_ABAR

        def setup() -> Iterator[Any]:
            yield ("pci", AHCI_CONFIG | 0x24, 0xCFC, 4, abar)                    # BAR5: ABAR
            yield ("pci", AHCI_CONFIG | 0x04, 0xCFC, 2, 0x0006)                  # memory decoding, bus master
            if rng.random() < 0.5:
                yield ("pci", AHCI_CONFIG | 0x84, 0xCFC, 4, 0xFEE00000)          # MSI address, data, enable
                yield ("pci", AHCI_CONFIG | 0x8C, 0xCFC, 2, 0x41)
                yield ("pci", AHCI_CONFIG | 0x80, 0xCFE, 2, 1)

        def bring_up(port: int) -> Iterator[Any]:
            preg = abar + 0x100 + port * 0x80
            area = AHCI_LISTS + port * 0x10000
            yield ("write", abar + 0x04, 4, 0x80000002)
            yield ("write", preg + 0x18, 4, 0x16)
            yield ("write", preg + 0x00, 4, area)
            yield ("write", preg + 0x04, 4, 0)
            yield ("write", preg + 0x08, 4, area + 0x400)
            yield ("write", preg + 0x0C, 4, 0)
            yield ("write", preg + 0x14, 4, 0xFFFFFFFF)
            yield ("write", preg + 0x18, 4, 0x17)

        def command(port: int) -> Iterator[Any]:
            area = AHCI_LISTS + port * 0x10000
            slot = rng.randrange(32)
            table = area + 0x1000 + slot * 0x400 if rng.random() < 0.9 else self._dma_target(rng) & ~0x7F
            prdtl = rng.choice([0, 1, 1, 2, 3, 8, 56, rng.randrange(0x10000), 0xFFFF])
            cfl = 5 if rng.random() < 0.9 else rng.randrange(32)
            opts = cfl | (rng.getrandbits(11) & 0x7E0 if rng.random() < 0.2 else 0) | (prdtl << 16)
            yield ("ram", area + slot * 32, struct.pack("<IIQ16x", opts, 0, table))
            fis = bytearray(64)
            fis[0] = 0x27 if rng.random() < 0.9 else rng.getrandbits(8)
            fis[1] = 0x80 if rng.random() < 0.9 else rng.getrandbits(8)
            fis[2] = rng.choice(ATA_COMMANDS) if rng.random() < 0.9 else rng.getrandbits(8)
            fis[3] = rng.choice([0, 1, 2, 3, 0x82, rng.getrandbits(8)])
            lba = rng.randrange(8192) if rng.random() < 0.8 else rng.getrandbits(48)
            fis[4:7] = (lba & 0xFFFFFF).to_bytes(3, "little")
            fis[7] = 0x40
            fis[8:11] = (lba >> 24).to_bytes(3, "little")
            fis[12:14] = rng.choice([1, 2, 8, 0, 0x80, rng.getrandbits(16)]).to_bytes(2, "little")
            fis[15] = rng.choice([0, 0, 0, 4, rng.getrandbits(8)])
            cdb = bytearray(rng.getrandbits(8) for _ in range(16))
            cdb[0] = rng.choice(ATAPI_OPCODES) if rng.random() < 0.9 else cdb[0]
            if rng.random() < 0.6:
                cdb[2:6] = rng.randrange(600).to_bytes(4, "big")
                cdb[6:10] = bytes((0, 0, rng.randrange(4), rng.getrandbits(8)))
            fis[0x40:0x50] = cdb
            prds = b""
            for _ in range(min(prdtl, 8)):
                addr = rng.randrange(0x200000, self.ram_size) if rng.random() < 0.8 else self._dma_target(rng)
                length = rng.choice([512, 2048, 4096, 2, 0x10000, rng.randrange(1 << 22)])
                prds += struct.pack("<QII", addr, 0, (length - 1) | (rng.getrandbits(1) << 31))
            yield ("ram", table, bytes(fis) + bytes(0x80 - len(fis)) + prds)
            yield ("write", abar + 0x100 + port * 0x80 + 0x38, 4, 1 << slot if rng.random() < 0.9 else
                   rng.getrandbits(32))

        yield from setup()
        while True:
            r = rng.random()
            port = rng.choice([0, 0, 2, 2, rng.randrange(6)])
            if r < 0.02:
                yield from setup()
            elif r < 0.15:
                yield from bring_up(port)
            elif r < 0.45:
                yield from command(port)
            elif r < 0.6:
                yield ("complete",)
            elif r < 0.85:
                if rng.random() < 0.7:
                    reg = abar + 0x100 + port * 0x80 + rng.choice([0, 4, 8, 0xC, 0x10, 0x14, 0x18, 0x2C, 0x30,
                                                                   0x34, 0x38, rng.randrange(0x80)])
                else:
                    reg = abar + rng.choice([0, 4, 8, 0xC, 0x10, rng.randrange(0x1000)])
                size = self._size(rng, (4, 4, 4, 1, 2, 8))
                yield ("write", reg, size, self._value(rng, size))
            else:
                yield ("read", abar + rng.randrange(0x1000), self._size(rng, (1, 2, 4, 8)))


    def _gen_e1000e(self, rng: random.Random) -> Iterator[Any]:
        slot = self.e1000e.devfn >> 3
        cfg = 0x80000000 | (slot << 11)
        # Map the BARs, enable decoding and bus mastering (reset undid it), enable MSI-X half the time.
        for reg, value in ((0x10, E1000E_MMIO), (0x1C, E1000E_MSIX), (0x18, E1000E_IO | 1), (0x04, 0x7)):
            yield ("pci", cfg | reg, 0xCFC, 4, value)
        if rng.random() < 0.5:
            yield ("pci", cfg | 0xE0, 0xCFE, 2, 0x8000)
        ram = E1000E_RAM
        while True:
            r = rng.random()
            if r < 0.35:
                reg = rng.choice(E1000E_REGS) if rng.random() < 0.9 else rng.randrange(0x20000) & ~3
                low = reg & 0xFF
                if reg in (0x2800, 0x2900, 0x3800, 0x3900):
                    value = rng.choice([ram, ram + 0x1000, rng.randrange(self.ram_size), rng.getrandbits(32)])
                elif reg in (0x2808, 0x2908, 0x3808, 0x3908):
                    value = rng.choice([128, 256, 4096, 0x10000, rng.getrandbits(20)])
                elif low in (0x10, 0x18) and 0x2800 <= reg < 0x4000:
                    value = rng.choice([0, 1, 7, 15, 255, rng.getrandbits(16), rng.getrandbits(32)])
                elif reg == 0x0000:
                    value = rng.choice([0x40000041, 0x40000040, 0x04000000, rng.getrandbits(32)])
                elif reg == 0x0100:
                    value = rng.choice([0x0400801E, 0x0400800A, 0x04008002 | (3 << 16), 0x2, 0x802, rng.getrandbits(32)])
                elif reg == 0x0400:
                    value = rng.choice([0x2, 0x3103F0FA, rng.getrandbits(32)])
                else:
                    value = self._value(rng, 4)
                yield ("write", E1000E_MMIO + reg, 4, value)
            elif r < 0.45:
                reg = rng.choice(E1000E_REGS)
                yield ("read", E1000E_MMIO + reg, rng.choice((4, 4, 4, 2, 1, 8)))
            elif r < 0.7:
                index = rng.randrange(256)
                buf = rng.choice([ram + 0x10000 + rng.randrange(0x10000), rng.randrange(self.ram_size),
                                  self.ram_size - rng.randrange(1, 0x100), rng.getrandbits(64)])
                # DCMD (EOP IFCS IC/TSE RS DEXT VLE IDE), DTYP (context, data or reserved), length.
                flags = rng.choice([0x0B, 0x2B, 0x2F, 0x4B, 0x6B, 0x6F, rng.getrandbits(8)]) << 24
                dtyp = rng.choice([0, 1, rng.randrange(16)]) << 20
                length = rng.choice([0, 1, 8, 11, 60, 1514, rng.getrandbits(16), rng.getrandbits(20)])
                cmd = flags | dtyp | length if rng.random() < 0.9 else rng.getrandbits(32)
                if rng.random() < 0.3:  # a context descriptor with TSO
                    buf = 14 | (24 << 8) | (33 << 16) | (34 << 32) | (50 << 40)
                    cmd = 0x27000000 | rng.randrange(0x10000)
                upper = rng.choice([0x0300, rng.getrandbits(32), (rng.randrange(54, 80) << 8) | (rng.randrange(1, 2000) << 16)])
                base = ram + rng.choice([0, 0x1000]) + 16 * index
                yield ("ram", base, struct.pack("<QII", buf, cmd, upper))
            elif r < 0.8:
                dest = rng.choice([bytes.fromhex("525400123456"), b"\xff" * 6, bytes.fromhex("01005e000001"),
                                   rng.randbytes(6)])
                ethertype = rng.choice([b"\x08\x00", b"\x81\x00", b"\x86\xdd"])
                length = rng.choice([0, 10, 60, 1500, 2048, 9000, rng.randrange(0x10000)])
                yield ("rx", dest + rng.randbytes(6) + ethertype + rng.randbytes(length))
            elif r < 0.85:
                yield ("clock", int(10 ** rng.uniform(3, 6)))
            elif r < 0.93:
                offset = rng.randrange(0x60) & ~3 if rng.random() < 0.8 else 0x2000 + rng.randrange(8)
                if rng.random() < 0.5:
                    yield ("write", E1000E_MSIX + offset, 4, rng.choice([0xFEE00000, 0x30, 0, 1, rng.getrandbits(32)]))
                else:
                    yield ("read", E1000E_MSIX + offset, 4)
            else:
                port = E1000E_IO + rng.choice([0, 4, rng.randrange(0x20)])
                yield ("out", port, 4, rng.choice(E1000E_REGS + [rng.getrandbits(32)]))
                yield ("in", E1000E_IO + 4, 4)


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
