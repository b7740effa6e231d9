"""QemuOpts parsing (pemu.util.qemu_opts)."""

from __future__ import annotations

import pytest

from pemu.util.error import UserError
from pemu.util.qemu_opts import (
    GlobalProperty,
    OptElement,
    QemuOptDesc,
    QemuOptsList,
    QemuOptsRegistry,
    QemuOptType,
    has_help_option,
    id_wellformed,
    qemu_global_option,
    qemu_opts_parse,
    split_opt_elements,
)

S, B, N, Z = QemuOptType.STRING, QemuOptType.BOOL, QemuOptType.NUMBER, QemuOptType.SIZE


def device_list() -> QemuOptsList:
    return QemuOptsList("device", implied_opt_name="driver")


def memory_list() -> QemuOptsList:
    return QemuOptsList(
        "memory",
        implied_opt_name="size",
        merge_lists=True,
        desc=(QemuOptDesc("size", Z), QemuOptDesc("slots", N), QemuOptDesc("maxmem", Z)),
    )


def typed_list() -> QemuOptsList:
    return QemuOptsList(
        "typed",
        desc=(
            QemuOptDesc("name", S),
            QemuOptDesc("flag", B),
            QemuOptDesc("count", N),
            QemuOptDesc("size", Z),
            QemuOptDesc("level", N, def_value_str="3"),
        ),
    )


# -- splitting


@pytest.mark.parametrize(
    ("params", "implied", "expected"),
    [
        ("", "driver", []),
        ("e1000e", "driver", [OptElement("driver", "e1000e", implied=True)]),
        (
            "e1000e,netdev=net0",
            "driver",
            [OptElement("driver", "e1000e", implied=True), OptElement("netdev", "net0")],
        ),
        ("driver=e1000e", "driver", [OptElement("driver", "e1000e")]),
        ("a,,b,c=d", "x", [OptElement("x", "a,b", implied=True), OptElement("c", "d")]),
        ("c=d,,e,,,f", None, [OptElement("c", "d,e,"), OptElement("f", "on", flag=True)]),
        ("k=a=b", None, [OptElement("k", "a=b")]),
        ("k=", None, [OptElement("k", "")]),
        ("k=v,", None, [OptElement("k", "v")]),
        ("server,nowait", None, [OptElement("server", "on", flag=True), OptElement("wait", "off", flag=True)]),
        ("x,server", "backend", [OptElement("backend", "x", implied=True), OptElement("server", "on", flag=True)]),
    ],
)
def test_split(params: str, implied: str | None, expected: list[OptElement]) -> None:
    assert split_opt_elements(params, implied) == expected


# -- implied keys, order, repeats


def test_device_implied_driver_and_id() -> None:
    dev = device_list()
    opts = qemu_opts_parse(dev, "e1000e,netdev=net0,id=nic0", permit_abbrev=True)
    assert opts.id == "nic0"
    assert opts.items() == [("driver", "e1000e"), ("netdev", "net0")]
    assert opts.get("driver") == "e1000e"
    assert opts.to_dict() == {"id": "nic0", "driver": "e1000e", "netdev": "net0"}
    assert list(dev) == [opts]


def test_without_abbrev_first_word_is_a_flag() -> None:
    dev = device_list()
    opts = dev.parse("e1000e,netdev=net0", permit_abbrev=False, warn_on_flag=False)
    assert opts.items() == [("e1000e", "on"), ("netdev", "net0")]


def test_escaped_comma_in_implied_value_and_values() -> None:
    drive = QemuOptsList("drive", implied_opt_name="file")
    opts = drive.parse("disk,,1.img,format=raw,serial=a,,b", permit_abbrev=True)
    assert opts.get("file") == "disk,1.img"
    assert opts.get("serial") == "a,b"


def test_repeated_keys_kept_last_wins() -> None:
    netdev = QemuOptsList("netdev", implied_opt_name="type")
    opts = netdev.parse("user,id=net0,hostfwd=tcp::5555-:22,hostfwd=udp::69-:69", permit_abbrev=True)
    assert opts.get("hostfwd") == "udp::69-:69"
    assert opts.get_all("hostfwd") == ["tcp::5555-:22", "udp::69-:69"]
    assert opts.names() == ["type", "hostfwd"]


def test_separate_occurrences_make_separate_opts() -> None:
    dev = device_list()
    a = dev.parse("e1000e", permit_abbrev=True)
    b = dev.parse("e1000e", permit_abbrev=True)
    assert a is not b and len(dev) == 2
    assert dev.find(None) is a


def test_merge_lists_folds_occurrences() -> None:
    mem = memory_list()
    first = mem.parse("1G", permit_abbrev=True)
    second = mem.parse("2G,slots=4", permit_abbrev=True)
    assert first is second and len(mem) == 1
    assert first.get_size("size") == 2 << 30
    assert first.get_number("slots") == 4


# -- ids


