"""Leaving ``emu_start`` at a translation-block boundary, on request from any thread.

On pemu's engine (pemu.accel.tcg.engine, patches 0004 and 0005) the engine
does it: ``uc_pemu_exit_request`` arms a stop that is checked at block
starts only (an inline load and branch) and stays armed until
``uc_pemu_exit_clear``, and ``uc_pemu_block_exits_only`` turns off the
checks Unicorn makes after every guest memory access.  Nothing runs per
block beyond the check.

On the stock engine, why not ``uc_emu_stop``: Unicorn 2.1.4 checks the exit
request after *every* guest memory access, not only at block starts, and
when it is set it unwinds to the start of the current instruction.  Stores
the instruction already made stay done, so the instruction runs twice when
the vCPU resumes: ``inc [mem]`` adds two, ``xchg reg, [mem]`` loses the old
value.  A stop that lands in the middle of a read-modify-write therefore
corrupts guest memory (it broke the kernel's XZ decompressor), and both an
``emu_stop`` from another thread and ``emu_start(timeout=...)`` (whose
timer thread calls ``uc_emu_stop``) can land there.

What is safe is a stop raised *at the start of a block*, before its first
instruction: the request is then seen by the check at the block's entry
and nothing of the block has run.  Block hooks run exactly there.  A block
hook on every address, whose callback is native code, does it:

* Fast path: the callback is a 14-byte x86-64 stub in an executable page,
  ``if (*user_data) tail-call uc_emu_stop(uc)`` (the engine is the first
  argument of a block callback, as of ``uc_emu_stop``).  ``user_data``
  points at a flag byte; :meth:`TBExitRequest.request` sets it and
  :meth:`TBExitRequest.clear` clears it.  With a single block hook Unicorn
  compiles a direct call to the callback into each block, so a block costs
  one native call.
* Fallback, where no executable page can be had: two block hooks, a
  native no-op (C ``abs``) that makes every block call Unicorn's generic
  hook helper, and one whose callback is ``uc_emu_stop`` itself, switched
  by its ``to_delete`` flag (checked by the helper at run time).  This costs
  about 20% on tight loops.  (Swapping the callback pointer of a single
  hook does not work: the direct call is fixed when the block is compiled.)

The switch is a one-byte store, safe from any thread; the request stays
armed until the vCPU thread clears it, so it cannot be lost in the window
before ``emu_start``.  The hook structure is private to Unicorn:
:func:`_add_native_block_hook` checks its layout and
:func:`verify_exit_request` checks the behaviour once per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import mmap
import struct
import threading
from collections.abc import Iterator
from typing import Any

from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_64, Uc, UcError
from unicorn import x86_const as ucx
from unicorn.unicorn_py3.unicorn import uclib

from pemu.accel.tcg.engine import EngineFeature, engine_info

_libc = ctypes.CDLL(None)
_NATIVE_NOOP = ctypes.cast(_libc.abs, ctypes.c_void_p).value
_emu_stop_address = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
assert _emu_stop_address is not None  # an exported function's address is never NULL
_NATIVE_EMU_STOP: int = _emu_stop_address


def _stop_if_flag_stub(emu_stop: int) -> bytes:
    """x86-64 SysV code for ``void cb(uc, address, size, const uint8_t *flag)``."""
    return (bytes.fromhex("803900")  # cmpb $0, (%rcx)      ; *flag (4th argument)
            + bytes.fromhex("7501")  # jne 1f
            + bytes.fromhex("c3")  # ret
            + bytes.fromhex("48b8") + struct.pack("<Q", emu_stop)  # 1: movabs $uc_emu_stop, %rax
            + bytes.fromhex("ffe0"))  # jmp *%rax             ; uc_emu_stop(uc), same frame


_stub_page: mmap.mmap | None = None
_stub_failed = False


def _stop_if_flag_callback() -> int | None:
    """The address of the stub, in a page made once per process; None if not possible here."""
    global _stub_page, _stub_failed
    if _stub_page is None and not _stub_failed:
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except OSError:  # W^X policy: use the two-hook fallback
            _stub_failed = True
            return None
        page.write(_stop_if_flag_stub(_NATIVE_EMU_STOP))
        _stub_page = page
    if _stub_page is None:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(_stub_page))


class _UcHook(ctypes.Structure):
    """``struct hook`` of Unicorn 2.1.4 (include/uc_priv.h), the part pemu reads."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("insn", ctypes.c_int),
        ("refs", ctypes.c_int),
        ("op", ctypes.c_int),
        ("op_flags", ctypes.c_int),
        ("to_delete", ctypes.c_bool),
        ("begin", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("callback", ctypes.c_void_p),
        ("user_data", ctypes.c_void_p),
    ]


class ExitRequestError(RuntimeError):
    """Unicorn's hook structure is not the one pemu was written for."""


def _add_native_block_hook(uc: Uc, callback: int | None, user_data: int | None = None) -> _UcHook:
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, ctypes.c_void_p(callback),
                            ctypes.c_void_p(user_data), ctypes.c_uint64(1), ctypes.c_uint64(0))
    if err:
        raise UcError(err)
    hook = _UcHook.from_address(handle.value)
    if hook.type != UC_HOOK_BLOCK or hook.callback != callback or (hook.begin, hook.end) != (1, 0) \
            or hook.to_delete:
        raise ExitRequestError("Unicorn's struct hook layout differs from 2.1.4's; pemu needs unicorn==2.1.4")
    return hook


