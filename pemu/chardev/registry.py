"""Creating, finding and closing chardevs (the registry half of QEMU's chardev/char.c).

Two ways in:

* ``-chardev backend,id=ID,opt=value...`` arrives as an option dictionary:
  :func:`qemu_chr_new_from_opts`.
* ``-serial``, ``-monitor`` and friends take QEMU's legacy shorthand
  ("stdio", "file:PATH", "tcp::5555,server,nowait", "mon:stdio"):
  :func:`qemu_chr_parse_compat` turns it into the same dictionary and
  :func:`qemu_chr_new` creates the chardev.

``mux=on`` creates the real back-end as ``ID-base`` and a
:class:`~pemu.chardev.char_mux.MuxChardev` named ``ID`` on top of it.
The back-end types are listed once, in :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pemu.chardev.char import CHARDEV_OPTION_NAMES, Chardev, ChardevOptions
from pemu.chardev.char_file import FileChardev
from pemu.chardev.char_mux import MuxChardev
from pemu.chardev.char_null import NullChardev
from pemu.chardev.char_pipe import PipeChardev
from pemu.chardev.char_stdio import StdioChardev
from pemu.util.error import UserError
from pemu.util.qemu_opts import split_opt_elements
from pemu.util.vm_context import current_vm

ChardevFactory = Callable[[str, ChardevOptions], Chardev]


def _socket_chardev(chr_id: str, opts: ChardevOptions) -> Chardev:
    from pemu.chardev.char_socket import SocketChardev  # with the socket module: only when asked for

    return SocketChardev.from_opts(chr_id, opts)


def _mux_chardev(chr_id: str, opts: ChardevOptions) -> Chardev:
    base_id = opts.get("chardev")
    if not base_id:
        raise UserError("chardev: mux: no chardev given")
    base = qemu_chr_find(base_id)
    if base is None:
        raise UserError(f"mux: base chardev {base_id} not found")
    return MuxChardev(chr_id, base)


# Every back-end a user may name with -chardev.
BACKENDS: dict[str, ChardevFactory] = {
    "null": NullChardev.from_opts,
    "file": FileChardev.from_opts,
    "pipe": PipeChardev.from_opts,
    "stdio": StdioChardev.from_opts,
    "socket": _socket_chardev,
    "mux": _mux_chardev,
}

def _chardevs() -> dict[str, Chardev]:
    """The current VM's live chardevs by id, in creation order."""
    return current_vm().chardevs


def qemu_chr_find(chr_id: str) -> Chardev | None:
    return _chardevs().get(chr_id)


def qemu_chr_list() -> list[Chardev]:
    """All chardevs, oldest first (for `info chardev`)."""
    return list(_chardevs().values())


def chardev_help() -> str:
    return "Available chardev backend types: \n" + "".join(f"  {name}\n" for name in BACKENDS)


def _create(chr_id: str, backend: str, opts: ChardevOptions) -> Chardev:
    if chr_id in _chardevs():
        raise UserError(f"Duplicate ID '{chr_id}' for chardev")
    factory = BACKENDS.get(backend)
    if factory is None:
        raise UserError(f"'{backend}' is not a valid char driver name")
    chardev = factory(chr_id, opts)
    try:
        logfile = opts.get("logfile")
        if logfile:
            chardev.open_logfile(logfile, opts.get_bool("logappend", False))
        chardev.open()
    except BaseException:
        chardev.close()
        raise
    _chardevs()[chr_id] = chardev
    return chardev


def qemu_chr_new_from_opts(opts: Mapping[str, str]) -> Chardev:
    """Create the chardev described by a -chardev option dictionary.

    ``opts`` holds ``backend``, ``id`` and the back-end's options as strings.
    Raises :class:`UserError` with QEMU's wording on bad options.
    """
    for key in opts:
        if key not in CHARDEV_OPTION_NAMES:
            raise UserError(f"Invalid parameter '{key}'")
    options = ChardevOptions(opts)
    backend = options.get("backend")
    chr_id = options.id
    if chr_id is None:
        raise UserError("chardev: no id specified")
    if not backend:
        raise UserError(f'chardev: "{chr_id}" missing backend')
    if backend not in BACKENDS:
        raise UserError(f"'{backend}' is not a valid char driver name")
    if not options.get_bool("mux", False):
        return _create(chr_id, backend, options)
    base_id = f"{chr_id}-base"
    if chr_id in _chardevs():
        raise UserError(f"Duplicate ID '{chr_id}' for chardev")
    _create(base_id, backend, options)
    try:
        return _create(chr_id, "mux", ChardevOptions({"backend": "mux", "id": chr_id, "chardev": base_id}))
    except BaseException:
        _remove(base_id)
        raise


