"""The e1000e's migration state without a CPU: save a busy NIC, load it into
a fresh one, compare, run on (a frame half queued on the TX ring before the
save goes out whole after it, RX continues at the restored head, a held-back
interrupt fires on time); hostile ring registers are refused."""

from __future__ import annotations

import struct
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from pemu.hw.net import e1000e_core as core_mod
from pemu.hw.net.e1000e import VMSTATE_E1000E
from pemu.hw.net.e1000e_core import VMSTATE_E1000E_CORE, E1000ECore
from pemu.hw.net.e1000x_common import Icr, Reg, Stat
from pemu.migration.vmstate import VMStateError, vmstate_load_bytes, vmstate_save_bytes
from tests.unit.fakes import FakeClock
from tests.unit.test_e1000e import (
    MAC,
    RX_BUF,
    RX_RING,
    TX_BUF,
    FakeHost,
    context_desc,
    ipv4_tcp_frame,
    l4_ok,
    make,
    put_desc,
    rd,
    ref_sum,
    rx_setup,
    tx_setup,
    wr,
)

DATA_CMD = (1 << 29) | (1 << 20)  # DEXT, DTYP data
EOP = 1 << 24
RS = 1 << 27
TXSM_IXSM = 0x03 << 8
MDIC_WRITE_ADV = (1 << 26) | (1 << 21) | (4 << 16)  # write, PHY 1, register 4


def busy_core() -> tuple[E1000ECore, FakeHost, FakeClock, bytes]:
    """A NIC in the middle of things: a TX context and half a frame taken from
    the ring, RX ring partly used, statistics counted, a PHY register changed,
    an interrupt pending on INTx and the ITR interval running."""
    core, host, clock = make()
    wr(core, Reg.MDIC, MDIC_WRITE_ADV | 0x01E1)
    wr(core, Reg.ITR, 1000)
    wr(core, Reg.IMS, Icr.RXT0 | Icr.TXDW)
    rx_setup(core, host)
    frame_in = MAC + bytes.fromhex("525400aaaaaa") + b"\x08\x00" + bytes(range(100))
    assert core.receive(frame_in) == len(frame_in) and core.receive(frame_in) == len(frame_in)
    assert rd(core, Reg.RDH0) == 2 and host.irq == 1
    tx_setup(core)
    frame = bytearray(ipv4_tcp_frame(b"migrated payload " * 20))
    # The guest seeds the TCP checksum with the pseudo-header sum (Linux's CHECKSUM_PARTIAL).
    struct.pack_into("!H", frame, 50, ref_sum(bytes(frame[26:34]) + bytes([0, 6]) + struct.pack("!H", len(frame) - 34)))
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    put_desc(host, 0, *context_desc(14, 24, 33, 34, 50, 0, 0x03))  # IPv4, TCP checksums
    put_desc(host, 1, TX_BUF, DATA_CMD | 40, TXSM_IXSM)  # the first 40 bytes, no EOP yet
    wr(core, Reg.TDT0, 2)
    assert host.sent == [] and rd(core, Reg.TDH0) == 2 and core.tx[0].frame
    return core, host, clock, bytes(frame)


def fresh_like(host: FakeHost, clock: FakeClock) -> tuple[E1000ECore, FakeHost, FakeClock]:
    """A new NIC on a copy of the guest's RAM (RAM migrates in its own sections), same virtual time."""
    core, new_host, new_clock = make()
    new_host.mem[:] = host.mem
    new_clock.ns = clock.ns
    return core, new_host, new_clock


