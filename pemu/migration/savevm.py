"""A whole VM's state as sections of one stream (QEMU's migration/savevm.c).

What is saved, in order:

* the configuration that must match on the destination: the machine type,
  the vCPU topology and the CPU model;
* guest RAM (:mod:`pemu.migration.ram`): the block list first, then pages
  while the VM runs, then the rest once it is stopped;
* the virtual clock (QEMU's "timer" section), so that every deadline saved
  by a device means the same instant on the destination;
* every realized device of the VM, walking its QOM tree in creation order,
  each in a section named by its canonical QOM path, with the device class's
  :attr:`~pemu.hw.core.qdev.DeviceClass.vmsd`.

A device class without a description blocks saving
(:class:`MigrationBlocked`, QEMU's "State blocked by non-migratable device").

The stream (all integers big-endian; "str" is a length byte and UTF-8)::

    be32 magic "PEVM"   be32 stream version (1)   be32 flags (bit 0: mapped-ram)
    CONFIGURATION 0x07  str machine type  be32 cpus, max_cpus, sockets, dies,
                        cores, threads  str CPU model
    SECTION_START 0x01  header "ram"  RAM setup (block list)  footer
    SECTION_PART  0x02  be32 section id  RAM page records, EOS  footer   (any number)
    SECTION_END   0x03  be32 section id  RAM page records, EOS  footer
    SECTION_FULL  0x04  header "timer"  be32 length  state  footer
    SECTION_FULL  0x04  header <QOM path>  be32 length  state  footer   (each device)
    EOF           0x1f  be32 CRC-32 of every byte before it

    header = be32 section id, str idstr, be32 instance (0), be32 version, str
             description name
    footer = FOOTER 0x7e, be32 section id

A device section carries its length, so a description that reads less or
more than was saved is caught at the section (as is a missing footer, QEMU's
"Missing section footer for ..."), not as garbage in the next one.

With the mapped-ram layout (``SaveVMState(..., mapped_ram=True)``, a sink
that is a regular file) the RAM setup also gives each block's offset in the
file and the offset of the rest of the stream; no page records are sent: the
pages are written at their place in the file and the stream goes on (END,
"timer", devices, EOF) after the RAM area.  The loader tells the layouts
apart by the flags and, for mapped-ram, maps the RAM area instead of reading
it (see :mod:`pemu.migration.ram`).

Loading checks everything and refuses a stream with one line
(:class:`LoadVMError`): bad magic, a newer version, unknown flags, another
machine type or topology or CPU model, RAM blocks or sizes that differ, an
unknown section type, an unknown or repeated section, a device of this VM
missing from the stream, a section holding another description or a newer
version of it, a section read short or long, a missing footer, a bad
checksum, a stream cut anywhere.  The caller discards a VM whose load failed.
"""

from __future__ import annotations

import io
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from pemu.hw.core.qdev import DeviceClass, DeviceState
from pemu.migration.qemu_file import MigrationStreamError, QEMUFileReader, QEMUFileWriter
from pemu.migration.ram import RAMLoadError, RAMLoadState, RAMState, ram_mapped_from
from pemu.migration.vmstate import (
    U64,
    VMStateDescription,
    VMStateError,
    VMStateField,
    vmstate_load_state,
    vmstate_save_state,
)
from pemu.qom.object import Object
from pemu.util.vm_context import set_current_vm

if TYPE_CHECKING:
    from pemu.system.vm import VirtualMachine


class MigrationBlocked(Exception):
    """Something in the VM cannot be saved (one line naming it)."""


def migratable_devices(vm: VirtualMachine) -> list[tuple[str, DeviceState, VMStateDescription]]:
    """Every realized device of ``vm`` with its canonical QOM path and its
    description, in QOM tree (creation) order; MigrationBlocked names the
    first device that has no description."""
    found: list[tuple[str, DeviceState, VMStateDescription]] = []
    if vm.qom_root is None:
        return found

    def walk(obj: Object, path: str) -> None:
        for name, child in obj.children():
            child_path = f"{path}/{name}"
            if isinstance(child, DeviceState) and child.realized:
                vmsd = _device_class(child).vmsd
                if vmsd is None:
                    raise MigrationBlocked(f"State blocked by non-migratable device '{child_path}' "
                                           f"({child.typename})")
                found.append((child_path, child, vmsd))
            walk(child, child_path)

    walk(vm.qom_root, "")
    return found


