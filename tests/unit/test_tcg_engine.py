"""pemu's Unicorn engine (pemu/accel/tcg/engine): each patch's behaviour, on the engine installed.

Where the stock engine is wrong the test runs there too and is an expected
failure (strict), so the suite shows the bug on the stock wheel and its fix
on pemu's engine.  Selection and reporting of the engine are tested through
a real ``python3 -m pemu`` process.
"""

from __future__ import annotations

import ctypes
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, UC_MODE_64, UC_PROT_READ, Uc, UcError
from unicorn import unicorn_const as ucc
from unicorn import x86_const as ucx
from unicorn.unicorn_py3.unicorn import uclib

from pemu.accel.tcg.engine import EngineFeature, engine_info, engine_key
from pemu.accel.tcg.exit_request import TBExitRequest

REPO = Path(__file__).resolve().parents[2]
INFO = engine_info()


def stock_is_wrong(feature: EngineFeature, why: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(not INFO.has(feature), strict=True, reason=f"stock Unicorn 2.1.4: {why}")


@stock_is_wrong(EngineFeature.RAM_OFFSETS, "find_ram_offset_last() gives two RAM blocks the same ram_addr "
                "range, so code translated from one runs for the other")
def test_ram_blocks_do_not_share_code() -> None:
    # Blocks mapped big, small, medium, medium: in 2.1.4 the last two got the
    # same ram_addr (the list is sorted by size, the new one goes after the
    # list's last block).  Both medium blocks hold code at the same offset;
    # one virtual address is pointed at each in turn with a 4 MiB page.
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 4 << 20)
    uc.mem_map(0x400000, 256 << 10)
    uc.mem_map(0x800000, 1 << 20)
    uc.mem_map(0xC00000, 1 << 20)
    uc.mem_write(0x800000, bytes.fromhex("b801000000f4"))  # mov eax, 1; hlt
    uc.mem_write(0xC00000, bytes.fromhex("b802000000f4"))  # mov eax, 2; hlt
    pd, virt = 0x1000, 0x10000000

    def run_through(phys: int) -> int:
        uc.mem_write(pd + (virt >> 22) * 4, (phys | 0x83).to_bytes(4, "little"))  # P, RW, 4 MiB
        uc.reg_write(ucx.UC_X86_REG_CR3, pd)  # flushes the TLB
        uc.emu_start(virt, 0)
        return uc.reg_read(ucx.UC_X86_REG_EAX)

    uc.reg_write(ucx.UC_X86_REG_CR4, 0x10)  # PSE
    uc.reg_write(ucx.UC_X86_REG_CR3, pd)
    uc.reg_write(ucx.UC_X86_REG_CR0, uc.reg_read(ucx.UC_X86_REG_CR0) | 0x80000001)
    assert [run_through(0x800000), run_through(0xC00000), run_through(0x800000)] == [1, 2, 1]


_MSR_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)


def _hook_msr(uc: Uc, insn: int, callback: _MSR_CB) -> None:
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.cast(callback, ctypes.c_void_p),
                            None, ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
    if err:
        raise UcError(err)


@stock_is_wrong(EngineFeature.MSR_HOOKS, "RDMSR/WRMSR cannot be hooked (UC_ERR_ARG), and IA32_APIC_BASE reads 0")
def test_msr_hooks() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, bytes.fromhex(
        "b91b000000"  # mov ecx, IA32_APIC_BASE
        "0f32"  # rdmsr
        "89c3"  # mov ebx, eax
        "b9e0060000"  # mov ecx, IA32_TSC_DEADLINE
        "b878563412"  # mov eax, 0x12345678
        "ba01000000"  # mov edx, 1
        "0f30"  # wrmsr
        "b9800000c0"  # mov ecx, EFER (not handled by the hook: the engine's own)
        "0f32"  # rdmsr
        "89c6"  # mov esi, eax
        "f4"))  # hlt
    seen: list[tuple[str, int, int, int]] = []

    def on_rdmsr(_uc: int, _data: int) -> int:
        ecx, rip = uc.reg_read(ucx.UC_X86_REG_ECX), uc.reg_read(ucx.UC_X86_REG_RIP)
        seen.append(("rdmsr", ecx, rip, 0))
        if ecx != 0x1B:
            return 0
        uc.reg_write(ucx.UC_X86_REG_RAX, 0xFEE00900)
        uc.reg_write(ucx.UC_X86_REG_RDX, 0)
        return 1

    def on_wrmsr(_uc: int, _data: int) -> int:
        value = uc.reg_read(ucx.UC_X86_REG_EDX) << 32 | uc.reg_read(ucx.UC_X86_REG_EAX)
        seen.append(("wrmsr", uc.reg_read(ucx.UC_X86_REG_ECX), uc.reg_read(ucx.UC_X86_REG_RIP), value))
        return 1

    callbacks = [_MSR_CB(on_rdmsr), _MSR_CB(on_wrmsr)]
    _hook_msr(uc, ucx.UC_X86_INS_RDMSR, callbacks[0])
    _hook_msr(uc, ucx.UC_X86_INS_WRMSR, callbacks[1])
    uc.emu_start(0x1000, 0)
    assert seen == [("rdmsr", 0x1B, 0x1005, 0), ("wrmsr", 0x6E0, 0x1018, 0x1_12345678),
                    ("rdmsr", 0xC0000080, 0x101F, 0)]
    assert uc.reg_read(ucx.UC_X86_REG_EBX) == 0xFEE00900
    assert uc.reg_read(ucx.UC_X86_REG_ESI) & 0x500 == 0x500  # EFER LME|LMA of the 64-bit engine