class ExitMode(enum.Enum):
    """How a :class:`TBExitRequest` stops the engine (see the module docstring)."""

    ENGINE = "engine"  # pemu's engine: uc_pemu_exit_request, block-start checks only
    STUB = "stub"  # stock engine: a native block hook testing a flag
    TWO_HOOKS = "two-hooks"  # stock engine without an executable page


def default_exit_mode() -> ExitMode:
    if engine_info().has(EngineFeature.EXIT_REQUEST | EngineFeature.BLOCK_EXITS_ONLY):
        return ExitMode.ENGINE
    return ExitMode.STUB


def _engine_call(name: str, *argtypes: Any) -> Any:
    fn = getattr(uclib, name)
    fn.argtypes = [ctypes.c_void_p, *argtypes]
    fn.restype = ctypes.c_int if name == "uc_pemu_block_exits_only" else None
    return fn


class TBExitRequest:
    """Makes one engine's running ``emu_start`` return before its next translation block."""

    def __init__(self, uc: Uc, mode: ExitMode | None = None) -> None:
        self.mode = mode = mode or default_exit_mode()
        self._flag = ctypes.c_uint8(0)
        self._stopper: _UcHook | None = None
        self._uc = uc  # keeps the engine alive while another thread may still request a stop
        self._uch = uc._uch
        # The flag and the engine's own are set and cleared together: a
        # request racing a clear must not leave the engine disarmed while the
        # flag says armed (the vCPU would then run on, its time slice lost).
        self._lock = threading.Lock()
        if mode is ExitMode.ENGINE:
            self._engine_request = _engine_call("uc_pemu_exit_request")
            self._engine_clear = _engine_call("uc_pemu_exit_clear")
            err = _engine_call("uc_pemu_block_exits_only", ctypes.c_bool)(self._uch, True)
            if err:
                raise UcError(err)
            return
        stub = _stop_if_flag_callback() if mode is ExitMode.STUB else None
        if stub is not None:
            _add_native_block_hook(uc, stub, ctypes.addressof(self._flag))
        else:
            self.mode = ExitMode.TWO_HOOKS
            _add_native_block_hook(uc, _NATIVE_NOOP)
            self._stopper = _add_native_block_hook(uc, _NATIVE_EMU_STOP)
            self._stopper.to_delete = True

    @contextlib.contextmanager
    def exits_after_each_access(self) -> Iterator[None]:
        """Within: the engine also checks for a stop after every memory access,
        as the stock engine always does, so that ``emu_start``'s instruction
        count ends a run at the next instruction rather than at the end of its
        block (each switch flushes the translation cache: for rare paths only)."""
        if self.mode is not ExitMode.ENGINE:
            yield
            return
        switch = _engine_call("uc_pemu_block_exits_only", ctypes.c_bool)
        if switch(self._uch, False):
            raise ExitRequestError("the engine refused to turn its per-access exit checks back on")
        try:
            yield
        finally:
            switch(self._uch, True)

    def request(self) -> None:
        """Arm the stop; safe from any thread and from inside hooks."""
        if self.mode is ExitMode.ENGINE:
            with self._lock:
                self._flag.value = 1
                self._engine_request(self._uch)
        elif self._stopper is None:
            self._flag.value = 1
        else:
            self._stopper.to_delete = False

    def clear(self) -> None:
        """Disarm it (vCPU thread, outside ``emu_start``)."""
        if self.mode is ExitMode.ENGINE:
            with self._lock:
                self._flag.value = 0
                self._engine_clear(self._uch)
        elif self._stopper is None:
            self._flag.value = 0
        else:
            self._stopper.to_delete = True

    @property
    def armed(self) -> bool:
        return bool(self._flag.value) if self._stopper is None else not self._stopper.to_delete


_verified = False


def verify_exit_request() -> None:
    """Check once per process that an armed request stops at a block start and a clear one does not."""
    global _verified
    if _verified:
        return
    modes = [ExitMode.STUB, ExitMode.TWO_HOOKS]
    if default_exit_mode() is ExitMode.ENGINE:
        modes.append(ExitMode.ENGINE)
    for mode in modes:
        _verify(mode)
    _verified = True


def _verify(mode: ExitMode) -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x2000)
    # 0x1000: inc qword [rbx]; jmp 0x1005 / 0x1005: inc qword [rbx]; hlt
    uc.mem_write(0x1000, bytes.fromhex("48ff03eb00" "48ff03f4"))
    uc.reg_write(ucx.UC_X86_REG_RBX, 0x2000)
    req = TBExitRequest(uc, mode)
    uc.emu_start(0x1000, 0)
    ran = int.from_bytes(uc.mem_read(0x2000, 8), "little")
    req.request()
    uc.emu_start(0x1000, 0)
    stopped_at = uc.reg_read(ucx.UC_X86_REG_RIP)
    after = int.from_bytes(uc.mem_read(0x2000, 8), "little")
    if (ran, stopped_at, after) != (2, 0x1000, 2):
        raise ExitRequestError(f"block-start stop ({mode.value}) misbehaves (ran {ran}, stopped at {stopped_at:#x}, "
                               f"count {after}); pemu needs unicorn==2.1.4")
