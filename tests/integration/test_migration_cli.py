"""-incoming and the migration commands on the command line and the human
monitor, without a guest: bad URIs are one line and exit status 1, the run
states show in `info status`, a migration of a paused machine through exec:
and back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BASE = [sys.executable, "-m", "pemu", "-machine", "q35", "-m", "64", "-display", "none", "-nodefaults"]


def pemu(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BASE, *args], input=stdin, capture_output=True, text=True, timeout=120)


def monitor_session(args: list[str], lines: list[str], pause: float = 0.0) -> str:
    """Type ``lines`` into the human monitor on stdio one at a time, each after the
    previous one's prompt (and ``pause`` seconds); everything printed."""
    proc = subprocess.Popen([*BASE, *args, "-monitor", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    out = b""
    try:
        for typed, line in enumerate(lines):
            while out.count(b"(qemu) ") <= typed:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, out.decode(errors="replace")
                out += chunk
            time.sleep(pause)
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        out += proc.stdout.read()
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return out.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize("uri, message", [
    ("foo", "pemu: -incoming foo: unknown migration protocol: foo"),
    ("unix:/tmp/x", "pemu: -incoming unix:/tmp/x: unknown migration protocol: unix:/tmp/x"),
    ("file:/nonexistent/snap", "pemu: -incoming file:/nonexistent/snap: Could not open '/nonexistent/snap': "
                               "No such file or directory"),
    ("tcp:127.0.0.1:99999", "pemu: -incoming tcp:127.0.0.1:99999: port 99999 out of range"),
    ("tcp:nowhere", "pemu: -incoming tcp:nowhere: error parsing address 'nowhere'"),
])
def test_bad_incoming_uri_is_one_line(uri: str, message: str) -> None:
    r = pemu("-incoming", uri)
    assert r.returncode == 1
    assert r.stderr == message + "\n"
    assert r.stdout == ""


def test_empty_stream_fails_the_load_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    r = pemu("-incoming", f"exec:cat {empty}")
    assert r.returncode == 1
    assert r.stderr == "pemu: load of migration failed: the migration stream is truncated\n"


def test_save_and_restore_a_paused_machine_through_the_monitor(tmp_path: Path) -> None:
    stream = tmp_path / "vm.stream"
    r = pemu("-S", "-monitor", "stdio", stdin=f'info status\nmigrate "exec:cat > {stream}"\ninfo status\n'
                                                "info migrate\nquit\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.replace("\r\n", "\n")
    assert "VM status: paused (prelaunch)" in out
    assert "VM status: paused (postmigrate)" in out
    assert "Migration status: completed" in out
    assert stream.stat().st_size > 0
    # -incoming defer: the status waits for migrate_incoming; -S: loaded, then paused.
    out = monitor_session(["-S", "-incoming", "defer"],
                          ["info status", f'migrate_incoming "exec:cat {stream}"', "info migrate", "info status",
                           "quit"], pause=0.5)
    assert "VM status: paused (inmigrate)" in out
    assert "Migration status: completed" in out
    assert "VM status: paused\n" in out


def test_the_destination_refuses_migrating_and_the_source_refuses_migrate_incoming(tmp_path: Path) -> None:
    r = pemu("-S", "-monitor", "stdio", "-incoming", "defer",
             stdin=f"migrate \"exec:cat > {tmp_path / 'x'}\"\nquit\n")
    assert "Error: Guest is waiting for an incoming migration" in r.stdout
    r = pemu("-S", "-monitor", "stdio", stdin="migrate_incoming tcp::4444\nquit\n")
    assert "Error: '-incoming' was not specified on the command line" in r.stdout
