"""Progress a log can show: one plain line per finished step, for output that is not a terminal.

Rich progress bars redraw one terminal line and print nothing useful into a file, a pipe or a CI
log, so ``bench run`` uses :class:`LineReporter` when stderr is not a terminal: one line per
finished (attack, batch) and per finished batch, with the images done of the total, the elapsed
time and an ETA. The ETA counts work in (attack, image) units: every attack of every image is
one unit, and the rate is that of the units computed by this invocation (batches a resumed run
skips count as done but not in the rate).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def format_seconds(s: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``: short and sortable by eye in a log."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class LineReporter:
    """``on_progress(name, batch, k)`` for :func:`benchmark.runner.run` that writes plain lines.

    ``name`` is an attack name (that attack finished ``k`` images of ``batch``) or ``"batch"``
    (the batch's ``k`` images are stored; also sent for a batch a resumed run skips)."""

    def __init__(self, total: int, attacks: list[str], *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, prefix: str = "progress") -> None:
        self.total = int(total)
        self.attacks = list(attacks)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.prefix = prefix
        self.t0 = clock()
        self.done_images = 0
        self.per_attack: dict[str, int] = {a: 0 for a in self.attacks}
        self.units_done = 0.0  # computed by this invocation
        self.units_skipped = 0.0  # stored batches a resume skipped
        self._batch_units: dict[int, float] = {}

    @property
    def units_total(self) -> float:
        return float(self.total * max(1, len(self.attacks)))

    def eta(self) -> float | None:
        left = self.units_total - self.units_done - self.units_skipped
        if self.units_done <= 0:
            return None
        return (self.clock() - self.t0) * left / self.units_done

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, name: str, batch: int, k: int) -> None:
        elapsed = self.clock() - self.t0
        if name == "batch":
            units = float(k * max(1, len(self.attacks)))
            got = self._batch_units.pop(batch, 0.0)
            if not self.attacks:
                self.units_done += units
            elif got == 0.0:  # no attack reported for it: a stored batch, skipped on resume
                self.units_skipped += units
                for a in self.attacks:
                    self.per_attack[a] += k
            self.done_images += k
            eta = self.eta()
            self._write(f"{self.prefix}: batch {batch} {'stored' if got or not self.attacks else 'already stored'}: "
                        f"{self.done_images}/{self.total} images, elapsed {format_seconds(elapsed)}, "
                        f"eta {format_seconds(eta) if eta is not None else '?'}")
            return
        self.per_attack[name] = self.per_attack.get(name, 0) + k
        self.units_done += k
        self._batch_units[batch] = self._batch_units.get(batch, 0.0) + k
        eta = self.eta()
        self._write(f"{self.prefix}: {name} batch {batch}: {self.per_attack[name]}/{self.total} images, "
                    f"elapsed {format_seconds(elapsed)}, eta {format_seconds(eta) if eta is not None else '?'}")


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