def test_a_busy_nic_survives_save_and_load_and_runs_on() -> None:
    src, host, clock, frame = busy_core()
    data = vmstate_save_bytes(VMSTATE_E1000E_CORE, src)
    dst, dhost, dclock = fresh_like(host, clock)
    vmstate_load_bytes(VMSTATE_E1000E_CORE, dst, data)
    assert vmstate_save_bytes(VMSTATE_E1000E_CORE, dst) == data
    assert list(dst.regs) == list(src.regs) and dst.stats == src.stats
    for reg in (Reg.RDH0, Reg.RDT0, Reg.TDH0, Reg.TDT0, Reg.IMS, Reg.RCTL, Reg.TCTL, Reg.STATUS, Reg.ITR):
        assert rd(dst, reg) == rd(src, reg), hex(reg)
    wr(dst, Reg.MDIC, (2 << 26) | (1 << 21) | (4 << 16))
    assert rd(dst, Reg.MDIC) & 0xFFFF == 0x01E1  # the PHY register the guest wrote
    assert dhost.irq == 1  # INTx driven again
    assert [t.expire for t in dclock.timers if t.expire >= 0] == [src.itr.deadline]
    assert rd(dst, Stat.GPRC) == 2

    # TX: the rest of the frame, queued after the load, goes out whole with its offloads.
    put_desc(dhost, 2, TX_BUF + 40, DATA_CMD | EOP | RS | (len(frame) - 40), TXSM_IXSM)
    wr(dst, Reg.TDT0, 3)
    (out,) = dhost.sent
    assert len(out) == len(frame) and out[:24] == frame[:24] and out[54:] == frame[54:]
    assert ref_sum(out[14:34]) == 0xFFFF and l4_ok(out[14:34], out[34:], 6)
    assert dhost.mem[0x1000 + 2 * 16 + 12] & 1 and rd(dst, Reg.TDH0) == 3

    # RX: the next frame lands in descriptor 2, where the source stopped.
    incoming = MAC + bytes.fromhex("525400bbbbbb") + b"\x08\x00" + b"after the move"
    assert dst.receive(incoming) == len(incoming)
    status, length = struct.unpack("<IH", dhost.mem[RX_RING + 2 * 16 + 8:RX_RING + 2 * 16 + 14])
    assert status & 3 == 3 and length == 60
    assert dhost.mem[RX_BUF + 2 * 0x800:RX_BUF + 2 * 0x800 + len(incoming)] == incoming
    assert rd(dst, Reg.RDH0) == 3


def test_an_interrupt_held_back_by_itr_fires_when_the_interval_ends_after_the_load() -> None:
    src, host, clock, _ = busy_core()
    rd(src, Reg.ICR)
    wr(src, Reg.ICS, Icr.TXDW)  # inside the running interval: held back
    assert host.irq == 0 and src.itr.pending
    dst, dhost, dclock = fresh_like(host, clock)
    vmstate_load_bytes(VMSTATE_E1000E_CORE, dst, vmstate_save_bytes(VMSTATE_E1000E_CORE, src))
    assert dhost.irq == 0
    dclock.advance(src.itr.deadline - dclock.ns - 1)
    assert dhost.irq == 0
    dclock.advance(2)
    assert dhost.irq == 1


def test_descriptors_the_source_had_not_reached_are_sent_after_the_load() -> None:
    """The source stopped with TX work left for its main loop (the budget);
    the loaded NIC picks it up from the restored head."""
    src, host, clock = make()
    tx_setup(src, count=1024)
    frame = bytes(6) + MAC + b"\x08\x00" + bytes(46)
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    for i in range(600):
        put_desc(host, i, TX_BUF, EOP | len(frame), 0)
    wr(src, Reg.TDT0, 600)
    assert len(host.sent) == core_mod.TX_BUDGET and host.scheduled
    dst, dhost, _ = fresh_like(host, clock)
    vmstate_load_bytes(VMSTATE_E1000E_CORE, dst, vmstate_save_bytes(VMSTATE_E1000E_CORE, src))
    assert len(dhost.scheduled) == 1
    while dhost.scheduled:
        dhost.scheduled.pop()()
    assert len(dhost.sent) == 600 - core_mod.TX_BUDGET and rd(dst, Reg.TDH0) == 600


def _reg(offset: int, value: int) -> Callable[[E1000ECore], None]:
    def apply(core: E1000ECore) -> None:
        core.regs[offset >> 2] = value
    return apply


def _pending_without_interval(core: E1000ECore) -> None:
    core.itr.running = False
    core.itr.pending = True


def _interval_ending_in_an_hour(core: E1000ECore) -> None:
    core.itr.deadline += 3600 * 10**9  # would hold the guest's interrupts back that long


def _partial_frame_at_a_frame_start(core: E1000ECore) -> None:
    core.tx[0].first = True


