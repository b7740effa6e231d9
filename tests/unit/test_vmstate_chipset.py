"""The q35 chipset saved on one board and loaded into a fresh second board
(no CPU runs): q35-pcihost, the MCH (PAM, SMRAM, PCIEXBAR, TOLUD), the
ICH9 LPC (PIRQ routing, PM block, RCRB, SMI_EN, the ACPI PM registers and
timer) and the ICH9 SMBus with its SPD EEPROMs.  After the load the
registers read through config space and port I/O, and the memory and I/O
maps, are the source's; the devices then keep working; streams with
values no guest could have written are refused."""

from __future__ import annotations

from tests.unit.vmstate_pci_helpers import BOARD_ARGS, run_two_boards

CHIPSET = ["q35-pcihost", "mch", "ICH9-LPC", "ICH9-SMB"]

FIRMWARE = """
MCH, LPC, SMB = 0x00, 0xF8, 0xFB
CHIPSET = ["q35-pcihost", "mch", "ICH9-LPC", "ICH9-SMB"]
on(src)
# MCH: BIOS area RAM, 0xC0000 read-only RAM, 0xC4000 RAM; SMRAM open; MMCONFIG at 0xB0000000 (256 buses).
cfg_write(src, MCH, 0x90, 0x30, 1)
cfg_write(src, MCH, 0x91, 0x31, 1)
cfg_write(src, MCH, 0x9D, 0x4A, 1)
cfg_write(src, MCH, 0x60, 0xB0000001, 4)
# LPC: PM block at 0x600 with ACPI on, SCI on IRQ 9, PIRQA-D -> 10/11, RCRB at 0xFED1C000.
cfg_write(src, LPC, 0x40, 0x601, 4)
cfg_write(src, LPC, 0x44, 0x80, 1)
cfg_write(src, LPC, 0x60, 0x0B0A0B0A, 4)
cfg_write(src, LPC, 0xF0, 0xFED1C001, 4)
mem(src).dispatch_write(0xFED1C000 + 0x3400, 0x12345678, 4)     # a chipset configuration register
io(src).dispatch_write(0x630, 0x61, 4)                         # SMI_EN
io(src).dispatch_write(0x602, 0x0101, 2)                       # PM1_EN: TMR_EN | PWRBTN_EN
io(src).dispatch_write(0x62C, 0x02, 1)                         # GPE0_EN bit 1
find(src, "ICH9-LPC").pm.power_button()                        # PWRBTN_STS: the SCI goes up
# SMBus at 0x700, host interface on, interrupts on; write 0xA5 at 0x10 of the EEPROM at 0x50.
cfg_write(src, SMB, 0x20, 0x701, 4)
cfg_write(src, SMB, 0x40, 0x01, 1)
cfg_write(src, SMB, 0x04, 0x0001, 2)
for off, value in ((0x04, 0x50 << 1), (0x03, 0x10), (0x05, 0xA5), (0x02, 0x40 | (2 << 2) | 0x01)):
    io(src).dispatch_write(0x700 + off, value, 1)
advance(src, 12_345_678)
io(src).dispatch_write(0xCF8, 0x8000F840, 4)                  # CONFIG_ADDRESS left pointing at PMBASE
"""