def _device_class(dev: DeviceState) -> DeviceClass:
    klass = dev.klass
    assert isinstance(klass, DeviceClass)
    return klass


# --- the virtual clock ("timer") -------------------------------------------------------


class _ClockState:
    """The saved view of the VM's virtual clock: its value while the VM is stopped."""

    def __init__(self, vm: VirtualMachine) -> None:
        self.vm = vm
        self.virtual_ns = 0

    def pre_save(self) -> None:
        virtual = self.vm.timers.virtual
        if virtual.stopped_at is None:
            raise VMStateError("the virtual clock is saved while the VM runs")
        self.virtual_ns = virtual.stopped_at

    def post_load(self, version_id: int) -> None:
        virtual = self.vm.timers.virtual
        if virtual.stopped_at is None:
            raise VMStateError("state loaded into a running VM")
        virtual.stopped_at = self.virtual_ns


VMSTATE_TIMERS = VMStateDescription(
    "timer", version_id=1,
    fields=[VMStateField("virtual_ns", U64)],
    pre_save=_ClockState.pre_save, post_load=_ClockState.post_load)


def clock_state(vm: VirtualMachine) -> _ClockState:
    """The object the "timer" section saves from and loads into."""
    return _ClockState(vm)


# --- the stream ------------------------------------------------------------------------

QEMU_VM_FILE_MAGIC = 0x5045564D  # "PEVM" (QEMU's is "QEVM"; the formats differ)
QEMU_VM_FILE_VERSION = 1
STREAM_FLAG_MAPPED_RAM = 0x1
STREAM_FLAGS_KNOWN = STREAM_FLAG_MAPPED_RAM
MAX_SECTION_SIZE = 64 << 20  # a device's state; more is a corrupt length
RAM_SECTION_ID = 0
RAM_SECTION_VERSION = 1
TIMER_SECTION_ID = 1


class SectionType(IntEnum):
    """The byte that starts each part of the stream (QEMU's QEMU_VM_*)."""

    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    CONFIGURATION = 0x07
    EOF = 0x1F
    SECTION_FOOTER = 0x7E


class LoadVMError(Exception):
    """A stream this VM cannot load (one line naming the mismatch; the caller
    prints "pemu: load of migration failed: <msg>")."""


class _Configuration:
    """What must be the same on both sides besides RAM and devices."""

    def __init__(self, vm: VirtualMachine) -> None:
        machine = vm.machine
        if machine is None:
            raise MigrationStreamError("there is no machine to migrate")
        self.machine_type = machine.mc.name
        smp = machine.smp
        self.topology = (smp.cpus, smp.max_cpus, smp.sockets, smp.dies, smp.cores, smp.threads)
        self.cpu_type = machine.cpu_type or ""

    def save(self, f: QEMUFileWriter) -> None:
        f.put_be8(SectionType.CONFIGURATION)
        f.put_counted_string(self.machine_type)
        for value in self.topology:
            f.put_be32(value)
        f.put_counted_string(self.cpu_type)

    def check(self, f: QEMUFileReader) -> None:
        machine_type = f.get_counted_string()
        if machine_type != self.machine_type:
            raise LoadVMError(f"Machine type received is '{machine_type}' and local is '{self.machine_type}'")
        topology = tuple(f.get_be32() for _ in self.topology)
        if topology != self.topology:
            names = ("cpus", "maxcpus", "sockets", "dies", "cores", "threads")
            theirs = ",".join(f"{n}={v}" for n, v in zip(names, topology, strict=True))
            ours = ",".join(f"{n}={v}" for n, v in zip(names, self.topology, strict=True))
            raise LoadVMError(f"vCPU topology mismatch: -smp {theirs} in != {ours}")
        cpu_type = f.get_counted_string()
        if cpu_type != self.cpu_type:
            raise LoadVMError(f"CPU model mismatch: '{cpu_type}' in != '{self.cpu_type}'")


def _put_section_header(f: QEMUFileWriter, kind: SectionType, section_id: int, idstr: str,
                        version_id: int, name: str) -> None:
    f.put_be8(kind)
    f.put_be32(section_id)
    f.put_counted_string(idstr)
    f.put_be32(0)  # instance: a QOM path names one device
    f.put_be32(version_id)
    f.put_counted_string(name)


