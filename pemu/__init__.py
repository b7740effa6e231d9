"""pemu: a machine emulator and virtual machine monitor in Python, built on QEMU's architecture."""

__version__ = "0.1.0"
