"""Progress of long work (shards, rollout steps, SFT steps, evaluation samples).

The library reports progress through a callback, ``progress(done, total)``, and never imports
Prefect: tasks pass a callback that also updates a Prefect progress artifact. ``logged`` turns
any callback into one that writes a line with counts and rate; ``from_lines`` reads progress
out of a child job's output, line by line.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable

Progress = Callable[[int, int], None]  # (done, total); total 0: not known yet

log = logging.getLogger("undercurve")


def logged(what: str, unit: str, then: Progress | None = None) -> Progress:
    """A callback that logs ``what: done/total unit (pct, rate)`` and passes the counts on."""
    t0 = time.monotonic()
    last = [-1]

    def report(done: int, total: int) -> None:
        if done == last[0]:
            return
        last[0] = done
        elapsed = max(time.monotonic() - t0, 1e-9)
        if total <= 0:  # a stream of unknown length (ingest): counts and rate only
            log.info("%s: %d %s so far (%.2f %s/s)", what, done, unit, done / elapsed, unit)
        else:
            log.info("%s: %d/%d %s (%.0f%%, %.2f %s/s)", what, done, total, unit, 100.0 * done / total,
                     done / elapsed, unit)
        if then:
            then(done, total)

    return report


def from_lines(pattern: str, progress: Progress, total: int | None = None) -> Callable[[str], None]:
    """An ``on_line`` callback for ``jobs.run_job``. With two groups in ``pattern`` a line
    gives (done, total) itself; without, every matching line counts one of ``total``."""
    rx = re.compile(pattern)
    count = [0]

    def on_line(line: str) -> None:
        # a progress bar redraws with \r inside one line: its last state counts
        m = next(reversed(list(rx.finditer(line))), None)
        if not m:
            return
        if rx.groups >= 2:
            progress(int(m.group(1)), int(m.group(2)))
        else:
            count[0] += 1
            progress(count[0], total or count[0])

    return on_line


# What the child jobs print when a unit of work is finished.
VLLM_STEP_DONE = r"step \S+: (?:done in|outputs up to date)"
SFT_STEP = r"global_step/max_steps': '(\d+)/(\d+)'"
# evalscope's bar ("Evaluating[aime24]:  40%|####  | 38/96 [...") and its log line ("... 40%| 38/96 [Elapsed")
EVAL_SAMPLES = r"Evaluating\[[^\]]*\]:?\s+\d+%\|(?:[^|\r\n]*\|)?\s*(\d+)/(\d+)"
