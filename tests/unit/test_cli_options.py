"""The option table and argv parsing (pemu.cli.options), end to end with QemuOpts."""

from __future__ import annotations

import os

import pytest

from pemu.cli.options import (
    OPTION_TABLE,
    OPTIONS,
    OptionSection,
    ParsedOption,
    parse_command_line,
    qemu_options_help,
    register_standard_opts,
    standard_opts_lists,
    unimplemented_options,
)
from pemu.util.cutils import GiB, MiB, qemu_strtosz_MiB
from pemu.util.error import UserError
from pemu.util.qemu_opts import QemuOptsRegistry, qemu_global_option

SEED = [
    "-machine", "q35",
    "-m", "4096",
    "-device", "e1000e,netdev=net0",
    "-netdev", "user,id=net0,hostfwd=tcp::5555-:22",
    "-kernel", "bzImage",
    "-append", "root=/dev/sda2",
]  # fmt: skip


@pytest.fixture
def registry() -> QemuOptsRegistry:
    return register_standard_opts(QemuOptsRegistry())


def names_and_args(parsed: list[ParsedOption]) -> list[tuple[str, str | None]]:
    return [(p.name, p.arg) for p in parsed]


# -- the table


REQUIRED = """machine M m smp cpu accel enable-kvm device global netdev nic object chardev serial
monitor qmp mon kernel initrd append bios fw_cfg smbios drive hda cdrom boot name uuid nodefaults
no-user-config nographic display vga S no-reboot no-shutdown d D L rtc daemonize pidfile version h
help trace icount overcommit sandbox msg""".split()


@pytest.mark.parametrize("name", REQUIRED)
def test_required_options_are_in_the_table(name: str) -> None:
    assert name in OPTIONS


def test_table_is_consistent() -> None:
    assert len(OPTIONS) == len(OPTION_TABLE), "duplicate option names"
    groups = {opts_list.name: opts_list for opts_list in standard_opts_lists()}
    for option in OPTION_TABLE:
        assert not option.name.startswith("-")
        assert option.usage.startswith("-")
        if option.alias_of is not None:
            assert option.alias_of in OPTIONS
        if option.opts_group is not None:
            assert option.has_arg
            assert option.opts_group in groups, option.name
            if option.permit_abbrev:
                assert groups[option.opts_group].implied_opt_name is not None, option.name


@pytest.mark.parametrize(
    ("name", "has_arg"),
    [("m", True), ("machine", True), ("append", True), ("S", False), ("nographic", False),
     ("enable-kvm", False), ("version", False), ("d", True), ("D", True), ("L", True)],
)  # fmt: skip
def test_takes_argument(name: str, has_arg: bool) -> None:
    assert OPTIONS[name].has_arg is has_arg


# -- argv splitting


def test_seed_command_line() -> None:
    parsed = parse_command_line(SEED)
    assert names_and_args(parsed) == [
        ("machine", "q35"),
        ("m", "4096"),
        ("device", "e1000e,netdev=net0"),
        ("netdev", "user,id=net0,hostfwd=tcp::5555-:22"),
        ("kernel", "bzImage"),
        ("append", "root=/dev/sda2"),
    ]
    assert [p.name for p in unimplemented_options(parsed)] == []


def test_seed_command_line_into_option_groups(registry: QemuOptsRegistry) -> None:
    by_name = {p.name: p for p in parse_command_line(SEED)}

    machine = by_name["machine"].parse_opts(registry)
    assert machine.get("type") == "q35"

    memory = by_name["m"].parse_opts(registry)
    assert memory.get("size") == "4096"
    assert qemu_strtosz_MiB(memory.get("size") or "") == 4096 * MiB  # a bare -m number is MiB

    device = by_name["device"].parse_opts(registry)
    assert device.items() == [("driver", "e1000e"), ("netdev", "net0")]
    assert device.id is None

    netdev = by_name["netdev"].parse_opts(registry)
    assert netdev.id == "net0"
    assert netdev.items() == [("type", "user"), ("hostfwd", "tcp::5555-:22")]

    assert by_name["append"].arg == "root=/dev/sda2"
    assert by_name["kernel"].arg == "bzImage"


def test_double_dash_form() -> None:
    parsed = parse_command_line(["--machine", "q35", "--m", "512M", "--nographic", "--M", "pc"])
    assert names_and_args(parsed) == [("machine", "q35"), ("m", "512M"), ("nographic", None), ("machine", "pc")]
    assert parsed[1].spelled == "--m"
    assert parsed[1].location == "--m 512M"


