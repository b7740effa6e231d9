"""The QMP server on a character device (QEMU's monitor/qmp.c and
qapi/qmp-dispatch.c).

A :class:`MonitorQMP` is one front-end of a chardev (a socket, stdio, an
inherited fd).  Each time a client connects (the chardev opens) it sends
the greeting and starts in capabilities negotiation, where only
``qmp_capabilities`` is known; then every command of
:data:`pemu.monitor.qmp_table.QMP_COMMANDS` is.  Requests are JSON objects
split from the byte stream by :class:`pemu.qapi.json_stream.JSONStreamer`;
each is run at once on the main loop with the monitor's VM current, and
its reply (``return`` or ``error``, with the request's ``id``) is sent
before the next request is read.  Events go to every negotiated client,
with their host timestamps.

Memory stays bounded whatever the client does: a request is at most
:data:`~pemu.qapi.json_stream.MAX_MESSAGE_SIZE` bytes; while replies wait
for a client that does not read, no further input is read; events that
would grow the waiting output past :data:`MAX_PENDING_OUTPUT` are dropped.
"""

from __future__ import annotations

import json
from typing import Any

from pemu.chardev.char import Chardev, ChrEvent
from pemu.chardev.char_fe import CharBackend
from pemu.monitor.monitor import StringMonitor
from pemu.monitor.qmp_cmds import QMPCapability, qmp_query_version
from pemu.monitor.qmp_table import QMP_CAP_NEGOTIATION_COMMANDS, QMP_COMMANDS
from pemu.qapi.error import ErrorClass, QMPError
from pemu.qapi.json_stream import JSONStreamer
from pemu.qom.object import QOMError
from pemu.util.error import UserError
from pemu.util.vm_context import current_vm, set_current_vm

READ_CHUNK = 4096
MAX_PENDING_OUTPUT = 4 << 20


def _error(desc: str, error_class: ErrorClass = ErrorClass.GENERIC_ERROR) -> dict[str, Any]:
    return {"error": {"class": error_class.value, "desc": desc}}


def check_request(request: object) -> tuple[str, dict[str, Any]]:
    """The command name and arguments of a request (qmp_dispatch_check_obj).

    Raises QMPError with QEMU's messages for anything else."""
    if not isinstance(request, dict):
        raise QMPError("QMP input must be a JSON object")
    name: str | None = None
    for key, value in request.items():
        if key == "execute":
            if not isinstance(value, str):
                raise QMPError(f"QMP input member '{key}' must be a string")
            name = value
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QMPError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QMPError(f"QMP input member '{key}' is unexpected")
    if name is None:
        raise QMPError("QMP input lacks member 'execute'")
    arguments = request.get("arguments", {})
    assert isinstance(arguments, dict)
    return name, arguments