def qemu_chr_new(label: str, filename: str, permit_mux_mon: bool = True) -> Chardev | None:
    """Create a chardev from a legacy shorthand (-serial, -monitor, -parallel).

    ``none`` gives None: the caller creates no front-end (``-serial none``).
    ``chardev:ID`` names an existing chardev.  A ``mon:`` prefix gives a mux
    (``isinstance(chr, MuxChardev)``) on which the caller starts a monitor,
    as QEMU's qemu_chr_new_mux_mon does.
    """
    if filename == "none":
        return None
    if filename.startswith("chardev:"):
        chr_id = filename[len("chardev:"):]
        found = qemu_chr_find(chr_id)
        if found is None:
            raise UserError(f'chardev "{chr_id}" not found')
        return found
    return qemu_chr_new_from_opts(qemu_chr_parse_compat(label, filename, permit_mux_mon))


def _parse_option_list(text: str, implied: str | None = None) -> dict[str, str]:
    """QemuOpts syntax ("a=1,flag,noflag,b=x,,y"); a first bare word may be ``implied``."""
    result: dict[str, str] = {}
    for element in split_opt_elements(text, implied):
        if element.name not in CHARDEV_OPTION_NAMES:
            raise UserError(f"Invalid parameter '{element.name}'")
        result[element.name] = element.value
    return result


def qemu_chr_parse_compat(label: str, filename: str, permit_mux_mon: bool = True) -> dict[str, str]:
    """Translate a legacy chardev string into -chardev options (id = ``label``)."""
    opts: dict[str, str] = {"id": label}
    rest = filename
    if rest.startswith("mon:"):
        if not permit_mux_mon:
            raise UserError("mon: isn't supported in this context")
        rest = rest[len("mon:"):]
        opts["mux"] = "on"
        if rest == "stdio":
            # Ctrl-C goes to the guest when the monitor shares the terminal.
            opts["signal"] = "off"
    if rest in ("null", "stdio"):
        opts["backend"] = rest
        return opts
    if rest == "none":
        # "-serial none" means no device at all: qemu_chr_new returns None.
        raise UserError("'none' is not a valid char driver")
    for prefix in ("file:", "pipe:"):
        if rest.startswith(prefix):
            path = rest[len(prefix):]
            opts["backend"] = prefix[:-1]
            opts["path"] = path
            return opts
    if rest.startswith("tcp:"):
        spec = rest[len("tcp:"):]
        address, _, options = spec.partition(",")
        host, sep, port = address.rpartition(":")
        if not sep or not port:
            raise UserError(f"'{filename}' is not a valid char driver")
        extra = _parse_option_list(options) if options else {}
        opts.update(backend="socket", host=host, port=port)
        opts.update(extra)
        return opts
    if rest.startswith("unix:"):
        extra = _parse_option_list(rest[len("unix:"):], implied="path")
        opts["backend"] = "socket"
        opts.update(extra)
        return opts
    if rest.startswith("telnet:"):
        raise UserError("telnet chardevs are not supported")
    backend = rest.split(":", 1)[0]
    if backend == "vc" or backend.startswith("vc"):
        raise UserError("'vc' is not supported: there is no graphical console; use -nographic or -serial stdio")
    raise UserError(f"'{filename}' is not a valid char driver")


def _remove(chr_id: str) -> None:
    chardev = _chardevs().pop(chr_id, None)
    if chardev is not None:
        chardev.close()


def qemu_chr_delete(chr_id: str) -> None:
    """Close and forget one chardev (chardev-remove)."""
    if chr_id not in _chardevs():
        raise UserError(f"Chardev '{chr_id}' not found")
    _remove(chr_id)


def qemu_chr_cleanup() -> None:
    """Close every chardev, newest first (muxes before their base)."""
    for chr_id in reversed(list(_chardevs())):
        _remove(chr_id)


__all__ = [
    "BACKENDS",
    "chardev_help",
    "qemu_chr_cleanup",
    "qemu_chr_delete",
    "qemu_chr_find",
    "qemu_chr_list",
    "qemu_chr_new",
    "qemu_chr_new_from_opts",
    "qemu_chr_parse_compat",
]
