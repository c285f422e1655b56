"""genv: GPU environments for shared Linux machines.

The package is imported by the commands in ``libexec/`` (run as
``python -I -S``); each module has one job and imports only what it needs, so
that a command starts in little more than the interpreter's own start-up time.
"""