@pytest.mark.parametrize("ident", ["a", "net0", "Z-1.x_y", "abc..--__"])
def test_good_ids(ident: str) -> None:
    assert id_wellformed(ident)
    opts = device_list().parse(f"e1000e,id={ident}", permit_abbrev=True)
    assert opts.id == ident


@pytest.mark.parametrize("ident", ["", "0net", "-a", "_a", "a b", "a/b", "é", "a:b", "net0\n"])
def test_bad_ids(ident: str) -> None:
    assert not id_wellformed(ident)
    dev = device_list()
    with pytest.raises(UserError, match=r"^Parameter 'id' expects an identifier$"):
        dev.parse(f"e1000e,id={ident}", permit_abbrev=True)
    assert len(dev) == 0


def test_duplicate_id() -> None:
    dev = device_list()
    dev.parse("e1000e,id=x", permit_abbrev=True)
    with pytest.raises(UserError) as info:
        dev.parse("virtio-net-pci,id=x", permit_abbrev=True, location="-device virtio-net-pci,id=x")
    assert info.value.message == "Duplicate ID 'x' for device"
    assert str(info.value) == "-device virtio-net-pci,id=x: Duplicate ID 'x' for device"
    assert len(dev) == 1


def test_first_id_wins_and_id_is_not_an_option() -> None:
    opts = device_list().parse("e1000e,id=a,id=b", permit_abbrev=True)
    assert opts.id == "a"
    assert not opts.has("id")


def test_escaped_comma_in_id_is_refused() -> None:
    with pytest.raises(UserError, match="identifier"):
        device_list().parse("e1000e,id=a,,b", permit_abbrev=True)


# -- help


@pytest.mark.parametrize(
    ("params", "wanted", "driver"),
    [
        ("help", True, "help"),
        ("?", True, "?"),
        ("e1000e,help", True, "e1000e"),
        ("e1000e,?", True, "e1000e"),
        ("e1000e,netdev=n,help", True, "e1000e"),
        ("e1000e", False, "e1000e"),
        ("e1000e,nohelp", False, "e1000e"),
        ("e1000e,x=help", False, "e1000e"),
    ],
)
def test_help_detection(params: str, wanted: bool, driver: str) -> None:
    opts = device_list().parse(params, permit_abbrev=True, warn_on_flag=False)
    assert opts.help_wanted is wanted
    assert opts.get("driver") == driver
    assert not opts.has("?")


def test_help_on_described_group_is_not_an_error() -> None:
    mem = memory_list()
    assert mem.parse("help", permit_abbrev=True).help_wanted
    assert QemuOptsList("boot", desc=(QemuOptDesc("order"),)).parse("help").help_wanted
    assert "size=<size>" in mem.print_help()


def test_has_help_option() -> None:
    assert has_help_option("a=b,help")
    assert has_help_option("?")
    assert not has_help_option("a=help")


# -- flags


def test_bare_flags() -> None:
    chardev = QemuOptsList("chardev", implied_opt_name="backend")
    opts = chardev.parse("socket,id=mon0,path=/tmp/m,server,nowait", permit_abbrev=True, warn_on_flag=False)
    assert opts.get_bool("server") is True
    assert opts.get_bool("wait", True) is False
    assert opts.get("wait") == "off"


def test_bare_flag_warns(capsys: pytest.CaptureFixture[str]) -> None:
    QemuOptsList("chardev").parse("nowait")
    assert "short-form boolean option 'nowait' deprecated" in capsys.readouterr().err


def test_bare_flags_refused_in_keyval_groups() -> None:
    machine = QemuOptsList("machine", implied_opt_name="type", merge_lists=True, allow_bare_flags=False)
    assert machine.parse("q35,accel=tcg", permit_abbrev=True).get("type") == "q35"
    with pytest.raises(UserError, match=r"^Expected '=' after parameter 'usb'$"):
        machine.parse("q35,usb", permit_abbrev=True)
    assert machine.parse("q35,help", permit_abbrev=True).help_wanted


# -- typed values


def test_typed_values_checked_at_parse_time() -> None:
    opts = typed_list().parse("name=x,flag=yes,count=0x10,size=1.5G")
    assert opts.get_bool("flag") is True
    assert opts.get_number("count") == 16
    assert opts.get_size("size") == 3 << 29
    assert opts.get_number("level") == 3  # the group's default
    assert opts.get("level") == "3"
    assert opts.get("missing", "dflt") == "dflt"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("flag=1", "Parameter 'flag' expects 'on' or 'off'"),
        ("count=ten", "Parameter 'count' expects a number"),
        ("count=-1", "Parameter 'count' expects a number"),
        ("count=18446744073709551616", "Value '18446744073709551616' is too large for parameter 'count'"),
        ("size=lots", "Parameter 'size' expects a non-negative number below 2^64"),
        ("size=1.5", "Parameter 'size' expects a non-negative number below 2^64"),
        ("size=16E", "Value '16E' is out of range for parameter 'size'"),
        ("size=-4k", "Value '-4k' is out of range for parameter 'size'"),
        ("colour=red", "Invalid parameter 'colour'"),
        ("nocolour", "Invalid parameter 'colour'"),
    ],
)
def test_typed_errors(params: str, message: str) -> None:
    group = typed_list()
    with pytest.raises(UserError) as info:
        group.parse(params, location="-typed " + params, warn_on_flag=False)
    assert info.value.message.startswith(message)
    assert info.value.location == "-typed " + params
    assert len(group) == 0


