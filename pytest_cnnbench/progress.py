"""Where a cell is in its long phases (training, export, calibration, accuracy passes, timing).

Library code calls these functions unconditionally; they do nothing until the plugin installs
a display (``install``), which it does not do under ``-q``, on xdist workers or with
``--cnn-progress=off``:

    progress.start_cell("resnet50-eager-bs1-fp32")
    progress.update("export to ONNX")                       # a phase starts
    progress.update(done=250, total=1000, detail="images")  # the current phase advances
    progress.end_cell()

- ``live`` (a terminal): one line per cell, rewritten in place through pytest's terminal
  reporter and completed with the time each phase took when the cell ends.
- ``plain`` (CI, a log file): ordinary lines, one when a phase starts and at most one every
  ``PLAIN_INTERVAL_S`` while it runs, so logs stay readable.

Callers update between timing blocks and between batches of untimed passes, never inside a
timed call: an update may write to the terminal. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Optional

LIVE_REDRAW_S = 0.2  # a live line redraws at most this often (a new phase redraws at once)
PLAIN_INTERVAL_S = 10.0  # a plain line repeats a running phase at most this often
MODES = ("auto", "live", "plain", "off")


@dataclasses.dataclass
class _Cell:
    label: str
    started: float
    phase: str = ""
    phase_started: float = 0.0
    done: Optional[int] = None
    total: Optional[int] = None
    detail: str = ""
    durations: dict = dataclasses.field(default_factory=dict)  # finished phases: name -> seconds

    def close_phase(self, now: float) -> None:
        if self.phase:
            self.durations[self.phase] = self.durations.get(self.phase, 0.0) + now - self.phase_started

    def text(self, now: float) -> str:
        parts = [self.phase]
        if self.done is not None:
            parts.append(f"{self.done}/{self.total}" if self.total else str(self.done))
        if self.detail:
            parts.append(self.detail)
        return f"cnnbench {self.label}: {' '.join(parts)} ({now - self.started:.0f} s)"

    def summary(self, now: float) -> str:
        self.close_phase(now)
        longest = sorted(self.durations.items(), key=lambda item: -item[1])[:2]  # the rest is --cnn-profile's job
        spent = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in longest)
        return f"cnnbench {self.label}: done in {now - self.started:.1f} s, longest: {spent}"


class _Display:
    """Writes through pytest's terminal reporter, past pytest's output capturing: during a test
    the reporter's stream is captured like the test's own output, and would show only on failure."""

    def __init__(self, reporter: Any, capture_manager: Any = None) -> None:
        self.reporter = reporter
        self.capture_manager = capture_manager

    def _uncaptured(self) -> Any:
        if self.capture_manager is None:
            return contextlib.nullcontext()
        return self.capture_manager.global_and_fixture_disabled()

    def write_line(self, message: str) -> None:
        with self._uncaptured():
            self.reporter.write_line(message)


class LiveDisplay(_Display):
    """One line per cell, rewritten in place with ``\\r``."""

    def __init__(self, reporter: Any, capture_manager: Any = None) -> None:
        super().__init__(reporter, capture_manager)
        self.shown = False  # our line is on screen and the cursor is at its end
        self.last_draw = 0.0

    def _fit(self, text: str) -> str:
        width = self.reporter._tw.fullwidth - 1
        return text if len(text) <= width else text[: max(0, width - 1)] + "…"

    def draw(self, cell: _Cell, now: float, new_phase: bool) -> None:
        if not new_phase and now - self.last_draw < LIVE_REDRAW_S:
            return
        with self._uncaptured():
            if not self.shown:
                # A line of our own: after pytest's "path.py .." (ensure_newline also makes pytest
                # write the path again before its next letter) or after a line left unfinished.
                self.reporter.ensure_newline()
                if self.reporter._tw.width_of_current_line:
                    self.reporter.write("\n")
            self.reporter.rewrite(self._fit(cell.text(now)), erase=True)
            self.reporter.flush()
        self.shown, self.last_draw = True, now

    def clear(self) -> None:
        """Blank our line and leave the cursor at its start, for a line someone else writes."""
        if self.shown:
            with self._uncaptured():
                self.reporter.rewrite("", erase=True)
                self.reporter.write("\r")
            self.shown = False

    def finish(self, cell: _Cell, now: float) -> None:
        if self.shown:
            # Completed, not cleared, and without a newline: pytest's next write starts with one.
            with self._uncaptured():
                self.reporter.rewrite(self._fit(cell.summary(now)), erase=True)
                self.reporter.flush()
            self.shown = False

    def write_line(self, message: str) -> None:
        self.clear()
        super().write_line(message)


class PlainDisplay(_Display):
    """Ordinary lines: a phase's start, then at most one every ``interval`` seconds while it runs."""

    def __init__(self, reporter: Any, capture_manager: Any = None, interval: float = PLAIN_INTERVAL_S) -> None:
        super().__init__(reporter, capture_manager)
        self.interval = interval
        self.last_line = 0.0

    def draw(self, cell: _Cell, now: float, new_phase: bool) -> None:
        if new_phase or now - self.last_line >= self.interval:
            self.write_line(cell.text(now))
            self.last_line = now

    def clear(self) -> None:
        pass

    def finish(self, cell: _Cell, now: float) -> None:
        pass


_display: Optional[Any] = None  # LiveDisplay, PlainDisplay or None (no-op)
_cell: Optional[_Cell] = None


def install(display: Optional[Any]) -> None:
    """Show progress on ``display`` from now on (None: show nothing)."""
    global _display, _cell
    _display, _cell = display, None


def active() -> bool:
    return _display is not None


def start_cell(label: str) -> None:
    global _cell
    if _display is None:
        return
    if _cell is not None:
        end_cell()
    _cell = _Cell(label, time.monotonic())


def update(phase: Optional[str] = None, done: Optional[int] = None, total: Optional[int] = None,
           detail: str = "") -> None:
    """A phase starts (``phase`` given and new) or the current one advances (``phase`` None or the same).

    Outside a cell (a model built before any cell started), the phase opens a cell of its own."""
    if _display is None:
        return
    if _cell is None:
        start_cell("setup")
    cell = _cell
    now = time.monotonic()
    new_phase = phase is not None and phase != cell.phase
    if new_phase:
        cell.close_phase(now)
        cell.phase, cell.phase_started = phase, now
    elif not cell.phase:
        return  # an advance with no phase started: nothing to say what it is
    cell.done, cell.total, cell.detail = done, total, detail
    _display.draw(cell, now, new_phase)


def end_cell() -> None:
    global _cell
    if _display is None or _cell is None:
        return
    _display.finish(_cell, time.monotonic())
    _cell = None


def write_line(message: str) -> bool:
    """Write a log line without corrupting a live line; False when no display is installed."""
    if _display is None:
        return False
    _display.write_line(message)
    if _cell is not None and _cell.phase and isinstance(_display, LiveDisplay):
        _display.draw(_cell, time.monotonic(), True)  # the live line again, below the message
    return True


def clear() -> None:
    """Before someone else writes to the terminal (pytest's own report of a test)."""
    if _display is not None:
        _display.clear()
