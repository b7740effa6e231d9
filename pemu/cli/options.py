"""The command-line options pemu knows (QEMU's qemu-options.hx) and argv parsing.

pemu takes qemu-system-x86_64's command line.  :data:`OPTIONS` lists every
option pemu recognises: its name, whether it takes an argument, whether pemu
acts on it yet, the option group its argument is parsed into, and its help.
:func:`parse_command_line` turns argv into :class:`ParsedOption`s in order;
acting on them is vl.py's business.  ``implemented`` is the one place that
decides which options pemu refuses (vl.py refuses exactly
:func:`unimplemented_options`) and which ones ``-help`` marks (*).

The option groups (QemuOptsList) that option arguments are parsed into are
also declared here, in :func:`standard_opts_lists`, and registered at one
known point by :func:`register_standard_opts`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from pemu.util.error import UserError
from pemu.util.qemu_opts import (
    QemuOptDesc,
    QemuOpts,
    QemuOptsList,
    QemuOptsRegistry,
    QemuOptType,
    global_opts_list,
    opts_registry,
)


class OptionSection(enum.Enum):
    STANDARD = "Standard options"
    BLOCK = "Block device options"
    DISPLAY = "Display options"
    NETWORK = "Network options"
    CHARDEV = "Character device options"
    BOOT = "Linux/Multiboot boot specific"
    DEBUG = "Debug/Expert options"


class QemuOption(NamedTuple):
    """One command-line option (a line of QEMU's qemu-options.hx)."""

    name: str  # without the leading dash
    has_arg: bool
    implemented: bool
    section: OptionSection
    usage: str  # e.g. "-m [size=]megs[,slots=n,maxmem=size]"
    help: str
    opts_group: str | None = None  # QemuOptsList the argument is parsed into
    permit_abbrev: bool = False  # the first bare word is the group's implied key
    alias_of: str | None = None  # -M is -machine, -h is -help

    @property
    def canonical_name(self) -> str:
        return self.alias_of or self.name


def _opt(
    name: str,
    has_arg: bool,
    implemented: bool,
    section: OptionSection,
    usage: str,
    help: str,
    opts_group: str | None = None,
    permit_abbrev: bool = False,
    alias_of: str | None = None,
) -> QemuOption:
    return QemuOption(name, has_arg, implemented, section, usage, help, opts_group, permit_abbrev, alias_of)


_STD, _BLK, _DPY, _NET, _CHR, _BOOT, _DBG = (
    OptionSection.STANDARD,
    OptionSection.BLOCK,
    OptionSection.DISPLAY,
    OptionSection.NETWORK,
    OptionSection.CHARDEV,
    OptionSection.BOOT,
    OptionSection.DEBUG,
)

# fmt: off
OPTION_TABLE: tuple[QemuOption, ...] = (
    # -- standard
    _opt("h", False, True, _STD, "-h or -help", "print this help and exit", alias_of="help"),
    _opt("help", False, True, _STD, "-help", "print this help and exit"),
    _opt("version", False, True, _STD, "-version", "print the version and exit"),
    _opt("machine", True, True, _STD, "-machine [type=]name[,prop=value[,...]]",
         "select the machine (q35) and set its properties; -machine help lists machines",
         "machine", True),
    _opt("M", True, True, _STD, "-M [type=]name[,prop=value[,...]]", "same as -machine",
         "machine", True, alias_of="machine"),
    _opt("cpu", True, True, _STD, "-cpu model[,feature...]", "select the CPU model; -cpu help lists models"),
    _opt("accel", True, True, _STD, "-accel [accel=]name[,prop=value[,...]]",
         "select the accelerator (tcg or kvm); -accel help lists them", "accel", True),
    _opt("enable-kvm", False, True, _STD, "-enable-kvm", "use the KVM accelerator (same as -accel kvm)"),
    _opt("smp", True, True, _STD,
         "-smp [cpus=]n[,maxcpus=m][,sockets=s][,dies=d][,clusters=c][,cores=c][,threads=t]",
         "set the number of virtual CPUs and their topology", "smp-opts", True),
    _opt("m", True, True, _STD, "-m [size=]megs[,slots=n,maxmem=size]",
         "set the guest RAM size; a bare number is in MiB, or use a suffix K, M, G, T",
         "memory", True),
    _opt("name", True, True, _STD, "-name [guest=]name[,process=name][,debug-threads=on|off]",
         "set the name of the guest", "name", True),
    _opt("uuid", True, False, _STD, "-uuid %08x-%04x-%04x-%04x-%012x", "set the system UUID"),
    _opt("device", True, True, _STD, "-device driver[,prop[=value][,...]]",
         "add a device; -device help lists drivers, -device driver,help its properties",
         "device", True),
    _opt("global", True, True, _STD, "-global driver.property=value\n-global driver=d,property=p,value=v",
         "set a default value of a property for every device of a type"),
    _opt("object", True, True, _STD, "-object type,id=id[,prop=value[,...]]",
         "create a user-creatable object", "object", True),
    _opt("boot", True, False, _STD,
         "-boot [order=drives][,once=drives][,menu=on|off][,reboot-timeout=ms][,strict=on|off]",
         "set the boot order (a: floppy, c: hard disk, d: CD-ROM, n: network)", "boot-opts", True),
    _opt("rtc", True, False, _STD, "-rtc [base=utc|localtime|date][,clock=host|rt|vm][,driftfix=none|slew]",
         "set the RTC base and clock", "rtc"),
    _opt("nodefaults", False, True, _STD, "-nodefaults", "create no default devices"),
    _opt("no-user-config", False, True, _STD, "-no-user-config", "read no user configuration file"),
    _opt("L", True, True, _STD, "-L path", "add a directory to search for firmware and ROM images"),
    _opt("bios", True, True, _STD, "-bios file", "load the firmware from this file"),
    _opt("fw_cfg", True, True, _STD, "-fw_cfg [name=]name,file=file\n-fw_cfg [name=]name,string=str",
         "add a named fw_cfg entry from a file or a string", "fw_cfg", True),
    _opt("smbios", True, True, _STD, "-smbios type=n[,field=value[,...]]", "set SMBIOS fields",
         "smbios", True),
    _opt("numa", True, False, _STD, "-numa node[,memdev=id][,cpus=first[-last]][,nodeid=n]",
         "describe a NUMA node"),
    _opt("k", True, False, _STD, "-k language", "use a keyboard layout (for example 'fr')"),
    _opt("audiodev", True, False, _STD, "-audiodev driver,id=id[,prop=value[,...]]", "add an audio back-end"),
    _opt("usb", False, False, _STD, "-usb", "enable the default USB controller"),
    _opt("usbdevice", True, False, _STD, "-usbdevice name", "add a USB device"),
    _opt("mem-path", True, False, _STD, "-mem-path file", "back guest RAM with a file in this directory"),
    _opt("mem-prealloc", False, False, _STD, "-mem-prealloc", "allocate all guest RAM up front"),
    _opt("readconfig", True, False, _STD, "-readconfig file", "read options from a configuration file"),
    _opt("no-hpet", False, False, _STD, "-no-hpet", "create no HPET"),
    _opt("no-acpi", False, False, _STD, "-no-acpi", "create no ACPI tables"),
    # -- block devices
    _opt("drive", True, True, _BLK, "-drive [file=file][,if=type][,format=f][,media=d][,index=i][,...]",
         "add a drive", "drive"),
    _opt("blockdev", True, True, _BLK, "-blockdev driver=d,node-name=n[,...]", "add a block node"),
    _opt("hda", True, True, _BLK, "-hda file", "use a file as IDE/SATA hard disk 0"),
    _opt("hdb", True, True, _BLK, "-hdb file", "use a file as IDE/SATA hard disk 1"),
    _opt("hdc", True, True, _BLK, "-hdc file", "use a file as IDE/SATA hard disk 2"),
    _opt("hdd", True, True, _BLK, "-hdd file", "use a file as IDE/SATA hard disk 3"),
    _opt("cdrom", True, True, _BLK, "-cdrom file", "use a file as the CD-ROM image"),
    _opt("fda", True, False, _BLK, "-fda file", "use a file as floppy disk 0"),
    _opt("snapshot", False, True, _BLK, "-snapshot", "write to temporary files instead of disk images"),
    # -- display
    _opt("display", True, True, _DPY, "-display none|curses|gtk|sdl|vnc=...", "select the display back-end"),
    _opt("nographic", False, True, _DPY, "-nographic",
         "no graphical output: serial port and monitor on the terminal"),
    _opt("vga", True, True, _DPY, "-vga none", "select the video card (pemu has none: only none is accepted)"),
    _opt("vnc", True, False, _DPY, "-vnc display[,option[,...]]", "start a VNC server"),
    # -- network
    _opt("netdev", True, True, _NET, "-netdev user,id=str[,hostfwd=rule][,...]\n-netdev tap,id=str[,...]",
         "create a network back-end", "netdev", True),
    _opt("nic", True, True, _NET, "-nic [type][,model=m][,mac=addr][,...]",
         "create a network card and its back-end in one go", "nic", True),
    _opt("net", True, True, _NET, "-net nic|user|tap|...[,...]", "legacy network setup (hub 0)",
         "net", True),
    # -- character devices and monitors
    _opt("chardev", True, True, _CHR, "-chardev backend,id=id[,option[,...]]",
         "create a character device back-end", "chardev", True),
    _opt("serial", True, True, _CHR, "-serial dev", "connect the next serial port to dev (stdio, pty, none, ...)"),
    _opt("parallel", True, False, _CHR, "-parallel dev", "connect the next parallel port to dev"),
    _opt("monitor", True, True, _CHR, "-monitor dev", "put the human monitor on dev"),
    _opt("qmp", True, True, _CHR, "-qmp dev", "put a QMP monitor on dev"),
    _opt("qmp-pretty", True, True, _CHR, "-qmp-pretty dev", "put a pretty-printing QMP monitor on dev"),
    _opt("mon", True, True, _CHR, "-mon [chardev=]id[,mode=readline|control][,pretty=on|off]",
         "put a monitor on a character device", "mon", True),
    _opt("add-fd", True, True, _CHR, "-add-fd fd=fd,set=set[,opaque=opaque]",
         "add a passed file descriptor to fd set 'set' (opened as /dev/fdset/set)", "add-fd"),
    _opt("debugcon", True, True, _CHR, "-debugcon dev", "connect the debug console to dev"),
    # -- boot
    _opt("kernel", True, True, _BOOT, "-kernel bzImage", "boot this Linux kernel"),
    _opt("append", True, True, _BOOT, "-append cmdline", "give this command line to the kernel"),
    _opt("initrd", True, True, _BOOT, "-initrd file", "use this file as the initial RAM disk"),
    _opt("dtb", True, False, _BOOT, "-dtb file", "use this device tree blob"),
    # -- debug and expert
    _opt("S", False, True, _DBG, "-S", "do not start the CPU at start-up (use 'c' in the monitor)"),
    _opt("s", False, False, _DBG, "-s", "same as -gdb tcp::1234"),
    _opt("gdb", True, False, _DBG, "-gdb dev", "wait for a gdb connection on dev"),
    _opt("d", True, True, _DBG, "-d item1[,...]", "enable logging of these items (-d help lists them)"),
    _opt("D", True, True, _DBG, "-D logfile", "write the log to logfile instead of stderr"),
    _opt("no-reboot", False, True, _DBG, "-no-reboot", "exit instead of rebooting"),
    _opt("no-shutdown", False, True, _DBG, "-no-shutdown", "stop instead of exiting when the guest shuts down"),
    _opt("action", True, False, _DBG, "-action event=action", "choose what a reboot, shutdown or panic does"),
    _opt("daemonize", False, False, _DBG, "-daemonize", "detach from the terminal once started"),
    _opt("pidfile", True, False, _DBG, "-pidfile file", "write the process id to file"),
    _opt("trace", True, False, _DBG, "-trace [[enable=]pattern][,events=file][,file=file]",
         "enable trace events", "trace", True),
    _opt("icount", True, False, _DBG, "-icount [shift=n|auto][,align=on|off][,sleep=on|off][,rr=...]",
         "count instructions instead of following host time", "icount", True),
    _opt("overcommit", True, True, _DBG, "-overcommit [mem-lock=on|off][,cpu-pm=on|off]",
         "control memory locking and guest CPU power management", "overcommit"),
    _opt("sandbox", True, False, _DBG, "-sandbox on|off[,...]", "filter system calls with seccomp",
         "sandbox", True),
    _opt("msg", True, False, _DBG, "-msg [timestamp=on|off][,guest-name=on|off]",
         "control the format of error messages", "msg"),
    _opt("incoming", True, True, _DBG, "-incoming tcp:[host]:port|exec:cmdline|file:path|defer",
         "wait for an incoming migration (defer: the URI comes from migrate_incoming)"),
    _opt("loadvm", True, False, _DBG, "-loadvm tag", "start from a saved snapshot"),
    _opt("watchdog-action", True, False, _DBG, "-watchdog-action action", "what the watchdog does when it fires"),
    _opt("echr", True, False, _DBG, "-echr chr", "set the terminal escape character"),
    _opt("semihosting", False, False, _DBG, "-semihosting", "enable semihosting"),
)
# fmt: on

OPTIONS: Mapping[str, QemuOption] = {option.name: option for option in OPTION_TABLE}


def lookup_option(name: str) -> QemuOption | None:
    """The table entry for an option name without dashes ("m", "machine")."""
    return OPTIONS.get(name)


class ParsedOption(NamedTuple):
    """One option of the command line, in the order given."""

    option: QemuOption
    arg: str | None
    spelled: str  # as typed: "-m", "--m", or a bare disk image name

    @property
    def name(self) -> str:
        """The option's canonical name without dashes ("machine" for -M)."""
        return self.option.canonical_name

    @property
    def location(self) -> str:
        """How QEMU names this option in an error: "-m 4096", "-S"."""
        if self.spelled == self.arg:  # a bare disk image
            return self.spelled
        if self.arg is None:
            return self.spelled
        return f"{self.spelled} {self.arg}"

    def error(self, message: str) -> UserError:
        return UserError(message, self.location)

    def parse_opts(self, registry: QemuOptsRegistry | None = None) -> QemuOpts:
        """Parse the argument into the option's group (e.g. -device into "device")."""
        group = self.option.opts_group
        if group is None or self.arg is None:
            raise ValueError(f"-{self.option.name} is not parsed into an option group")
        opts_list = (registry or opts_registry).find(group)
        return opts_list.parse(self.arg, self.option.permit_abbrev, self.location)


def parse_command_line(argv: Sequence[str]) -> list[ParsedOption]:
    """Split argv (without the program name) into options and their arguments.

    ``-opt`` and ``--opt`` are the same option; the next word is the
    argument of an option that takes one, even if it starts with '-'.  A
    word that is not an option is a disk image, as QEMU's -hda.
    """
    parsed: list[ParsedOption] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if not word.startswith("-"):
            parsed.append(ParsedOption(OPTIONS["hda"], word, word))
            continue
        name = word[2:] if word.startswith("--") else word[1:]
        option = OPTIONS.get(name)
        if option is None:
            raise UserError("invalid option", word)
        arg: str | None = None
        if option.has_arg:
            if index >= len(argv):
                raise UserError("requires an argument", word)
            arg = argv[index]
            index += 1
        parsed.append(ParsedOption(option, arg, word))
    return parsed


def unimplemented_options(parsed: Iterable[ParsedOption]) -> list[ParsedOption]:
    """The options of a command line that pemu does not act on yet."""
    return [p for p in parsed if not p.option.implemented]


def qemu_options_help(prog: str = "pemu") -> str:
    """The usage text printed by -h."""
    lines = [
        f"usage: {prog} [options] [disk_image]",
        "",
        "'disk_image' is a raw hard disk image for IDE/SATA hard disk 0",
        "Options marked (*) are recognised but not implemented by pemu yet.",
    ]
    for section in OptionSection:
        lines += ["", f"{section.value}:"]
        for option in OPTION_TABLE:
            if option.section is not section or option.name == "h":
                continue
            marker = "" if option.implemented else " (*)"
            usage_lines = option.usage.split("\n")
            usage_lines[0] += marker
            if option.name == "help":
                usage_lines = ["-h or -help"]
            for usage in usage_lines:
                lines.append(usage)
            lines.append(f"                {option.help}")
    lines += ["", "During emulation, with -nographic, Ctrl-a h shows the terminal escape keys.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The option groups

_S, _B, _N, _Z = QemuOptType.STRING, QemuOptType.BOOL, QemuOptType.NUMBER, QemuOptType.SIZE


def standard_opts_lists() -> list[QemuOptsList]:
    """Fresh option groups for every option parsed with QemuOpts syntax.

    An empty description accepts any key; vl.py checks those keys against
    what the chosen machine, device or back-end has.
    """
    d = QemuOptDesc
    return [
        # QEMU parses -machine and -object with keyval syntax: no bare flags.
        QemuOptsList("machine", "type", merge_lists=True, allow_bare_flags=False),
        QemuOptsList("object", "qom-type", allow_bare_flags=False),
        QemuOptsList("memory", "size", merge_lists=True, desc=(
            d("size", _Z, "initial amount of guest memory"),
            d("slots", _N, "number of hotplug slots"),
            d("maxmem", _Z, "maximum amount of guest memory"),
        )),
        QemuOptsList("smp-opts", "cpus", merge_lists=True, desc=tuple(
            d(name, _N) for name in ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads")
        )),
        QemuOptsList("accel", "accel"),
        QemuOptsList("device", "driver"),
        QemuOptsList("netdev", "type"),
        QemuOptsList("nic", "type"),
        QemuOptsList("net", "type"),
        QemuOptsList("chardev", "backend"),
        QemuOptsList("mon", "chardev", desc=(d("mode"), d("chardev"), d("pretty", _B))),
        QemuOptsList("add-fd", desc=(d("fd", _N), d("set", _N), d("opaque"))),
        QemuOptsList("drive"),
        QemuOptsList("boot-opts", "order", merge_lists=True, desc=(
            d("order"), d("once"), d("menu", _B), d("splash"), d("splash-time", _N),
            d("reboot-timeout", _N), d("strict", _B),
        )),
        QemuOptsList("name", "guest", merge_lists=True, desc=(
            d("guest", help="sets the name of the guest"),
            d("process", help="sets the name of the process"),
            d("debug-threads", _B, "name the threads after what they do"),
        )),
        QemuOptsList("rtc", merge_lists=True, desc=(d("base"), d("clock"), d("driftfix"))),
        QemuOptsList("fw_cfg", "name", desc=(d("name"), d("file"), d("string"), d("gen_id"))),
        QemuOptsList("smbios", "type"),
        QemuOptsList("icount", "shift", merge_lists=True, desc=(
            d("shift"), d("align", _B), d("sleep", _B), d("rr"), d("rrfile"), d("rrsnapshot"),
        )),
        QemuOptsList("overcommit", merge_lists=True, desc=(d("mem-lock", _B), d("cpu-pm", _B))),
        QemuOptsList("sandbox", "enable", merge_lists=True),
        QemuOptsList("msg", merge_lists=True, desc=(d("timestamp", _B), d("guest-name", _B))),
        QemuOptsList("trace", "enable", desc=(d("enable"), d("events"), d("file"))),
        global_opts_list(),
    ]


def register_standard_opts(registry: QemuOptsRegistry | None = None) -> QemuOptsRegistry:
    """Register the standard option groups (once; later calls add nothing)."""
    target = registry if registry is not None else opts_registry
    for opts_list in standard_opts_lists():
        if opts_list.name not in target:
            target.add(opts_list)
    return target
