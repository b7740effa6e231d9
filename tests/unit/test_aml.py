"""AML encodings checked against bytes worked out by hand from ACPI 6.5 chapter 20 / 6.4.

Each expected value notes how it was derived, so a failure says which rule broke.
The composite at the end was also compiled with iasl (acpica-tools 20200925): the
output matched byte for byte except the End Tag checksum, which iasl leaves 0
("treated as valid", ACPI 6.4.2.9) and this builder computes.
"""

from __future__ import annotations

import pytest

from pemu.hw.acpi.aml_build import (
    FieldAccess,
    FieldUpdate,
    IsaRanges,
    MemCacheable,
    RegionSpace,
    aml_arg,
    aml_buffer,
    aml_device,
    aml_dword_memory,
    aml_eisaid,
    aml_else,
    aml_end_tag,
    aml_equal,
    aml_field,
    aml_if,
    aml_int,
    aml_io,
    aml_irq_no_flags,
    aml_local,
    aml_memory32_fixed,
    aml_method,
    aml_name_decl,
    aml_named_field,
    aml_namestring,
    aml_operation_region,
    aml_package,
    aml_qword_memory,
    aml_reserved_field,
    aml_resource_template,
    aml_return,
    aml_scope,
    aml_store,
    aml_string,
    aml_word_bus_number,
    aml_word_io,
    encode_pkglength,
)

H = bytes.fromhex


@pytest.mark.parametrize("value, expected", [
    (0, "00"),                 # one byte: the value itself in bits 5-0
    (63, "3f"),                # largest one-byte length
    (64, "40 04"),             # lead: count 1 in bits 7-6, low nibble 0; next byte 64>>4 = 4
    (4095, "4f ff"),           # lead 0x40|0xF, next 0xFFF>>4 = 0xFF
    (4096, "80 00 01"),        # count 2, nibble 0, then 0x100 little-endian
    (1048575, "8f ff ff"),     # 0xFFFFF: nibble F, then 0xFFFF
    (1048576, "c0 00 00 01"),  # 0x100000: count 3, nibble 0, then 0x10000 in 3 bytes
    ((1 << 28) - 1, "cf ff ff ff"),
])
def test_pkglength(value, expected):
    assert encode_pkglength(value) == H(expected)


def test_pkglength_out_of_range():
    with pytest.raises(ValueError):
        encode_pkglength(1 << 28)
    with pytest.raises(ValueError):
        encode_pkglength(-1)


def test_pkglength_counts_itself():
    # Buffer: 0x11 PkgLength BufferSize ByteList.  60 data bytes: body = 0A 3C + 60 = 62,
    # plus a 1-byte PkgLength = 63 -> fits in one byte.
    b = aml_buffer(bytes(60))
    assert b[:4] == H("11 3f 0a 3c") and len(b) == 1 + 63
    # 61 data bytes: body 63, +1 = 64 does not fit one byte; +2 = 65 -> 41 04.
    b = aml_buffer(bytes(61))
    assert b[:5] == H("11 41 04 0a 3d") and len(b) == 1 + 65
    # Around 4096: body 4093 + 2 = 4095 (two bytes); body 4094 + 2 = 4096 needs three: 4097.
    assert aml_buffer(bytes(4093 - 3))[:3] == H("11 4f ff")
    assert aml_buffer(bytes(4094 - 3))[:4] == H("11 81 00 01")


@pytest.mark.parametrize("name, expected", [
    ("_SB", "5f 53 42 5f"),                        # padded with '_'
    ("PCI0", "50 43 49 30"),
    ("\\_SB", "5c 5f 53 42 5f"),                   # RootChar
    ("^^FOO", "5e 5e 46 4f 4f 5f"),                # two ParentPrefixChars
    ("\\_SB.PCI0", "5c 2e 5f 53 42 5f 50 43 49 30"),  # DualNamePrefix
    ("\\_SB.PCI0.ISA", "5c 2f 03 5f 53 42 5f 50 43 49 30 49 53 41 5f"),  # MultiNamePrefix, count 3
    ("\\", "5c 00"),                               # root alone: NullName
    ("", "00"),
])
def test_namestring(name, expected):
    assert aml_namestring(name) == H(expected)


@pytest.mark.parametrize("bad", ["pci0", "1ABC", "ABCDE", "A..B", "A-B", "\\^A"])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        aml_namestring(bad)


@pytest.mark.parametrize("value, expected", [
    (0, "00"), (1, "01"),                          # ZeroOp, OneOp
    (2, "0a 02"), (0xFF, "0a ff"),                 # BytePrefix
    (0x100, "0b 00 01"), (0xFFFF, "0b ff ff"),     # WordPrefix
    (0x10000, "0c 00 00 01 00"), (0xFFFFFFFF, "0c ff ff ff ff"),  # DWordPrefix
    (0x100000000, "0e 00 00 00 00 01 00 00 00"),   # QWordPrefix
    ((1 << 64) - 1, "ff"),                         # OnesOp
])
def test_integers(value, expected):
    assert aml_int(value) == H(expected)


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_integer_range(bad):
    with pytest.raises(ValueError):
        aml_int(bad)


