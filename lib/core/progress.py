"""Progress of long work, shown where the user is looking.

`AV2AV_PROGRESS` picks the display; the CLI sets it, workers leave it unset:
- `bar`: a live tqdm bar on the terminal (the CLI on a TTY);
- `lines`: a plain timestamped line on stderr every few seconds and at the end (the CLI piped or
  in CI), written past Prefect's print capture (a flow's `log_prints` would turn a print into a log
  record, which the CLI's WARNING level drops);
- unset: a line through the given `log` callable (a Prefect run logger: the run's logs in the UI),
  else printed (inside a flow with `log_prints`, that is the run's log too).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MODE_ENV = "AV2AV_PROGRESS"
EVERY_S = 10.0
# Piped output has no bar to watch: a line at least this often, so a log tail never looks stuck
# (a run log in the UI keeps EVERY_S: its lines stay readable there).
LINES_EVERY_S = 5.0
# label -> (done, total) of the latest update in this process: what an interrupted CLI reports
LATEST: dict[str, tuple[int, int]] = {}


def _print_line(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    sys.stderr.flush()


def _default_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


_listeners: list[Callable[[str], None]] = []


@contextmanager
def listening(log: Callable[[str], None]) -> Iterator[None]:
    """Lines announced without a `log` of their own (a part of the model loading, a damaged cache
    entry) go to `log` meanwhile: a flow passes its run's logger, and its parent's."""
    _listeners.append(log)
    try:
        yield
    finally:
        _listeners.remove(log)


def announce(text: str, log: Callable[[str], None] | None = None) -> None:
    """A one-off line the user should see now: on the CLI's stderr (above a live bar), else `log`
    (or the innermost `listening` log)."""
    mode = os.environ.get(MODE_ENV, "")
    if mode == "bar":
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    elif mode == "lines":
        _print_line(text)
    else:
        (log or (_listeners[-1] if _listeners else _default_log))(text)


@contextmanager
def still_waiting(text: str, every_s: float = LINES_EVERY_S) -> Iterator[None]:
    """While the block waits on something that reports nothing (a server starting), announce
    `text (N s)` every `every_s`, so piped output never goes quiet for longer."""
    import threading

    done, began = threading.Event(), time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            announce(f"{text} ({time.monotonic() - began:.0f} s)")

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join()


class Progress:
    """`total` units of work named `label`; `update(done, **figures)` after each unit."""

    def __init__(
        self,
        total: int,
        label: str,
        log: Callable[[str], None] | None = None,
        unit: str = "it",
        every_s: float = EVERY_S,
    ):
        self.mode = os.environ.get(MODE_ENV, "")
        if self.mode == "lines":
            every_s = min(every_s, LINES_EVERY_S)
        self.total, self.label, self.unit, self.every_s = total, label, unit, every_s
        self.log = _print_line if self.mode == "lines" else log or _default_log
        self.began = self.last = time.monotonic()
        self.done = 0
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            # shutil's size falls back to 80x24 where a terminal reports 0x0 (some ptys do, and
            # tqdm then hides the bar as "below the screen")
            columns, lines = shutil.get_terminal_size()
            self.bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, ncols=columns, nrows=lines)

    def update(self, done: int | None = None, **figures) -> None:
        previous, self.done = self.done, self.done + 1 if done is None else done
        LATEST[self.label] = (self.done, self.total)
        if self.bar is not None:
            self.bar.set_postfix({k: _short(v) for k, v in figures.items()}, refresh=False)
            self.bar.update(self.done - previous)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self.log(self.line(**figures))

    def line(self, **figures) -> str:
        elapsed = time.monotonic() - self.began
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = "".join(f" {k} {_short(v)}" for k, v in figures.items())
        units = self.unit if self.total == 1 else f"{self.unit}s"
        return f"{self.label}: {self.done}/{self.total} {units}{extra} ({rate:.2f} {self.unit}/s, ETA {eta:.0f} s)"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