def test_failed_parse_leaves_merged_opts_untouched() -> None:
    mem = memory_list()
    opts = mem.parse("1G", permit_abbrev=True)
    with pytest.raises(UserError):
        mem.parse("2G,slots=many", permit_abbrev=True)
    assert opts.items() == [("size", "1G")]


def test_getters_parse_free_form_values_on_demand() -> None:
    opts = device_list().parse("e1000e,x-on=on,bad=maybe,n=7,sz=2M,notsize=2Q", permit_abbrev=True)
    assert opts.get_bool("x-on") is True
    assert opts.get_number("n") == 7
    assert opts.get_size("sz") == 2 << 20
    assert opts.get_bool("absent", True) is True
    with pytest.raises(UserError, match=r"^Parameter 'bad' expects 'on' or 'off'$"):
        opts.get_bool("bad")
    with pytest.raises(UserError, match=r"^Parameter 'notsize' expects"):
        opts.get_size("notsize")


def test_getter_of_wrong_declared_type_is_a_bug() -> None:
    opts = typed_list().parse("count=1")
    with pytest.raises(TypeError):
        opts.get_bool("count")


def test_set_unset_validate() -> None:
    netdev = QemuOptsList("netdev", implied_opt_name="type")
    opts = netdev.parse("user,id=n0,restrict=on,ipv6-prefixlen=64", permit_abbrev=True)
    opts.set("hostname", "guest")
    opts.set("ipv4", True)
    assert opts.get("ipv4") == "on"
    assert opts.unset("hostname") and not opts.unset("hostname")
    opts.unset("type")
    user_descs = [QemuOptDesc("restrict", B), QemuOptDesc("ipv6-prefixlen", N), QemuOptDesc("ipv4", B)]
    opts.validate(user_descs)
    assert opts.get_number("ipv6-prefixlen") == 64
    opts.set("bogus", "1")
    with pytest.raises(UserError, match=r"^Invalid parameter 'bogus'$"):
        opts.validate(user_descs)
    opts.unset("bogus")
    opts.set("restrict", "maybe")
    with pytest.raises(UserError, match=r"^Parameter 'restrict' expects 'on' or 'off'$"):
        opts.validate(user_descs)
    with pytest.raises(UserError):
        typed_list().create().set("count", "x")


def test_delete_and_reset() -> None:
    dev = device_list()
    a = dev.parse("a", permit_abbrev=True)
    dev.parse("b", permit_abbrev=True)
    a.delete()
    assert [o.get("driver") for o in dev] == ["b"]
    dev.reset()
    assert len(dev) == 0


def test_permit_abbrev_needs_an_implied_key() -> None:
    with pytest.raises(ValueError):
        typed_list().parse("x", permit_abbrev=True)


# -- registry


def test_registry() -> None:
    reg = QemuOptsRegistry()
    dev = device_list()
    reg.add(dev)
    assert reg.find("device") is dev and "device" in reg
    with pytest.raises(ValueError):
        reg.add(device_list())
    with pytest.raises(UserError, match=r"^There is no option group 'nope'$"):
        reg.find("nope")


# -- -global


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ide-hd.physical_block_size=4096", GlobalProperty("ide-hd", "physical_block_size", "4096")),
        ("e1000e.mac=52:54:00:12:34:56", GlobalProperty("e1000e", "mac", "52:54:00:12:34:56")),
        ("d.p.q=a,b", GlobalProperty("d", "p.q", "a,b")),  # value verbatim, commas included
        ("d.p=", GlobalProperty("d", "p", "")),
        ("d.p=x=y", GlobalProperty("d", "p", "x=y")),
        ("driver=isa-fdc,property=fdtypeA,value=none", GlobalProperty("isa-fdc", "fdtypeA", "none")),
        ("value=a,,b,property=p,driver=d", GlobalProperty("d", "p", "a,b")),
    ],
)
def test_global_option(text: str, expected: GlobalProperty) -> None:
    assert qemu_global_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodot=1", "Invalid parameter 'nodot'"),
        ("driver=d,property=p", "options 'driver', 'property', and 'value' are required"),
        (".p=1", "Invalid parameter '.p'"),
        ("d.=1", "Invalid parameter 'd.'"),
        ("driver=d,property=p,value=v,extra=1", "Invalid parameter 'extra'"),
    ],
)
def test_global_option_errors(text: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        qemu_global_option(text, location=f"-global {text}")
    assert info.value.message == message
    assert info.value.location == f"-global {text}"
