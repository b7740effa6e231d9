"""Which Unicorn engine pemu's software CPU runs on: pemu's build or the stock wheel.

pemu's engine is Unicorn 2.1.4 built from its source distribution with the
patches in ``patches/`` (one per cause; each says why at its top) by
``python3 -m pemu.accel.tcg.engine build`` (:mod:`pemu.accel.tcg.engine.build`).
The result is cached by :func:`engine_key`, a hash of the version, the
source archive, the patches and the build script, in
``~/.cache/pemu/engine/<key>/libunicorn.so.2``: it is built once per machine
and rebuilt only when a patch changes.  A start finds the key in a note kept
next to the engines (:func:`recorded_engine_key`) rather than reading and
hashing the patches.

The unicorn binding loads its library when it is first imported and looks in
``LIBUNICORN_PATH`` first, so :func:`select_engine` runs when the ``pemu``
package is imported, before anything imports ``unicorn``.  ``PEMU_ENGINE``
chooses: ``auto`` (the default: pemu's build when it exists, else the
wheel's library), ``stock`` (always the wheel's) or ``patched`` (pemu's build
or an error).  What the loaded library offers is found out at run time
(:func:`engine_info`), so pemu runs on either and says which in
``info accel`` and ``-accel help``.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

UNICORN_VERSION = "2.1.4"
# sha256 of unicorn-2.1.4.tar.gz on the package index.
SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
LIBRARY_NAME = "libunicorn.so.2"
# Plain paths: pathlib (with fnmatch and urllib.parse) is not needed at start, only to build.
_HERE = os.path.dirname(os.path.realpath(__file__))
PATCH_DIR = os.path.join(_HERE, "patches")
BUILD_SCRIPT = os.path.join(_HERE, "build.py")
ENGINE_ENV = "PEMU_ENGINE"
ENGINE_CHOICES = ("auto", "stock", "patched")


class EngineFeature(enum.IntFlag):
    """``uc_pemu_features()`` bits, one per patch (include/unicorn/unicorn.h of the build)."""

    RAM_OFFSETS = 0x01
    CODE_DIRTY = 0x02
    INLINE_EXIT_CHECK = 0x04
    EXIT_REQUEST = 0x08
    BLOCK_EXITS_ONLY = 0x10
    MSR_HOOKS = 0x20
    PHYS_INVALIDATE = 0x40
    IRQ_WINDOW = 0x80
    DIRTY_LOG = 0x100


def _patch_files() -> list[str]:
    return sorted(os.path.join(PATCH_DIR, name) for name in os.listdir(PATCH_DIR) if name.endswith(".patch"))


def patches() -> list[Path]:
    from pathlib import Path

    return [Path(path) for path in _patch_files()]


def engine_key() -> str:
    """The cache key of pemu's engine: changes with any patch or the build script."""
    import hashlib  # 3 ms of OpenSSL: not at every start (recorded_engine_key)

    h = hashlib.sha256()
    h.update(f"unicorn {UNICORN_VERSION} {SDIST_SHA256}\n".encode())
    for path in [*_patch_files(), BUILD_SCRIPT]:
        with open(path, "rb") as f:
            data = f.read()
        h.update(f"{os.path.basename(path)} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _key_inputs_stamp() -> str:
    """The key's inputs as the file system describes them: name, size and
    modification time of each patch, the build script and this module (which
    holds the version and the archive's hash).  Editing or checking out any
    of them changes it."""
    lines = []
    for path in (*_patch_files(), BUILD_SCRIPT, __file__):
        st = os.stat(path)
        lines.append(f"{os.path.basename(path)} {st.st_size} {st.st_mtime_ns}")
    return "\n".join(lines)


def recorded_engine_key() -> str:
    """:func:`engine_key`, from a note in the engine cache while the inputs' stamp is unchanged.

    One note per source tree (``keys/<tree path>``) holds the stamp and the
    key it was computed for; a start reads it instead of hashing the patches.
    A stale or missing note is rewritten; a cache that cannot be written only
    costs the hash.
    """
    stamp = _key_inputs_stamp()
    note = os.path.join(_cache_dir(), "keys", os.path.dirname(PATCH_DIR).strip(os.sep).replace(os.sep, "+"))
    try:
        with open(note, encoding="utf-8") as f:
            recorded_stamp, _, key = f.read().rpartition("\nkey ")
        if recorded_stamp == stamp and len(key) == 16:
            return key
    except (OSError, ValueError):
        pass
    key = engine_key()
    try:
        os.makedirs(os.path.dirname(note), exist_ok=True)
        tmp = os.path.join(os.path.dirname(note), f".{os.path.basename(note)}.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{stamp}\nkey {key}")
        os.replace(tmp, note)
    except OSError:
        pass
    return key


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pemu", "engine")


def cache_root() -> Path:
    from pathlib import Path

    return Path(_cache_dir())


def built_engine_dir() -> Path:
    return cache_root() / engine_key()


def engine_choice() -> str:
    choice = os.environ.get(ENGINE_ENV, "auto") or "auto"
    return choice if choice in ENGINE_CHOICES else "auto"


_selected: str | None = None  # the directory of pemu's engine build, when it is the one to load


def select_engine() -> None:
    """Point the unicorn binding at pemu's build, when it exists and is wanted.

    Does nothing once ``unicorn`` is imported (the library is loaded then),
    when the user set ``LIBUNICORN_PATH`` themselves, or for ``stock``.  A
    ``LIBUNICORN_PATH`` that names pemu's build (a pemu that started this
    one set it) counts as pemu's choice.
    """
    global _selected
    if "unicorn" in sys.modules or engine_choice() == "stock":
        return
    try:
        directory = os.path.join(_cache_dir(), recorded_engine_key())
    except OSError:  # the patches cannot be read: run on the wheel's engine
        return
    inherited = os.environ.get("LIBUNICORN_PATH")
    if inherited is not None:
        if os.path.normpath(inherited) == directory:
            _selected = directory
        return
    if os.path.isfile(os.path.join(directory, LIBRARY_NAME)):
        os.environ["LIBUNICORN_PATH"] = directory
        _selected = directory


class EngineInfo(NamedTuple):
    """What the Unicorn library loaded in this process is and offers."""

    version: str
    path: str
    features: EngineFeature
    patched: bool

    def has(self, feature: EngineFeature) -> bool:
        return feature in self.features

    def describe(self) -> str:
        if not self.patched:
            return (f"stock Unicorn {self.version} (without pemu's patches: slower; "
                    f"build them with 'python3 -m pemu.accel.tcg.engine build')")
        names = ", ".join(str(f.name).lower().replace("_", "-") for f in EngineFeature if f in self.features)
        return f"Unicorn {self.version} with pemu's patches ({names}), {self.path}"


_info: EngineInfo | None = None


def engine_info() -> EngineInfo:
    """Look at the loaded library (imports ``unicorn``)."""
    global _info
    if _info is None:
        import ctypes

        import unicorn
        from unicorn.unicorn_py3.unicorn import uclib

        features_fn = getattr(uclib, "uc_pemu_features", None)
        if features_fn is None:
            features = EngineFeature(0)
        else:
            features_fn.restype = ctypes.c_uint32
            features_fn.argtypes = []
            features = EngineFeature(features_fn() & sum(EngineFeature))
        _info = EngineInfo(unicorn.__version__, str(getattr(uclib, "_name", "?")), features,
                           features_fn is not None)
    return _info


def expected_engine_features() -> EngineFeature:
    """The features of the engine this process loads at a vCPU's first run,
    without loading it (a start builds the machine, CPU models included,
    before any vCPU runs): pemu's build offers one feature per patch of this
    tree; the wheel's stock engine none."""
    if "unicorn" in sys.modules:
        return engine_info().features
    if _selected is not None:
        return EngineFeature(sum(EngineFeature))
    return EngineFeature(0)


_NOT_BUILT = (f"{ENGINE_ENV}=patched, but pemu's engine is not built here "
              f"(run 'python3 -m pemu.accel.tcg.engine build')")


class EngineUnavailable(RuntimeError):
    """PEMU_ENGINE=patched, but the loaded engine is the stock one."""


def check_engine_choice() -> EngineInfo:
    """The loaded engine, or EngineUnavailable when ``PEMU_ENGINE=patched`` cannot be honoured."""
    info = engine_info()
    if engine_choice() == "patched" and not info.patched:
        raise EngineUnavailable(_NOT_BUILT)
    return info


def check_engine_available() -> None:
    """What :func:`check_engine_choice` checks, without loading the library where files tell.

    Raises EngineUnavailable when ``PEMU_ENGINE=patched`` finds no build, and
    ImportError when the unicorn binding is not installed.  Only a library
    the user named with ``LIBUNICORN_PATH`` (or one already loaded) is
    loaded to find out what it is.
    """
    if "unicorn" in sys.modules or (engine_choice() == "patched" and _selected is None
                                    and "LIBUNICORN_PATH" in os.environ):
        check_engine_choice()
        return
    if engine_choice() == "patched" and _selected is None:
        raise EngineUnavailable(_NOT_BUILT)
    if importlib.util.find_spec("unicorn") is None:
        raise ImportError("No module named 'unicorn'")
