"""The ISA/platform devices of a real q35 board, saved in one process and
loaded into a second board built by the same command line (the QOM wrappers'
descriptions, the canonical paths, the virtual clock restored first), then
run on: the PIT's IRQ 0, the RTC's time and the HPET counter go on."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_board_wiring import BOARD_ARGS, run_on_board

ARGS = BOARD_ARGS + ["-serial", "null", "-device", "isa-debug-exit", "-device", "pc-testdev",
                     "-chardev", "null,id=dbg", "-device", "isa-debugcon,chardev=dbg"]

MINE = ("isa-i8259", "isa-pit", "isa-pcspk", "mc146818rtc", "i8042", "port92", "ioport80", "isa-serial",
        "isa-debug-exit", "isa-debugcon", "pc-testdev", "hpet", "ioapic", "fw_cfg_io")

COMMON = f"""
from pemu.hw.core.qdev import DeviceState
from pemu.migration.savevm import VMSTATE_TIMERS, clock_state
from pemu.migration.vmstate import vmstate_load_bytes, vmstate_save_bytes

MINE = {MINE!r}

def my_devices():
    found = {{}}
    def walk(obj, path):
        for name, child in obj.children():
            p = path + "/" + name
            if isinstance(child, DeviceState) and child.realized and child.typename in MINE:
                found[p] = child
            walk(child, p)
    walk(vm.qom_root, "")
    return found

def observe():
    io.dispatch_write(0x43, 0x00, 1)                  # latch channel 0
    pit = io.dispatch_read(0x40, 1) | (io.dispatch_read(0x40, 1) << 8)
    rtc = []
    for index in (0x00, 0x02, 0x04, 0x0A, 0x0B, 0x40):
        io.dispatch_write(0x70, index, 1)
        rtc.append(io.dispatch_read(0x71, 1))
    hpet = int.from_bytes(mem.read(0xFED000F0, 8), "little")
    uart = [io.dispatch_read(0x3F8 + r, 1) for r in (1, 3, 4, 5, 7)]
    return dict(pit=pit, rtc=rtc, hpet=hpet, uart=uart, irr=pic_irr(), port92=io.dispatch_read(0x92, 1))
"""

SOURCE = COMMON + """
pit_rate_generator()
io.dispatch_write(0x70, 0x40, 1); io.dispatch_write(0x71, 0x5A, 1)      # a CMOS byte
io.dispatch_write(0x70, 0x0B, 1); io.dispatch_write(0x71, 0x42, 1)      # RTC: PIE, 24 h
mem.write(0xFED00010, (1).to_bytes(8, "little"))                        # HPET enabled
io.dispatch_write(0x3FB, 0x03, 1); io.dispatch_write(0x3FA, 0x07, 1)    # UART 8N1, FIFO
io.dispatch_write(0x3FF, 0xA5, 1)                                       # scratch
io.dispatch_write(0x92, 0x02, 1)
advance(25_000_000)
devices = my_devices()
result["types"] = sorted({d.typename for d in devices.values()})
result["missing"] = sorted(p for p, d in devices.items() if d.klass.vmsd is None)
result["clock"] = vmstate_save_bytes(VMSTATE_TIMERS, clock_state(vm)).hex()
result["devices"] = {p: vmstate_save_bytes(d.klass.vmsd, d).hex() for p, d in devices.items()}
result["seen"] = observe()
"""

DESTINATION = COMMON + """
vmstate_load_bytes(VMSTATE_TIMERS, clock_state(vm), bytes.fromhex(SAVED["clock"]))
devices = my_devices()
assert sorted(devices) == sorted(SAVED["devices"]), (sorted(devices), sorted(SAVED["devices"]))
for path, data in SAVED["devices"].items():
    vmstate_load_bytes(devices[path].klass.vmsd, devices[path], bytes.fromhex(data))
result["resaved"] = {p: vmstate_save_bytes(d.klass.vmsd, d).hex() for p, d in devices.items()}
result["seen"] = observe()
pic_clear_irr()
hpet_before = int.from_bytes(mem.read(0xFED000F0, 8), "little")
advance(10_000_000)
result["irr_after"] = pic_irr()
result["hpet_ticks"] = int.from_bytes(mem.read(0xFED000F0, 8), "little") - hpet_before
"""


def test_legacy_devices_of_a_q35_board_migrate_to_a_second_board(tmp_path: Path) -> None:
    saved = run_on_board(SOURCE, ARGS)
    assert saved["missing"] == []
    assert saved["types"] == sorted(MINE)
    stream = tmp_path / "saved.json"
    stream.write_text(json.dumps(saved))
    loaded = run_on_board(f"SAVED = json.load(open({str(stream)!r}))\n" + DESTINATION, ARGS)
    assert loaded["resaved"] == saved["devices"]
    assert loaded["seen"] == saved["seen"]
    assert saved["seen"]["rtc"][5] == 0x5A and saved["seen"]["uart"][4] == 0xA5
    assert loaded["irr_after"] & 0x01            # the PIT's IRQ 0 came again after the load
    assert loaded["hpet_ticks"] == 1_000_000     # 10 ms of the restored virtual clock at 100 MHz