def test_string():
    assert aml_string("ABC") == H("0d 41 42 43 00")
    with pytest.raises(ValueError):
        aml_string("a\0b")
    with pytest.raises(UnicodeEncodeError):
        aml_string("é")


@pytest.mark.parametrize("eisaid, expected", [
    # P=0x10 N=0x0E P=0x10 -> 10000 01110 10000 = 0x41D0; then 0x0501, stored big-endian.
    ("PNP0501", "0c 41 d0 05 01"),
    ("PNP0A03", "0c 41 d0 0a 03"),
    ("PNP0B00", "0c 41 d0 0b 00"),
    ("PNP0303", "0c 41 d0 03 03"),
])
def test_eisaid(eisaid, expected):
    assert aml_eisaid(eisaid) == H(expected)


@pytest.mark.parametrize("bad", ["PNP050", "pnp0501", "PNP050G", "P1P0501"])
def test_bad_eisaid(bad):
    with pytest.raises(ValueError):
        aml_eisaid(bad)


def test_name_package_s5():
    # Name(_S5, Package(){0,0,0,0}): NameOp "_S5_", PackageOp, PkgLength = 1 (itself)
    # + 1 (NumElements) + 4 ZeroOps = 6.
    assert aml_name_decl("_S5", aml_package(0, 0, 0, 0)) == H("08 5f 53 35 5f 12 06 04 00 00 00 00")


def test_package_mixed_elements():
    # 3 elements: BytePrefix 5, String "A", OneOp; body 1 + 2 + 3 + 1 = 7, PkgLength 8.
    assert aml_package(5, "A", 1) == H("12 08 03 0a 05 0d 41 00 01")


def test_method():
    # Method(_STA, 0, NotSerialized){Return(0x0F)}: body "_STA" + flags 00 + A4 0A 0F = 8.
    assert aml_method("_STA", 0, aml_return(0x0F)) == H("14 09 5f 53 54 41 00 a4 0a 0f")
    # Method(_PIC, 1, Serialized): flags = 1 arg | 0x08.
    assert aml_method("_PIC", 1, serialized=True) == H("14 06 5f 50 49 43 09")
    assert aml_method("X", 2, sync_level=3)[-1] == 0x32
    with pytest.raises(ValueError):
        aml_method("X", 8)


def test_device_and_scope():
    # Device(COM1){Name(_HID, EisaId("PNP0501"))}: ExtOp 5B 82; body "COM1" + 10-byte Name = 14.
    dev = aml_device("COM1", aml_name_decl("_HID", aml_eisaid("PNP0501")))
    assert dev == H("5b 82 0f 43 4f 4d 31 08 5f 48 49 44 0c 41 d0 05 01")
    # Scope(\_SB){}: body = 5-byte name, PkgLength 6.
    assert aml_scope("\\_SB") == H("10 06 5c 5f 53 42 5f")
    assert aml_scope("\\_SB", dev) == H("10") + bytes([6 + len(dev)]) + H("5c 5f 53 42 5f") + dev


def test_if_else_store():
    # If(LEqual(Arg0, One)){Return(One)}: A0, PkgLength 6, 93 68 01, A4 01.
    assert aml_if(aml_equal(aml_arg(0), 1), aml_return(1)) == H("a0 06 93 68 01 a4 01")
    assert aml_else(aml_return(0)) == H("a1 03 a4 00")
    assert aml_store(aml_arg(0), aml_local(0)) == H("70 68 60")
    assert aml_local(7) == H("67") and aml_arg(6) == H("6e")
    with pytest.raises(ValueError):
        aml_local(8)
    with pytest.raises(ValueError):
        aml_arg(7)


def test_operation_region_and_field():
    # OperationRegion(PMIO, SystemIO, 0x600, 0x80).
    assert aml_operation_region("PMIO", RegionSpace.SYSTEM_IO, 0x600, 0x80) == \
        H("5b 80 50 4d 49 4f 01 0b 00 06 0a 80")
    # Field(PMIO, WordAcc, NoLock, WriteAsZeros){Offset(4), PM1C, 16}:
    # flags = 2 | 0<<4 | 2<<5 = 0x42; reserved 32 bits = 00 20; NamedField PM1C 10.
    f = aml_field("PMIO", aml_reserved_field(32), aml_named_field("PM1C", 16),
                  access=FieldAccess.WORD, update=FieldUpdate.WRITE_AS_ZEROS)
    assert f == H("5b 81 0d 50 4d 49 4f 42 00 20 50 4d 31 43 10")
    # A field width is a plain (not self-counting) PkgLength: 64 bits -> 40 04.
    assert aml_named_field("WIDE", 64) == b"WIDE" + H("40 04")


def test_small_resource_descriptors():
    # IO: tag 0x47 (type 8, length 7), Decode16, min, max, align, length.
    assert aml_io(0x3F8, 0x3F8, 0x00, 0x08) == H("47 01 f8 03 f8 03 00 08")
    assert aml_io(0x60, 0x60, 0x01, 0x01, decode16=False) == H("47 00 60 00 60 00 01 01")
    # IRQNoFlags: tag 0x22 (type 4, length 2), 16-bit mask.
    assert aml_irq_no_flags(4) == H("22 10 00")
    assert aml_irq_no_flags(12) == H("22 00 10")
    with pytest.raises(ValueError):
        aml_irq_no_flags(16)
    with pytest.raises(ValueError):
        aml_io(0x10000, 0, 0, 1)


