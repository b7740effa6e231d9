"""QEMU's option strings: "driver,key=value,flag,key2=a,,b" (util/qemu-option.c).

An option group (:class:`QemuOptsList`, e.g. "device" or "memory") collects
the :class:`QemuOpts` parsed from each occurrence of a command-line option.
A :class:`QemuOpts` keeps its ``key=value`` pairs in the order given;
repeating a key keeps every occurrence and the getters return the last.

Syntax, as QEMU reads it:

- elements are separated by ',', and ',,' is a literal comma inside a value
  (also inside the implied first value: ``-drive file=a,,b`` names "a,b");
- with ``permit_abbrev`` the first element, if it has no '=', is the value
  of the group's implied key (``-device e1000e`` is ``driver=e1000e``);
- a bare ``flag`` means ``flag=on`` and ``noflag`` means ``flag=off``
  (deprecated in QEMU, warned about, refused by groups parsed with keyval
  syntax such as -machine and -object);
- ``help`` or ``?`` as a bare flag or as the implied value asks for help:
  the result has ``help_wanted`` set and vl.py prints the help;
- ``id=`` names the options; it must be an identifier (a letter, then
  letters, digits, '-', '.', '_') and unique within the group unless the
  group merges all occurrences into one.

Errors in what the user typed raise :class:`UserError` with QEMU's wording.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from pemu.util.cutils import SizeError, SizeParseError, parse_bool, parse_uint64, qemu_strtosz
from pemu.util.error import UserError, warn_report


class QemuOptType(enum.Enum):
    STRING = "str"
    BOOL = "bool (on/off)"
    NUMBER = "num"
    SIZE = "size"


@dataclass(frozen=True)
class QemuOptDesc:
    """One accepted key of an option group."""

    name: str
    type: QemuOptType = QemuOptType.STRING
    help: str = ""
    def_value_str: str | None = None


OptValue = str | bool | int


@dataclass
class QemuOpt:
    """One ``name=value`` pair: the text as typed and its parsed value."""

    name: str
    text: str
    value: OptValue
    desc: QemuOptDesc | None


def is_help_option(text: str) -> bool:
    return text in ("help", "?")


def id_wellformed(ident: str) -> bool:
    """QEMU's identifier rule: an ASCII letter, then letters, digits, '-', '.', '_'."""
    return _ID_RE.fullmatch(ident) is not None


_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


def _parse_typed(name: str, text: str, opt_type: QemuOptType, location: str | None) -> OptValue:
    """Convert ``text`` for key ``name``; raise UserError with QEMU's message."""
    match opt_type:
        case QemuOptType.STRING:
            return text
        case QemuOptType.BOOL:
            try:
                return parse_bool(text, name)
            except ValueError as exc:
                raise UserError(str(exc), location) from None
        case QemuOptType.NUMBER:
            try:
                return parse_uint64(text)
            except OverflowError:
                raise UserError(f"Value '{text}' is too large for parameter '{name}'", location) from None
            except ValueError:
                raise UserError(f"Parameter '{name}' expects a number", location) from None
        case QemuOptType.SIZE:
            try:
                return qemu_strtosz(text)
            except SizeParseError as exc:
                if exc.kind is SizeError.OUT_OF_RANGE:
                    raise UserError(f"Value '{text}' is out of range for parameter '{name}'", location) from None
                raise UserError(
                    f"Parameter '{name}' expects a non-negative number below 2^64 "
                    "(optional suffix k, M, G, T, P or E)",
                    location,
                ) from None
    raise AssertionError(f"unknown option type {opt_type}")


# --------------------------------------------------------------------------
# Splitting an option string into elements


@dataclass(frozen=True)
class OptElement:
    """One comma-separated element of an option string, after unescaping."""

    name: str
    value: str
    implied: bool = False  # the name came from the group's implied key
    flag: bool = False  # written as a bare "flag" or "noflag"

    @property
    def is_help(self) -> bool:
        if self.implied:
            return is_help_option(self.value)
        return self.flag and self.value == "on" and is_help_option(self.name)


def _read_value(params: str, pos: int) -> tuple[str, int]:
    """Read a value up to a single ',' (a doubled one is a literal comma)."""
    out: list[str] = []
    n = len(params)
    while pos < n:
        comma = params.find(",", pos)
        if comma < 0:
            out.append(params[pos:])
            return "".join(out), n
        out.append(params[pos:comma])
        if comma + 1 < n and params[comma + 1] == ",":
            out.append(",")
            pos = comma + 2
            continue
        return "".join(out), comma
    return "".join(out), pos


