"""The one exception type library code raises; only the CLI turns it into a message and exit code."""


class SemrecError(Exception):
    """A problem the user can fix: what went wrong, and how to fix it.

    `exit_code` is 2 for bad input (the default) and 1 for a failure while doing the work.
    """

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class StageFailed(SemrecError):
    """The work itself failed (a NaN loss, a server that never answered): exit code 1."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=1)
