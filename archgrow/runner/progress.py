"""A one-line progress bar for training runs, with no dependency.

On a terminal the line is redrawn in place (at most ~10 times a second, so printing never costs
more than the step); elsewhere (CI logs, pipes) one line per epoch is printed instead, so logs
stay readable.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    """Shows ``label [#####.....] step/total  key=value ...``; ``enabled=False`` prints nothing."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool = True):
        self.label = label
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._last = 0.0
        self._fields: dict[str, str] = {}
        self.done = 0

    def update(self, done: int, force: bool = False, **fields: str) -> None:
        self.done = done
        self._fields.update(fields)
        if not self.live:
            return
        now = time.monotonic()
        if force or now - self._last >= 0.1 or done >= self.total:
            self._last = now
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()

    def epoch_line(self, text: str) -> None:
        """Where the bar cannot redraw, print a line per epoch (the bar shows it otherwise)."""
        if self.enabled and not self.live:
            self.stream.write(f"{self.label} {text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r" + self._line() + "\x1b[K\n")
            self.stream.flush()

    def _line(self) -> str:
        width = shutil.get_terminal_size((100, 20)).columns
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        info = "  ".join(f"{k}={v}" for k, v in self._fields.items())
        line = f"{self.label} [{bar}] {self.done}/{self.total}  {info}"
        return line if len(line) < width else line[: width - 2] + "…"
