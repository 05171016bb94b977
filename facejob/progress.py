"""What a user sees while a command runs: its log lines (text or JSON, `setup_logging`) and its
progress: a bar with rate and ETA on a terminal, plain periodic lines otherwise.

    bar = Progress("report", total=len(photos), unit="photos")
    for ... : bar.advance(1, faces=n)      # extra counters are summed and shown
                                           # (those named in `rates` as a rate: "MP/s")
    bar.close()

On a terminal the line is rewritten in place at most 10 times a second; in a log (not a
terminal) one line is written every `interval` seconds and one at the end, so nightly logs
stay short. The bar is the run's clock: `elapsed` (frozen by `close`) is what a command's summary
reports, so the last progress line and the summary show one measurement.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

BAR_WIDTH = 24
TTY_REFRESH_S = 0.1


def _duration(s: float) -> str:
    s = int(round(s))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts work done towards `total` and shows it (see the module docstring)."""

    def __init__(self, label: str, total: int, unit: str = "items", stream: TextIO | None = None,
                 enabled: bool = True, interval: float = 10.0, rates: tuple[str, ...] = (),
                 start: float | None = None):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.done = 0
        self.extra: dict[str, float] = {}
        self.rates = rates
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self.t0 = time.perf_counter() if start is None else start  # a perf_counter() reading
        self._last = self.t0
        self._end: float | None = None
        self._closed = False

    @property
    def elapsed(self) -> float:
        """Seconds from the start to now, or to `close`."""
        return (self._end if self._end is not None else time.perf_counter()) - self.t0

    @property
    def rate(self) -> float:
        return self.done / max(self.elapsed, 1e-9)

    def line(self) -> str:
        """The status text: label, bar (terminal), counts, extra counters, rate, ETA."""
        elapsed = self.elapsed
        rate = self.done / max(elapsed, 1e-9)
        parts = [self.label]
        if self.tty and self.total:
            fill = int(BAR_WIDTH * min(self.done / self.total, 1.0))
            parts.append("[" + "#" * fill + "-" * (BAR_WIDTH - fill) + "]")
        parts.append(f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}")
        parts += [f"{k} {v:g}" for k, v in self.extra.items() if k not in self.rates]
        parts.append(f"{rate:.1f} {self.unit}/s")
        parts += [f"{self.extra.get(k, 0) / max(elapsed, 1e-9):.1f} {k}/s" for k in self.rates]
        if self.done >= self.total:
            parts.append(f"in {elapsed:.1f} s")
        elif self.done and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return "  ".join(parts)

    def advance(self, n: int = 1, **extra: float) -> None:
        """Add `n` units of work done, and to the named extra counters."""
        self.done += n
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        if not self.enabled or self._closed:
            return
        now = time.perf_counter()
        finished = self.total and self.done >= self.total
        if self.tty:
            if now - self._last >= TTY_REFRESH_S or finished:
                self._last = now
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
        elif now - self._last >= self.interval and not finished:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()
        if finished:
            self.close()

    def close(self) -> None:
        """Stop the clock and write the final line (once)."""
        if self._closed:
            return
        self._closed = True
        self._end = time.perf_counter()
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + self.line() + "\n")
        self.stream.flush()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                           "level": record.levelname, "logger": record.name, "message": record.getMessage()})


def setup_logging(fmt: str = "text", verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("facejob")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
