"""facejob.progress: a bar with rate and ETA on a terminal, periodic plain lines in a log."""
from __future__ import annotations

import io

from facejob.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_has_rate_and_eta(monkeypatch):
    import facejob.progress as p

    clock = iter(float(i) for i in range(100))
    monkeypatch.setattr(p.time, "perf_counter", lambda: next(clock))
    s = _Tty()
    bar = Progress("report", 10, "photos", stream=s)
    bar.advance(4, faces=5)
    line = s.getvalue().split("\r")[-1]
    assert "[#########" in line and "4/10 photos" in line and "faces 5" in line
    assert "photos/s" in line and "ETA" in line
    bar.advance(6, faces=1)
    assert s.getvalue().endswith("\n") and "10/10 photos" in s.getvalue() and "faces 6" in s.getvalue()
    n = len(s.getvalue())
    bar.close()                     # the final line is written once
    assert len(s.getvalue()) == n


def test_log_gets_periodic_plain_lines(monkeypatch):
    import facejob.progress as p

    t = [0.0]
    monkeypatch.setattr(p.time, "perf_counter", lambda: t[0])
    s = io.StringIO()
    bar = Progress("index", 100, "images", stream=s, interval=10)
    for _ in range(30):
        t[0] += 1
        bar.advance(1)
    lines = s.getvalue().splitlines()
    assert len(lines) == 3 and all("\r" not in x and "[" not in x for x in lines)
    assert lines[0].startswith("index  10/100 images") and "ETA 1:30" in lines[0]
    bar.close()
    assert s.getvalue().splitlines()[-1].startswith("index  30/100 images")


def test_disabled_writes_nothing():
    s = _Tty()
    bar = Progress("x", 2, stream=s, enabled=False)
    bar.advance(2)
    bar.close()
    assert s.getvalue() == ""


def test_one_clock_from_a_given_start_frozen_at_close(monkeypatch):
    """`start` makes the bar the run's clock (driver.index passes the end of planning); close
    stops it, and the final line shows exactly `elapsed`, the figure a summary reports."""
    import facejob.progress as p

    t = [100.0]
    monkeypatch.setattr(p.time, "perf_counter", lambda: t[0])
    s = io.StringIO()
    bar = Progress("index", 4, "photos", stream=s, start=97.5)
    t[0] = 102.5
    bar.advance(4)                  # done: the bar closes itself
    t[0] = 110.0                    # later reads see the frozen clock
    assert bar.elapsed == 5.0 and bar.rate == 0.8
    assert s.getvalue().splitlines()[-1].endswith("0.8 photos/s  in 5.0 s")
