"""Wiring between devices that only the whole q35 board shows: each test
builds the board with ``qemu_init([... "-S"])`` in a fresh interpreter (the
type registry and the clocks are per process) and drives it through the
CPU's address spaces, with the virtual clock advanced by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BOARD_ARGS = ["-machine", "q35", "-m", "128", "-nodefaults", "-display", "none", "-S"]

PRELUDE = """
import json, time
from pemu.system import cpus, runstate, vl
from pemu.util import timer

vm = vl.qemu_init(ARGS)
cpu = vm.machine.cpus[0]
io, mem = cpu.io, cpu.memory
result = {}

def advance(ns):
    return timer.qemu_clock_advance_virtual_time(timer.qemu_clock_get_ns(timer.QEMU_CLOCK_VIRTUAL) + ns)

def pic_irr():
    io.dispatch_write(0x20, 0x0A, 1)  # OCW3: read IRR
    return io.dispatch_read(0x20, 1)

def pit_rate_generator():
    io.dispatch_write(0x43, 0x34, 1)  # channel 0, lobyte/hibyte, mode 2
    io.dispatch_write(0x40, 0x9C, 1)  # 11932: 100 Hz
    io.dispatch_write(0x40, 0x2E, 1)

def pic_clear_irr():
    io.dispatch_write(0x20, 0x11, 1)  # ICW1..4: re-initialise the master, IRR cleared
    io.dispatch_write(0x21, 0x08, 1)
    io.dispatch_write(0x21, 0x04, 1)
    io.dispatch_write(0x21, 0x01, 1)
