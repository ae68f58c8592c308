"""Where library code sends messages and progress. Silent by default; the CLI plugs in rich."""

from contextlib import contextmanager


class ProgressBar:
    """A handle on one unit of long work: `advance(n)` and `show(**figures)` (e.g. the live loss)."""

    def advance(self, n: int = 1) -> None:
        pass

    def show(self, **figures) -> None:
        pass


class Reporter:
    """Messages for the person running a command. Library code never prints; it calls these."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextmanager
    def progress(self, description: str, total: int | None = None):
        yield ProgressBar()


class RecordingReporter(Reporter):
    """Keeps every message: for tests, and for commands that return messages in --json output."""

    def __init__(self):
        self.messages: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.messages.append(("info", message))

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))

    def text(self) -> str:
        return "\n".join(m for _, m in self.messages)
