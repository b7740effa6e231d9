"""Save and load time of the migration stream for a guest's RAM, both layouts.

Builds a q35 board (``-m 512 -S`` by default) in this process, fills its RAM
with one of three patterns, saves the whole VM to a file with
``SaveVMState`` (the stream layout, and mapped-ram), and loads each file into
a second board built with the same options with ``qemu_loadvm_state``.  It
prints, per pattern and layout: save time, load time, file size and the
space allocated on disk, and the time to read all of the loaded RAM once
(with mapped-ram that is where the file's pages are read).

    python3 bench/savevm.py [-m 512] [--patterns empty,half,full] [--dir /tmp]

Patterns: ``empty`` (a guest that touched nothing), ``half`` (every other
page data, the worst case for runs), ``full`` (every page data).  Devices
without a description (until every device has one) get a stateless one.
The process start and the board's build are not timed (see bench/migrate.py
for process start to a running guest).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pemu.hw.core.qdev import DeviceClass, DeviceState  # noqa: E402
from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter  # noqa: E402
from pemu.migration.savevm import SaveVMState, qemu_loadvm_state  # noqa: E402
from pemu.migration.vmstate import vmstate_no_state  # noqa: E402
from pemu.qom.object import Object  # noqa: E402
from pemu.system import vl  # noqa: E402
from pemu.system.vm import VirtualMachine  # noqa: E402


def build(args: list[str]) -> VirtualMachine:
    vm = vl.qemu_init(args)

    def walk(obj: Object) -> None:
        for _name, child in obj.children():
            klass = child.klass
            if isinstance(child, DeviceState) and isinstance(klass, DeviceClass) and klass.vmsd is None:
                klass.vmsd = vmstate_no_state(child.typename)
            walk(child)

    assert vm.qom_root is not None
    walk(vm.qom_root)
    return vm


def fill(vm: VirtualMachine, pattern: str) -> None:
    ram = vm.memory.ram_blocks[0]
    if pattern == "full":
        data = os.urandom(1 << 20)
        for at in range(0, ram.size, 1 << 20):
            ram.view[at:at + (1 << 20)] = data[:min(1 << 20, ram.size - at)]
    elif pattern == "half":
        page = os.urandom(4096)
        for at in range(0, ram.size, 8192):
            ram.view[at:at + 4096] = page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", default="512", help="guest RAM in MiB (default 512)")
    parser.add_argument("--patterns", default="empty,half,full")
    parser.add_argument("--dir", default=None, help="where the files go (default: a temporary directory)")
    opts = parser.parse_args()
    args = ["-machine", "q35", "-m", opts.m, "-nodefaults", "-display", "none", "-S"]
    print("| pattern | layout | save s | load s | first read of all RAM s | file MiB | on disk MiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        for pattern in opts.patterns.split(","):
            src = build(args)
            fill(src, pattern)
            for mapped in (False, True):
                path = Path(tmp) / "snapshot"
                path.unlink(missing_ok=True)
                src.activate()  # the current VM, as in a pemu process (dst was made and destroyed meanwhile)
                start = time.perf_counter()
                with open(path, "wb") as fh:
                    state = SaveVMState(src, QEMUFileWriter(fh), mapped_ram=mapped)
                    state.setup()
                    state.complete()
                    state.cleanup()
                save = time.perf_counter() - start
                dst = build(args)
                start = time.perf_counter()
                with open(path, "rb") as fh:
                    qemu_loadvm_state(dst, QEMUFileReader(fh))
                load = time.perf_counter() - start
                start = time.perf_counter()
                for block in dst.memory.ram_blocks:
                    bytes(block.view)
                touch = time.perf_counter() - start
                st = os.stat(path)
                layout = "mapped-ram" if mapped else "stream"
                print(f"| {pattern} | {layout} | {save:.3f} | {load:.4f} | {touch:.3f} | "
                      f"{st.st_size / (1 << 20):.0f} | {st.st_blocks * 512 / (1 << 20):.0f} |", flush=True)
                dst.destroy()
            src.destroy()


if __name__ == "__main__":
    main()