def test_argument_may_start_with_a_dash() -> None:
    parsed = parse_command_line(["-append", "-v console=ttyS0", "-d", "guest_errors,unimp"])
    assert names_and_args(parsed) == [("append", "-v console=ttyS0"), ("d", "guest_errors,unimp")]


def test_append_with_spaces_and_quotes_is_one_argument() -> None:
    parsed = parse_command_line(["-append", 'root=/dev/sda2 console=ttyS0 init="/bin/sh -x"'])
    assert parsed[0].arg == 'root=/dev/sda2 console=ttyS0 init="/bin/sh -x"'


def test_repeated_options_keep_their_order() -> None:
    argv = ["-device", "a", "-serial", "stdio", "-device", "b", "-serial", "null"]
    assert names_and_args(parse_command_line(argv)) == [
        ("device", "a"), ("serial", "stdio"), ("device", "b"), ("serial", "null")
    ]  # fmt: skip


def test_aliases() -> None:
    parsed = parse_command_line(["-M", "q35", "-h"])
    assert names_and_args(parsed) == [("machine", "q35"), ("help", None)]
    assert parsed[0].option.name == "M"


def test_unknown_option() -> None:
    with pytest.raises(UserError) as info:
        parse_command_line(["-m", "1G", "-foo", "bar"])
    assert info.value.location == "-foo"
    assert info.value.message == "invalid option"
    assert str(info.value) == "-foo: invalid option"


@pytest.mark.parametrize("word", ["-", "--", "---m", "-M=q35", "-machine=q35", "-MACHINE"])
def test_malformed_options_are_invalid(word: str) -> None:
    with pytest.raises(UserError, match="invalid option"):
        parse_command_line([word, "x"])


def test_unknown_double_dash_option_is_named_as_typed() -> None:
    with pytest.raises(UserError) as info:
        parse_command_line(["--bogus"])
    assert info.value.location == "--bogus"


@pytest.mark.parametrize("argv", [["-m"], ["-kernel", "bz", "-append"], ["--device"]])
def test_missing_argument(argv: list[str]) -> None:
    with pytest.raises(UserError) as info:
        parse_command_line(argv)
    assert info.value.message == "requires an argument"
    assert info.value.location == argv[-1]


def test_bare_word_is_a_disk_image() -> None:
    parsed = parse_command_line(["-m", "1G", "disk.img"])
    assert names_and_args(parsed) == [("m", "1G"), ("hda", "disk.img")]
    assert parsed[1].location == "disk.img"


def test_empty_command_line() -> None:
    assert parse_command_line([]) == []


def test_unimplemented_options_are_reported_by_the_table() -> None:
    parsed = parse_command_line(["-m", "1G", "-daemonize", "-object", "rng-random,id=r0", "-uuid", "x", "disk.img"])
    assert [p.name for p in unimplemented_options(parsed)] == ["daemonize", "uuid"]


# -- the table decides what vl.py refuses and what it acts on

# An argument for every option pemu implements that takes one.
IMPLEMENTED_SAMPLES: dict[str, list[str]] = {
    "h": [], "help": [], "version": [], "machine": ["q35"], "M": ["q35"], "cpu": ["qemu64"],
    "accel": ["tcg"], "enable-kvm": [], "smp": ["1"], "m": ["128"], "name": ["vm1"],
    "device": ["isa-serial"], "global": ["isa-serial.irq=4"], "object": ["memory-backend-ram,id=m0,size=1M"],
    "nodefaults": [], "no-user-config": [], "L": ["/usr/share/qemu"], "bios": ["bios.bin"],
    "fw_cfg": ["name=opt/pemu/x,string=y"], "smbios": ["type=1,manufacturer=pemu"], "display": ["none"],
    "nographic": [], "chardev": ["null,id=c0"], "serial": ["null"], "monitor": ["none"], "mon": ["chardev=c0"],
    "kernel": ["bzImage"], "append": ["console=ttyS0"], "initrd": ["initrd.gz"], "S": [], "d": ["guest_errors"],
    "D": ["LOGFILE"], "no-reboot": [], "no-shutdown": [],
    "netdev": ["user,id=n0"], "nic": ["user"], "net": ["nic"],
    "drive": ["file=disk.img,if=none"], "blockdev": ["driver=raw,node-name=n,file.driver=file,file.filename=d"],
    "hda": ["disk.img"], "hdb": ["disk.img"], "hdc": ["disk.img"], "hdd": ["disk.img"], "cdrom": ["cd.iso"],
    "snapshot": [], "vga": ["none"], "qmp": ["unix:/tmp/qmp.sock,server=on,wait=off"],
    "qmp-pretty": ["tcp:localhost:4444,server=on,wait=off"], "add-fd": ["fd=INHERITED_FD,set=1"],
    "debugcon": ["null"], "overcommit": ["mem-lock=off"], "incoming": ["defer"],
}