def test_failed_store_stops_at_its_instruction() -> None:
    """With pemu's exit request (per-access exit checks off on pemu's engine) a store to
    read-only memory still ends emu_start at that store, after the stores before it and
    before the ones after it."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_map(0x20000, 0x1000, UC_PROT_READ)
    TBExitRequest(uc)
    uc.mem_write(0x1000, bytes.fromhex(
        "c60425005000" "0001"  # mov byte [0x5000], 1
        "c60425000002" "0002"  # mov byte [0x20000], 2   (read-only)
        "c60425015000" "0003"  # mov byte [0x5001], 3
        "f4"))
    with pytest.raises(UcError) as e:
        uc.emu_start(0x1000, 0)
    assert e.value.errno == ucc.UC_ERR_WRITE_PROT
    assert uc.reg_read(ucx.UC_X86_REG_RIP) == 0x1008
    assert bytes(uc.mem_read(0x5000, 2)) == b"\x01\x00"


def _pemu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("LIBUNICORN_PATH", None)
    return subprocess.run([sys.executable, "-m", "pemu", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_accel_help_names_the_engine() -> None:
    out = _pemu("-accel", "help").stdout
    tcg = [line for line in out.splitlines() if line.startswith("tcg")]
    assert tcg and "software CPU on" in tcg[0] and "Unicorn 2.1.4" in tcg[0], out
    assert ("with pemu's patches" in tcg[0]) == INFO.patched


def test_pemu_engine_stock_forces_the_wheel_library() -> None:
    out = _pemu("-accel", "help", env={"PEMU_ENGINE": "stock"}).stdout
    assert "tcg  (software CPU on stock Unicorn 2.1.4 (without pemu's patches" in out


def test_pemu_engine_patched_without_a_build_is_one_clear_error(tmp_path: Path) -> None:
    result = _pemu("-machine", "q35", "-nographic", "-accel", "tcg",
                   env={"PEMU_ENGINE": "patched", "XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pemu's engine is not built here" in result.stderr, result.stderr


def test_a_paused_machine_does_not_load_the_engine() -> None:
    """With -S the engine is loaded when the vCPU first runs, not while the machine is built."""
    code = ("import sys; from pemu.system.vl import qemu_init; "
            "qemu_init(['-machine', 'q35', '-S', '-display', 'none']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'unicorn'))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_engine_key_follows_the_patches() -> None:
    key = engine_key()
    assert len(key) == 16 and key == engine_key()


def test_build_without_the_tools_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pemu.accel.tcg.engine import build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(build.shutil, "which", lambda tool: None if tool == "cmake" else f"/usr/bin/{tool}")
    with pytest.raises(build.BuildError, match=r"^building pemu's engine needs cmake \(Debian: apt-get install"):
        build.build_engine(out=io.StringIO())
    assert not (tmp_path / "pemu").exists()


def test_a_built_engine_is_not_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pemu.accel.tcg.engine import LIBRARY_NAME, build, built_engine_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built_engine_dir().mkdir(parents=True)
    (built_engine_dir() / LIBRARY_NAME).write_bytes(b"")
    monkeypatch.setattr(build, "fetch_sdist", lambda *a: pytest.fail("fetched the sources again"))
    assert build.build_engine(out=io.StringIO()) == built_engine_dir()