def test_end_tag_and_template():
    data = aml_io(0x3F8, 0x3F8, 0x00, 0x08) + aml_irq_no_flags(4)
    # Sum of the 11 bytes = 632; + 0x79 = 753 = 0x2F1; checksum = 0x100 - 0xF1 = 0x0F.
    assert aml_end_tag(data) == H("79 0f")
    assert (sum(data) + sum(aml_end_tag(data))) % 256 == 0
    # Buffer: size 13 (0A 0D), body 15, PkgLength 16.
    assert aml_resource_template(aml_io(0x3F8, 0x3F8, 0x00, 0x08), aml_irq_no_flags(4)) == \
        H("11 10 0a 0d 47 01 f8 03 f8 03 00 08 22 10 00 79 0f")


def test_memory32_fixed():
    # Large item 0x86, length 9, ReadWrite, base, length.
    assert aml_memory32_fixed(0xFED00000, 0x400) == H("86 09 00 01 00 00 d0 fe 00 04 00 00")
    assert aml_memory32_fixed(0xFEC00000, 0x1000, read_write=False)[3] == 0


def test_word_bus_number():
    # WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100):
    # tag 0x88, length 13, type 2 (bus), flags MIF|MAF = 0x0C, no type flags, 5 words.
    assert aml_word_bus_number(0, 0xFF) == \
        H("88 0d 00 02 0c 00 00 00 00 00 ff 00 00 00 00 01")


def test_word_io():
    # WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0, 0xCF7, 0, 0xCF8)
    assert aml_word_io(0, 0xCF7) == H("88 0d 00 01 0c 03 00 00 00 00 f7 0c 00 00 f8 0c")
    assert aml_word_io(0xD00, 0xFFFF, isa_ranges=IsaRanges.NON_ISA_ONLY)[5] == 1


def test_dword_memory():
    # DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,
    #             0, 0xA0000, 0xBFFFF, 0, 0x20000): tag 0x87, length 23, type 0,
    # flags 0x0C, type flags RW(1) | Cacheable(1)<<1 = 0x03.
    assert aml_dword_memory(0xA0000, 0xBFFFF, cacheable=MemCacheable.CACHEABLE) == H(
        "87 17 00 00 0c 03 00000000 00000a00 ffff0b00 00000000 00000200")
    with pytest.raises(ValueError):
        aml_dword_memory(0, 1 << 32)


def test_qword_memory():
    # QWordMemory(..., NonCacheable, ReadWrite, 0, 4G, 8G-1, 0, 4G): tag 0x8A, length 43.
    q = aml_qword_memory(1 << 32, (2 << 32) - 1)
    assert q[:6] == H("8a 2b 00 00 0c 01")
    assert q[6:] == (bytes(8) + (1 << 32).to_bytes(8, "little") + ((2 << 32) - 1).to_bytes(8, "little")
                     + bytes(8) + (1 << 32).to_bytes(8, "little"))
    assert len(q) == 46


def test_composite_matches_iasl():
    # Name(RES1, ResourceTemplate(){WordBusNumber, WordIO, DWordMemory, QWordMemory,
    # Memory32Fixed}), OperationRegion + Field, and a Serialized 1-argument method
    # with If/Else/Store, as iasl compiles them (end-tag checksum 0x53 instead of 0).
    mine = (aml_name_decl("RES1", aml_resource_template(
                aml_word_bus_number(0, 0xFF), aml_word_io(0, 0xCF7),
                aml_dword_memory(0xA0000, 0xBFFFF, cacheable=MemCacheable.CACHEABLE),
                aml_qword_memory(1 << 32, (2 << 32) - 1), aml_memory32_fixed(0xFED00000, 0x400)))
            + aml_operation_region("PMIO", RegionSpace.SYSTEM_IO, 0x600, 0x80)
            + aml_field("PMIO", aml_reserved_field(32), aml_named_field("PM1C", 16),
                        access=FieldAccess.WORD, update=FieldUpdate.WRITE_AS_ZEROS)
            + aml_method("TST", 1, aml_if(aml_equal(aml_arg(0), 1), aml_return(1)),
                         aml_else(aml_return(0)), aml_store(aml_arg(0), aml_local(0)),
                         serialized=True))
    assert mine == H(
        "0852455331114a070a76"
        "880d00020c0000000000ff0000000001"
        "880d00010c0300000000f70c0000f80c"
        "871700000c030000000000000a00ffff0b000000000000000200"
        "8a2b00000c01" + "0000000000000000" + "0000000001000000" + "ffffffff01000000"
        + "0000000000000000" + "0000000001000000" +
        "860900010000d0fe00040000" "7953"
        "5b80504d494f010b00060a80"
        "5b810d504d494f420020504d314310"
        "14145453545f09a006936801a401a103a400706860")
