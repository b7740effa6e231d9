"""The human monitor's commands (QEMU's hmp-commands.hx, hmp-commands-info.hx
and the hmp_* functions behind them), with QEMU's output formats.

A command line is a command name (``info`` takes a sub-command name), then
arguments parsed by the command's :class:`ArgSpec` list the way QEMU's
``args_type`` strings parse them: words separated by blanks, double-quoted
strings with ``\\n \\r \\\\ \\' \\"`` escapes, option flags (``-f``), and a
last argument that may take the rest of the line.

Handlers run on the main-loop thread with the big lock held.  A handler
reports a failure by raising :class:`CommandError` (or QOMError/UserError):
the monitor prints one "Error: ..." line.  Any other exception is printed
as one line too and never reaches the main loop.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from pemu.qapi.error import QMPError
from pemu.qom.object import QOMError, object_get_root, object_resolve_path
from pemu.system import runstate
from pemu.system.runstate import RunState, ShutdownCause
from pemu.util.error import UserError
from pemu.util.vm_context import set_current_vm

if TYPE_CHECKING:
    from pemu.monitor.monitor import Monitor


class CommandError(QMPError):
    """A command failed; the message is printed after "Error: "."""


# --- argument specifications ------------------------------------------------------


class ArgKind(Enum):
    WORD = "s"  # one word or quoted string
    REST = "S"  # everything up to the end of the line
    FLAG = "-"  # an option letter ("-f"), true when present


class ArgSpec(NamedTuple):
    """One argument of a monitor command: its key, how it is parsed, whether it may be left out."""

    key: str
    kind: ArgKind
    optional: bool = False
    letter: str = ""  # FLAG only


def word(key: str, optional: bool = False) -> ArgSpec:
    return ArgSpec(key, ArgKind.WORD, optional)


def rest(key: str, optional: bool = False) -> ArgSpec:
    return ArgSpec(key, ArgKind.REST, optional)


def flag(key: str, letter: str) -> ArgSpec:
    return ArgSpec(key, ArgKind.FLAG, True, letter)


Handler = Callable[["Monitor", dict[str, Any]], None]


class HMPCommand(NamedTuple):
    """One monitor command.  ``name`` may list aliases: "quit|q"."""

    name: str
    params: str
    help: str
    handler: Handler | None = None
    args: tuple[ArgSpec, ...] = ()
    sub_table: tuple[HMPCommand, ...] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.name.split("|"))

    def matches(self, text: str) -> bool:
        return text in self.names


class ArgumentError(Exception):
    """The arguments of a command line do not parse; the message is printed as is."""


# --- tokens -------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def next_word(text: str, pos: int) -> tuple[str, int] | None:
    """The next word or double-quoted string from ``pos`` (QEMU's get_str),
    and the position after it; None at the end of the line."""
    pos = _skip_blanks(text, pos)
    if pos >= len(text):
        return None
    if text[pos] != '"':
        end = pos
        while end < len(text) and not text[end].isspace():
            end += 1
        return text[pos:end], end
    pos += 1
    out: list[str] = []
    while pos < len(text) and text[pos] != '"':
        ch = text[pos]
        if ch == "\\":
            code = text[pos + 1] if pos + 1 < len(text) else ""
            if code not in _ESCAPES:
                raise ArgumentError(f"unsupported escape code: '\\{code}'")
            out.append(_ESCAPES[code])
            pos += 2
        else:
            out.append(ch)
            pos += 1
    if pos >= len(text):
        raise ArgumentError("unterminated string")
    return "".join(out), pos + 1


def parse_arguments(cmd: HMPCommand, text: str) -> dict[str, Any]:
    """The arguments of ``cmd`` from the rest of its line, keyed by ArgSpec.key."""
    args: dict[str, Any] = {}
    pos = 0
    for spec in cmd.args:
        pos = _skip_blanks(text, pos)
        if spec.kind is ArgKind.FLAG:
            args[spec.key] = False
            if text.startswith("-", pos):
                letter = text[pos + 1:pos + 2]
                later_flags = {s.letter for s in cmd.args if s.kind is ArgKind.FLAG}
                if letter == spec.letter:
                    args[spec.key] = True
                    pos += 2
                elif letter not in later_flags:
                    raise ArgumentError(f"{cmd.names[0]}: unsupported option -{letter}")
            continue
        if pos >= len(text):
            if spec.optional:
                continue
            raise ArgumentError(f"{cmd.names[0]}: string expected")
        if spec.kind is ArgKind.REST:
            args[spec.key] = text[pos:].rstrip()
            pos = len(text)
            continue
        try:
            token = next_word(text, pos)
        except ArgumentError as e:
            raise ArgumentError(f"{cmd.names[0]}: {e}") from None
        assert token is not None
        args[spec.key], pos = token
    if _skip_blanks(text, pos) < len(text):
        raise ArgumentError(f"{cmd.names[0]}: extraneous characters at the end of line")
    return args


# --- dispatch ---------------------------------------------------------------------------


def _command_name(text: str, pos: int) -> tuple[str, int]:
    """A command name ends at a blank or '/' (as in "x/10i")."""
    pos = _skip_blanks(text, pos)
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] != "/":
        end += 1
    return text[pos:end], end


def find_command(table: tuple[HMPCommand, ...], name: str) -> HMPCommand | None:
    for cmd in table:
        if cmd.matches(name):
            return cmd
    return None


def handle_hmp_command(mon: Monitor, line: str) -> None:
    """Parse and run one command line, printing any error as one line."""
    table = hmp_cmds()
    pos = 0
    start = _skip_blanks(line, 0)
    cmd: HMPCommand | None = None
    while True:
        name, end = _command_name(line, pos)
        if not name:
            if cmd is None:
                return  # an empty line
            break
        found = find_command(table, name)
        if found is None:
            mon.print_line(f"unknown command: '{line[start:end]}'")
            return
        cmd, pos = found, _skip_blanks(line, end)
        if cmd.sub_table is None or pos >= len(line):
            break
        table = cmd.sub_table
    assert cmd is not None
    typed = line[start:pos].rstrip()
    if cmd.handler is None:
        mon.print_line(f'Command "{typed}" is not available.')
        return
    try:
        args = parse_arguments(cmd, line[pos:])
    except ArgumentError as e:
        mon.print_line(str(e))
        mon.print_line(f'Try "help {typed}" for more information')
        return
    run_handler(mon, cmd, args)


def run_handler(mon: Monitor, cmd: HMPCommand, args: dict[str, Any]) -> None:
    """Run a command on the monitor's own VM (QEMU's monitor acts on
    current_machine, which is the monitor's with one VM a process)."""
    previous = set_current_vm(mon.vm)
    try:
        assert cmd.handler is not None
        cmd.handler(mon, args)
    except (QMPError, QOMError, UserError) as e:
        mon.error(str(e))
    except Exception as e:  # a bug in a command must not take the VMM down
        detail = str(e).splitlines()[0] if str(e) else ""
        mon.error(f"internal error in '{cmd.names[0]}': {type(e).__name__}" + (f": {detail}" if detail else ""))
    finally:
        set_current_vm(previous)


# --- help -------------------------------------------------------------------------------


def _help_line(cmd: HMPCommand, prefix: str = "") -> str:
    return f"{prefix}{cmd.name} {cmd.params} -- {cmd.help}"


def help_lines(words: list[str]) -> list[str]:
    """What `help [words...]` prints (help_cmd_dump)."""
    table = hmp_cmds()
    prefix: list[str] = []
    for index, name in enumerate(words):
        cmd = find_command(table, name)
        if cmd is None:
            return ["unknown command: '" + " ".join(words[:index + 1]) + "'"]
        if cmd.sub_table is None:
            return [_help_line(cmd, "".join(p + " " for p in prefix))]
        prefix.append(name)
        table = cmd.sub_table
    lead = "".join(p + " " for p in prefix)
    return [_help_line(cmd, lead) for cmd in table]


def hmp_help(mon: Monitor, args: dict[str, Any]) -> None:
    words: list[str] = []
    text = args.get("name") or ""
    pos = 0
    while (token := next_word(text, pos)) is not None:
        words.append(token[0])
        pos = token[1]
    for line in help_lines(words):
        mon.print_line(line)


def hmp_info_help(mon: Monitor, args: dict[str, Any]) -> None:
    for line in help_lines(["info"]):
        mon.print_line(line)


# --- run state ----------------------------------------------------------------------------


# The handlers below run the QMP command (pemu.monitor.qmp_cmds*, imported when
# first used) and format its result, as QEMU's hmp_* functions do.


def hmp_info_status(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds import qmp_query_status

    info = qmp_query_status()
    text = "VM status: " + ("running" if info["running"] else "paused")
    if not info["running"] and info["status"] is not RunState.PAUSED:
        text += f" ({info['status'].value})"
    mon.print_line(text)


def hmp_stop(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds import qmp_stop

    qmp_stop()


def hmp_cont(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds import qmp_cont

    qmp_cont()


def hmp_quit(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds import qmp_quit

    mon.suspend()
    qmp_quit()


# The cause a monitor's reset gives (QEMU's SHUTDOWN_CAUSE_HOST_QMP_SYSTEM_RESET).
SYSTEM_RESET_CAUSE = ShutdownCause.HOST_QMP_SYSTEM_RESET


def hmp_system_reset(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds import qmp_system_reset

    qmp_system_reset()


PowerdownHandler = Callable[[], None]
register_powerdown_handler = runstate.qemu_register_powerdown_notifier
unregister_powerdown_handler = runstate.qemu_unregister_powerdown_notifier


def hmp_system_powerdown(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds import qmp_system_powerdown

    qmp_system_powerdown()


# --- version, name ----------------------------------------------------------------------------


def monitor_version() -> str:
    """pemu's version, as the banner and `info version` show it."""
    import pemu

    return str(getattr(pemu, "__version__", "0.1.0"))


def hmp_info_version(mon: Monitor, args: dict[str, Any]) -> None:
    """pemu's own version, as this monitor has always printed it (QMP's
    query-version names the QEMU interface version, with pemu's as the package)."""
    mon.print_line(monitor_version())


def vm_name() -> str | None:
    """The -name of the VM, when the command line set one (kept on the machine)."""
    from pemu.monitor.qmp_cmds import vm_name as name

    return name()


def hmp_info_accel(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.accel.accel import current_accel

    accel = current_accel()
    if accel is None:
        raise CommandError("no accelerator is configured")
    detail = accel.description()
    mon.print_line(f"accelerator: {accel.name}" + (f" ({detail})" if detail else ""))


def hmp_info_name(mon: Monitor, args: dict[str, Any]) -> None:
    name = vm_name()  # what query-name returns
    if name is not None:
        mon.print_line(name)


# --- QOM ----------------------------------------------------------------------------------------


def hmp_info_qom_tree(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qom_info import format_qom_tree

    path = args.get("path")
    if path is not None:
        obj = object_resolve_path(path)
        if obj is None:
            mon.print_line(f"Path '{path}' could not be resolved.")
            return
    else:
        obj = object_get_root()
    mon.puts(format_qom_tree(obj))


def hmp_info_qtree(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.hw.core.sysbus import sysbus_get_default
    from pemu.monitor.qom_info import format_qtree

    mon.puts(format_qtree(sysbus_get_default(), brief=bool(args.get("brief"))))


def hmp_qom_list(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_machine import qmp_qom_list

    path = args.get("path")
    if path is None:
        mon.print_line("/")
        return
    for prop in qmp_qom_list(path=path):
        mon.print_line(f"{prop['name']} ({prop['type']})")


def hmp_qom_get(mon: Monitor, args: dict[str, Any]) -> None:
    import json

    from pemu.monitor.qmp_cmds_machine import qmp_qom_get

    mon.print_line(json.dumps(qmp_qom_get(path=args["path"], property=args["property"])))


def hmp_qom_set(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_machine import qmp_qom_set

    qmp_qom_set(path=args["path"], property=args["property"], value=args["value"])


# --- memory -------------------------------------------------------------------------------------


def hmp_info_mtree(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.system.memory import mtree_info

    mon.puts(mtree_info(flatview=bool(args.get("flatview"))))


# --- CPUs ---------------------------------------------------------------------------------------


def machine_cpus() -> list[Any]:
    """The CPU objects of the machine, by cpu_index."""
    from pemu.monitor.qmp_cmds_machine import machine_cpus as cpus

    return cpus()


def hmp_info_cpus(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_machine import qmp_query_cpus_fast

    for n, cpu in enumerate(qmp_query_cpus_fast()):
        mark = "*" if n == 0 else " "
        mon.print_line(f"{mark} CPU #{cpu['cpu-index']}: thread_id={cpu['thread-id']}")


def hmp_info_registers(mon: Monitor, args: dict[str, Any]) -> None:
    cpus = [cpu for cpu in machine_cpus() if hasattr(cpu, "env")]
    if not cpus:
        mon.print_line("No CPU available")
        return
    chosen = cpus if args.get("all") else cpus[:1]
    from pemu.system.cpus import cpu_synchronize_state

    for cpu in chosen:
        if args.get("all"):
            mon.print_line(f"\nCPU#{getattr(cpu, 'cpu_index', 0)}")
        cpu_synchronize_state(cpu)
        mon.puts(format_x86_registers(cpu.env))


def _seg_line(name: str, sc: Any, wide: bool, protected: bool, lma: bool) -> str:
    from pemu.target.i386 import cpu_state as cs

    flags = sc.flags & 0x00FFFF00
    base = sc.base if wide else sc.base & 0xFFFFFFFF
    text = f"{name:<3}={sc.selector & 0xFFFF:04x} {base:0{16 if wide else 8}x} {sc.limit & 0xFFFFFFFF:08x} {flags:08x}"
    if not protected or not sc.flags & cs.DESC_P_MASK:
        return text
    text += f" DPL={(sc.flags >> cs.DESC_DPL_SHIFT) & 3} "
    if sc.flags & cs.DESC_S_MASK:
        if sc.flags & cs.DESC_CS_MASK:
            kind = "CS64" if sc.flags & cs.DESC_L_MASK else ("CS32" if sc.flags & cs.DESC_B_MASK else "CS16")
            bits = ("C" if sc.flags & cs.DESC_C_MASK else "-") + ("R" if sc.flags & cs.DESC_R_MASK else "-")
        else:
            kind = "DS  " if sc.flags & cs.DESC_B_MASK or lma else "DS16"
            # Bit 10 is "conforming" in a code descriptor, "expand-down" in a data one.
            bits = ("E" if sc.flags & cs.DESC_C_MASK else "-") + ("W" if sc.flags & cs.DESC_W_MASK else "-")
        text += f"{kind} [{bits}{'A' if sc.flags & cs.DESC_A_MASK else '-'}]"
    else:
        text += f"type={(sc.flags >> cs.DESC_TYPE_SHIFT) & 0xF:x}"
    return text


def format_x86_registers(env: Any) -> str:
    """`info registers` for one x86 CPU (x86_cpu_dump_state, the general part)."""
    from pemu.target.i386 import cpu_state as cs

    lma = bool(env.efer & cs.Efer.LMA)
    protected = bool(env.cr0 & cs.CR0_PE_MASK)
    regs = [r & 0xFFFFFFFFFFFFFFFF for r in env.regs]
    rfl = env.rflags & 0xFFFFFFFF
    flag_text = "".join(ch if rfl & mask else "-" for ch, mask in (
        ("D", cs.DF_MASK), ("O", cs.OF_MASK), ("S", cs.SF_MASK), ("Z", cs.ZF_MASK),
        ("A", cs.AF_MASK), ("P", cs.PF_MASK), ("C", cs.CF_MASK)))
    cpl = env.cpl
    a20 = 1 if (env.a20_mask >> 20) & 1 else 0
    hlt = 1 if env.halted else 0
    lines: list[str] = []
    if lma:
        names = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP",
                 "R8 ", "R9 ", "R10", "R11", "R12", "R13", "R14", "R15"]
        order = [0, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15]
        for row in range(4):
            lines.append(" ".join(f"{names[i]}={regs[order[i]]:016x}" for i in range(row * 4, row * 4 + 4)))
        lines.append(f"RIP={env.rip & 0xFFFFFFFFFFFFFFFF:016x} RFL={rfl:08x} [{flag_text}] "
                     f"CPL={cpl} II=0 A20={a20} SMM=0 HLT={hlt}")
    else:
        names = ["EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP"]
        order = [0, 3, 1, 2, 6, 7, 5, 4]
        for row in range(2):
            lines.append(" ".join(f"{names[i]}={regs[order[i]] & 0xFFFFFFFF:08x}" for i in range(row * 4, row * 4 + 4)))
        lines.append(f"EIP={env.rip & 0xFFFFFFFF:08x} EFL={rfl:08x} [{flag_text}] "
                     f"CPL={cpl} II=0 A20={a20} SMM=0 HLT={hlt}")
    for name, seg in zip(("ES", "CS", "SS", "DS", "FS", "GS"), env.segs, strict=True):
        lines.append(_seg_line(name, seg, lma, protected, lma))
    lines.append(_seg_line("LDT", env.ldt, lma, protected, lma))
    lines.append(_seg_line("TR", env.tr, lma, protected, lma))
    width = 16 if lma else 8
    lines.append(f"GDT=     {env.gdt.base & ((1 << (4 * width)) - 1):0{width}x} {env.gdt.limit & 0xFFFFFFFF:08x}")
    lines.append(f"IDT=     {env.idt.base & ((1 << (4 * width)) - 1):0{width}x} {env.idt.limit & 0xFFFFFFFF:08x}")
    if lma:
        lines.append(f"CR0={env.cr0 & 0xFFFFFFFF:08x} CR2={env.cr2 & 0xFFFFFFFFFFFFFFFF:016x} "
                     f"CR3={env.cr3 & 0xFFFFFFFFFFFFFFFF:016x} CR4={env.cr4 & 0xFFFFFFFF:08x}")
    else:
        lines.append(f"CR0={env.cr0 & 0xFFFFFFFF:08x} CR2={env.cr2 & 0xFFFFFFFF:08x} "
                     f"CR3={env.cr3 & 0xFFFFFFFF:08x} CR4={env.cr4 & 0xFFFFFFFF:08x}")
    lines.append(f"EFER={env.efer & 0xFFFFFFFFFFFFFFFF:016x}")
    return "".join(line + "\n" for line in lines)


# --- networking ------------------------------------------------------------------------------


def hmp_info_network(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.net.net import info_network, net_state

    mon.puts(info_network(net_state()))


def _slirp_lookup(mon: Monitor, ident: str | None) -> Any:
    """The user netdev named ``ident`` (or the first one), or None after a message."""
    from pemu.net.net import net_state
    from pemu.net.slirp import SlirpNetClient

    for nc in net_state().clients:
        if isinstance(nc, SlirpNetClient) and (ident is None or nc.name == ident):
            return nc
    if ident is None:
        mon.puts("user mode network stack not in use\n")
    else:
        mon.puts(f"unrecognized netdev id '{ident}'\n")
    return None


def hmp_hostfwd_add(mon: Monitor, args: dict[str, Any]) -> None:
    ident, rule = (args["arg1"], args["arg2"]) if args.get("arg2") else (None, args["arg1"])
    nc = _slirp_lookup(mon, ident)
    if nc is None:
        return
    try:
        nc.add_hostfwd(rule)
    except UserError as e:
        mon.puts(f"{e.message}\n")


def hmp_hostfwd_remove(mon: Monitor, args: dict[str, Any]) -> None:
    ident, rule = (args["arg1"], args["arg2"]) if args.get("arg2") else (None, args["arg1"])
    nc = _slirp_lookup(mon, ident)
    if nc is None:
        return
    try:
        removed = nc.remove_hostfwd(rule)
    except ValueError:
        mon.puts("invalid format\n")
        return
    if removed:
        mon.puts(f"host forwarding rule for {rule} removed\n")
    else:
        mon.puts(f"could not remove host forwarding rule '{rule}'\n")


def hmp_set_link(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_backends import qmp_set_link

    up = args["up_or_down"]
    if up not in ("on", "off"):
        mon.puts("Parameter 'up' expects 'on' or 'off'\n")
        return
    try:
        qmp_set_link(name=args["name"], up=up == "on")
    except QMPError as e:
        mon.puts(f"{e.desc}\n")


# --- block devices (pemu.block.blockdev) -----------------------------------------------------------


def _block_devices() -> Any:
    from pemu.monitor.qmp_cmds_backends import block_devices

    return block_devices()


def hmp_info_block(mon: Monitor, args: dict[str, Any]) -> None:
    """QEMU's print_block_info for each drive of query-block."""
    from pemu.monitor.qmp_cmds_backends import qmp_query_block

    for info in qmp_query_block():
        inserted = info.get("inserted")
        if inserted is None:
            mon.puts(f"{info['device']}: [not inserted]\n")
        else:
            flags = ", read-only" if inserted["ro"] else ""
            mon.puts(f"{info['device']} ({inserted.get('node-name', '')}): {inserted['file']} ({inserted['drv']})"
                     f"{flags}\n")
        if "qdev" in info:
            mon.puts(f"    Attached to:      {info['qdev']}\n")
        if info["removable"]:
            mon.puts(f"    Removable device: {'' if info['locked'] else 'not '}locked, "
                     f"tray {'open' if info.get('tray_open') else 'closed'}\n")
        if inserted is not None:
            cache = inserted["cache"]
            mode = "writeback" if cache["writeback"] else "writethrough"
            if cache["direct"]:
                mode += ", direct"
            if cache["no-flush"]:
                mode += ", ignore flushes"
            mon.puts(f"    Cache mode:       {mode}\n")
            if "backing_file" in inserted:
                mon.puts(f"    Backing file:     {inserted['backing_file']} "
                         f"(chain depth: {inserted['backing_file_depth']})\n")
        mon.puts("\n")


def hmp_info_blockstats(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_backends import qmp_query_blockstats

    for entry in qmp_query_blockstats():
        s = entry["stats"]
        mon.puts(f"{entry.get('device', '')}: rd_bytes={s['rd_bytes']} wr_bytes={s['wr_bytes']} "
                 f"rd_operations={s['rd_operations']} wr_operations={s['wr_operations']} "
                 f"flush_operations={s['flush_operations']} wr_total_time_ns={s['wr_total_time_ns']} "
                 f"rd_total_time_ns={s['rd_total_time_ns']} flush_total_time_ns={s['flush_total_time_ns']} "
                 f"rd_merged={s['rd_merged']} wr_merged={s['wr_merged']} idle_time_ns={s.get('idle_time_ns', 0)}\n")


def hmp_commit(mon: Monitor, args: dict[str, Any]) -> None:
    """commit DEVICE|all: write an overlay's data (e.g. -snapshot's) into its backing image."""
    from pemu.block.blockdev import CommitError

    try:
        _block_devices().commit(args["device"])
    except CommitError as exc:
        mon.print_line(str(exc))  # QEMU reports these with error_report, no "Error:" prefix


def hmp_eject(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.block.blockdev import MediumError

    try:
        _block_devices().eject(args["device"], bool(args.get("force")))
    except MediumError as exc:
        raise CommandError(str(exc)) from None


def hmp_block_resize(mon: Monitor, args: dict[str, Any]) -> None:
    """block_resize DEVICE SIZE: the QMP command, SIZE with QEMU's suffixes (k, M, G, T)."""
    from pemu.monitor.qmp_cmds_backends import qmp_block_resize
    from pemu.util.cutils import SizeParseError, qemu_strtosz

    try:
        size = qemu_strtosz(args["size"])
    except SizeParseError:
        raise CommandError(f"invalid size value '{args['size']}'") from None
    qmp_block_resize(device=args["device"], size=size)  # a QMPError prints as "Error: ..."


def hmp_change(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.block.blockdev import MediumError

    try:
        _block_devices().change_medium(args["device"], args["target"], args.get("arg"), args.get("read-only-mode"))
    except MediumError as exc:
        raise CommandError(str(exc)) from None


# --- migration (QEMU's migration/migration-hmp-cmds.c) ----------------------------------------------------


def hmp_migrate(mon: Monitor, args: dict[str, Any]) -> None:
    """migrate [-d] URI: without -d the monitor waits for the end and prints an error, as QEMU's does."""
    from pemu.migration.migration import MigrationError, MigrationStatus
    from pemu.monitor.qmp_cmds_migration import migration_state

    state = migration_state()
    # A monitor without a terminal of its own (human-monitor-command) cannot wait.
    wait = not args.get("detach") and mon.can_suspend

    def finished() -> None:
        if state.status is MigrationStatus.FAILED and state.error_desc:
            mon.print_line(state.error_desc)  # QEMU's error_report in the monitor: no "Error: "
        mon.editor.show_prompt()
        mon.resume()

    try:
        state.migrate(args["uri"], on_finished=finished if wait else None)
    except MigrationError as e:
        raise CommandError(str(e)) from None
    if wait:
        mon.suspend()


def hmp_migrate_cancel(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_migration import qmp_migrate_cancel

    qmp_migrate_cancel()


def hmp_migrate_incoming(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_migration import qmp_migrate_incoming

    qmp_migrate_incoming(uri=args["uri"])


def hmp_migrate_set_parameter(mon: Monitor, args: dict[str, Any]) -> None:
    """migrate_set_parameter NAME VALUE: downtime-limit in ms, max-bandwidth in bytes/s
    (a size; without a suffix in MiB/s, as QEMU reads it)."""
    from pemu.monitor.qmp_cmds_migration import qmp_migrate_set_parameters
    from pemu.util.cutils import SizeParseError, qemu_strtosz_MiB

    name, text = args["parameter"], args["value"]
    if name == "downtime-limit":
        if not text.isdigit():
            raise CommandError(f"Parameter '{name}' expects uint64")
        qmp_migrate_set_parameters(downtime_limit=int(text))
    elif name == "max-bandwidth":
        try:
            value = qemu_strtosz_MiB(text)
        except SizeParseError:
            raise CommandError(f"Parameter '{name}' expects a size value") from None
        qmp_migrate_set_parameters(max_bandwidth=value)
    else:
        raise CommandError(f"Invalid parameter value: {name}")


def hmp_migrate_set_capability(mon: Monitor, args: dict[str, Any]) -> None:
    """migrate_set_capability NAME on|off (QEMU's hmp_migrate_set_capability)."""
    from pemu.migration.migration import MigrationCapability
    from pemu.monitor.qmp_cmds_migration import qmp_migrate_set_capabilities

    name, text = args["capability"], args["state"]
    if text not in ("on", "off"):
        raise CommandError("Expected 'on' or 'off'")
    try:
        capability = MigrationCapability(name)
    except ValueError:
        raise CommandError(f"Invalid parameter '{name}'") from None
    qmp_migrate_set_capabilities(capabilities=[{"capability": capability, "state": text == "on"}])


def hmp_info_migrate_capabilities(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_migration import qmp_query_migrate_capabilities

    for cap in qmp_query_migrate_capabilities():
        mon.print_line(f"{cap['capability'].value}: {'on' if cap['state'] else 'off'}")


def hmp_info_migrate(mon: Monitor, args: dict[str, Any]) -> None:
    """QEMU 7.2's hmp_info_migrate layout (its "globals" settings are QEMU's internals: not shown)."""
    from pemu.monitor.qmp_cmds_migration import qmp_query_migrate

    info = qmp_query_migrate()
    status = info.get("status")
    if status is not None:
        error = info.get("error-desc")
        mon.print_line(f"Migration status: {status.value}" + (f" ({error})" if error and status.value == "failed"
                                                              else ""))
        if "total-time" in info:
            mon.print_line(f"total time: {info['total-time']} ms")
        if "expected-downtime" in info:
            mon.print_line(f"expected downtime: {info['expected-downtime']} ms")
        if "downtime" in info:
            mon.print_line(f"downtime: {info['downtime']} ms")
        if "setup-time" in info:
            mon.print_line(f"setup: {info['setup-time']} ms")
    ram = info.get("ram")
    if ram is not None:
        mon.puts(f"transferred ram: {ram['transferred'] >> 10} kbytes\n"
                 f"throughput: {ram['mbps']:0.2f} mbps\n"
                 f"remaining ram: {ram['remaining'] >> 10} kbytes\n"
                 f"total ram: {ram['total'] >> 10} kbytes\n"
                 f"duplicate: {ram['duplicate']} pages\n"
                 f"skipped: {ram['skipped']} pages\n"
                 f"normal: {ram['normal']} pages\n"
                 f"normal bytes: {ram['normal-bytes'] >> 10} kbytes\n"
                 f"dirty sync count: {ram['dirty-sync-count']}\n"
                 f"page size: {ram['page-size'] >> 10} kbytes\n"
                 f"multifd bytes: {ram['multifd-bytes'] >> 10} kbytes\n"
                 f"pages-per-second: {ram['pages-per-second']}\n")
        if ram["dirty-pages-rate"]:
            mon.print_line(f"dirty pages rate: {ram['dirty-pages-rate']} pages")
        if ram["precopy-bytes"]:
            mon.print_line(f"precopy ram: {ram['precopy-bytes'] >> 10} kbytes")
        if ram["downtime-bytes"]:
            mon.print_line(f"downtime ram: {ram['downtime-bytes'] >> 10} kbytes")
    addresses = info.get("socket-address")
    if addresses:
        mon.print_line("socket address: [")
        for address in addresses:
            host = address["host"]
            mon.print_line(f"\ttcp:{f'[{host}]' if ':' in host else host}:{address['port']}")
        mon.print_line("]")


def hmp_info_migrate_parameters(mon: Monitor, args: dict[str, Any]) -> None:
    from pemu.monitor.qmp_cmds_migration import qmp_query_migrate_parameters

    params = qmp_query_migrate_parameters()
    mon.print_line(f"max-bandwidth: {params['max-bandwidth']} bytes/second")
    mon.print_line(f"downtime-limit: {params['downtime-limit']} ms")


# --- the tables -----------------------------------------------------------------------------------


def _sorted(cmds: list[HMPCommand]) -> tuple[HMPCommand, ...]:
    # QEMU sorts both tables by name when the monitor starts (sortcmdlist).
    return tuple(sorted(cmds, key=lambda c: c.name))


HMP_INFO_CMDS = _sorted([
    HMPCommand("version", "", "show the version of pemu", hmp_info_version),
    HMPCommand("status", "", "show the current VM status (running|paused)", hmp_info_status),
    HMPCommand("name", "", "show the current VM name", hmp_info_name),
    HMPCommand("cpus", "", "show infos for each CPU", hmp_info_cpus),
    HMPCommand("registers", "[-a]", "show the cpu registers (-a: all - show register info for all cpus)",
               hmp_info_registers, (flag("all", "a"),)),
    HMPCommand("accel", "", "show the accelerator and the engine that runs guest code", hmp_info_accel),
    HMPCommand("mtree", "[-f]", "show memory tree (-f: dump flat view for address spaces)",
               hmp_info_mtree, (flag("flatview", "f"),)),
    HMPCommand("qtree", "[-b]", "show device tree (-b: brief, omit properties)",
               hmp_info_qtree, (flag("brief", "b"),)),
    HMPCommand("qom-tree", "[path]", "show QOM composition tree", hmp_info_qom_tree, (word("path", True),)),
    HMPCommand("network", "", "show the network state", hmp_info_network),
    HMPCommand("block", "", "show the block devices", hmp_info_block),
    HMPCommand("blockstats", "", "show block device statistics", hmp_info_blockstats),
    HMPCommand("migrate", "", "show migration status", hmp_info_migrate),
    HMPCommand("migrate_capabilities", "", "show current migration capabilities", hmp_info_migrate_capabilities),
    HMPCommand("migrate_parameters", "", "show current migration parameters", hmp_info_migrate_parameters),
])

HMP_CMDS = _sorted([
    HMPCommand("help|?", "[cmd]", "show the help", hmp_help, (rest("name", True),)),
    HMPCommand("info", "[subcommand]", "show various information about the system state",
               hmp_info_help, sub_table=HMP_INFO_CMDS),
    HMPCommand("quit|q", "", "quit the emulator", hmp_quit),
    HMPCommand("stop|s", "", "stop emulation", hmp_stop),
    HMPCommand("cont|c", "", "resume emulation", hmp_cont),
    HMPCommand("system_reset", "", "reset the system", hmp_system_reset),
    HMPCommand("system_powerdown", "", "send system power down event", hmp_system_powerdown),
    HMPCommand("commit", "device|all", "commit changes to the disk images (if -snapshot is used) or backing files",
               hmp_commit, (word("device"),)),
    HMPCommand("eject", "[-f] device", "eject a removable medium (use -f to force it)", hmp_eject,
               (flag("force", "f"), word("device"))),
    HMPCommand("block_resize", "device size", "resize a block image", hmp_block_resize,
               (word("device"), word("size"))),
    HMPCommand("change", "device filename [format [read-only-mode]]", "change a removable medium",
               hmp_change, (word("device"), word("target"), word("arg", True), word("read-only-mode", True))),
    HMPCommand("qom-list", "path", "list QOM properties", hmp_qom_list, (word("path", True),)),
    HMPCommand("qom-get", "path property", "print QOM property", hmp_qom_get,
               (word("path"), word("property"))),
    HMPCommand("qom-set", "path property value", "set QOM property", hmp_qom_set,
               (word("path"), word("property"), rest("value"))),
    HMPCommand("hostfwd_add", "[netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport",
               "redirect TCP or UDP connections from host to guest (requires -net user)",
               hmp_hostfwd_add, (word("arg1"), word("arg2", True))),
    HMPCommand("hostfwd_remove", "[netdev_id] [tcp|udp]:[hostaddr]:hostport",
               "remove host-to-guest TCP or UDP redirection", hmp_hostfwd_remove,
               (word("arg1"), word("arg2", True))),
    HMPCommand("set_link", "name on|off", "change the link status of a network adapter", hmp_set_link,
               (word("name"), word("up_or_down"))),
    HMPCommand("migrate", "[-d] uri", "migrate to URI (using -d to not wait for completion)", hmp_migrate,
               (flag("detach", "d"), word("uri"))),
    HMPCommand("migrate_cancel", "", "cancel the current VM migration", hmp_migrate_cancel),
    HMPCommand("migrate_incoming", "uri", "Continue an incoming migration from an -incoming defer",
               hmp_migrate_incoming, (word("uri"),)),
    HMPCommand("migrate_set_capability", "capability state", "Enable/Disable the usage of a capability for migration",
               hmp_migrate_set_capability, (word("capability"), word("state"))),
    HMPCommand("migrate_set_parameter", "parameter value", "Set the parameter for migration",
               hmp_migrate_set_parameter, (word("parameter"), word("value"))),
])


def hmp_cmds() -> tuple[HMPCommand, ...]:
    """The top-level command table."""
    return HMP_CMDS