def split_opt_elements(params: str, implied_name: str | None = None) -> list[OptElement]:
    """Split ``params`` into elements (QEMU's get_opt_name_value loop).

    ``implied_name`` is the key given to a first element without '='.
    """
    elements: list[OptElement] = []
    pos, n = 0, len(params)
    first = True
    while pos < n:
        stop = pos
        while stop < n and params[stop] not in "=,":
            stop += 1
        if stop < n and params[stop] == "=":
            name = params[pos:stop]
            value, pos = _read_value(params, stop + 1)
            elements.append(OptElement(name, value))
        elif first and implied_name is not None:
            value, pos = _read_value(params, pos)
            elements.append(OptElement(implied_name, value, implied=True))
        else:
            word = params[pos:stop]
            pos = stop
            if word.startswith("no"):
                elements.append(OptElement(word[2:], "off", flag=True))
            else:
                elements.append(OptElement(word, "on", flag=True))
        if pos < n:  # at a separating ','
            pos += 1
        first = False
    return elements


def has_help_option(params: str) -> bool:
    """True if ``params`` has a bare ``help`` or ``?`` element (not counting an implied value)."""
    return any(element.is_help for element in split_opt_elements(params))


# --------------------------------------------------------------------------
# Parsed options and option groups


@dataclass(eq=False)
class QemuOpts:
    """The options given by one occurrence (or, for merging groups, all
    occurrences) of a command-line option."""

    opts_list: QemuOptsList
    id: str | None = None
    location: str | None = None  # where it came from, for later errors ("-device e1000e,...")
    help_wanted: bool = False
    _opts: list[QemuOpt] = field(default_factory=list, init=False, repr=False)

    # -- reading

    def _find(self, name: str) -> QemuOpt | None:
        for opt in reversed(self._opts):
            if opt.name == name:
                return opt
        return None

    def has(self, name: str) -> bool:
        return self._find(name) is not None

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The text of the last ``name=`` (or the group's default, or ``default``)."""
        opt = self._find(name)
        if opt is not None:
            return opt.text
        desc = self.opts_list.find_desc(name)
        if desc is not None and desc.def_value_str is not None:
            return desc.def_value_str
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value given for ``name``, in order (hostfwd=..., hostfwd=...)."""
        return [opt.text for opt in self._opts if opt.name == name]

    def _get_typed(self, name: str, opt_type: QemuOptType, default: OptValue) -> OptValue:
        desc = self.opts_list.find_desc(name)
        if desc is not None and desc.type is not opt_type:
            raise TypeError(f"option '{name}' of group '{self.opts_list.name}' is {desc.type.name}, "
                            f"not {opt_type.name}")
        opt = self._find(name)
        if opt is None:
            if desc is not None and desc.def_value_str is not None:
                return _parse_typed(name, desc.def_value_str, opt_type, self.location)
            return default
        if opt.desc is not None and opt.desc.type is opt_type:
            return opt.value
        return _parse_typed(name, opt.text, opt_type, self.location)

    def get_bool(self, name: str, default: bool = False) -> bool:
        value = self._get_typed(name, QemuOptType.BOOL, default)
        assert isinstance(value, bool)
        return value

    def get_number(self, name: str, default: int = 0) -> int:
        value = self._get_typed(name, QemuOptType.NUMBER, default)
        assert isinstance(value, int)
        return value

    def get_size(self, name: str, default: int = 0) -> int:
        value = self._get_typed(name, QemuOptType.SIZE, default)
        assert isinstance(value, int)
        return value

    def items(self) -> list[tuple[str, str]]:
        """All ``(name, text)`` pairs in the order given, repeats included."""
        return [(opt.name, opt.text) for opt in self._opts]

    def names(self) -> list[str]:
        """Distinct names in order of first appearance."""
        return list(dict.fromkeys(opt.name for opt in self._opts))

    def to_dict(self, include_id: bool = True) -> dict[str, str]:
        """Name → text, the last occurrence winning (QEMU's qemu_opts_to_qdict)."""
        result: dict[str, str] = {}
        if include_id and self.id is not None:
            result["id"] = self.id
        for opt in self._opts:
            result[opt.name] = opt.text
        return result

    def __iter__(self) -> Iterator[QemuOpt]:
        return iter(list(self._opts))

    def __len__(self) -> int:
        return len(self._opts)

    # -- writing

    def make_opt(self, name: str, text: str) -> QemuOpt:
        """Check ``name=text`` against the group's description; don't store it."""
        desc = self.opts_list.find_desc(name)
        if desc is None and not self.opts_list.accepts_any:
            raise UserError(f"Invalid parameter '{name}'", self.location)
        value: OptValue = text if desc is None else _parse_typed(name, text, desc.type, self.location)
        return QemuOpt(name, text, value, desc)

    def set(self, name: str, value: str | bool | int) -> None:
        """Append ``name=value`` (QEMU's qemu_opt_set / _set_bool / _set_number)."""
        if isinstance(value, bool):
            text = "on" if value else "off"
        else:
            text = str(value)
        self._opts.append(self.make_opt(name, text))

    def extend_checked(self, opts: Sequence[QemuOpt]) -> None:
        """Append options already checked with :meth:`make_opt`."""
        self._opts.extend(opts)

    def unset(self, name: str) -> bool:
        """Remove every ``name=``; return whether there was one."""
        before = len(self._opts)
        self._opts = [opt for opt in self._opts if opt.name != name]
        return len(self._opts) != before

    def validate(self, descs: Sequence[QemuOptDesc]) -> None:
        """Check options of a group that accepts anything against ``descs``
        once the real set of keys is known (QEMU's qemu_opts_validate)."""
        by_name = {desc.name: desc for desc in descs}
        checked: list[QemuOpt] = []
        for opt in self._opts:
            desc = by_name.get(opt.name)
            if desc is None:
                raise UserError(f"Invalid parameter '{opt.name}'", self.location)
            value = _parse_typed(opt.name, opt.text, desc.type, self.location)
            checked.append(QemuOpt(opt.name, opt.text, value, desc))
        self._opts = checked

    def error(self, message: str) -> UserError:
        """A UserError located at the option these options came from."""
        return UserError(message, self.location)

    def delete(self) -> None:
        """Remove these options from their group (QEMU's qemu_opts_del)."""
        self.opts_list.remove(self)


@dataclass(eq=False)
class QemuOptsList:
    """An option group: its accepted keys and every QemuOpts parsed into it.

    An empty ``desc`` accepts any key (the keys are checked later, e.g. by
    the device's properties).  ``merge_lists`` folds every occurrence into
    one QemuOpts (-m, -smp, -boot).  ``allow_bare_flags`` is False for groups
    that QEMU parses with keyval syntax, where "flag" alone is an error.
    """

    name: str
    implied_opt_name: str | None = None
    merge_lists: bool = False
    desc: tuple[QemuOptDesc, ...] = ()
    allow_bare_flags: bool = True
    head: list[QemuOpts] = field(default_factory=list, repr=False)

    @property
    def accepts_any(self) -> bool:
        return not self.desc

    def find_desc(self, name: str) -> QemuOptDesc | None:
        for desc in self.desc:
            if desc.name == name:
                return desc
        return None

    def find(self, ident: str | None) -> QemuOpts | None:
        """The options with this id (``None``: the first without an id)."""
        for opts in self.head:
            if opts.id == ident:
                return opts
        return None

    def __iter__(self) -> Iterator[QemuOpts]:
        return iter(list(self.head))

    def __len__(self) -> int:
        return len(self.head)

    def remove(self, opts: QemuOpts) -> None:
        self.head = [o for o in self.head if o is not opts]

    def reset(self) -> None:
        self.head.clear()

    def create(self, ident: str | None = None, fail_if_exists: bool = True, location: str | None = None) -> QemuOpts:
        """QEMU's qemu_opts_create: a new (or, when merging, the existing) QemuOpts."""
        if ident is not None:
            if not id_wellformed(ident):
                raise UserError("Parameter 'id' expects an identifier", location)
            existing = self.find(ident)
            if existing is not None:
                if fail_if_exists and not self.merge_lists:
                    raise UserError(f"Duplicate ID '{ident}' for {self.name}", location)
                return existing
        elif self.merge_lists:
            existing = self.find(None)
            if existing is not None:
                return existing
        opts = QemuOpts(self, ident, location)
        self.head.append(opts)
        return opts

    def parse(
        self,
        params: str,
        permit_abbrev: bool = False,
        location: str | None = None,
        warn_on_flag: bool = True,
    ) -> QemuOpts:
        """Parse one option string into this group (QEMU's qemu_opts_parse).

        Nothing is stored unless the whole string is valid.
        """
        if permit_abbrev and self.implied_opt_name is None:
            raise ValueError(f"option group '{self.name}' has no implied key")
        elements = split_opt_elements(params, self.implied_opt_name if permit_abbrev else None)

        ident: str | None = None
        for element in elements:
            if element.name == "id" and not element.implied:
                ident = element.value
                break
        if ident is not None and not id_wellformed(ident):
            raise UserError("Parameter 'id' expects an identifier", location)

        help_wanted = False
        scratch = QemuOpts(self, ident, location)
        staged: list[QemuOpt] = []
        for element in elements:
            if element.is_help:
                help_wanted = True
                if element.implied:  # keep driver=help so the caller sees what was asked
                    staged.append(QemuOpt(element.name, element.value, element.value, None))
                continue
            if element.flag:
                if not self.allow_bare_flags:
                    raise UserError(f"Expected '=' after parameter '{element.name}'", location)
                if warn_on_flag:
                    prefix = "no" if element.value == "off" else ""
                    warn_report(
                        f"short-form boolean option '{prefix}{element.name}' deprecated; "
                        f"please use {element.name}={element.value} instead"
                    )
            if element.name == "id" and not element.implied:
                continue
            if not element.name:
                raise UserError("Invalid parameter ''", location)
            staged.append(scratch.make_opt(element.name, element.value))

        opts = self.create(ident, fail_if_exists=not self.merge_lists, location=location)
        if location is not None:
            opts.location = location
        opts.help_wanted = opts.help_wanted or help_wanted
        opts.extend_checked(staged)
        return opts

    def print_help(self) -> str:
        """The text QEMU prints for "<option> help" on a described group."""
        if self.accepts_any:
            return f"There is no help for option group '{self.name}'.\n"
        lines = [f"{self.name} options:"]
        for desc in sorted(self.desc, key=lambda d: d.name):
            entry = f"  {desc.name}=<{desc.type.value}>"
            if desc.help:
                entry = f"{entry:<26} - {desc.help}"
                if desc.def_value_str is not None:
                    entry += f" (default: {desc.def_value_str})"
            lines.append(entry)
        return "\n".join(lines) + "\n"


def qemu_opts_parse(
    opts_list: QemuOptsList,
    params: str,
    permit_abbrev: bool = False,
    location: str | None = None,
) -> QemuOpts:
    return opts_list.parse(params, permit_abbrev, location)


def qemu_opts_create(opts_list: QemuOptsList, ident: str | None = None, fail_if_exists: bool = True) -> QemuOpts:
    return opts_list.create(ident, fail_if_exists)


def qemu_opts_find(opts_list: QemuOptsList, ident: str | None) -> QemuOpts | None:
    return opts_list.find(ident)


# --------------------------------------------------------------------------
# The groups known by name


class QemuOptsRegistry:
    """Option groups by name (QEMU's vm_config_groups)."""

    def __init__(self) -> None:
        self._lists: dict[str, QemuOptsList] = {}

    def add(self, opts_list: QemuOptsList) -> None:
        if opts_list.name in self._lists:
            raise ValueError(f"option group '{opts_list.name}' registered twice")
        self._lists[opts_list.name] = opts_list

    def find(self, name: str) -> QemuOptsList:
        try:
            return self._lists[name]
        except KeyError:
            raise UserError(f"There is no option group '{name}'") from None

    def __contains__(self, name: object) -> bool:
        return name in self._lists

    def __iter__(self) -> Iterator[QemuOptsList]:
        return iter(list(self._lists.values()))

    def clear(self) -> None:
        self._lists.clear()


# The process-wide registry, filled by pemu.cli.options.register_standard_opts().
opts_registry = QemuOptsRegistry()


def qemu_add_opts(opts_list: QemuOptsList) -> None:
    opts_registry.add(opts_list)


def qemu_find_opts(name: str) -> QemuOptsList:
    """The option group called ``name``; UserError if there is none."""
    return opts_registry.find(name)


# --------------------------------------------------------------------------
# -global


@dataclass(frozen=True)
class GlobalProperty:
    """A default for one property of every device of a type (-global)."""

    driver: str
    property: str
    value: str


_GLOBAL_OPTS_DESC = (
    QemuOptDesc("driver", QemuOptType.STRING, "device type"),
    QemuOptDesc("property", QemuOptType.STRING, "property name"),
    QemuOptDesc("value", QemuOptType.STRING, "property value"),
)

_DOTTED_GLOBAL = re.compile(r"([^.=]+)\.([^=]+)=(.*)", re.DOTALL)


def global_opts_list() -> QemuOptsList:
    """A fresh "global" option group (driver, property, value)."""
    return QemuOptsList("global", desc=_GLOBAL_OPTS_DESC)


def qemu_global_option(text: str, location: str | None = None) -> GlobalProperty:
    """Parse a -global argument: ``driver.property=value`` (the value taken
    verbatim, commas included) or ``driver=d,property=p,value=v``."""
    dotted = _DOTTED_GLOBAL.fullmatch(text)
    if dotted:
        return GlobalProperty(dotted.group(1), dotted.group(2), dotted.group(3))
    opts = global_opts_list().parse(text, location=location)
    driver, prop, value = opts.get("driver"), opts.get("property"), opts.get("value")
    if driver is None or prop is None or value is None:
        raise UserError("options 'driver', 'property', and 'value' are required", location)
    return GlobalProperty(driver, prop, value)
