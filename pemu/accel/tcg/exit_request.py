"""Leaving ``emu_start`` at a translation-block boundary, on request from any thread.

Why not ``uc_emu_stop``: Unicorn 2.1.4 checks the exit request after *every*
guest memory access, not only at block starts, and when it is set it
unwinds to the start of the current instruction.  Stores the instruction
already made stay done, so the instruction runs twice when the vCPU
resumes: ``inc [mem]`` adds two, ``xchg reg, [mem]`` loses the old value.
A stop that lands in the middle of a read-modify-write therefore corrupts
guest memory (it broke the kernel's XZ decompressor), and both an
``emu_stop`` from another thread and ``emu_start(timeout=...)`` (whose
timer thread calls ``uc_emu_stop``) can land there.

What is safe is a stop raised *at the start of a block*, before its first
instruction: the request is then seen by the check at the block's entry
and nothing of the block has run.  Block hooks run exactly there, so:

* ``always`` is a block hook on every address whose callback is a native
  no-op (C ``abs``).  It only exists to make every translated block call
  Unicorn's block-hook helper (the helper is compiled into a block only
  if a block hook matched when it was translated).
* ``stopper`` is a block hook on every address whose native callback is
  ``uc_emu_stop`` itself (its first argument is the engine, as for a block
  hook).  It is switched off by setting the hook's ``to_delete`` flag,
  which the helper checks at run time; :meth:`request` clears that flag,
  so the next block start calls ``uc_emu_stop`` from inside the engine.

Both callbacks are C functions, so a block costs a helper call and no
Python.  The flag is one byte written from any thread; the request stays
armed until the vCPU thread clears it, so it cannot be lost in the window
before ``emu_start``.  The hook structure is private to Unicorn:
:meth:`TBExitRequest.__init__` checks its layout and
:func:`verify_exit_request` checks the behaviour once per process.
"""

from __future__ import annotations

import ctypes

from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_64, Uc, UcError
from unicorn import x86_const as ucx
from unicorn.unicorn_py3.unicorn import uclib

_libc = ctypes.CDLL(None)
_NATIVE_NOOP = ctypes.cast(_libc.abs, ctypes.c_void_p).value
_NATIVE_EMU_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value


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


def _add_native_block_hook(uc: Uc, callback: int | None) -> _UcHook:
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, ctypes.c_void_p(callback), None,
                            ctypes.c_uint64(1), ctypes.c_uint64(0))
    if err:
        raise UcError(err)
    hook = _UcHook.from_address(handle.value)
    if hook.type != UC_HOOK_BLOCK or hook.callback != callback or (hook.begin, hook.end) != (1, 0) \
            or hook.to_delete:
        raise ExitRequestError("Unicorn's struct hook layout differs from 2.1.4's; pemu needs unicorn==2.1.4")
    return hook


class TBExitRequest:
    """Makes one engine's running ``emu_start`` return before its next translation block."""

    def __init__(self, uc: Uc) -> None:
        self._always = _add_native_block_hook(uc, _NATIVE_NOOP)
        self._stopper = _add_native_block_hook(uc, _NATIVE_EMU_STOP)
        self._stopper.to_delete = True

    def request(self) -> None:
        """Arm the stop; safe from any thread and from inside hooks."""
        self._stopper.to_delete = False

    def clear(self) -> None:
        """Disarm it (vCPU thread, outside ``emu_start``)."""
        self._stopper.to_delete = True

    @property
    def armed(self) -> bool:
        return not self._stopper.to_delete


_verified = False


def verify_exit_request() -> None:
    """Check once per process that an armed request stops at a block start and a clear one does not."""
    global _verified
    if _verified:
        return
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x2000)
    # 0x1000: inc qword [rbx]; jmp 0x1005 / 0x1005: inc qword [rbx]; hlt
    uc.mem_write(0x1000, bytes.fromhex("48ff03eb00" "48ff03f4"))
    uc.reg_write(ucx.UC_X86_REG_RBX, 0x2000)
    req = TBExitRequest(uc)
    uc.emu_start(0x1000, 0)
    ran = int.from_bytes(uc.mem_read(0x2000, 8), "little")
    req.request()
    uc.emu_start(0x1000, 0)
    stopped_at = uc.reg_read(ucx.UC_X86_REG_RIP)
    after = int.from_bytes(uc.mem_read(0x2000, 8), "little")
    if (ran, stopped_at, after) != (2, 0x1000, 2):
        raise ExitRequestError(f"block-start stop misbehaves (ran {ran}, stopped at {stopped_at:#x}, "
                               f"count {after}); pemu needs unicorn==2.1.4")
    _verified = True