@pytest.fixture
def vl_parse(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys):  # noqa: ANN001, ANN201
    """vl.parse_config with its global side effects (log, -global) kept out of the process."""
    from pemu.system import vl
    from pemu.util import log
    from pemu.util.qemu_opts import opts_registry

    monkeypatch.setattr(vl, "qdev_prop_register_global", lambda prop: None)
    monkeypatch.setattr(log, "qemu_set_log", lambda mask: None)
    monkeypatch.setattr(log, "qemu_set_log_filename", lambda path: None)
    for opts_list in opts_registry:
        opts_list.reset()

    # An inheritable descriptor, as a parent process would pass one (-add-fd).
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)

    def parse(argv: list[str]) -> None:
        argv = [str(tmp_path / "log") if a == "LOGFILE" else a.replace("INHERITED_FD", str(read_end)) for a in argv]
        try:
            vl.parse_config(argv)
        except vl.EarlyExit:
            pass  # help and version print and exit: acted on

    yield parse
    os.close(read_end)
    os.close(write_end)
    for opts_list in opts_registry:
        opts_list.reset()


def test_every_implemented_option_has_a_sample() -> None:
    assert set(IMPLEMENTED_SAMPLES) == {o.name for o in OPTION_TABLE if o.implemented}
    for name, args in IMPLEMENTED_SAMPLES.items():
        assert len(args) == OPTIONS[name].has_arg, name


@pytest.mark.parametrize("name", sorted(IMPLEMENTED_SAMPLES))
def test_implemented_options_are_acted_on(vl_parse, name: str) -> None:  # noqa: ANN001
    vl_parse([f"-{name}", *IMPLEMENTED_SAMPLES[name]])


@pytest.mark.parametrize("name", sorted(o.name for o in OPTION_TABLE if not o.implemented))
def test_unimplemented_options_are_refused(vl_parse, name: str) -> None:  # noqa: ANN001
    argv = [f"-{name}", "x"] if OPTIONS[name].has_arg else [f"-{name}"]
    with pytest.raises(UserError) as info:
        vl_parse(argv)
    assert info.value.message == f"option '-{name}' is not supported by pemu yet"


# -- option arguments into groups