def test_chipset_round_trip_maps_and_runs_on() -> None:
    result = run_two_boards(FIRMWARE + """
result["fresh_maps_differ"] = maps(dst) != maps(src)
sections = save(CHIPSET)
load(CHIPSET, sections)
result["config_reg"] = [find(vm, "q35-pcihost").config_reg for vm in (src, dst)]
result["maps_equal"] = maps(dst) == maps(src)
for name, devfn, length in (("mch", MCH, 256), ("lpc", LPC, 256), ("smb", SMB, 256)):
    result[name + "_config_equal"] = config_dump(dst, devfn, length) == config_dump(src, devfn, length)
on(src); io(src).dispatch_write(0xCF8, 0x8000F840, 4)
pm_regs = [(0x600, 2), (0x602, 2), (0x604, 2), (0x620, 4), (0x628, 4), (0x630, 4), (0x634, 4)]
result["pm"] = [[on(vm) and io(vm).dispatch_read(port, size) for port, size in pm_regs] for vm in (src, dst)]
result["pm_timer"] = [on(vm) and io(vm).dispatch_read(0x608, 4) for vm in (src, dst)]
result["rcrb"] = [on(vm) and mem(vm).dispatch_read(0xFED1C000 + 0x3400, 4) for vm in (src, dst)]
result["smb"] = [[on(vm) and io(vm).dispatch_read(0x700 + off, 1) for off in range(1, 32)] for vm in (src, dst)]
lpc = find(dst, "ICH9-LPC")
result["sci"] = [lpc.sci_level, lpc.pm.sci_level, lpc.pic_levels.get(9)]
result["smb_intx"] = find(dst, "ICH9-SMB").irq_state
# Run on.  The PM timer continues from where it was (the virtual clock is the source's).
t0 = io(dst).dispatch_read(0x608, 4)
advance(dst, 1_000_000)
result["pm_timer_1ms"] = (io(dst).dispatch_read(0x608, 4) - t0) & 0xFFFFFF
# Clearing PWRBTN_STS lowers the SCI on IRQ 9.
io(dst).dispatch_write(0x600, 0x0100, 2)
result["sci_after_ack"] = [lpc.sci_level, lpc.pic_levels.get(9)]
# The EEPROM holds what the source wrote: read it back through the host interface.
io(dst).dispatch_write(0x700, 0xFF, 1)
for off, value in ((0x04, (0x50 << 1) | 1), (0x03, 0x10), (0x02, 0x40 | (2 << 2))):
    io(dst).dispatch_write(0x700 + off, value, 1)
result["eeprom_read"] = [io(dst).dispatch_read(0x700, 1) & 0x1F, io(dst).dispatch_read(0x705, 1)]
# PAM and MMCONFIG are live: the guest closes the BIOS shadow and moves nothing else.
cfg_write(dst, MCH, 0x90, 0x00, 1)
fr = mem(dst).flatview.lookup(0xF0000)
result["pam_after"] = None if fr is None else fr.mr.name
on(dst)
result["mmcfg_read"] = mem(dst).dispatch_read(0xB0000000 + (0xF8 << 12), 4)
""")
    assert result["fresh_maps_differ"] and result["maps_equal"]
    assert result["mch_config_equal"] and result["lpc_config_equal"] and result["smb_config_equal"]
    assert result["config_reg"] == [0x8000F840, 0x8000F840]
    assert result["pm"][0] == result["pm"][1] and result["pm"][0][0] & 0x0100
    assert result["pm_timer"][0] == result["pm_timer"][1] == (12_345_678 * 3_579_545 // 10**9) & 0xFFFFFF
    assert result["rcrb"] == [0x12345678, 0x12345678]
    assert result["smb"][0] == result["smb"][1]
    assert result["sci"] == [1, 1, 1] and result["smb_intx"] == 1
    assert 3579 <= result["pm_timer_1ms"] <= 3580
    assert result["sci_after_ack"] == [0, 0]
    assert result["eeprom_read"] == [0x02, 0xA5]                     # INTR, the byte written on the source
    assert result["pam_after"] == "pc.bios"                           # the ROM again, seen through PCI
    assert result["mmcfg_read"] == 0x29188086                        # the LPC's IDs through ECAM


def test_pam_smram_lock_and_pciexbar_reapplied() -> None:
    result = run_two_boards("""
MCH = 0x00
for reg in range(0x90, 0x97):
    cfg_write(src, MCH, reg, 0x33 if reg > 0x90 else 0x10, 1)   # every segment RAM, the BIOS area read-only
cfg_write(src, MCH, 0x9D, 0x1A, 1)                               # D_LCK | G_SMRAME
cfg_write(src, MCH, 0x60, 0xE0000005, 4)                         # 128 MiB of MMCONFIG at 0xE0000000
sections = save(["mch"])
on(dst)
result["fresh"] = [mem(dst).flatview.lookup(a).mr.name for a in (0xC0000, 0xF0000)]
load(["mch"], sections)
result["maps_equal"] = maps(dst) == maps(src)
on(dst)
frs = [mem(dst).flatview.lookup(a) for a in (0xC0000, 0xE8000, 0xF0000, 0xE0000000)]
result["owners"] = [(fr.mr.name, fr.readonly) for fr in frs]
cfg_write(dst, MCH, 0x9D, 0x4A, 1)                               # locked: only D_CLS is writable
result["smram"] = cfg_read(dst, MCH, 0x9D, 1)
""")
    assert result["maps_equal"]
    assert result["fresh"] == ["pc.rom", "pc.bios"]                  # PAM at reset: ROMs through PCI
    assert result["owners"] == [["pc.ram", False], ["pc.ram", False], ["pc.ram", True], ["pcie-mmcfg-mmio", False]]
    assert result["smram"] == 0x1A


def test_bad_chipset_streams_are_refused() -> None:
    result = run_two_boards(FIRMWARE + """
sections = dict(zip(CHIPSET, save(CHIPSET)[1:]))
mch, lpc, smb = sections["mch"], sections["ICH9-LPC"], sections["ICH9-SMB"]
cfg = 4                                                      # the config space follows its length
pci_part = 4 + 256 + 1 + 2 * 7 * 8                           # config, INTx, BAR sizes and addresses
result["pam"] = refused("mch", corrupt(mch, cfg + 0x91, b"\\x44"))
result["smram_lock_open"] = refused("mch", corrupt(mch, cfg + 0x9D, b"\\x5A"))
result["esmramc"] = refused("mch", corrupt(mch, cfg + 0x9E, b"\\x00"))
result["pciexbar"] = refused("mch", corrupt(mch, cfg + 0x64, b"\\x10"))
result["mch_id"] = refused("mch", corrupt(mch, cfg + 0x02, b"\\xC1"))
result["pirq"] = refused("ICH9-LPC", corrupt(lpc, cfg + 0x60, b"\\x7A"))
result["pmbase"] = refused("ICH9-LPC", corrupt(lpc, cfg + 0x40, b"\\x00"))
pm = pci_part
result["pm1_sts"] = refused("ICH9-LPC", corrupt(lpc, pm, b"\\x00\\x02"))
result["pm1_cnt"] = refused("ICH9-LPC", corrupt(lpc, pm + 4, b"\\x00\\x00"))
result["gpe_len"] = refused("ICH9-LPC", lpc[:pm + 6] + (9).to_bytes(4, "big") + bytes(9) + lpc[pm + 6 + 4 + 8:])
overflow = pm + 6 + 4 + 8 + 4 + 8
result["overflow"] = refused("ICH9-LPC", corrupt(lpc, overflow, (1 << 40).to_bytes(8, "big")))
rest = overflow + 8 + 0x4000
result["sci_level"] = refused("ICH9-LPC", corrupt(lpc, rest, b"\\x00"))
result["smi_en"] = refused("ICH9-LPC", corrupt(lpc, rest + 2, b"\\x00\\x00\\x00\\x00"))
result["pic_level"] = refused("ICH9-LPC", corrupt(lpc, rest + 6 + 9, b"\\x02"))
host = pci_part
result["hst_busy"] = refused("ICH9-SMB", corrupt(smb, host, b"\\x03"))
result["block_index"] = refused("ICH9-SMB", corrupt(smb, host + 16 + 32, b"\\x20"))
result["smb_intx"] = refused("ICH9-SMB", corrupt(smb, host + 1, b"\\x00"))
result["hostc"] = refused("ICH9-SMB", corrupt(smb, cfg + 0x40, b"\\x09"))
eeprom = host + 17 + 32
result["eeprom_missing"] = refused("ICH9-SMB", smb[:eeprom] + b"\\x00" + smb[eeprom + 1 + 257:])
""")
    assert "PAM1 = 0x44 sets bits outside 0x33" in result["pam"]
    assert "SMRAM = 0x5a is not a value" in result["smram_lock_open"]
    assert "ESMRAMC = 0x00" in result["esmramc"]
    assert "PCIEXBAR = 0x10b0000001 sets bits outside" in result["pciexbar"]
    assert "Bad config data for mch: offset 0x2" in result["mch_id"]
    assert "Bad config data for ICH9-LPC: offset 0x60 reads 0x7a" in result["pirq"]
    assert "Bad config data for ICH9-LPC: offset 0x40 reads 0x00" in result["pmbase"]
    assert "pm1_sts: invalid value" in result["pm1_sts"]
    assert "pm1_cnt: invalid value" in result["pm1_cnt"]
    assert "GPE0 blocks of 9 and 8 bytes, this PM block has 8" in result["gpe_len"]
    assert "PM timer overflow at tick 0x10000000000" in result["overflow"]
    assert "SCI level 0 but the PM registers give 1" in result["sci_level"]
    assert "smi_en: invalid value 0" in result["smi_en"]
    assert "pic_level_list: invalid value" in result["pic_level"]
    assert "status: invalid value" in result["hst_busy"]
    assert "block_index: invalid value 32" in result["block_index"]
    assert "disagree with the function's INTx state 1" in result["smb_intx"]
    assert "HOSTC = 0x09" in result["hostc"]
    assert "spd_eeproms[0]: smbus-eeprom is absent in the stream, present here" in result["eeprom_missing"]


def test_other_ram_size_is_refused_by_tolud() -> None:
    result = run_two_boards("""
sections = save(["mch"])
result["tolud"] = refused("mch", sections[1])
""", dst_args=[*BOARD_ARGS[:3], "256", *BOARD_ARGS[4:]])
    assert "Bad config data for mch: offset 0xb1" in result["tolud"]
