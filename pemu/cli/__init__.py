"""Command-line parsing: the option table and argv splitting (see options.py)."""

from pemu.cli.options import (
    OPTIONS,
    ParsedOption,
    QemuOption,
    parse_command_line,
    qemu_options_help,
    register_standard_opts,
)

__all__ = [
    "OPTIONS",
    "ParsedOption",
    "QemuOption",
    "parse_command_line",
    "qemu_options_help",
    "register_standard_opts",
]
