"""The human monitor: line editing, the banner on a plain chardev and on a mux,
command dispatch and errors, and each command against a small QOM tree and a
memory tree built here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pemu.chardev.char import Chardev, ChrEvent
from pemu.chardev.char_fe import CharBackend
from pemu.chardev.char_mux import MuxChardev, resume_mux_open, suspend_mux_open
from pemu.hw.core import qdev, sysbus
from pemu.hw.core.cpu import CPURunState
from pemu.hw.core.qdev import DeviceClass, Property, device_class_set_props, qbus_new, qdev_new
from pemu.hw.core.sysbus import TYPE_SYS_BUS_DEVICE, TYPE_SYSTEM_BUS, SysBusDevice
from pemu.monitor import hmp_cmds, monitor_init_hmp, register_powerdown_handler, unregister_powerdown_handler
from pemu.monitor.monitor import Monitor
from pemu.monitor.qom_info import qdev_prop_human
from pemu.qom import object as qom
from pemu.qom.object import Object, ObjectClass, TypeInfo, container_get, object_get_root, object_new
from pemu.system import cpus, runstate
from pemu.system.memory import AddressSpace, MemoryRegion
from pemu.system.runstate import RunState, ShutdownCause
from pemu.target.i386.cpu_state import CPUX86State
from pemu.util.vm_context import current_vm

BANNER = "pemu 0.1.0 monitor - type 'help' for more information\r\n"


class CaptureChardev(Chardev):
    """A back-end that keeps everything written to it."""

    backend_name = "capture"

    def __init__(self, label: str = "cap") -> None:
        super().__init__(label)
        self.out = bytearray()

    def chr_write(self, data: bytes) -> int:
        self.out += data
        return len(data)

    def text(self) -> str:
        return self.out.decode()

    def take(self) -> str:
        text = self.out.decode()
        self.out.clear()
        return text


# --- QOM types of our own ------------------------------------------------------------


class MonMachine(Object):
    name_: str | None = None  # -name, as MachineState keeps it


class MonCPU(Object):
    cpu_index: int
    env: CPUX86State
    run: CPURunState


def _dev_class_init(klass: ObjectClass, data: Any) -> None:
    dc: DeviceClass = klass  # type: ignore[assignment]
    device_class_set_props(dc, [
        Property("iobase", "uint32", 0x3F8),
        Property("chardev", "str", None),
        Property("ram", "size", 512 << 20),
        Property("enabled", "bool", True),
    ])


def _leaf_class_init(klass: ObjectClass, data: Any) -> None:
    device_class_set_props(klass, [Property("level", "uint8", 3)])  # type: ignore[arg-type]


def _cpu_init(obj: Object) -> None:
    cpu: MonCPU = obj  # type: ignore[assignment]
    cpu.cpu_index = 0
    cpu.env = CPUX86State()
    cpu.run = CPURunState()


def _register_types() -> None:
    if qom.type_exists("t-mon-machine"):
        return
    qom.type_register(TypeInfo("t-mon-machine", instance_type=MonMachine))
    qom.type_register(TypeInfo("t-mon-x86_64-cpu", instance_type=MonCPU, instance_init=_cpu_init))
    qom.type_register(TypeInfo("t-mon-sysdev", parent=TYPE_SYS_BUS_DEVICE, class_init=_dev_class_init))
    qom.type_register(TypeInfo("t-mon-leaf", parent="t-mon-sysdev", class_init=_leaf_class_init))
    klass = qom.object_class_by_name("t-mon-machine")
    assert klass is not None
    klass.property_add_field("kernel", "str", default="")
    klass.property_add_field("smp", "uint32", default=1)


@pytest.fixture(autouse=True)
def fresh_world() -> Iterator[None]:
    # The test's own VM (tests/conftest.py) gives a fresh QOM tree, system bus and run state.
    _register_types()
    runstate.runstate_set(RunState.PAUSED)
    yield


@pytest.fixture
def machine() -> Iterator[Object]:
    root = object_get_root()
    m = object_new("t-mon-machine")
    root.add_child("machine", m)
    m.unref()
    container_get(root, "/machine/unattached")
    container_get(root, "/machine/peripheral")
    cpu = object_new("t-mon-x86_64-cpu")
    container_get(root, "/machine/unattached").add_child("device[0]", cpu)
    cpu.unref()
    current_vm().machine = m  # type: ignore[assignment]  # the VM's machine, as qemu_init records it
    yield m
    current_vm().machine = None  # not a MachineState: the VM's teardown must not treat it as one


@pytest.fixture
def chardev() -> CaptureChardev:
    chr = CaptureChardev()
    chr.open()
    return chr


@pytest.fixture
def mon(chardev: CaptureChardev) -> Iterator[Monitor]:
    m = monitor_init_hmp(chardev)
    chardev.take()
    yield m
    m.close()


def run(chardev: CaptureChardev, line: str) -> list[str]:
    """Type ``line`` and Enter; the output lines between the echo and the next prompt."""
    chardev.take()
    chardev.push_input(line.encode() + b"\r")
    text = chardev.take()
    assert text.startswith(line + "\r\n"), text
    assert text.endswith("(qemu) "), text
    body = text[len(line) + 2:-len("(qemu) ")]
    assert "\n" not in body.replace("\r\n", ""), "every newline must be CR LF"
    return body.split("\r\n")[:-1] if body else []


# --- banner, prompt, line editing -----------------------------------------------------


def test_banner_and_prompt_on_open(chardev: CaptureChardev) -> None:
    m = monitor_init_hmp(chardev)
    assert chardev.text() == BANNER + "(qemu) "
    m.close()


def test_banner_waits_for_a_late_open() -> None:
    chr = CaptureChardev()
    m = monitor_init_hmp(chr)
    assert chr.text() == ""
    chr.open()
    assert chr.text() == BANNER + "(qemu) "
    m.close()


def test_typed_characters_are_echoed(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"inf")
    assert chardev.take() == "inf"
    chardev.push_input(b"o status\n")
    assert chardev.take() == "o status\r\nVM status: paused\r\n(qemu) "


def test_backspace_edits_the_line(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"info statux\x7fs\r")
    out = chardev.take()
    assert "x\b \bs" in out
    assert "VM status: paused\r\n" in out
    chardev.push_input(b"\x08\x08q")  # backspace on an empty line does nothing
    assert chardev.take() == "q"


def test_crlf_runs_one_command(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"info status\r\n")
    assert chardev.take().count("(qemu) ") == 1


def test_empty_line_only_prints_the_prompt(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"   \r")
    assert chardev.take() == "   \r\n(qemu) "


def test_escape_sequences_are_swallowed_and_up_recalls(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"info status\r")
    chardev.take()
    chardev.push_input(b"\x1b[C\x1b[D")  # right, left: ignored
    assert chardev.take() == ""
    chardev.push_input(b"\x1b[A")
    assert chardev.take() == "\r(qemu) info status\x1b[K"
    chardev.push_input(b"\r")
    assert "VM status: paused" in chardev.take()


def test_overlong_line_is_cut(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"x" * 5000 + b"\r")
    out = chardev.take()
    assert out.count("x") == 4095 * 2  # the echo and the error message
    assert "unknown command: '" in out


def test_mux_focus_banner_and_prompt() -> None:
    base = CaptureChardev("base")
    base.open()
    suspend_mux_open()
    try:
        mux = MuxChardev("mux", base)
        mux.open()
        m = monitor_init_hmp(mux)
        serial = CharBackend(mux)
        got: list[bytes] = []
        serial.set_handlers(lambda: 16, got.append, lambda e: None)
    finally:
        resume_mux_open()
    # The serial port has the focus: the monitor waits with its banner.
    assert base.take() == ""
    base.push_input(b"abc")
    assert got == [b"abc"]
    base.push_input(b"\x01c")  # C-a c: to the monitor
    assert base.take() == BANNER + "(qemu) "
    base.push_input(b"info status\r")
    assert base.take() == "info status\r\nVM status: paused\r\n(qemu) "
    base.push_input(b"inf\x01c")  # back to the serial port: the line ends
    assert base.take() == "inf\r\n"
    base.push_input(b"\x01c")  # and to the monitor again: a fresh prompt
    assert base.take() == "(qemu) "
    base.push_input(b"o status\r")
    assert "unknown command: 'o'" in base.take()
    m.close()
    mux.close()


def test_monitor_attached_to_an_open_mux_gets_banner_then_serial_takes_focus() -> None:
    base = CaptureChardev("base")
    base.open()
    mux = MuxChardev("mux2", base)
    mux.open()
    m = monitor_init_hmp(mux)
    assert base.take() == BANNER + "(qemu) "
    serial = CharBackend(mux)
    serial.set_handlers(lambda: 16, lambda d: None, lambda e: None)
    assert base.take() == "\r\n"
    m.close()
    mux.close()


def test_closed_client_starts_over(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(b"half")
    chardev.be_event(ChrEvent.CLOSED)
    chardev.be_event(ChrEvent.OPENED)
    assert chardev.take() == "half" + BANNER + "(qemu) "
    chardev.push_input(b"info status\r")
    assert "VM status" in chardev.take()


# --- dispatch and errors ----------------------------------------------------------------


def test_help_lists_commands(mon: Monitor, chardev: CaptureChardev) -> None:
    lines = run(chardev, "help")
    assert "help|? [cmd] -- show the help" in lines
    assert "quit|q  -- quit the emulator" in lines
    assert "info [subcommand] -- show various information about the system state" in lines
    assert lines == sorted(lines)
    assert run(chardev, "?") == lines
    assert run(chardev, "help qom-get") == ["qom-get path property -- print QOM property"]
    assert run(chardev, "help nope") == ["unknown command: 'nope'"]
    assert run(chardev, "help info nope") == ["unknown command: 'info nope'"]


def test_info_alone_lists_subcommands(mon: Monitor, chardev: CaptureChardev) -> None:
    lines = run(chardev, "info")
    assert "info status  -- show the current VM status (running|paused)" in lines
    assert "info qom-tree [path] -- show QOM composition tree" in lines
    assert "info mtree [-f] -- show memory tree (-f: dump flat view for address spaces)" in lines
    assert run(chardev, "help info") == lines


def test_unknown_commands(mon: Monitor, chardev: CaptureChardev) -> None:
    assert run(chardev, "foo") == ["unknown command: 'foo'"]
    assert run(chardev, "foo bar baz") == ["unknown command: 'foo'"]
    assert run(chardev, "info foo") == ["unknown command: 'info foo'"]


def test_argument_errors(mon: Monitor, chardev: CaptureChardev) -> None:
    assert run(chardev, "qom-get /machine") == [
        "qom-get: string expected", 'Try "help qom-get" for more information']
    assert run(chardev, "info status now") == [
        "status: extraneous characters at the end of line", 'Try "help info status" for more information']
    assert run(chardev, "info mtree -x")[0] == "mtree: unsupported option -x"
    assert run(chardev, 'qom-get "/machine')[0] == "qom-get: unterminated string"


def test_exception_in_a_command_is_one_line(mon: Monitor, chardev: CaptureChardev,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(cpus, "vm_start", boom)
    assert run(chardev, "cont") == ["Error: internal error in 'cont': RuntimeError: kaput"]
    # The monitor still works afterwards.
    assert run(chardev, "info status") == ["VM status: paused"]


def test_info_accel_names_the_engine(mon: Monitor, chardev: CaptureChardev,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pemu.accel.tcg.engine import engine_info
    from pemu.accel.tcg.tcg_all import TCGAccel

    assert run(chardev, "info accel") == ["Error: no accelerator is configured"]
    current_vm().accel = TCGAccel()  # the test's own VM (tests/conftest.py)
    assert run(chardev, "info accel") == [f"accelerator: tcg (software CPU on {engine_info().describe()})"]


# --- run state ------------------------------------------------------------------------------


def test_info_status(mon: Monitor, chardev: CaptureChardev, monkeypatch: pytest.MonkeyPatch) -> None:
    runstate.runstate_set(RunState.RUNNING)
    assert run(chardev, "info status") == ["VM status: running"]
    runstate.runstate_set(RunState.PRELAUNCH)
    assert run(chardev, "info status") == ["VM status: paused (prelaunch)"]
    runstate.runstate_set(RunState.PAUSED)
    assert run(chardev, "info status") == ["VM status: paused"]


def test_stop_and_cont_call_runstate(mon: Monitor, chardev: CaptureChardev,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(cpus, "vm_stop", lambda state=RunState.PAUSED: calls.append(("stop", state)))
    monkeypatch.setattr(cpus, "vm_start", lambda: calls.append("start"))
    assert run(chardev, "stop") == []
    assert run(chardev, "c") == []
    assert run(chardev, "cont") == []
    assert run(chardev, "s") == []
    assert calls == [("stop", RunState.PAUSED), "start", "start", ("stop", RunState.PAUSED)]


def test_cont_after_shutdown_needs_reset(mon: Monitor, chardev: CaptureChardev,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runstate.runstate_set(RunState.SHUTDOWN)
    monkeypatch.setattr(cpus, "vm_start", lambda: pytest.fail("must not start"))
    assert run(chardev, "cont") == ["Error: Resetting the Virtual Machine is required"]


def test_quit_requests_shutdown_and_stops_reading(mon: Monitor, chardev: CaptureChardev,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[tuple[ShutdownCause, int]] = []
    monkeypatch.setattr(runstate, "qemu_system_shutdown_request",
                        lambda cause, exit_status=0: requests.append((cause, exit_status)))
    chardev.push_input(b"quit\rinfo status\r")
    assert chardev.take() == "quit\r\n"
    assert requests == [(ShutdownCause.HOST_QMP_QUIT, 0)]
    assert mon.suspended


def test_q_is_quit(mon: Monitor, chardev: CaptureChardev, monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[ShutdownCause] = []
    monkeypatch.setattr(runstate, "qemu_system_shutdown_request",
                        lambda cause, exit_status=0: requests.append(cause))
    chardev.push_input(b"q\r")
    assert requests == [ShutdownCause.HOST_QMP_QUIT]


def test_system_reset(mon: Monitor, chardev: CaptureChardev, monkeypatch: pytest.MonkeyPatch) -> None:
    causes: list[ShutdownCause] = []
    monkeypatch.setattr(runstate, "qemu_system_reset_request", causes.append)
    assert run(chardev, "system_reset") == []
    assert causes == [hmp_cmds.SYSTEM_RESET_CAUSE]
    assert causes[0] not in (ShutdownCause.GUEST_RESET, ShutdownCause.SUBSYSTEM_RESET)


def test_system_powerdown(mon: Monitor, chardev: CaptureChardev, monkeypatch: pytest.MonkeyPatch) -> None:
    # Start from a machine with no power button (other tests may have built one).
    lines = run(chardev, "system_powerdown")
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    pressed: list[int] = []

    def press() -> None:
        pressed.append(1)

    register_powerdown_handler(press)
    try:
        assert run(chardev, "system_powerdown") == []
        assert pressed == [1]
    finally:
        unregister_powerdown_handler(press)


def test_info_version_and_name(mon: Monitor, chardev: CaptureChardev, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(chardev, "info version") == ["0.1.0"]
    monkeypatch.setattr(hmp_cmds, "vm_name", lambda: None)
    assert run(chardev, "info name") == []
    monkeypatch.setattr(hmp_cmds, "vm_name", lambda: "guest1")
    assert run(chardev, "info name") == ["guest1"]


# --- QOM ----------------------------------------------------------------------------------------


def test_info_qom_tree(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    assert run(chardev, "info qom-tree") == [
        "/ (container)",
        "  /machine (t-mon-machine)",
        "    /peripheral (container)",
        "    /unattached (container)",
        "      /device[0] (t-mon-x86_64-cpu)",
    ]
    assert run(chardev, "info qom-tree /machine") == [
        "/machine (t-mon-machine)",
        "  /peripheral (container)",
        "  /unattached (container)",
        "    /device[0] (t-mon-x86_64-cpu)",
    ]
    assert run(chardev, "info qom-tree /nowhere") == ["Path '/nowhere' could not be resolved."]


def test_qom_tree_children_sorted_bytewise(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    unattached = container_get(object_get_root(), "/machine/unattached")
    for n in (2, 10, 1):
        child = object_new("container")
        unattached.add_child(f"device[{n}]", child)
        child.unref()
    names = [line.strip() for line in run(chardev, "info qom-tree /machine/unattached")[1:]]
    assert names == ["/device[0] (t-mon-x86_64-cpu)", "/device[10] (container)",
                     "/device[1] (container)", "/device[2] (container)"]


def test_qom_list_get_set(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    assert run(chardev, "qom-list") == ["/"]
    assert run(chardev, "qom-list /machine") == [
        "kernel (str)", "smp (uint32)", "unattached (child<container>)", "peripheral (child<container>)"]
    assert run(chardev, "qom-get /machine smp") == ["1"]
    assert run(chardev, "qom-get /machine kernel") == ['""']
    assert run(chardev, "qom-set /machine smp 0x10") == []
    assert run(chardev, "qom-get /machine smp") == ["16"]
    assert run(chardev, 'qom-set /machine kernel /boot/vmlinuz with "spaces"') == []
    assert run(chardev, "qom-get /machine kernel") == ['"/boot/vmlinuz with \\"spaces\\""']
    assert run(chardev, "qom-get /machine peripheral") == ['"/machine/peripheral"']
    assert run(chardev, "qom-get machine smp") == ["16"]  # a partial path


def test_qom_errors_are_one_line(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    assert run(chardev, "qom-list /nope") == ["Error: Device '/nope' not found"]
    assert run(chardev, "qom-get /machine nope") == ["Error: Property 't-mon-machine.nope' not found"]
    assert run(chardev, "qom-set /machine smp lots") == ["Error: Parameter 'smp' expects uint32"]
    assert run(chardev, "qom-set /machine smp 0x100000000") == ["Error: Parameter 'smp' expects uint32"]
    assert run(chardev, "qom-get /machine smp") == ["1"]


# --- qtree ------------------------------------------------------------------------------------------


def test_info_qtree(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    main = sysbus.sysbus_get_default()
    dev = qdev_new("t-mon-sysdev")
    dev.id = "uart0"
    assert isinstance(dev, SysBusDevice)
    dev.init_mmio(MemoryRegion.container("regs", 0x100))
    dev.init_gpio_in(lambda n, level: None, 2)
    dev.init_gpio_out(1)
    child_bus = qbus_new(TYPE_SYSTEM_BUS, dev, "inner.0")
    qdev.qdev_realize(dev, main)
    leaf = qdev_new("t-mon-leaf")
    qdev.qdev_realize(leaf, child_bus)
    lines = run(chardev, "info qtree")
    assert lines == [
        "bus: main-system-bus",
        "  type System",
        '  dev: t-mon-sysdev, id "uart0"',
        '    gpio-in "" 2',
        '    gpio-out "" 1',
        "    iobase = 1016 (0x3f8)",
        "    chardev = <null>",
        "    ram = 536870912 (512 MiB)",
        "    enabled = true",
        "    mmio ffffffffffffffff/0000000000000100",
        "    bus: inner.0",
        "      type System",
        '      dev: t-mon-leaf, id ""',
        "        level = 3 (0x3)",
        "        iobase = 1016 (0x3f8)",
        "        chardev = <null>",
        "        ram = 536870912 (512 MiB)",
        "        enabled = true",
    ]
    # A bus is a QOM child of its device (and its device list must not get in the way).
    tree = run(chardev, "info qom-tree /machine/unattached")
    at = tree.index("  /device[1] (t-mon-sysdev)")
    assert tree[at + 1] == "    /inner.0 (System)"
    brief = run(chardev, "info qtree -b")
    assert brief == ["bus: main-system-bus", "  type System", '  dev: t-mon-sysdev, id "uart0"',
                     '    gpio-in "" 2', '    gpio-out "" 1', "    bus: inner.0", "      type System",
                     '      dev: t-mon-leaf, id ""']


def test_qdev_prop_human_formats() -> None:
    assert qdev_prop_human("uint32", 0) == "0 (0x0)"
    assert qdev_prop_human("int32", -1) == "-1 (0xffffffffffffffff)"
    assert qdev_prop_human("str", "serial0") == '"serial0"'
    assert qdev_prop_human("str", None) == "<null>"
    assert qdev_prop_human("bool", False) == "false"
    assert qdev_prop_human("size", 1536) == "1536 (1.5 KiB)"
    assert qdev_prop_human("OnOffAuto", "auto") == '"auto"'


# --- memory -------------------------------------------------------------------------------------


def test_info_mtree(mon: Monitor, chardev: CaptureChardev) -> None:
    root = MemoryRegion.container("mon-root", 0x10000)
    root.add_subregion(0x1000, MemoryRegion.ram("mon-ram", 0x1000))
    space = AddressSpace(root, "mon-space")
    try:
        lines = run(chardev, "info mtree")
        at = lines.index("address-space: mon-space")
        assert lines[at + 1] == "  0000-ffff (prio 0, i/o): mon-root"
        assert lines[at + 2] == "    1000-1fff (prio 0, ram): mon-ram"
        flat = run(chardev, "info mtree -f")
        assert ' AS "mon-space", root: mon-root' in flat
        assert "  1000-1fff (prio 0, ram): mon-ram" in flat
    finally:
        space.destroy()


# --- CPUs -----------------------------------------------------------------------------------------


def test_info_cpus_and_registers(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    import os

    assert run(chardev, "info cpus") == [f"* CPU #0: thread_id={os.getpid()}"]
    lines = run(chardev, "info registers")
    assert lines[0].startswith("EAX=00000000 EBX=00000000 ECX=00000000 EDX=")
    assert lines[2].startswith("EIP=0000fff0 EFL=00000002 [-------] CPL=0")
    assert lines[4] == "CS =f000 ffff0000 0000ffff 00009b00"
    assert lines[-1] == "EFER=0000000000000000"


def test_info_registers_without_cpu(mon: Monitor, chardev: CaptureChardev) -> None:
    assert run(chardev, "info cpus") == []
    assert run(chardev, "info registers") == ["No CPU available"]


def test_info_qtree_pci_function(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    from pemu.hw.pci import pci

    def lpc_class_init(klass: ObjectClass, data: Any) -> None:
        k: pci.PCIDeviceClass = klass  # type: ignore[assignment]
        k.vendor_id, k.device_id, k.class_id = 0x8086, 0x2918, 0x0601

    if not qom.type_exists("t-mon-lpc"):
        qom.type_register(TypeInfo("t-mon-lpc", parent=pci.TYPE_PCI_DEVICE, class_init=lpc_class_init))
    host = qdev_new("t-mon-sysdev")
    bus = pci.pci_root_bus_new(host, "pcie.0", True)
    qdev.qdev_realize(host, sysbus.sysbus_get_default())
    lpc = qdev_new("t-mon-lpc")
    lpc.property_parse("addr", "1f")
    qdev.qdev_realize(lpc, bus)
    lines = run(chardev, "info qtree")
    at = lines.index('      dev: t-mon-lpc, id ""')
    assert lines[at - 2:at] == ["    bus: pcie.0", "      type PCIE"]
    assert lines[at + 1:at + 4] == [
        "        addr = 1f.0",
        "        multifunction = false",
        "        class ISA bridge, addr 00:1f.0, pci id 8086:2918 (sub 0000:0000)",
    ]


def test_utf8_input_echoes_as_typed_and_backspaces_whole_characters(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input("fé".encode())
    assert chardev.take().encode() == "fé".encode()
    chardev.push_input(b"\x7f\x7f\r")
    assert chardev.take() == "\b \b\b \b\r\n(qemu) "


def test_hostile_bytes_do_not_break_the_monitor(mon: Monitor, chardev: CaptureChardev) -> None:
    chardev.push_input(bytes(range(256)) + b"\xff\xfe\r")
    out = bytes(chardev.out)
    chardev.out.clear()
    assert out.endswith(b"(qemu) ")
    assert b"Traceback" not in out and b"Error: internal" not in out
    assert run(chardev, "info status") == ["VM status: paused"]


def test_info_name_from_the_machine(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    assert run(chardev, "info name") == []
    assert isinstance(machine, MonMachine)
    machine.name_ = "vm-under-test"
    assert run(chardev, "info name") == ["vm-under-test"]


def test_monitor_over_a_real_tcp_socket() -> None:
    import socket
    import time

    from pemu.chardev import qemu_chr_delete, qemu_chr_new
    from pemu.util.main_loop import main_loop

    chr = qemu_chr_new("mon-tcp", "tcp:127.0.0.1:0,server=on,wait=off")
    assert chr is not None
    m = monitor_init_hmp(chr)
    host, port = chr.local_address  # type: ignore[attr-defined]
    client = socket.create_connection((host, port))
    client.settimeout(0.05)
    received = b""

    def read_until(marker: bytes) -> bool:
        nonlocal received
        deadline = time.monotonic() + 3
        while marker not in received and time.monotonic() < deadline:
            main_loop().run_once(0.02)
            try:
                received += client.recv(4096)
            except TimeoutError:
                pass
        return marker in received

    try:
        assert read_until(b"(qemu) ")
        assert received == BANNER.encode() + b"(qemu) "
        received = b""
        client.sendall(b"info status\r\n")
        assert read_until(b"paused\r\n(qemu) ")
        assert received == b"info status\r\nVM status: paused\r\n(qemu) "
    finally:
        client.close()
        m.close()
        qemu_chr_delete("mon-tcp")


def test_info_registers_in_long_mode(mon: Monitor, chardev: CaptureChardev, machine: Object) -> None:
    from pemu.target.i386 import cpu_state as cs

    cpu = object_get_root().child("machine").child("unattached").child("device[0]")  # type: ignore[union-attr]
    env: CPUX86State = cpu.env  # type: ignore[union-attr]
    env.efer = cs.Efer.LME | cs.Efer.LMA
    env.cr0 = cs.CR0_PE_MASK | cs.CR0_PG_MASK
    env.rip = 0xFFFFFFFF81000000
    env.regs[cs.Reg.RBX] = 0x1234
    env.regs[cs.Reg.RDX] = 0
    env.rflags = 0x246
    env.segs[cs.SegReg.CS] = cs.SegmentCache(0x10, 0, 0xFFFFFFFF, cs.DESC_P_MASK | cs.DESC_S_MASK | cs.DESC_CS_MASK
                                             | cs.DESC_R_MASK | cs.DESC_A_MASK | cs.DESC_L_MASK | cs.DESC_G_MASK)
    lines = run(chardev, "info registers")
    assert lines[0] == "RAX=0000000000000000 RBX=0000000000001234 RCX=0000000000000000 RDX=0000000000000000"
    assert lines[4].startswith("RIP=ffffffff81000000 RFL=00000246 [---Z-P-] CPL=0")
    assert lines[6] == "CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]"
    assert lines[-2].startswith("CR0=80000001 CR2=0000000000000000")
    assert lines[-1] == "EFER=0000000000000500"
