"""Start-up (QEMU's system/vl.c), in the seed's order and names.

    main()
    |--qemu_init()
    |  |--select_machine()           find the -machine class among all TYPE_MACHINE classes
    |  |--qemu_create_machine()      set_memory_options(), the machine object, cpu_exec_init_all()
    |  |--configure_accelerators()
    |  |--qmp_x_exit_preconfig()
    |     |--qemu_init_board()       create_default_memdev(), machine_run_board_init() -> pc_q35_init()
    |     |--qemu_create_cli_devices()
    |     |--qdev_machine_creation_done()  phase MACHINE_READY, system reset, vm_start()
    |--qemu_main_loop()
    |--qemu_cleanup()
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pemu import version_banner
from pemu.chardev.char_mux import MuxChardev
from pemu.cli.options import (
    ParsedOption,
    parse_command_line,
    qemu_options_help,
    register_standard_opts,
    unimplemented_options,
)
from pemu.hw.core.machine import TYPE_MACHINE, MachineClass, MachineState, machine_reset
from pemu.hw.core.qdev import (
    GlobalProperty,
    MachineInitPhase,
    phase_advance,
    qdev_prop_register_global,
)
from pemu.qom.object import (
    QOMError,
    container_get,
    object_check,
    object_class_check,
    object_class_get_list_sorted,
    object_get_root,
    object_new_with_class,
)
from pemu.system import cpus, runstate
from pemu.system.runstate import RunState, ShutdownCause
from pemu.system.vm import VirtualMachine
from pemu.util import log
from pemu.util.error import EarlyExit, UserError
from pemu.util.qemu_opts import QemuOpts, qemu_global_option
from pemu.util.vm_context import current_vm, set_current_vm

if TYPE_CHECKING:
    from pemu.accel.accel import AccelRequest


def _register_all_types() -> None:
    """Import every module that registers QOM types: the one known point
    where the type registry is filled (QEMU's module_call_init).  The test
    devices' modules wait until a -device names them (qdev_monitor.DEVICE_MODULES)."""
    import pemu.backends.hostmem  # noqa: F401
    import pemu.hw.i386.pc_q35  # noqa: F401
    import pemu.hw.ide.qdev  # noqa: F401  (ide-hd, ide-cd: no IDE bus until the AHCI controller)
    import pemu.hw.isa.lpc_ich9  # noqa: F401
    import pemu.hw.isa.pc_legacy  # noqa: F401
    import pemu.hw.pci_host.q35  # noqa: F401
    from pemu.target.i386.cpu import x86_register_cpu_types

    x86_register_cpu_types()


DEBUGCON_CHARDEV = "debugcon"  # the back-end -debugcon makes for its isa-debugcon


class Config:
    """What the command line asked for, gathered before anything is built."""

    machine: QemuOpts | None = None
    memory: QemuOpts | None = None
    memory_location: str = "-m"
    smp: QemuOpts | None = None
    smp_location: str = "-smp"
    cpu_model: str | None = None
    debugcon: tuple[str, str] | None = None  # -debugcon: (back-end spec, location)
    mem_lock: bool = False  # -overcommit mem-lock=on
    cpu_pm: bool = False  # -overcommit cpu-pm=on
    overcommit_location: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    bios: str | None = None
    name: str | None = None
    nodefaults: bool = False
    nographic: bool = False
    display: str | None = None
    start_paused: bool = False
    no_reboot: bool = False
    no_shutdown: bool = False
    snapshot: bool = False  # -snapshot
    incoming: str | None = None  # -incoming URI (or "defer")
    incoming_location: str = "-incoming"

    def __init__(self) -> None:
        self.accels: list[AccelRequest] = []  # -accel, -enable-kvm or -machine accel=, in order
        self.devices: list[tuple[QemuOpts, str]] = []
        self.globals: list[GlobalProperty] = []  # -global, for the VM's devices
        self.objects: list[tuple[QemuOpts, str]] = []
        self.chardevs: list[tuple[QemuOpts, str]] = []
        self.serials: list[str] = []
        self.monitors: list[tuple[str, str]] = []  # (monitor|mon|qmp|qmp-pretty|mon-qmp[-pretty], spec)
        self.add_fds: list[tuple[int, int, str | None]] = []  # -add-fd (fd, set, opaque)
        self.data_dirs: list[str] = []
        self.fw_cfg_files: list[tuple[str, bytes]] = []  # -fw_cfg name=...
        self.smbios: list[tuple[QemuOpts, str]] = []
        self.nets: list[tuple[str, QemuOpts, str]] = []  # (-netdev|-nic|-net, opts, location)
        self.block_options: list[ParsedOption] = []  # -drive, -hda..., -blockdev in order


# --- the command line ----------------------------------------------------------------------


def parse_config(argv: list[str]) -> Config:
    # The option tables are process-wide, as in QEMU; a command line starts
    # them empty, so a second VM built in the process inherits nothing.
    for opts_list in register_standard_opts():
        opts_list.reset()
    parsed = parse_command_line(argv)
    cfg = Config()
    # The option table's `implemented` flag decides (and -help shows it).
    for opt in unimplemented_options(parsed):
        raise opt.error(f"option '-{opt.option.name}' is not supported by pemu yet")
    for opt in parsed:
        _apply_option(cfg, opt)
    return cfg


def _apply_option(cfg: Config, opt: ParsedOption) -> None:
    name, arg = opt.name, opt.arg
    if name in ("help", "h"):
        sys.stdout.write(version_banner() + qemu_options_help("pemu") + "\n")
        raise EarlyExit(0)
    if name == "version":
        sys.stdout.write(version_banner())
        raise EarlyExit(0)
    if name == "machine":
        cfg.machine = opt.parse_opts()
    elif name == "m":
        cfg.memory = opt.parse_opts()
        cfg.memory_location = opt.location
    elif name == "smp":
        cfg.smp = opt.parse_opts()
        cfg.smp_location = opt.location
    elif name == "cpu":
        cfg.cpu_model = arg
    elif name == "accel":
        opts = opt.parse_opts()
        if opts.help_wanted:
            from pemu.accel.accel import accel_help

            sys.stdout.write(accel_help())
            raise EarlyExit(0)
        from pemu.accel.accel import accel_requests

        accel = opts.get("accel")
        if not accel:
            raise opt.error("Parameter 'accel' is missing")
        props = [(key, value) for key, value in opts.items() if key != "accel"]
        cfg.accels += accel_requests(accel, opt.location, props)
    elif name == "enable-kvm":
        from pemu.accel.accel import AccelRequest

        cfg.accels.append(AccelRequest("kvm", (), opt.location))
    elif name == "device":
        cfg.devices.append((opt.parse_opts(), opt.location))
    elif name == "global":
        assert arg is not None
        g = qemu_global_option(arg, opt.location)
        cfg.globals.append(GlobalProperty(g.driver, g.property, g.value))
    elif name == "object":
        cfg.objects.append((opt.parse_opts(), opt.location))
    elif name == "chardev":
        opts = opt.parse_opts()
        if opts.help_wanted or opts.get("backend") == "help":
            from pemu.chardev.registry import chardev_help

            sys.stdout.write(chardev_help() + "\n")
            raise EarlyExit(0)
        cfg.chardevs.append((opts, opt.location))
    elif name == "serial":
        assert arg is not None
        cfg.serials.append(arg)
    elif name == "overcommit":
        opts = opt.parse_opts()   # the options merge: the last word on each key wins
        cfg.mem_lock = opts.get_bool("mem-lock", cfg.mem_lock)
        cfg.cpu_pm = opts.get_bool("cpu-pm", cfg.cpu_pm)
        cfg.overcommit_location = opt.location
    elif name == "debugcon":
        assert arg is not None
        if cfg.debugcon is not None:   # QEMU's device opts "debugcon" exist already
            raise opt.error("please use -device isa-debugcon,chardev=xxx for multiple debugcon ports")
        cfg.debugcon = (arg, opt.location)
        from pemu.util.qemu_opts import opts_registry

        cfg.devices.append((opts_registry.find("device").parse(
            f"isa-debugcon,chardev={DEBUGCON_CHARDEV}", True, opt.location), opt.location))
    elif name == "monitor":
        assert arg is not None
        cfg.monitors.append(("monitor", arg))
    elif name == "mon":
        opts = opt.parse_opts()
        mode = opts.get("mode", "readline")
        if mode not in ("readline", "control"):
            raise opt.error(f"Parameter 'mode' does not accept value '{mode}'")
        pretty = opts.get_bool("pretty", False)
        if pretty and mode == "readline":
            raise opt.error("'pretty' is not compatible with HMP monitors")
        chardev = opts.get("chardev")
        if not chardev:
            raise opt.error("Parameter 'chardev' is missing")
        kind = "mon" if mode == "readline" else ("mon-qmp-pretty" if pretty else "mon-qmp")
        cfg.monitors.append((kind, chardev))
    elif name == "add-fd":
        opts = opt.parse_opts()
        from pemu.monitor.fds import check_inherited_fd

        fd, fdset_id = opts.get_number("fd", -1), opts.get_number("set", -1)
        problem = check_inherited_fd(fd)
        if problem is None and fdset_id < 0:
            problem = "set option is required and must be non-negative"
        if problem is not None:
            raise opt.error(problem)
        cfg.add_fds.append((fd, fdset_id, opts.get("opaque")))
    elif name in ("qmp", "qmp-pretty"):
        assert arg is not None
        cfg.monitors.append((name, arg))
    elif name == "vga":
        assert arg is not None
        if arg == "help":
            sys.stdout.write("none                 no VGA card\n")
            raise EarlyExit(0)
        if arg != "none":
            raise opt.error(f"VGA card '{arg}' is not supported by pemu (it has no display): use -vga none")
    elif name == "kernel":
        cfg.kernel = arg
    elif name == "initrd":
        cfg.initrd = arg
    elif name == "append":
        cfg.append = arg
    elif name == "bios":
        cfg.bios = arg
    elif name == "name":
        cfg.name = opt.parse_opts().get("guest")
    elif name == "nodefaults":
        cfg.nodefaults = True
    elif name == "no-user-config":
        pass  # pemu reads no configuration files anyway
    elif name == "nographic":
        cfg.nographic = True
    elif name == "display":
        assert arg is not None
        kind = arg.split(",", 1)[0]
        if kind == "help":
            sys.stdout.write("Available display backend types:\nnone\n")
            raise EarlyExit(0)
        if kind != "none":
            raise opt.error(f"Display '{kind}' is not available.")
        cfg.display = "none"
    elif name == "S":
        cfg.start_paused = True
    elif name == "incoming":
        assert arg is not None
        from pemu.migration.channel import MigrationChannelError
        from pemu.migration.migration import check_incoming_uri

        try:
            check_incoming_uri(arg)
        except MigrationChannelError as e:
            raise opt.error(str(e)) from None
        cfg.incoming, cfg.incoming_location = arg, opt.location
    elif name == "no-reboot":
        cfg.no_reboot = True
    elif name == "no-shutdown":
        cfg.no_shutdown = True
    elif name == "d":
        assert arg is not None
        if arg in ("help", "?"):
            sys.stdout.write(log.log_help())
            raise EarlyExit(0)
        try:
            log.qemu_set_log(log.qemu_str_to_log_mask(arg))
        except ValueError as e:
            raise opt.error(f"Invalid -d option \"{e}\"") from None
    elif name == "D":
        assert arg is not None
        try:
            log.qemu_set_log_filename(arg)
        except OSError as e:
            raise opt.error(f"could not open log file '{arg}': {e.strerror}") from None
    elif name == "L":
        assert arg is not None
        cfg.data_dirs.append(arg)
    elif name == "fw_cfg":
        from pemu.hw.nvram.fw_cfg import parse_fw_cfg_option

        cfg.fw_cfg_files.append(parse_fw_cfg_option(opt.parse_opts(), opt.location))
    elif name == "smbios":
        cfg.smbios.append((opt.parse_opts(), opt.location))
    elif name in ("netdev", "nic", "net"):
        opts = opt.parse_opts()
        if opts.help_wanted or opts.get("type") == "help":
            from pemu.net.netdev import NETDEV_TYPES

            sys.stdout.write("Available netdev backend types:\n" + "".join(f"{t}\n" for t in NETDEV_TYPES))
            raise EarlyExit(0)
        cfg.nets.append((name, opts, opt.location))
    elif name in _BLOCK_OPTIONS:
        drive_option(cfg, opt)
    else:
        # The table marks it implemented, so it was not refused: a table entry without code here.
        raise NotImplementedError(f"-{name} is marked implemented in pemu.cli.options but vl does not act on it")


# --- drives (-drive, -hda..-hdd, -cdrom, -snapshot, -blockdev): the block layer is pemu.block ---------

_BLOCK_OPTIONS = ("drive", "blockdev", "hda", "hdb", "hdc", "hdd", "cdrom", "snapshot")
_HD_INDEX = {"hda": 0, "hdb": 1, "hdc": 2, "hdd": 3}


def drive_option(cfg: Config, opt: ParsedOption) -> None:
    """Remember a block option; images are opened in order by configure_blockdev."""
    if opt.name == "snapshot":
        cfg.snapshot = True
    else:
        cfg.block_options.append(opt)


def configure_blockdev(cfg: Config, machine: MachineState) -> None:
    """Open every -blockdev and -drive (QEMU's configure_blockdev + drive_new)."""
    if not cfg.block_options:
        return  # the block layer is not imported
    block = machine.block_devices
    if runstate.runstate_get() == RunState.INMIGRATE:
        block.inactive = True  # opened without their write locks until the incoming state is loaded
    for opt in cfg.block_options:
        assert opt.arg is not None
        if opt.name == "blockdev":
            block.blockdev_add(opt.arg, opt.location)
            continue
        if opt.name == "drive":
            drive_opts = opt.parse_opts()
            opts = dict(drive_opts.items())
            if drive_opts.id is not None:
                opts["id"] = drive_opts.id
        elif opt.name == "cdrom":
            opts = {"file": opt.arg, "index": "2", "media": "cdrom"}
        else:
            opts = {"file": opt.arg, "index": str(_HD_INDEX[opt.name]), "media": "disk"}
        block.drive_new(opts, opt.location, cfg.snapshot)


def drive_check_orphaned(machine: MachineState) -> None:
    block = machine.opened_block_devices()
    if block is not None:
        block.check_orphaned()


def block_cleanup() -> None:
    """bdrv_close_all: flush and close the images (releasing their locks)."""
    machine = object_get_root().child("machine")
    block = machine.opened_block_devices() if isinstance(machine, MachineState) else None
    if block is not None:
        block.close_all()


# --- machine selection ----------------------------------------------------------------------


def machine_help() -> str:
    lines = ["Supported machines are:"]
    for mc in reversed(object_class_get_list_sorted(TYPE_MACHINE, False)):
        m = object_class_check(mc, MachineClass)
        if m.alias:
            lines.append(f"{m.alias:<20} {m.desc} (alias of {m.name})")
        default = " (default)" if m.is_default else ""
        lines.append(f"{m.name:<20} {m.desc}{default}")
    return "\n".join(lines) + "\n"


def select_machine(cfg: Config) -> MachineClass:
    """Find the machine class -machine names (seed: select_machine)."""
    machines = [object_class_check(k, MachineClass) for k in object_class_get_list_sorted(TYPE_MACHINE, False)]
    wanted = cfg.machine.get("type") if cfg.machine is not None else None
    if cfg.machine is not None and (cfg.machine.help_wanted or wanted in ("help", "?")):
        sys.stdout.write(machine_help())
        raise EarlyExit(0)
    if wanted is None:
        for mc in machines:
            if mc.is_default:
                return mc
        raise UserError("No machine specified, and there is no default")
    for mc in machines:
        if wanted in (mc.name, mc.alias):
            return mc
    loc = cfg.machine.location if cfg.machine is not None else None
    raise UserError(f"unsupported machine type '{wanted}' (use -machine help to list supported machines)", loc)


# --- machine creation --------------------------------------------------------------------------


def set_memory_options(cfg: Config, mc: MachineClass) -> tuple[int, int, int]:
    """-m [size=]N[,slots=n,maxmem=size]: (ram_size, maxram_size, slots).

    A size without a suffix is in MiB; the default is the machine's."""
    from pemu.util.cutils import qemu_strtosz_MiB

    ram_size = mc.default_ram_size
    opts = cfg.memory
    loc = cfg.memory_location
    if opts is None:
        return ram_size, ram_size, 0
    text = opts.get("size")
    if text is not None:
        if text == "":
            raise UserError("missing 'size' option value", loc)
        try:
            ram_size = qemu_strtosz_MiB(text)
        except ValueError:
            raise UserError(f"Parameter 'size' expects a size (e.g. 4096, 512M, 4G), not '{text}'", loc) from None
        if ram_size == 0:
            raise UserError("memory size must be greater than zero", loc)
        ram_size = (ram_size + 0x1FFFFF) & ~0x1FFFFF if ram_size % (1 << 20) else ram_size
    maxram = ram_size
    slots = 0
    if opts.get("maxmem") is not None or opts.get("slots") is not None:
        try:
            maxram = opts.get_size("maxmem", ram_size)
            slots = opts.get_number("slots", 0)
        except (ValueError, UserError) as e:
            raise UserError(str(e), loc) from None
        if maxram < ram_size:
            raise UserError(f"invalid value of maxmem: maxmem ({maxram:#x}) < initial memory ({ram_size:#x})", loc)
        if maxram > ram_size and slots == 0:
            raise UserError(f"invalid value of maxmem: memory slots were not specified ({slots})", loc)
        if slots and maxram == ram_size:
            raise UserError(f"invalid value of maxmem: maxmem ({maxram:#x}) must be larger than memory "
                            f"size ({ram_size:#x}) when memory slots are specified", loc)
        if slots > 256:
            raise UserError(f"unsupported number of memory slots: {slots}, maximum supported: 256", loc)
    return ram_size, maxram, slots


def parse_smp(cfg: Config, mc: MachineClass) -> tuple[int, int, int, int, int]:
    """-smp: (cpus, sockets, cores, threads, maxcpus), checked as QEMU does."""
    if cfg.smp is None:
        return 1, 1, 1, 1, 1
    loc = cfg.smp_location
    try:
        vals = {k: cfg.smp.get_number(k, 0) for k in ("cpus", "sockets", "dies", "cores", "threads", "maxcpus")}
    except (ValueError, UserError) as e:
        raise UserError(str(e), loc) from None
    if any(v < 0 for v in vals.values()):
        raise UserError("Invalid CPU topology: values must be positive", loc)
    sockets, cores, threads, dies = vals["sockets"], vals["cores"], vals["threads"], vals["dies"] or 1
    cpus, maxcpus = vals["cpus"], vals["maxcpus"]
    if cpus == 0 and not any((sockets, cores, threads, maxcpus)):
        raise UserError("Invalid CPU topology: CPU topology parameters must be greater than zero", loc)
    maxcpus = maxcpus or cpus or (max(sockets, 1) * dies * max(cores, 1) * max(threads, 1))
    threads = threads or 1
    cores = cores or 1
    sockets = sockets or max(1, maxcpus // (dies * cores * threads))
    cpus = cpus or maxcpus
    if sockets * dies * cores * threads != maxcpus:
        raise UserError(f"Invalid CPU topology: product of the hierarchy must match maxcpus: "
                        f"sockets ({sockets}) * dies ({dies}) * cores ({cores}) * threads ({threads}) "
                        f"!= maxcpus ({maxcpus})", loc)
    if cpus > maxcpus:
        raise UserError(f"Invalid CPU topology: maxcpus must be equal to or greater than smp: "
                        f"cpus ({cpus}) > maxcpus ({maxcpus})", loc)
    if maxcpus > mc.max_cpus:
        raise UserError(f"Invalid SMP CPUs {maxcpus}. The max CPUs supported by machine "
                        f"'{mc.name}' is {mc.max_cpus}", loc)
    return cpus, sockets, cores, threads, maxcpus


def qemu_create_machine(cfg: Config, mc: MachineClass) -> MachineState:
    """Instantiate the machine and the root memory regions (seed: qemu_create_machine)."""
    from pemu.system.physmem import cpu_exec_init_all
    from pemu.target.i386.cpu import x86_cpu_type_name

    ram_size, maxram, slots = set_memory_options(cfg, mc)
    machine = object_check(object_new_with_class(mc), MachineState)
    root = object_get_root()
    root.add_child("machine", machine)
    machine.unref()
    for path in ("unattached", "peripheral", "peripheral-anon"):
        container_get(machine, path)
    from pemu.hw.core.sysbus import sysbus_get_default

    container_get(machine, "unattached").add_child("sysbus", sysbus_get_default())
    phase_advance(MachineInitPhase.MACHINE_CREATED)
    current_vm().machine = machine

    cpu_exec_init_all()

    machine.ram_size = ram_size
    machine.maxram_size = maxram
    machine.ram_slots = slots
    cpus, sockets, cores, threads, maxcpus = parse_smp(cfg, mc)
    machine.smp.cpus, machine.smp.sockets, machine.smp.cores = cpus, sockets, cores
    machine.smp.threads, machine.smp.max_cpus = threads, maxcpus
    if cfg.cpu_model is not None:
        model, _, features = cfg.cpu_model.partition(",")
        if model in ("help", "?"):
            from pemu.target.i386 import cpu_models

            sys.stdout.write(cpu_models.x86_cpu_list())
            raise EarlyExit(0)
        from pemu.qom.object import type_exists

        if not type_exists(x86_cpu_type_name(model)):
            raise UserError(f"unable to find CPU model '{model}'", f"-cpu {cfg.cpu_model}")
        machine.cpu_type = x86_cpu_type_name(model)
        machine.cpu_features = features
    machine.name_ = cfg.name

    # -nographic means graphics=off (the firmware then uses the serial
    # console), unless -machine says otherwise: it is applied below.
    if cfg.nographic:
        machine.property_set("graphics", False)
    # -machine properties (besides type= and accel=), then the boot options.
    if cfg.machine is not None:
        for key, value in cfg.machine.items():
            if key in ("type",):
                continue
            if key == "accel":
                from pemu.accel.accel import accel_requests

                if cfg.accels:
                    raise UserError('The -accel and "-machine accel=" options are incompatible')
                cfg.accels = accel_requests(value, cfg.machine.location)
                continue
            try:
                machine.property_parse(key, value)
            except QOMError as e:
                raise UserError(str(e), cfg.machine.location) from None
    boot_props: tuple[tuple[str, str | None], ...] = (
        ("kernel", cfg.kernel), ("initrd", cfg.initrd), ("append", cfg.append), ("firmware", cfg.bios))
    for prop, text in boot_props:
        if text is not None:
            machine.property_set(prop, text)
    if machine.kernel is None and (machine.initrd is not None or machine.append is not None):
        raise UserError("-initrd or -append only allowed with -kernel option")
    machine.data_dirs = list(cfg.data_dirs)
    # -fw_cfg files and -smbios fields, for the board's fw_cfg (pemu.hw.i386.fw_cfg).
    from pemu.hw.smbios.smbios import SmbiosConfig, smbios_entry_add

    machine.fw_cfg_user_files = list(cfg.fw_cfg_files)
    machine.smbios_config = smbios_cfg = SmbiosConfig()
    for opts, location in cfg.smbios:
        smbios_entry_add(smbios_cfg, opts, location)
    return machine


def configure_accelerators(cfg: Config, machine: MachineState) -> Any:
    from pemu.accel.accel import configure_accelerators as configure

    accel = configure(cfg.accels or None, machine.smp.cpus)
    accel.set_cpu_pm(cfg.cpu_pm, cfg.overcommit_location)
    accel.init_machine(machine)
    machine.accel = accel.name
    phase_advance(MachineInitPhase.ACCEL_CREATED)
    return accel


def create_default_memdev(machine: MachineState) -> None:
    """The RAM back-end -m asked for (seed: create_default_memdev):
    memory-backend-ram with the machine's default RAM id, e.g. "pc.ram"."""
    from pemu.qom.object_interfaces import user_creatable_add

    mc = machine.mc
    ram_id = mc.default_ram_id or "ram"
    user_creatable_add("memory-backend-ram", ram_id, {"size": str(machine.ram_size)})
    machine.memory_backend = ram_id


def qemu_create_cli_objects(cfg: Config) -> None:
    from pemu.qom.object_interfaces import user_creatable_add

    for opts, loc in cfg.objects:
        qom_type = opts.get("qom-type")
        if qom_type is None:
            raise UserError("Parameter 'qom-type' is missing", loc)
        if opts.id is None:
            raise UserError("Parameter 'id' is missing", loc)
        props = {k: v for k, v in opts.items() if k not in ("qom-type", "id")}
        try:
            user_creatable_add(qom_type, opts.id, props)
        except QOMError as e:
            raise UserError(str(e), loc) from None


def qemu_create_nets(cfg: Config) -> None:
    """-netdev, -nic and -net (net_init_clients); nothing is imported without them."""
    if not cfg.nets:
        return
    from pemu.net.net import net_state
    from pemu.net.netdev import NetOption, net_init_clients
    from pemu.util.main_loop import main_loop

    net_init_clients(net_state(), main_loop(), [NetOption(kind, opts, loc) for kind, opts, loc in cfg.nets])


def qemu_init_board(machine: MachineState) -> None:
    """Back the RAM and build the board (seed: qemu_init_board)."""
    from pemu.hw.core.machine import machine_run_board_init

    if not machine.memory_backend:
        create_default_memdev(machine)
    machine_run_board_init(machine)


def qemu_create_cli_devices(cfg: Config) -> None:
    from pemu.system.qdev_monitor import qdev_device_add

    for opts, loc in cfg.devices:
        try:
            qdev_device_add(opts)
        except QOMError as e:
            raise UserError(str(e), loc) from None


def qemu_system_reset(machine: MachineState) -> None:
    """Reset the machine: its class's reset (the PC's resets devices and
    CPUs and replays the direct-boot setup)."""
    machine_reset(machine)


# --- character devices and monitors ----------------------------------------------------------


def qemu_create_chardevs(cfg: Config) -> None:
    from pemu.chardev.registry import qemu_chr_new_from_opts

    for opts, loc in cfg.chardevs:
        d = dict(opts.items())
        if opts.id is not None:
            d["id"] = opts.id
        try:
            qemu_chr_new_from_opts(d)
        except (UserError, QOMError) as e:
            raise UserError(getattr(e, "message", str(e)), loc) from None


def add_fdsets(cfg: Config, vm: VirtualMachine) -> None:
    """-add-fd: the inherited descriptors become the VM's fd sets (now close-on-exec)."""
    if not cfg.add_fds:
        return
    import fcntl

    from pemu.monitor.fds import FdSets

    vm.fdsets = vm.fdsets or FdSets()
    for fd, fdset_id, opaque in cfg.add_fds:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
        vm.fdsets.add_fd(fdset_id, fd, opaque)


def qemu_setup_defaults_and_monitors(cfg: Config) -> None:
    """Default serial and monitor as QEMU picks them: with -nographic both
    on stdio, multiplexed (Ctrl-A c switches)."""
    vm = current_vm()
    from pemu.chardev.registry import qemu_chr_find, qemu_chr_new

    def monitor_init_hmp(chr_: Any) -> Any:
        from pemu.monitor import monitor_init_hmp as init

        return init(chr_)

    serials = list(cfg.serials)
    monitors = list(cfg.monitors)
    default_serial = not serials and not cfg.nodefaults
    default_monitor = not monitors and not cfg.nodefaults
    if cfg.nographic:
        if default_serial and default_monitor:
            serials = ["mon:stdio"]
        elif default_serial:
            serials = ["stdio"]
        elif default_monitor:
            monitors = [("monitor", "stdio")]
    elif default_serial:
        serials = ["null"]
    # stdio can back one character device; if the serial port and the
    # monitor both want it, they share it through a mux as with mon:stdio.
    # The monitor asked for explicitly starts with the input focus.
    stdio_serial = [i for i, s in enumerate(serials) if s == "stdio"]
    stdio_monitor = [i for i, (kind, s) in enumerate(monitors) if kind == "monitor" and s == "stdio"]
    monitor_first = False
    if stdio_serial and stdio_monitor:
        serials[stdio_serial[0]] = "mon:stdio"
        del monitors[stdio_monitor[0]]
        monitor_first = True

    def chr_new(label: str, spec: str, location: str) -> Any:
        try:
            return qemu_chr_new(label, spec)
        except UserError as e:
            raise UserError(e.message, e.location or location) from None
        except QOMError as e:
            raise UserError(str(e), location) from None

    # Every back-end first, and only then the monitors, which greet the user
    # (banner, prompt) as they start: a bad -serial or -monitor is then one
    # error line, with no monitor banner before it.
    monitor_chrs: list[tuple[Any, str]] = []
    for n, (kind, spec) in enumerate(monitors):
        if kind in ("mon", "mon-qmp", "mon-qmp-pretty"):
            chr_ = qemu_chr_find(spec)
            if chr_ is None:
                raise UserError(f"chardev \"{spec}\" not found", f"-mon {spec}")
        else:
            if spec == "none":
                continue
            option = "-monitor" if kind == "monitor" else f"-{kind}"
            chr_ = chr_new(f"compat_monitor{n}", spec, f"{option} {spec}")
        if chr_ is not None:
            monitor_chrs.append((chr_, kind))
    serial_monitor_chrs: list[Any] = []
    for i, spec in enumerate(serials):
        if spec == "none":
            vm.serial_hds.append(None)
            continue
        as_typed = cfg.serials[i] if i < len(cfg.serials) else spec
        chr_ = chr_new(f"serial{i}", spec, f"-serial {as_typed}")
        if chr_ is not None and spec.startswith("mon:"):
            serial_monitor_chrs.append(chr_)
        vm.serial_hds.append(chr_)
    if cfg.debugcon is not None:
        spec, location = cfg.debugcon
        chr_new(DEBUGCON_CHARDEV, spec, location)
    for chr_, kind in monitor_chrs:
        if kind in ("monitor", "mon"):
            monitor_init_hmp(chr_)
        else:
            # The QMP server and its schema are loaded only when asked for.
            from pemu.monitor.qmp import monitor_init_qmp

            monitor_init_qmp(chr_, pretty=kind.endswith("pretty"))
    for chr_ in serial_monitor_chrs:
        mon = monitor_init_hmp(chr_)
        if monitor_first:
            vm.focus_after_board.append((chr_, mon.fe))


def give_monitor_focus() -> None:
    """Monitors that share stdio with the serial port take the input focus
    once the board (and so the serial port on the same mux) exists."""
    for mux, fe in current_vm().focus_after_board:
        if isinstance(mux, MuxChardev):
            mux.take_focus(fe)


# --- the whole start-up -------------------------------------------------------------------------


def qmp_x_exit_preconfig(cfg: Config, machine: MachineState) -> None:
    """Build the board and its devices, then make the machine ready."""
    qemu_init_board(machine)
    qemu_create_cli_devices(cfg)
    drive_check_orphaned(machine)
    qdev_machine_creation_done(machine)


def qdev_machine_creation_done(machine: MachineState) -> None:
    if "pemu.net.net" in sys.modules:
        from pemu.net.net import net_state
        from pemu.net.netdev import net_check_clients
        from pemu.util.error import warn_report

        for warning in net_check_clients(net_state()):
            warn_report(warning)
    phase_advance(MachineInitPhase.MACHINE_READY)
    qemu_system_reset(machine)


def device_help(cfg: Config) -> None:
    """-device help and -device DRIVER,help print and exit before anything is built."""
    from pemu.system.qdev_monitor import device_help_list, device_help_props

    for opts, loc in cfg.devices:
        driver = opts.get("driver")
        if driver in ("help", "?"):
            sys.stdout.write(device_help_list())
            raise EarlyExit(0)
        if opts.help_wanted and driver is not None:
            try:
                sys.stdout.write(device_help_props(driver))
            except QOMError as e:
                raise UserError(str(e), loc) from None
            raise EarlyExit(0)


def suspend_mux_open() -> None:
    from pemu.chardev import char_mux

    char_mux.suspend_mux_open()


def resume_mux_open() -> None:
    from pemu.chardev import char_mux

    char_mux.resume_mux_open()


def qemu_init(argv: list[str]) -> VirtualMachine:
    """Build a VM from a command line; it becomes the current VM.

    On a user error the half-built VM is destroyed (nothing of it is left)
    and the VM that was current before is current again."""
    cfg = parse_config(argv)
    _register_all_types()
    device_help(cfg)
    vm = VirtualMachine()
    previous = vm.activate()
    try:
        qemu_build(cfg, vm)
    except BaseException:
        vm.destroy()
        set_current_vm(previous)
        raise
    return vm


def qemu_build(cfg: Config, vm: VirtualMachine) -> None:
    if cfg.mem_lock:
        from pemu.util.osdep import os_mlock

        try:
            os_mlock()
        except OSError as e:
            raise UserError(f"locking memory failed: {e.strerror}", cfg.overcommit_location) from None
    for prop in cfg.globals:
        qdev_prop_register_global(prop)
    mc = select_machine(cfg)
    machine = qemu_create_machine(cfg, mc)
    configure_accelerators(cfg, machine)
    if cfg.incoming is not None:
        # The one point where an incoming migration is known: from here the VM
        # is "inmigrate", so the block layer opens its images inactive (QEMU's BDRV_O_INACTIVE).
        runstate.runstate_set(RunState.INMIGRATE)
    qemu_create_cli_objects(cfg)
    configure_blockdev(cfg, machine)
    # Front-ends attach to muxed back-ends from here on; the muxes announce
    # themselves (banner, prompt) only once the machine is built.
    suspend_mux_open()
    add_fdsets(cfg, vm)
    qemu_create_chardevs(cfg)
    qemu_setup_defaults_and_monitors(cfg)
    qemu_create_nets(cfg)
    vm.run.requests.no_reboot = cfg.no_reboot
    vm.run.requests.no_shutdown = cfg.no_shutdown
    qmp_x_exit_preconfig(cfg, machine)
    give_monitor_focus()
    resume_mux_open()
    if cfg.incoming is not None:
        qemu_start_incoming_migration(cfg, vm)
    elif not cfg.start_paused:
        cpus.vm_start()
    # With -S the VM stays in "prelaunch" until `cont`.


def qemu_start_incoming_migration(cfg: Config, vm: VirtualMachine) -> None:
    """-incoming: the VM waits in "inmigrate" for its state (or, with defer, for migrate_incoming)."""
    from pemu.migration.migration import MigrationError, migrate_get_current

    assert cfg.incoming is not None
    state = migrate_get_current(vm)
    state.autostart = not cfg.start_paused
    if cfg.incoming == "defer":
        return
    try:
        state.start_incoming(cfg.incoming)
    except MigrationError as e:
        raise UserError(str(e), cfg.incoming_location) from None


def _install_signal_handlers() -> None:
    def on_signal(signum: int, _frame: Any) -> None:
        from pemu.util.error import error_report

        error_report(f"terminating on signal {signum}")
        runstate.qemu_system_shutdown_request(ShutdownCause.HOST_SIGNAL)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def main_loop_should_exit(vm: VirtualMachine) -> bool:
    stop = runstate.take_vmstop_request()
    if stop is not None:
        cpus.vm_stop(stop)
    cause = runstate.take_shutdown_request()
    if cause != ShutdownCause.NONE:
        runstate.qapi_event_send_shutdown(cause)
        if vm.run.requests.no_shutdown and cause in (ShutdownCause.GUEST_SHUTDOWN, ShutdownCause.GUEST_RESET):
            cpus.vm_stop(RunState.SHUTDOWN)
        else:
            return True
    reset = runstate.take_reset_request()
    if reset != ShutdownCause.NONE:
        was_running = runstate.runstate_is_running()
        cpus.pause_all_vcpus()
        assert vm.machine is not None
        qemu_system_reset(vm.machine)
        runstate.qapi_event_send_reset(reset)
        if was_running or vm.run.state == RunState.SHUTDOWN:
            runstate.runstate_set(RunState.PAUSED)
            cpus.vm_start()
        elif vm.run.state == RunState.INTERNAL_ERROR:
            runstate.runstate_set(RunState.PRELAUNCH)  # as QEMU: a reset machine may be continued
    return False


def qemu_main_loop(vm: VirtualMachine) -> int:
    from pemu.util.main_loop import main_loop

    loop = main_loop()
    vm.run.requests.notify = loop.notify
    loop.on_handler_fault = cpus.contain_fault
    while not main_loop_should_exit(vm):
        loop.run_once()
    return vm.run.requests.exit_status


def qemu_cleanup(vm: VirtualMachine) -> None:
    """Before the process exits: the vCPUs stop and the chardevs close
    (the terminal is restored); the rest goes with the process."""
    from pemu.chardev.registry import qemu_chr_cleanup

    try:
        if vm.migration is not None:
            vm.migration.shutdown()
        cpus.pause_all_vcpus()
    finally:
        try:
            _net_cleanup()
        finally:
            try:
                block_cleanup()
            finally:
                qemu_chr_cleanup()


def _net_cleanup() -> None:
    if "pemu.net.net" in sys.modules:
        from pemu.net.net import net_cleanup

        net_cleanup()


def main_with_args(argv: list[str], on_built: Callable[[], None] | None = None) -> int:
    """Build the VM and run it until it quits; ``on_built`` is called between the two."""
    from pemu.util.error import error_report

    try:
        vm = qemu_init(argv)
    except EarlyExit as e:
        return e.status
    except (UserError, QOMError) as e:
        error_report(str(e))
        return 1
    if on_built is not None:
        on_built()
    _install_signal_handlers()
    try:
        status = qemu_main_loop(vm)
    finally:
        qemu_cleanup(vm)
    return status
