"""A seeded fuzzer for the migration stream loader (pemu.migration.savevm).

The stream is untrusted input.  This builds the q35 fuzzer's board (tests/fuzz/q35_fuzz.py:
e1000e, AHCI disk and CD-ROM, edu, pci-testdev, pc-testdev ...), puts its devices in
non-trivial states by playing a few hundred operations of each q35 surface, saves it, then for
each iteration mutates the payload of ONE device section (bit flips, bytes set to 0/0xFF/boundary
values, big-endian counts replaced), keeps the section's length and footer valid and recomputes
the trailing CRC-32, and loads it into a second board.  A load must succeed or be refused with
LoadVMError / VMStateError / MigrationStreamError; after a successful load the board is exercised
(reads, and some writes, of every device port and MMIO window and BAR, the virtual clock run
forward) and nothing may escape, the VM must not stop in internal-error, and RSS stays bounded.

The destination board is reused: a load that passes has loaded every section, so a refused
(partial) load leaves nothing behind that the next passing one does not overwrite.

    PYTHONPATH=$PWD nice python3 tests/fuzz/migration_fuzz.py --seed 1 --iterations 5000

Exit status 1 when something was found; each finding names the seed, iteration and section.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import q35_fuzz  # noqa: E402

MiB = 1 << 20
EXERCISE_PORTS = [*q35_fuzz.DEVICE_PORTS, (q35_fuzz.TESTDEV_IO_BAR, 0x100), (q35_fuzz.E1000E_IO, 0x20)]
EXERCISE_MMIO = [*q35_fuzz.MMIO_WINDOWS[:4], (q35_fuzz.EDU_BAR, 0x100), (q35_fuzz.TESTDEV_MMIO_BAR, 0x100),
                 (q35_fuzz.PC_TESTDEV_IOMEM, 0x100), (q35_fuzz.E1000E_MMIO, 0x6000),
                 (q35_fuzz.E1000E_MSIX, 0x100), (q35_fuzz.AHCI_ABAR, 0x400)]


@dataclass
class Finding:
    kind: str          # exception (escaped the load or the run after it), internal-error, rss
    section: str
    iteration: int
    detail: str
    count: int = 1


@dataclass
class Section:
    idstr: str   # the QOM path and, in parentheses, the description's name
    start: int   # offset of the payload in the stream
    length: int


def parse_sections(data: bytes) -> list[Section]:
    """The device (and timer) sections of a saved stream: where each payload lies."""
    from pemu.migration.savevm import SectionType

    sections = []
    pos = data.find(bytes([SectionType.SECTION_FULL]) + struct.pack(">I", 1) + b"\x05timer")
    while pos >= 0 and pos < len(data) and data[pos] == SectionType.SECTION_FULL:
        p = pos + 5
        idstr = data[p + 1:p + 1 + data[p]].decode()
        p += 1 + data[p] + 8
        name = data[p + 1:p + 1 + data[p]].decode()
        idstr = f"{idstr} ({name})"
        p += 1 + data[p]
        length = struct.unpack_from(">I", data, p)[0]
        sections.append(Section(idstr, p + 4, length))
        pos = p + 4 + length + 5
    return sections


def mutate(rng: random.Random, payload: bytearray) -> None:
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        if not payload:
            return
        i = rng.randrange(len(payload))
        how = rng.randrange(5)
        if how == 0:
            payload[i] ^= 1 << rng.randrange(8)
        elif how == 1:
            payload[i] = rng.choice((0, 0xFF, 0x7F, 0x80, 1))
        elif how in (2, 3) and i + 4 <= len(payload):
            width = rng.choice((2, 4)) if how == 2 else rng.choice((4, 8))
            if i + width <= len(payload):
                value = rng.choice(q35_fuzz.INTERESTING + [rng.getrandbits(8 * width)]) & ((1 << 8 * width) - 1)
                payload[i:i + width] = value.to_bytes(width, "big")
        else:
            payload[i] = rng.getrandbits(8)


def restream(data: bytes, section: Section, payload: bytes) -> bytes:
    out = bytearray(data[:section.start] + payload + data[section.start + section.length:])
    body = out[:-4]
    out[-4:] = struct.pack(">I", zlib.crc32(body))
    return bytes(out)


class MigrationFuzzer:
    def __init__(self, seed: int, limits: q35_fuzz.Limits) -> None:
        from pemu.migration.qemu_file import QEMUFileWriter
        from pemu.migration.savevm import SaveVMState

        self.seed = seed
        self.limits = limits
        self.source = q35_fuzz.Q35Fuzzer(seed, limits)
        # Non-trivial device state: a few hundred operations of each q35 surface (without the reset between).
        for surface in q35_fuzz.SURFACES:
            self.source.run(surface, 300, 20)
        self.source.findings.clear()
        out = io.BytesIO()
        state = SaveVMState(self.source.vm, QEMUFileWriter(out))
        state.setup()
        state.complete()
        state.cleanup()
        self.stream = out.getvalue()
        self.sections = parse_sections(self.stream)
        self.dest = q35_fuzz.Q35Fuzzer(seed, limits)
        self.dest.system_reset()
        self.findings: dict[tuple[str, str], Finding] = {}
        self.loaded = self.refused = 0
        self.last_refusal = ""
        self.rss_base = q35_fuzz._rss_bytes()
        # The unchanged stream must load: a state the guest can reach that the loader refuses is a finding too.
        try:
            if not self.load(self.stream):
                self._record("baseline", "baseline", "(unchanged stream)", -1, self.last_refusal)
        except Exception as e:  # noqa: BLE001
            self._record("baseline", "baseline", "(unchanged stream)", -1, repr(e))

    def close(self) -> None:
        self.source.close()
        self.dest.close()

    def _record(self, kind: str, where: str, section: str, iteration: int, detail: str) -> None:
        key = (kind, where)
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = Finding(kind, section, iteration, detail)

    def load(self, data: bytes) -> bool:
        from pemu.migration.qemu_file import MigrationStreamError, QEMUFileReader
        from pemu.migration.savevm import LoadVMError, qemu_loadvm_state
        from pemu.migration.vmstate import VMStateError

        try:
            qemu_loadvm_state(self.dest.vm, QEMUFileReader(io.BytesIO(data)))
        except (LoadVMError, VMStateError, MigrationStreamError) as e:
            if "\n" in str(e):
                raise AssertionError(f"refusal is not one line: {e!r}") from e
            self.last_refusal = str(e)
            return False
        return True

    def exercise(self, rng: random.Random) -> None:
        io_space, mem = self.dest.io, self.dest.mem
        for base, length in EXERCISE_PORTS:
            for port in range(base, base + length):
                io_space.dispatch_read(port, 1)
                if rng.random() < 0.05:
                    io_space.dispatch_write(port, rng.getrandbits(8), 1)
        for base, length in EXERCISE_MMIO:
            for addr in range(base, base + length, 4):
                mem.dispatch_read(addr, 4)
        for _ in range(3):
            self.dest._execute(("clock", rng.choice((1000, 10**6, 10**8, 10**9))))
            self.dest._execute(("complete",))

    def iterate(self, iteration: int) -> None:
        from pemu.system import runstate
        from pemu.system.runstate import RunState

        rng = random.Random(f"{self.seed}:{iteration}")
        section = rng.choice(self.sections)
        payload = bytearray(self.stream[section.start:section.start + section.length])
        mutate(rng, payload)
        data = restream(self.stream, section, bytes(payload))
        stage = "load"
        try:
            if not self.load(data):
                self.refused += 1
                return
            self.loaded += 1
            stage = "run"
            self.exercise(rng)
        except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
            self._record("exception", f"{stage}:{section.idstr}:{q35_fuzz.Q35Fuzzer._where(e)}", section.idstr,
                         iteration, f"{stage}: {e!r}")
        if runstate.runstate_get() == RunState.INTERNAL_ERROR:
            self._record("internal-error", section.idstr, section.idstr, iteration,
                         "the VM stopped in internal-error after loading")
            runstate.runstate_set(RunState.PAUSED)
        growth = q35_fuzz._rss_bytes() - self.rss_base
        if growth > self.limits.rss_growth:
            self._record("rss", section.idstr, section.idstr, iteration, f"RSS grew by {growth // MiB} MiB")
            self.rss_base = q35_fuzz._rss_bytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--time", type=float, default=float("inf"), metavar="S")
    p.add_argument("--rss-growth", type=int, default=256, metavar="MIB")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    limits = q35_fuzz.Limits(rss_growth=args.rss_growth * MiB)
    fuzzer = MigrationFuzzer(args.seed, limits)
    start = time.monotonic()
    done = 0
    try:
        for done in range(1, args.iterations + 1):
            fuzzer.iterate(done - 1)
            if time.monotonic() - start > args.time:
                break
    finally:
        fuzzer.close()
    seconds = time.monotonic() - start
    findings = list(fuzzer.findings.values())
    print(f"migration fuzz, seed {args.seed}: {done} iterations in {seconds:.1f} s, "
          f"{fuzzer.loaded} loaded, {fuzzer.refused} refused, {len(fuzzer.sections)} sections")
    print(f"findings: {len(findings)}")
    for f in findings:
        print(f"  {f.kind} [{f.section} #{f.iteration}] x{f.count}: {f.detail}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"seed": args.seed, "iterations": done, "loaded": fuzzer.loaded, "refused": fuzzer.refused,
                       "findings": [asdict(f) for f in findings]}, out, indent=2)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
