"""One virtual machine and everything it owns (Firecracker's ``Vmm``; QEMU
spreads the same state over globals and reaches the machine through
``current_machine``).

A :class:`VirtualMachine` owns, for one guest: its root memory regions and
address spaces (and so its RAM blocks), its vCPUs and their threads, its
accelerator, its clocks and timers, its run state and requests, its reset
handlers and power-button notifiers, its chardevs and monitors, its serial
back-ends, its ``-global`` settings, and its QOM tree (the ``/machine``,
``/objects`` and ``/chardevs`` containers under its own root).  The machine
object reaches it as ``machine.vm``; code below the machine reaches the one
being built or run through :func:`pemu.util.vm_context.current_vm`.

Process-wide, as in QEMU, and said so where they are defined: the QOM type
table, the main loop and its file-descriptor handlers, the big lock, the
option tables, logging, and the host's stdin (one stdio chardev a process).

:meth:`VirtualMachine.destroy` ends everything the VM started: vCPU threads
joined, accelerator state freed, chardevs and monitors closed (their file
descriptors with them), disk images closed, timers disarmed, address spaces unregistered, the
QOM tree unparented.  Two VMs can exist side by side; building one never
touches the other's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pemu.hw.core.qdev import GlobalProperty, MachineInitPhase
from pemu.system import cpus
from pemu.system.memory import VMMemory
from pemu.system.runstate import VMRunState
from pemu.util.timer import TimerListGroup
from pemu.util.vm_context import set_current_vm

if TYPE_CHECKING:
    from pemu.accel.accel import AccelOps
    from pemu.chardev.char import Chardev
    from pemu.chardev.char_fe import CharBackend
    from pemu.chardev.char_mux import MuxChardev
    from pemu.hw.core.machine import MachineState
    from pemu.hw.core.qdev import BusState
    from pemu.migration.migration import MigrationState
    from pemu.monitor.fds import FdSets
    from pemu.monitor.monitor import Monitor
    from pemu.monitor.qmp import MonitorQMP
    from pemu.net.net import NetState
    from pemu.qapi.events import EventListener
    from pemu.qom.object import Object
    from pemu.system.physmem import SystemMemory


class VirtualMachine:
    """Everything one guest owns; see the module's description."""

    def __init__(self) -> None:
        self.memory = VMMemory()
        self.physmem: SystemMemory | None = None  # cpu_exec_init_all()
        self.timers = TimerListGroup()
        self.run = VMRunState()
        self.accel: AccelOps | None = None
        self.cpus: list[Any] = []  # vCPUs with a thread (QEMU's CPU_FOREACH list)
        self.next_cpu_index = 0
        self.phase = MachineInitPhase.NO_MACHINE
        self.global_props: list[GlobalProperty] = []
        self.bus_counts: dict[str, int] = {}
        self.reset_handlers: list[Any] = []
        self.main_system_bus: BusState | None = None
        self.qom_root: Object | None = None
        self.chardevs: dict[str, Chardev] = {}  # by id, in creation order
        self.muxes: list[MuxChardev] = []
        # QEMU holds back the OPENED events of muxes until the command line
        # has been processed, so banners go to whichever front-end ends with
        # the focus.
        self.muxes_opened = True
        self.monitors: list[Monitor] = []
        self.qmp_monitors: list[MonitorQMP] = []
        self.fdsets: FdSets | None = None  # -add-fd's descriptors (made when first used)
        # Who receives QAPI events (the QMP monitors): pemu.qapi.events.qapi_event_send.
        self.event_listeners: list[EventListener] = []
        self.serial_hds: list[Chardev | None] = []  # -serial back-ends, COM1 first
        # (mux, front-end) pairs whose front-end takes the input focus once the board exists.
        self.focus_after_board: list[tuple[Chardev, CharBackend]] = []
        self.isa_serial_count = 0
        # The board's interrupt controllers take MSIs (QEMU's msi_nonbroken): PCI
        # functions offer the MSI capability only then.
        self.msi_nonbroken = False
        self.net: NetState | None = None  # -netdev, -nic, -net and the NICs' clients (made on first use)
        # The interrupt controllers take MSIs, so PCI functions may offer MSI/MSI-X
        # (QEMU's msi_nonbroken global; set by the board with the local APICs).
        self.msi_nonbroken = False
        self.machine: MachineState | None = None
        # Its migrations, outgoing and incoming (pemu.migration.migration.migrate_get_current makes it).
        self.migration: MigrationState | None = None
        self.destroyed = False

    # --- being the current VM ---------------------------------------------------------

    def activate(self) -> VirtualMachine | None:
        """Make this the VM that is built or run; returns the previous one."""
        assert not self.destroyed, "a destroyed VM cannot be made current"
        return set_current_vm(self)

    def serial_hd(self, index: int) -> Chardev | None:
        """The back-end of serial port ``index`` (COM1 is 0), or None."""
        return self.serial_hds[index] if 0 <= index < len(self.serial_hds) else None

    # --- the end -------------------------------------------------------------------------

    def destroy(self) -> None:
        """Stop and release everything this VM owns (see the module's description).

        The VM is made current while it is torn down and the previous current
        VM (if another) is current again afterwards."""
        if self.destroyed:
            return
        previous = self.activate()
        try:
            self._teardown()
        finally:
            self.destroyed = True
            set_current_vm(previous if previous is not self else None)

    def _teardown(self) -> None:
        if self.migration is not None:
            self.migration.shutdown()  # a migration thread ends first: it uses everything below
        for cpu in list(self.cpus):
            cpus.destroy_vcpu(cpu)
        if self.accel is not None:
            self.accel.cleanup()
            self.accel = None
        for mon in list(self.monitors):
            mon.close()
        for qmp_mon in list(self.qmp_monitors):
            qmp_mon.close()
        self.event_listeners.clear()
        for chardev in reversed(list(self.chardevs.values())):
            chardev.close()
        if self.fdsets is not None:
            self.fdsets.close_all()
            self.fdsets = None
        self.chardevs.clear()
        self.muxes.clear()
        self.serial_hds.clear()
        self.focus_after_board.clear()
        self.timers.clear()
        if self.net is not None:
            self.net.cleanup()  # sockets, slirp: their fds close
            self.net = None
        self.run.powerdown_notifiers.clear()
        self.run.change_state_handlers.clear()
        self.reset_handlers.clear()
        block = self.machine.opened_block_devices() if self.machine is not None else None
        if block is not None:
            block.close_all()  # flushed, closed, their locks released
        if self.qom_root is not None:
            for _name, child in list(self.qom_root.children()):
                child.unparent()
            self.qom_root = None
        self.machine = None
        self.main_system_bus = None
        for space in list(self.memory.address_spaces):
            for listener in list(space.listeners):
                space.remove_listener(listener)
            space.destroy()
        self.memory.ram_write_notifiers.clear()
        self.physmem = None
        self.memory.ram_blocks = [block for block in self.memory.ram_blocks if not block.release()]