def _put_section_footer(f: QEMUFileWriter, section_id: int) -> None:
    f.put_be8(SectionType.SECTION_FOOTER)
    f.put_be32(section_id)


def _section_header_size(idstr: str, name: str) -> int:
    return 1 + 4 + 1 + len(idstr.encode()) + 4 + 4 + 1 + len(name.encode())


class SaveVMState:
    """One outgoing save or migration of ``vm`` into ``f`` (QEMU's
    qemu_savevm_state_setup/iterate/complete):

    * :meth:`setup`: header, configuration, RAM block list; the dirty log
      starts (every page counts as dirty at first); a VM with a device
      without a description is refused here (:class:`MigrationBlocked`);
    * :meth:`iterate` (VM running) sends dirty pages, :meth:`pending_bytes`
      syncs the dirty log and says how much RAM is left;
    * :meth:`complete` (VM stopped by the caller): the rest of RAM, the
      "timer" section, every device, EOF and checksum, flushed;
    * :meth:`cleanup` stops the dirty log, also after a cancel or a failure.

    :attr:`live` is False when the vCPUs' writes cannot be tracked: the
    caller then stops the VM before :meth:`complete` copies everything.
    With ``mapped_ram`` the sink is a seekable regular file (``file:``) and
    RAM goes at fixed places in it (see the module's description).

    Errors: MigrationBlocked, MigrationStreamError (the sink failed),
    VMStateError (a device refused to save)."""

    def __init__(self, vm: VirtualMachine, f: QEMUFileWriter, mapped_ram: bool = False) -> None:
        self.vm = vm
        self.f = f
        self.mapped_ram = mapped_ram
        self.ram = RAMState(vm, f, mapped_ram)
        self.live = False

    @property
    def ram_bytes_transferred(self) -> int:
        """RAM bytes sent so far (with mapped-ram, written into the file)."""
        return self.ram.transferred

    def setup(self) -> None:
        f = self.f
        migratable_devices(self.vm)  # refuse an unmigratable VM before any RAM is sent
        sink: Any = f.sink
        try:
            fd = sink.fileno()
        except (OSError, AttributeError, io.UnsupportedOperation):
            fd = -1
        if fd >= 0 and ram_mapped_from(self.vm, fd):
            raise MigrationStreamError("cannot save into the file this VM's RAM is mapped from "
                                       "(it was restored from it): save to a new file")
        f.put_be32(QEMU_VM_FILE_MAGIC)
        f.put_be32(QEMU_VM_FILE_VERSION)
        f.put_be32(STREAM_FLAG_MAPPED_RAM if self.mapped_ram else 0)
        _Configuration(self.vm).save(f)
        _put_section_header(f, SectionType.SECTION_START, RAM_SECTION_ID, "ram", RAM_SECTION_VERSION, "ram")
        if self.mapped_ram:
            f.flush()
            try:
                position = sink.tell()
            except (OSError, AttributeError, io.UnsupportedOperation) as e:
                raise MigrationStreamError(f"mapped-ram needs a regular file to write to: {e}") from None
            self.ram.plan_mapped_ram(position + self.ram.setup_payload_size() + 5)
        self.ram.save_setup()
        _put_section_footer(f, RAM_SECTION_ID)
        if self.mapped_ram:
            self.ram.open_mapped_ram_file()
        self.live = self.ram.live

    def iterate(self, max_bytes: int) -> int:
        if self.ram.dirty_pages == 0:
            return 0
        if self.mapped_ram:
            return self.ram.save_pages(max_bytes)
        f = self.f
        before = f.bytes_put
        f.put_be8(SectionType.SECTION_PART)
        f.put_be32(RAM_SECTION_ID)
        self.ram.save_pages(max_bytes)
        self.ram.end_part()
        _put_section_footer(f, RAM_SECTION_ID)
        return f.bytes_put - before

    def pending_bytes(self) -> int:
        return self.ram.pending_bytes()

    def complete(self) -> None:
        f = self.f
        devices = migratable_devices(self.vm)
        self.ram.sync_dirty_log()
        if self.mapped_ram:
            self.ram.save_pages(None)
            self.ram.seek_to_tail()
        f.put_be8(SectionType.SECTION_END)
        f.put_be32(RAM_SECTION_ID)
        if not self.mapped_ram:
            self.ram.save_pages(None)
        self.ram.end_part()
        _put_section_footer(f, RAM_SECTION_ID)
        sections: list[tuple[str, Any, VMStateDescription]] = [("timer", clock_state(self.vm), VMSTATE_TIMERS)]
        sections += devices
        for section_id, (idstr, obj, vmsd) in enumerate(sections, start=TIMER_SECTION_ID):
            body = io.BytesIO()
            writer = QEMUFileWriter(body)
            vmstate_save_state(writer, vmsd, obj)
            writer.flush()
            data = body.getvalue()
            if len(data) > MAX_SECTION_SIZE:
                raise MigrationStreamError(f"the state of '{idstr}' is too large to migrate ({len(data)} bytes)")
            _put_section_header(f, SectionType.SECTION_FULL, section_id, idstr, vmsd.version_id, vmsd.name)
            f.put_be32(len(data))
            f.put_buffer(data)
            _put_section_footer(f, section_id)
        f.put_be8(SectionType.EOF)
        f.put_be32(f.crc)
        f.flush()

    def cleanup(self) -> None:
        self.ram.cleanup()