def test_m_sizes(registry: QemuOptsRegistry) -> None:
    for text, size in [("4G", 4 * GiB), ("512M", 512 * MiB), ("1.5G", 3 * GiB // 2), ("4096", 4096 * MiB)]:
        registry.find("memory").reset()
        opts = parse_command_line(["-m", text])[0].parse_opts(registry)
        assert qemu_strtosz_MiB(opts.get("size") or "") == size


def test_m_repeated_merges_last_wins(registry: QemuOptsRegistry) -> None:
    for arg in ("1G", "2G,slots=2"):
        parse_command_line(["-m", arg])[0].parse_opts(registry)
    memory = registry.find("memory")
    assert len(memory) == 1
    opts = memory.find(None)
    assert opts is not None and opts.get_size("size") == 2 * GiB and opts.get_number("slots") == 2


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("lots", "Parameter 'size' expects a non-negative number below 2^64"),
        ("-1G", "Value '-1G' is out of range for parameter 'size'"),
        ("16E", "Value '16E' is out of range for parameter 'size'"),
        ("1G,maxmem=x", "Parameter 'maxmem' expects a non-negative number below 2^64"),
        ("1G,slots=two", "Parameter 'slots' expects a number"),
        ("1G,colour=red", "Invalid parameter 'colour'"),
    ],
)
def test_m_bad_values(registry: QemuOptsRegistry, arg: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        parse_command_line(["-m", arg])[0].parse_opts(registry)
    assert info.value.message.startswith(message)
    assert info.value.location == f"-m {arg}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-name", "vm1,debug-threads=maybe"], "Parameter 'debug-threads' expects 'on' or 'off'"),
        (["-overcommit", "mem-lock=1"], "Parameter 'mem-lock' expects 'on' or 'off'"),
        (["-device", "e1000e,id=0bad"], "Parameter 'id' expects an identifier"),
        (["-netdev", "user,id=a b"], "Parameter 'id' expects an identifier"),
        (["-machine", "q35,usb"], "Expected '=' after parameter 'usb'"),
    ],
)
def test_bad_booleans_ids_and_flags(registry: QemuOptsRegistry, argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as info:
        parse_command_line(argv)[0].parse_opts(registry)
    assert info.value.message == message
    assert info.value.location == " ".join(argv)


def test_duplicate_device_id(registry: QemuOptsRegistry) -> None:
    parsed = parse_command_line(["-device", "e1000e,id=x", "-device", "e1000e,id=x"])
    parsed[0].parse_opts(registry)
    with pytest.raises(UserError) as info:
        parsed[1].parse_opts(registry)
    assert str(info.value) == "-device e1000e,id=x: Duplicate ID 'x' for device"


@pytest.mark.parametrize(
    ("argv", "key", "value"),
    [
        (["-device", "help"], "driver", "help"),
        (["-device", "?"], "driver", "?"),
        (["-device", "e1000e,help"], "driver", "e1000e"),
        (["-machine", "help"], "type", "help"),
        (["-M", "q35,help"], "type", "q35"),
        (["-accel", "help"], "accel", "help"),
        (["-netdev", "help"], "type", "help"),
        (["-chardev", "help"], "backend", "help"),
    ],
)
def test_help_requests(registry: QemuOptsRegistry, argv: list[str], key: str, value: str) -> None:
    opts = parse_command_line(argv)[0].parse_opts(registry)
    assert opts.help_wanted
    assert opts.get(key) == value


def test_escaped_commas_through_the_command_line(registry: QemuOptsRegistry) -> None:
    opts = parse_command_line(["-drive", "file=my,,disk.img,format=raw,if=none,id=d0"])[0].parse_opts(registry)
    assert opts.get("file") == "my,disk.img"
    assert opts.id == "d0"


def test_other_groups(registry: QemuOptsRegistry) -> None:
    smp = parse_command_line(["-smp", "4,sockets=1,cores=4"])[0].parse_opts(registry)
    assert (smp.get_number("cpus"), smp.get_number("cores")) == (4, 4)
    boot = parse_command_line(["-boot", "order=c,menu=off"])[0].parse_opts(registry)
    assert boot.get("order") == "c" and boot.get_bool("menu", True) is False
    mon = parse_command_line(["-mon", "chardev=mon0,mode=control"])[0].parse_opts(registry)
    assert mon.get("mode") == "control"
    chardev = parse_command_line(["-chardev", "stdio,id=char0,mux=on"])[0].parse_opts(registry)
    assert chardev.id == "char0" and chardev.get("backend") == "stdio"


def test_global_through_the_command_line() -> None:
    parsed = parse_command_line(["-global", "ICH9-LPC.disable_s3=1"])[0]
    prop = qemu_global_option(parsed.arg or "", parsed.location)
    assert (prop.driver, prop.property, prop.value) == ("ICH9-LPC", "disable_s3", "1")


def test_options_without_a_group_cannot_be_parsed_as_opts(registry: QemuOptsRegistry) -> None:
    with pytest.raises(ValueError):
        parse_command_line(["-kernel", "bz"])[0].parse_opts(registry)


def test_register_standard_opts_is_idempotent() -> None:
    registry = register_standard_opts(QemuOptsRegistry())
    before = list(registry)
    register_standard_opts(registry)
    assert list(registry) == before


# -- help text


def test_help_text() -> None:
    text = qemu_options_help()
    assert text.startswith("usage: pemu [options] [disk_image]")
    for section in OptionSection:
        assert f"{section.value}:" in text
    for option in OPTION_TABLE:
        if option.name not in ("h", "help"):
            assert option.usage.split("\n")[0] in text, option.name
    assert "-daemonize (*)" in text
    assert "-m [size=]megs" in text and "-m [size=]megs[,slots=n,maxmem=size] (*)" not in text


def test_help_marks_exactly_the_refused_options() -> None:
    lines = qemu_options_help().splitlines()
    for option in OPTION_TABLE:
        if option.name in ("h", "help"):
            continue
        first = option.usage.split("\n")[0]
        expected = first if option.implemented else f"{first} (*)"
        assert expected in lines, option.name
        assert (first if expected != first else f"{first} (*)") not in lines, option.name
    # Marked wrongly before the table became the one that refuses.
    assert "-netdev user,id=str[,hostfwd=rule][,...]" in lines
    assert "-hda file" in lines and "-fda file (*)" in lines and "-uuid %08x-%04x-%04x-%04x-%012x (*)" in lines
    assert "-object type,id=id[,prop=value[,...]]" in lines
    assert "-fw_cfg [name=]name,file=file" in lines