class MonitorQMP:
    """One QMP monitor (QEMU's MonitorQMP) on a chardev."""

    def __init__(self, chr: Chardev | None, pretty: bool = False) -> None:
        self.vm = current_vm()
        self.pretty = pretty
        self.negotiated = False
        self.streamer = JSONStreamer(self._handle_message)
        self.outbuf = bytearray()
        self._watching_output = False
        self.events_dropped = 0
        self.fe = CharBackend(chr)
        self.fe.set_handlers(self._can_read, self._read, self._event)

    # -- requests -----------------------------------------------------------------------------------
    def dispatch(self, request: object) -> dict[str, Any]:
        """The reply to one request (qmp_dispatch)."""
        req_id = request.get("id") if isinstance(request, dict) else None
        has_id = isinstance(request, dict) and "id" in request
        try:
            name, arguments = check_request(request)
            table = QMP_COMMANDS if self.negotiated else QMP_CAP_NEGOTIATION_COMMANDS
            cmd = table.find(name)
            if cmd is None:
                if not self.negotiated:
                    raise QMPError("Expecting capabilities negotiation with 'qmp_capabilities'",
                                   ErrorClass.COMMAND_NOT_FOUND)
                raise QMPError(f"The command {name} has not been found", ErrorClass.COMMAND_NOT_FOUND)
            previous = set_current_vm(self.vm)
            try:
                reply: dict[str, Any] = {"return": cmd.call(self, arguments)}
            finally:
                set_current_vm(previous)
        except QMPError as e:
            reply = _error(e.desc, e.error_class)
        except UserError as e:
            reply = _error(e.message)
        except QOMError as e:
            reply = _error(str(e))
        except Exception as e:  # a bug in a command must not take the VMM down
            detail = str(e).splitlines()[0] if str(e) else ""
            reply = _error(f"internal error: {type(e).__name__}" + (f": {detail}" if detail else ""))
        if has_id:
            reply["id"] = req_id
        return reply

    def negotiate(self, enable: list[QMPCapability]) -> None:
        """qmp_capabilities: leave negotiation mode (no capability is offered)."""
        if self.negotiated:
            raise QMPError("Capabilities negotiation is already complete, command ignored",
                           ErrorClass.COMMAND_NOT_FOUND)
        for cap in enable:
            raise QMPError(f"Capability '{cap.value}' not available")
        self.negotiated = True

    def run_hmp_line(self, line: str) -> str:
        """What one human monitor command line prints (human-monitor-command)."""
        hmp = StringMonitor()
        hmp.handle_command(line)
        return hmp.output()

    def _handle_message(self, request: Any, error: str | None) -> None:
        if error is not None:
            self.send(_error(error))
            return
        self.send(self.dispatch(request))

    # -- output -------------------------------------------------------------------------------------
    def encode(self, message: dict[str, Any]) -> bytes:
        text = json.dumps(message, indent=4 if self.pretty else None, ensure_ascii=True)
        # QEMU's monitor ends every line with "\r\n".
        return (text + "\n").replace("\n", "\r\n").encode()

    def send(self, message: dict[str, Any]) -> None:
        self.outbuf += self.encode(message)
        self._flush()

    def _flush(self) -> None:
        while self.outbuf:
            taken = self.fe.write(bytes(self.outbuf))
            if taken <= 0:
                break
            del self.outbuf[:taken]
        if not self.outbuf:
            self.fe.accept_input()
            return
        chr_ = self.fe.chr
        if chr_ is not None and not self._watching_output:
            self._watching_output = True
            chr_.add_output_watch(self._output_ready)

    def _output_ready(self) -> None:
        self._watching_output = False
        self._flush()

    def emit_event(self, name: str, data: dict[str, Any] | None, stamp: tuple[int, int]) -> None:
        """Send an event to a negotiated client (monitor_qapi_event_emit)."""
        if not self.negotiated:
            return
        message: dict[str, Any] = {"timestamp": {"seconds": stamp[0], "microseconds": stamp[1]}, "event": name}
        if data is not None:
            message["data"] = data
        encoded = self.encode(message)
        if len(self.outbuf) + len(encoded) > MAX_PENDING_OUTPUT:
            self.events_dropped += 1
            return
        self.outbuf += encoded
        self._flush()

    # -- input --------------------------------------------------------------------------------------
    def _can_read(self) -> int:
        # No more requests while replies wait for the client to read them.
        return 0 if self.outbuf else READ_CHUNK

    def _read(self, data: bytes) -> None:
        self.streamer.feed(data)

    def _event(self, event: ChrEvent) -> None:
        if event is ChrEvent.OPENED:
            self.negotiated = False
            self.streamer.reset()
            self.outbuf.clear()
            self.send({"QMP": {"version": qmp_query_version(), "capabilities": []}})
        elif event is ChrEvent.CLOSED:
            self.negotiated = False
            self.streamer.reset()
            self.outbuf.clear()

    def close(self) -> None:
        self.fe.deinit()
        if self.emit_event in self.vm.event_listeners:
            self.vm.event_listeners.remove(self.emit_event)
        if self in self.vm.qmp_monitors:
            self.vm.qmp_monitors.remove(self)


def monitor_init_qmp(chr: Chardev, pretty: bool = False) -> MonitorQMP:
    """Start a QMP monitor on ``chr`` (QEMU's monitor_init_qmp)."""
    mon = MonitorQMP(chr, pretty)
    mon.vm.qmp_monitors.append(mon)
    mon.vm.event_listeners.append(mon.emit_event)
    return mon
