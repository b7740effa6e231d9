"""The net layer: queues, back-pressure, hubs, NIC properties, info network (no sockets)."""

from __future__ import annotations

import pytest

from pemu.net.net import (
    NET_QUEUE_MAX_FRAMES,
    NetClientState,
    NetState,
    info_network,
    qemu_flush_queued_packets,
    qemu_send_packet,
    qemu_send_packet_async,
    qemu_set_link,
)
from pemu.net.netdev import nic_conf_resolve
from pemu.util.error import UserError
from tests.unit.netframes import TestNic


class Backend(NetClientState):
    driver = "user"

    def __init__(self, net: NetState, name: str) -> None:
        super().__init__(net, "user", name)
        self.got: list[bytes] = []
        self.info_str = "net=10.0.2.0,restrict=off"

    def receive(self, data: bytes) -> int:
        self.got.append(data)
        return len(data)


def pair() -> tuple[NetState, TestNic, Backend]:
    net = NetState(vm_running=lambda: True)
    backend = Backend(net, "net0")
    nic = TestNic(net)
    nic.peer, backend.peer = backend, nic
    return net, nic, backend


def test_frames_flow_both_ways() -> None:
    _, nic, backend = pair()
    qemu_send_packet(nic, b"to-host")
    qemu_send_packet(backend, b"to-guest")
    assert backend.got == [b"to-host"] and list(nic.frames) == [b"to-guest"]


def test_busy_nic_makes_sender_hold_then_flush_releases_it() -> None:
    _, nic, backend = pair()
    nic.accepting = False
    sent: list[int] = []
    assert qemu_send_packet_async(backend, b"a", lambda nc, n: sent.append(n)) == 0
    assert qemu_send_packet_async(backend, b"b", lambda nc, n: sent.append(n)) == 0
    assert not nic.frames and sent == []
    nic.start_accepting()
    assert list(nic.frames) == [b"a", b"b"] and sent == [1, 1]


def test_queue_is_bounded_for_senders_that_cannot_hold() -> None:
    _, nic, backend = pair()
    nic.accepting = False
    for _ in range(NET_QUEUE_MAX_FRAMES * 3):
        qemu_send_packet(backend, b"x" * 60)
    assert len(nic.incoming_queue) == NET_QUEUE_MAX_FRAMES
    assert nic.incoming_queue.dropped == NET_QUEUE_MAX_FRAMES * 2
    nic.start_accepting()
    assert len(nic.frames) == NET_QUEUE_MAX_FRAMES


def test_stopped_vm_queues_until_flush() -> None:
    running = False
    net = NetState(vm_running=lambda: running)
    backend = Backend(net, "net0")
    nic = TestNic(net)
    nic.peer, backend.peer = backend, nic
    assert qemu_send_packet_async(backend, b"f", None) == 0
    running = True
    net.flush_all()
    assert list(nic.frames) == [b"f"]


def test_link_down_drops_and_set_link_reports_unknown() -> None:
    net, nic, backend = pair()
    qemu_set_link(net, "net0", False)
    assert nic.link_down and backend.link_down
    qemu_send_packet(nic, b"lost")
    assert backend.got == []
    qemu_set_link(net, "net0", True)
    qemu_send_packet(nic, b"kept")
    assert backend.got == [b"kept"]
    with pytest.raises(UserError, match="Device 'nope' not found"):
        qemu_set_link(net, "nope", True)


def test_hub_connects_legacy_net_clients() -> None:
    net = NetState(vm_running=lambda: True)
    nic = TestNic(net)
    port0 = net.hub_add_port(0)
    nic.peer, port0.peer = port0, nic
    backend = Backend(net, "user.0")
    port1 = net.hub_add_port(0)
    backend.peer, port1.peer = port1, backend
    qemu_send_packet(nic, b"up")
    qemu_send_packet(backend, b"down")
    assert backend.got == [b"up"] and list(nic.frames) == [b"down"]
    assert info_network(net) == (
        "hub 0\n"
        " \\ hub0port0: testnic: index=0,type=nic,model=test-nic,macaddr=52:54:00:12:34:56\n"
        " \\ hub0port1: user.0: index=0,type=user,net=10.0.2.0,restrict=off\n")