@pytest.mark.parametrize("corrupt, message", [
    # A head or tail past the ring's end is a state the guest can write (found by tests/fuzz/migration_fuzz.py:
    # TDH 59425 on a 16-descriptor ring made a saved VM unloadable); ring() refuses to use such a ring.
    (_reg(Reg.RDH0, 8), None),
    (_reg(Reg.RDT0 + 0x100, 3), None),  # queue 1 unused (length 0): any 16-bit head/tail is harmless
    (_reg(Reg.RDT0 + 0x100, 0x10000), "RX ring 1: tail 0x10000 wider than its 16-bit register"),
    (_reg(Reg.TDH0, 16), None),
    (_reg(Reg.TDT0, 0xFFFF), None),
    (_reg(Reg.TDH0 + 0x100, 0x10000), "TX ring 1: head 0x10000 wider than its 16-bit register"),
    (_reg(Reg.TDLEN0, 0x104), "TX ring 0: base 0x1000 or length 0x104 is not a value the registers take"),
    (_reg(Reg.RDBAL0, RX_RING + 8), "RX ring 0: base 0x4008"),
    (_reg(Reg.ITR, 0x10000), "interval register 0xc4 holds 0x10000"),
    (_pending_without_interval, "throttling timer 0xc4: pending True, running False"),
    (_interval_ending_in_an_hour, "throttling timer 0xc4: pending .*, running True, deadline 3601"),
    (_partial_frame_at_a_frame_start, "TX queue 0: a partial frame before its first descriptor"),
], ids=["rdh", "rdt1-unused", "rdt1-wide", "tdh", "tdt", "tdh1-wide", "tdlen", "rdbal", "itr", "throttle", "deadline",
        "tx-frame"])
def test_bad_streams_are_refused(corrupt: Callable[[E1000ECore], None], message: str | None) -> None:
    src, host, clock, _ = busy_core()
    corrupt(src)
    data = vmstate_save_bytes(VMSTATE_E1000E_CORE, src)
    dst, _, _ = fresh_like(host, clock)
    if message is None:
        vmstate_load_bytes(VMSTATE_E1000E_CORE, dst, data)
        for queue in range(2):  # the loaded device runs on: a ring past its end is refused, not indexed
            dst.start_xmit(queue)
        return
    with pytest.raises(VMStateError, match=message):
        vmstate_load_bytes(VMSTATE_E1000E_CORE, dst, data)


def test_a_truncated_or_oversized_frame_length_is_refused() -> None:
    src, host, clock, _ = busy_core()
    data = bytearray(vmstate_save_bytes(VMSTATE_E1000E_CORE, src))
    # The first TX queue's frame length follows the MAC registers, the counters, the EEPROM,
    # the PHY, link, pending causes, EITR copies, the throttles and its context descriptor.
    ctx = 1 + 1 + 2 + 1 + 1 + 2 + 4 + 1 + 2 + 3
    offset = core_mod.MMIO_SIZE + 8 * len(Stat) + 2 * 64 + 2 * 32 * 4 + 1 + 1 + 4 + 2 * 5 + 10 * 6 + ctx
    assert struct.unpack_from(">I", data, offset)[0] == 40
    struct.pack_into(">I", data, offset, core_mod.TX_MAX_FRAME + 1)
    dst, _, _ = fresh_like(host, clock)
    with pytest.raises(VMStateError, match=r"tx\[0\]\.frame: length 65793 exceeds the maximum 65792"):
        vmstate_load_bytes(VMSTATE_E1000E_CORE, dst, bytes(data))


def test_the_link_follows_the_loaded_status_register() -> None:
    from pemu.hw.net.e1000e import _e1000e_post_load

    src, host, clock, _ = busy_core()
    src.set_link(False)
    dst_core, _, _ = fresh_like(host, clock)
    vmstate_load_bytes(VMSTATE_E1000E_CORE, dst_core, vmstate_save_bytes(VMSTATE_E1000E_CORE, src))
    dev = SimpleNamespace(core=dst_core, nic=SimpleNamespace(link_down=False))
    _e1000e_post_load(dev, 1)  # type: ignore[arg-type]
    assert dev.nic.link_down and not rd(dst_core, Reg.STATUS) & 2
    wr(dst_core, Reg.MDIC, (2 << 26) | (1 << 21) | (1 << 16))
    assert not rd(dst_core, Reg.MDIC) & 0x0004  # the PHY says link down too


def test_the_device_class_declares_its_state() -> None:
    from pemu.hw.core.qdev import DeviceClass
    from pemu.qom.object import object_class_by_name

    klass = object_class_by_name("e1000e")
    assert isinstance(klass, DeviceClass) and klass.vmsd is VMSTATE_E1000E
