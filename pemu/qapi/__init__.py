"""The command layer both monitors share (QEMU's qapi/ and the generated
qmp_marshal_* code): typed commands, their schema, argument checking,
errors and events.

A command is a typed Python function registered in a
:class:`~pemu.qapi.commands.CommandTable`; its signature is its schema
(argument names, types, which are optional, the return type).  The QMP
server dispatches JSON requests to it; the human monitor calls the same
function and formats its result.  Nothing here is imported unless a monitor
needs it: start-up without ``-qmp`` never loads the schema machinery.
"""