"""


def run_on_board(body: str, args: list[str] = BOARD_ARGS) -> dict[str, Any]:
    """Run ``body`` after the board is built; it fills ``result``, returned here."""
    script = f"ARGS = {args!r}\n" + PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_virtual_clock_stands_still_until_cont_and_while_stopped() -> None:
    result = run_on_board("""
        from pemu.system import cpus
        from pemu.util.timer import QEMU_CLOCK_VIRTUAL, qemu_clock_get_ns
        cpus.resume_all_vcpus = cpus.pause_all_vcpus = lambda: None  # the clock only, no guest code
        t0 = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)
        time.sleep(0.2)
        result["prelaunch"] = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) - t0
        cpus.vm_start()                                     # cont
        t1 = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)
        time.sleep(0.2)
        result["running"] = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) - t1
        cpus.vm_stop()                                      # stop
        t2 = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)
        time.sleep(0.2)
        result["paused"] = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) - t2
        result["state"] = runstate.runstate_get().value
    """)
    assert result["prelaunch"] == 0, "the virtual clock (and the TSC under tcg) ran before cont"
    assert result["running"] >= 150_000_000
    assert result["paused"] == 0
    assert result["state"] == "paused"


def test_hpet_legacy_replacement_silences_the_pit() -> None:
    result = run_on_board("""
        pit_rate_generator()
        advance(50_000_000)
        result["pit_alone"] = pic_irr() & 1
        mem.dispatch_write(0xFED00010, 0x3, 4)   # HPET: ENABLE_CNF | LEG_RT_CNF, no timer enabled
        pic_clear_irr()
        advance(50_000_000)
        result["legacy"] = pic_irr() & 1
        mem.dispatch_write(0xFED00010, 0x1, 4)   # leave legacy replacement: the PIT drives IRQ 0 again
        pic_clear_irr()
        advance(50_000_000)
        result["after_legacy"] = pic_irr() & 1
    """)
    assert result["pit_alone"] == 1, "the PIT must raise IRQ 0 on its own"
    assert result["legacy"] == 0, "in legacy replacement mode IRQ 0 belongs to HPET timer 0"
    assert result["after_legacy"] == 1


def test_hpet_timer0_drives_irq0_in_legacy_mode() -> None:
    result = run_on_board("""
        mem.dispatch_write(0xFED00108, 1_000_000, 4)   # timer 0 comparator: 10 ms at 100 MHz
        mem.dispatch_write(0xFED0010C, 0, 4)
        mem.dispatch_write(0xFED00100, 0x4, 4)         # timer 0: interrupt enabled, edge, one-shot
        mem.dispatch_write(0xFED00010, 0x3, 4)
        pic_clear_irr()
        advance(20_000_000)
        result["irq0"] = pic_irr() & 1
    """)
    assert result["irq0"] == 1


def test_spd_eeproms_answer_on_the_smbus() -> None:
    result = run_on_board("""
        smb = io_base = 0x700
        lpc_smb = [d for d in vm.machine.pcibus.devices if d is not None and d.klass.device_id == 0x2930][0]
        from pemu.hw.i2c.smbus_ich9 import ich9_smb_direct_boot_setup
        ich9_smb_direct_boot_setup(lpc_smb)
        def xfer(addr, cmd, read=True, command=0x08, data0=0):
            io.dispatch_write(io_base + 0x00, 0xFF, 1)          # clear the status
            io.dispatch_write(io_base + 0x04, (addr << 1) | int(read), 1)
            io.dispatch_write(io_base + 0x03, cmd, 1)
            io.dispatch_write(io_base + 0x05, data0, 1)
            io.dispatch_write(io_base + 0x02, 0x40 | command, 1)  # START, BYTE_DATA
            return io.dispatch_read(io_base + 0x00, 1) & 0x1F, io.dispatch_read(io_base + 0x05, 1)
        result["present"] = [xfer(a, 0)[0] for a in range(0x50, 0x58)]
        result["absent"] = [xfer(a, 0)[0] for a in (0x48, 0x58, 0x60)]
        result["read0"] = xfer(0x50, 0x10)[1]
        xfer(0x53, 0x10, read=False, data0=0xA5)
        result["written"] = xfer(0x53, 0x10)[1]
        result["other"] = xfer(0x54, 0x10)[1]
    """)
    assert result["present"] == [0x02] * 8, "INTR: each of 0x50-0x57 acknowledges"
    assert result["absent"] == [0x04] * 3, "DEV_ERR: nothing else is on the bus"
    assert result["read0"] == 0x00, "QEMU's q35 EEPROMs are empty"
    assert result["written"] == 0xA5
    assert result["other"] == 0x00


def test_block_resize_reaches_the_ahci_disk(tmp_path: Path) -> None:
    """block_resize grows the raw image, and the disk on ide.0 reports the new
    size in IDENTIFY's LBA48 sector count (QEMU's ide_resize_cb)."""
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 20))
    result = run_on_board("""
        import struct
        from pemu.monitor.qmp_cmds_backends import qmp_block_resize
        from pemu.qapi.error import QMPError

        drive = vm.machine.block_devices.drives[0]
        ahci = vm.machine.pcibus.find_device((0x1F << 3) | 2)
        hd = ahci.ahci.ports[0].ide
        result["before"] = hd.nb_sectors
        qmp_block_resize(device=drive.id, size=3 << 20)
        result["after"] = hd.nb_sectors
        result["identify"] = struct.unpack_from("<Q", hd.identify(), 200)[0]
        errors = []
        for kwargs in ({"device": "nope", "size": 1}, {"device": drive.id, "size": -1}, {"size": 1}):
            try:
                qmp_block_resize(**kwargs)
            except QMPError as e:
                errors.append(e.desc)
        result["errors"] = errors
    """, [*BOARD_ARGS, "-drive", f"file={image},format=raw,if=ide,index=0"])
    assert result["before"] == 2048 and result["after"] == 6144 and result["identify"] == 6144
    assert image.stat().st_size == 3 << 20
    assert result["errors"] == ["Cannot find device='nope' nor node-name=''", "Parameter 'size' expects a >0 size",
                                "Cannot find device='' nor node-name=''"]