def test_info_network_nic_with_backend() -> None:
    net, _, _ = pair()
    assert info_network(net) == ("testnic: index=0,type=nic,model=test-nic,macaddr=52:54:00:12:34:56\n"
                                 " \\ net0: index=0,type=user,net=10.0.2.0,restrict=off\n")


def test_nic_properties_resolve_like_qemu() -> None:
    net = NetState(vm_running=lambda: True)
    backend = Backend(net, "net0")
    conf = nic_conf_resolve(net, "test-nic", None, "net0")
    assert conf.peer is backend and conf.macaddr.hex() == "525400123456"
    assert nic_conf_resolve(net, "test-nic", None, None).macaddr.hex() == "525400123457"
    assert nic_conf_resolve(net, "test-nic", "52:54:00:aa:bb:cc", None).macaddr.hex() == "525400aabbcc"
    with pytest.raises(UserError, match=r"^Property 'test-nic.netdev' can't find value 'net9'$"):
        nic_conf_resolve(net, "test-nic", None, "net9")
    with pytest.raises(UserError, match=r"^Property 'test-nic.mac' doesn't take value 'zz'$"):
        nic_conf_resolve(net, "test-nic", "zz", None)


def test_flush_of_empty_queue_is_harmless() -> None:
    _, nic, _ = pair()
    qemu_flush_queued_packets(nic)
    assert not nic.frames


def test_nic_device_properties_through_qdev() -> None:
    from pemu.hw.core.qdev import TYPE_DEVICE, DeviceClass, DeviceState, device_class_set_props, qdev_new, qdev_realize
    from pemu.net.nic import nic_properties, qemu_new_nic
    from pemu.qom.object import QOMError, TypeInfo, object_class_by_name, type_register

    net = NetState(vm_running=lambda: True)
    backend = Backend(net, "net0")

    class TestNicDevice(DeviceState):
        nic_mac: str | None
        nic_netdev: str | None

    def realize(dev: DeviceState) -> None:
        dev.frames = []  # type: ignore[attr-defined]
        dev.nic = qemu_new_nic(dev, lambda data: dev.frames.append(data) or len(data),  # type: ignore[attr-defined]
                               lambda: True, net=net)

    def class_init(klass: object, _data: object) -> None:
        dc: DeviceClass = klass  # type: ignore[assignment]
        dc.realize = realize
        device_class_set_props(dc, nic_properties())

    if object_class_by_name("pemu-test-nic") is None:
        type_register(TypeInfo("pemu-test-nic", parent=TYPE_DEVICE, instance_type=TestNicDevice,
                               class_init=class_init))
    dev = qdev_new("pemu-test-nic")
    dev.property_parse("netdev", "net0")
    dev.property_parse("mac", "52:54:00:00:00:42")
    qdev_realize(dev, None)
    nic = dev.nic  # type: ignore[attr-defined]
    assert nic.peer is backend and backend.peer is nic
    qemu_send_packet(backend, b"frame")
    assert dev.frames == [b"frame"]  # type: ignore[attr-defined]
    assert "type=nic,model=pemu-test-nic,macaddr=52:54:00:00:00:42" in info_network(net)
    dev2 = qdev_new("pemu-test-nic")
    dev2.property_parse("netdev", "net9")
    with pytest.raises(QOMError, match=r"^Property 'pemu-test-nic.netdev' can't find value 'net9'$"):
        qdev_realize(dev2, None)


def test_vm_start_flushes_what_waited_while_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from pemu.net import net as netmod
    from pemu.system import cpus, runstate

    runstate.runstate_set(runstate.RunState.PAUSED)  # the test's own VM (tests/conftest.py)
    state = netmod.net_state()
    try:
        backend = Backend(state, "net0")
        nic = TestNic(state)
        nic.peer, backend.peer = backend, nic
        assert qemu_send_packet_async(backend, b"waited", None) == 0  # the VM is stopped: queued
        assert not nic.frames
        cpus.vm_start()
        assert list(nic.frames) == [b"waited"]
        cpus.vm_stop(runstate.RunState.PAUSED)
    finally:
        netmod.net_cleanup()
