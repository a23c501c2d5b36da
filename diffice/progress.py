"""A small progress bar for long runs (no dependency): one line on stderr, redrawn in place on a terminal and in a
Jupyter notebook, printed every few seconds otherwise (logs)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def redraws_in_place(stream: TextIO) -> bool:
    """Whether a line written to `stream` can be redrawn with a carriage return: a terminal, or the output stream of
    a Jupyter kernel (ipykernel's, which is no tty; the notebook shows the text after the last "\\r", so a bar
    there stays one line instead of a new line every few seconds)."""
    if hasattr(stream, "isatty") and stream.isatty():
        return True
    return type(stream).__module__.split(".")[0] == "ipykernel"


class ProgressBar:
    """ProgressBar(total, label); update(done, note) redraws; close() ends the line."""

    def __init__(
        self,
        total: int,
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.2,
        start: int = 0,
    ) -> None:
        self.total = max(1, int(total))
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled and int(total) > 0  # nothing to do (a finished run resumed): no bar
        self.start = time.monotonic()
        self.done = int(start)  # work done before this bar (a resumed run)
        self.interactive = redraws_in_place(self.stream)
        self.min_interval = min_interval if self.interactive else 5.0
        self._last = 0.0
        self._printed = -1  # the `done` of the last line drawn
        self._note = ""  # the last note given: the closing line repeats it
        self._origin: tuple[float, int] | None = None  # (time, done) at the first update: where the rate starts

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        self.done = min(int(done), self.total)
        self._note = note = note or self._note
        now = time.monotonic()
        if self._origin is None:  # the rate counts from the first update: the setup before it (the first chunk of
            self._origin = (now, self.done)  # phantoms, a model's first call) made the first lines' ETA hours
        if not self.enabled or (not force and now - self._last < self.min_interval and self.done < self.total):
            return
        self._last = now
        self._printed = self.done
        elapsed = now - self.start
        since, done_then = self._origin
        rate = (self.done - done_then) / (now - since) if now > since else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        eta_text = format_seconds(eta) if eta == eta else "--:--"
        line = (
            f"{self.label} [{bar}] {self.done}/{self.total} {100 * self.done / self.total:5.1f}% "
            f"elapsed {format_seconds(elapsed)} eta {eta_text} {note}"
        )
        if self.interactive:  # one terminal row: a longer line wraps, and each redraw would leave a row behind
            columns = self._columns()
            width = 200 if columns is None else max(20, columns) - 1
            self.stream.write("\r" + line[:width].ljust(100 if columns is None else width))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _columns(self) -> int | None:
        """The width of the terminal the bar is drawn on; None where there is none to ask."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return None

    def close(self) -> None:
        if self.enabled:
            if self._printed != self.done:
                self.update(self.done, force=True)
            if self.interactive:
                self.stream.write("\n")
                self.stream.flush()


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader went away (:func:`pipe_closed`). The command-line entry points stop
    quietly with 141 (128 + SIGPIPE) then, as the shell's own tools do."""
    return pipe_closed(sys.stdout)


def pipe_closed(stream: TextIO) -> bool:
    """Whether stream (stdout, or stderr: the progress bar's, in ``diffice explain ... 2>&1 >/dev/null | head``) is
    a pipe whose reader went away (poll reports an error on its write end); if so, the stream is pointed at
    /dev/null so that the interpreter's own flush at exit does not report the same error again."""
    import select

    try:
        fd = stream.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or the stream is no file (a notebook, a test)
        return False
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return closed
