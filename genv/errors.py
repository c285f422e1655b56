"""The exceptions that end a command with a one-line message."""


class GenvError(Exception):
    """A failure to report as ``genv: <message>`` with exit status 1."""

    status = 1


class UsageError(GenvError):
    """Bad arguments: unknown option, missing or invalid value."""
