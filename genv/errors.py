"""The exceptions that end a command with a one-line message."""


class GenvError(Exception):
    """A failure to report as ``genv: <message>`` with an exit status (1
    unless given)."""

    status = 1

    def __init__(self, message: str = "", status: int = 0) -> None:
        super().__init__(message)
        if status:
            self.status = status


class UsageError(GenvError):
    """Bad arguments: unknown option, missing or invalid value."""
