"""Run pemu in this process on a guest and copy its RAM as a live migration's
pre-copy does, with the dirty log; print how many pages the copy missed.

    python3 dirty_log_precopy.py ROUNDS PEMU-ARGS...

Starts the log 0.5 s into the run, copies all RAM, then ROUNDS times (every
0.3 s, the guest running) copies the pages a sync reports; then stops the
vCPUs, copies what the last sync reports and compares the copy with the
RAM page by page.  The last line is ``copied N1,N2,... missed M [pages]``:
with a complete log M is 0.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pemu  # noqa: F401  (chooses the engine first)
from pemu.system.cpus import pause_all_vcpus
from pemu.system.dirty_log import (
    memory_global_dirty_log_start,
    memory_global_dirty_log_stop,
    memory_global_dirty_log_sync,
)
from pemu.system.memory import DIRTY_PAGE_SIZE, RAMBlock
from pemu.util.main_loop import bql
from pemu.util.vm_context import current_vm_or_none


def copy_dirty(bitmaps: dict[RAMBlock, bytearray], copy: dict[RAMBlock, bytearray]) -> int:
    n = 0
    for block, bitmap in bitmaps.items():
        for i, byte in enumerate(bitmap):
            for bit in range(8):
                if byte >> bit & 1:
                    start = (8 * i + bit) * DIRTY_PAGE_SIZE
                    copy[block][start:start + DIRTY_PAGE_SIZE] = block.view[start:start + DIRTY_PAGE_SIZE]
                    n += 1
    return n


def precopy(rounds: int) -> None:
    try:
        time.sleep(0.5)
        vm = current_vm_or_none()
        assert vm is not None
        if not memory_global_dirty_log_start(vm):
            print("the accelerator cannot log", flush=True)
            os._exit(1)
        copy = {block: bytearray(block.view) for block in vm.memory.ram_blocks}
        copied = []
        for _ in range(rounds):
            time.sleep(0.3)
            copied.append(copy_dirty(memory_global_dirty_log_sync(vm), copy))
        with bql:
            pause_all_vcpus()
        copied.append(copy_dirty(memory_global_dirty_log_sync(vm), copy))
        memory_global_dirty_log_stop(vm)
        missed = [f"{block.idstr}@{start:#x}" for block, data in copy.items()
                  for start in range(0, block.size, DIRTY_PAGE_SIZE)
                  if data[start:start + DIRTY_PAGE_SIZE] != block.view[start:start + DIRTY_PAGE_SIZE]]
        print(f"copied {','.join(map(str, copied))} missed {len(missed)} {' '.join(missed[:20])}", flush=True)
        os._exit(0)
    except BaseException as e:  # a failure here must end the run, not leave the guest running
        print(f"precopy failed: {e!r}", flush=True)
        os._exit(1)


def main() -> None:
    rounds = int(sys.argv[1])
    threading.Thread(target=precopy, args=(rounds,), daemon=True).start()
    sys.argv = ["pemu", *sys.argv[2:]]
    from pemu.system.main import main as pemu_main

    pemu_main()


if __name__ == "__main__":
    main()
