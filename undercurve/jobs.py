"""Out-of-process work (the vLLM worker, ms-swift, evalscope): one runner, one convention.

- The child's stdout and stderr go to one log file, line by line (``on_line`` sees each
  line too, for progress).
- The child dies with us: on Linux it gets SIGKILL when the thread that started it dies
  (PR_SET_PDEATHSIG; the thread blocks here until the child ends, so that is when the
  process dies), and its whole process group is killed when the wait is interrupted (an
  exception, Ctrl-C, SIGTERM, a timeout).
- A non-zero exit raises ``JobFailed`` naming the log, the last error line first.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

_PR_SET_PDEATHSIG = 1


class JobFailed(RuntimeError):
    """A child job failed; ``log_path`` holds its whole output."""

    def __init__(self, message: str, log_path: Path):
        super().__init__(message)
        self.log_path = Path(log_path)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_job(argv: Sequence[str], log_path: str | Path, *, what: str, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None, timeout_s: float | None = None,
            on_line: Callable[[str], None] | None = None) -> None:
    """Run ``argv`` to completion, output into ``log_path``; raise JobFailed on failure."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(map(str, argv)) + "\n")
        log.flush()
        proc = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env,
                                cwd=cwd, text=True, errors="replace", start_new_session=True,
                                preexec_fn=_die_with_parent)
        timed_out = threading.Event()

        def on_timeout():
            timed_out.set()
            kill_group(proc)

        # a timer, not wait(timeout): the read loop blocks until the child closes its output
        timer = threading.Timer(timeout_s, on_timeout) if timeout_s else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if on_line:
                    on_line(line)
            rc = proc.wait()
        except BaseException:
            kill_group(proc)
            raise
        finally:
            if timer:
                timer.cancel()
    if rc != 0:
        status = f"timed out after {timeout_s}s" if timed_out.is_set() else f"exit code {rc}"
        tail = log_tail(log_path)
        error = last_error(tail)
        raise JobFailed(f"{what} failed ({status}){': ' + error if error else ''}\nfull log: {log_path}\n"
                        f"--- log tail ---\n{tail}", log_path)


def last_error(text: str) -> str | None:
    """The last 'SomeError: message' line of a Python traceback, so the cause leads the message."""
    hits = re.findall(r"^[\w.]+(?:Error|Exception|Interrupt)\b.*$", text, flags=re.M)
    return hits[-1].strip() if hits else None


def log_tail(path: str | Path, lines: int = 30) -> str:
    # tqdm writes carriage returns: keep only the last state of each line
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    kept = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]
    return "\n".join(deque(kept, maxlen=lines))