def qemu_loadvm_state(vm: VirtualMachine, f: QEMUFileReader) -> None:
    """Load a whole stream into ``vm`` (stopped; made the current VM while
    it loads).  LoadVMError names what does not fit, in one line; the VM is
    then partly loaded and must be discarded."""
    previous = vm.activate()
    try:
        _LoadVM(vm, f).run()
    except (MigrationStreamError, RAMLoadError, LoadVMError) as e:
        raise LoadVMError(_printable(str(e))) from None
    finally:
        set_current_vm(previous)


def _printable(message: str) -> str:
    """One line whatever names a corrupt stream put in it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class _LoadVM:
    """The destination's walk through one stream."""

    def __init__(self, vm: VirtualMachine, f: QEMUFileReader) -> None:
        self.vm = vm
        self.f = f
        self.ram = RAMLoadState(vm)
        self.mapped_ram = False
        self.ram_ended = False
        self.devices = {path: (dev, vmsd) for path, dev, vmsd in migratable_devices(vm)}
        self.loaded: set[str] = set()
        self.timer_loaded = False

    def run(self) -> None:
        f = self.f
        magic = f.get_be32()
        if magic != QEMU_VM_FILE_MAGIC:
            raise LoadVMError("Not a migration stream (bad magic)")
        version = f.get_be32()
        if version != QEMU_VM_FILE_VERSION:
            raise LoadVMError(f"Unsupported migration stream version {version} "
                              f"(this pemu reads version {QEMU_VM_FILE_VERSION})")
        flags = f.get_be32()
        if flags & ~STREAM_FLAGS_KNOWN:
            raise LoadVMError(f"Unsupported migration stream flags {flags:#x}")
        self.mapped_ram = bool(flags & STREAM_FLAG_MAPPED_RAM)
        if f.get_be8() != SectionType.CONFIGURATION:
            raise LoadVMError("Configuration section missing")
        _Configuration(self.vm).check(f)
        while True:
            kind = f.get_be8()
            if kind == SectionType.SECTION_START:
                self._load_ram_setup()
            elif kind in (SectionType.SECTION_PART, SectionType.SECTION_END):
                self._load_ram_part(kind == SectionType.SECTION_END)
            elif kind == SectionType.SECTION_FULL:
                self._load_full_section()
            elif kind == SectionType.EOF:
                self._check_eof()
                return
            else:
                raise LoadVMError(f"Unknown savevm section type {kind}")

    def _header(self) -> tuple[int, str, int, int, str]:
        f = self.f
        section_id = f.get_be32()
        idstr = f.get_counted_string()
        instance = f.get_be32()
        version = f.get_be32()
        name = f.get_counted_string()
        return section_id, idstr, instance, version, name

    def _footer(self, section_id: int, idstr: str) -> None:
        f = self.f
        if f.get_be8() != SectionType.SECTION_FOOTER or f.get_be32() != section_id:
            raise LoadVMError(f"Missing section footer for {idstr}")

    def _load_ram_setup(self) -> None:
        section_id, idstr, instance, version, name = self._header()
        if idstr != "ram" or instance != 0 or name != "ram" or section_id != RAM_SECTION_ID:
            raise LoadVMError(f"Unknown savevm section or instance '{idstr}' {instance}")
        if self.ram.setup_done:
            raise LoadVMError("section 'ram' appears twice in the stream")
        if version != RAM_SECTION_VERSION:
            raise LoadVMError(f"savevm: unsupported version {version} for 'ram' v{RAM_SECTION_VERSION}")
        self.ram.load_setup(self.f, self.mapped_ram, self.f.bytes_read)
        self._footer(section_id, idstr)
        if self.mapped_ram:
            self._map_ram()

    def _map_ram(self) -> None:
        """mapped-ram: the RAM area becomes the blocks' memory (from a pipe:
        it is read into them); the stream goes on after it."""
        assert self.ram.layout is not None
        source: Any = self.f.source
        try:
            fd = source.fileno()
            seekable = source.seekable()
        except (OSError, AttributeError, io.UnsupportedOperation):
            seekable = False
        if not seekable:
            self.ram.read_areas(self.f)  # a pipe: RAM read, not mapped
            return
        self.ram.map_file(fd)
        try:
            source.seek(self.ram.layout.tail_offset)
        except OSError as e:
            raise LoadVMError(f"failed to read the migration stream: {e.strerror or e}") from None

    def _load_ram_part(self, end: bool) -> None:
        section_id = self.f.get_be32()
        if section_id != RAM_SECTION_ID or not self.ram.setup_done or self.ram_ended:
            raise LoadVMError(f"Unknown savevm section {section_id}")
        self.ram.load_pages(self.f)  # with mapped-ram, an EOS alone
        self._footer(section_id, "ram")
        self.ram_ended = end

    def _load_full_section(self) -> None:
        f = self.f
        section_id, idstr, instance, version, name = self._header()
        obj: Any
        if idstr == "timer":
            vmsd = VMSTATE_TIMERS
            obj = clock_state(self.vm)
            seen = self.timer_loaded
        else:
            found = self.devices.get(idstr)
            if found is None or instance != 0:
                raise LoadVMError(f"Unknown savevm section or instance '{idstr}' {instance}")
            obj, vmsd = found
            seen = idstr in self.loaded
            if not self.timer_loaded:
                raise LoadVMError(f"section '{idstr}' comes before the 'timer' section")
        if instance != 0:
            raise LoadVMError(f"Unknown savevm section or instance '{idstr}' {instance}")
        if seen:
            raise LoadVMError(f"section '{idstr}' appears twice in the stream")
        if name != vmsd.name:
            raise LoadVMError(f"section '{idstr}' holds '{name}', this pemu has '{vmsd.name}' there")
        if version > vmsd.version_id:
            raise LoadVMError(f"savevm: unsupported version {version} for '{idstr}' v{vmsd.version_id}")
        if version < vmsd.minimum_version_id:
            raise LoadVMError(f"savevm: version {version} of '{idstr}' is older than this pemu reads "
                              f"(from v{vmsd.minimum_version_id})")
        length = f.get_be32()
        if length > MAX_SECTION_SIZE:
            raise LoadVMError(f"section '{idstr}' is too large ({length} bytes)")
        body = QEMUFileReader(io.BytesIO(f.get_buffer(length)))
        try:
            vmstate_load_state(body, vmsd, obj, version, where=idstr)
        except MigrationStreamError:
            raise LoadVMError(f"section '{idstr}' is shorter than its description reads") from None
        except VMStateError as e:
            raise LoadVMError(f"error while loading state for instance 0x0 of device '{idstr}': {e}") from None
        extra = length - body.bytes_read
        if extra:
            raise LoadVMError(f"section '{idstr}' has {extra} bytes more than its description reads")
        self._footer(section_id, idstr)
        if idstr == "timer":
            self.timer_loaded = True
        else:
            self.loaded.add(idstr)

    def _check_eof(self) -> None:
        f = self.f
        expected = f.crc
        if f.get_be32() != expected:
            raise LoadVMError("the migration stream is corrupt (checksum mismatch)")
        if not self.ram.setup_done or not self.ram_ended:
            raise LoadVMError("section 'ram' is missing from the stream")
        if not self.timer_loaded:
            raise LoadVMError("section 'timer' is missing from the stream")
        for path in self.devices:
            if path not in self.loaded:
                raise LoadVMError(f"section '{path}' is missing from the stream")
