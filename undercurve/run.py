"""A run and its lifecycle, apart from the stages that do the work.

``tracked`` wraps a flow's body: it holds the run folder's lock, beats a heartbeat into the
registry, and on the way out records what really happened:

- an exception: FAILED, with the exception's first line as the reason;
- SIGTERM or Ctrl-C (``Cancelled`` / KeyboardInterrupt): CANCELLED;
- SIGKILL or power loss: nothing can be recorded; the next ``undercurve`` command (and every
  new run) finds the RUNNING run whose owner process is gone, or whose heartbeat stopped,
  and marks it CRASHED (``Registry.reap_crashed``).

COMPLETED is recorded by the flow itself, with its summary, as the last step inside ``tracked``.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from undercurve.io import run_lock
from undercurve.registry import HEARTBEAT_S, Registry

log = logging.getLogger("undercurve")


@dataclass
class RunContext:
    """What every stage of a run needs: its settings, its id and the registry file."""

    settings: object  # config.Settings or validation.config.ValidateSettings (both RunSettings)
    run_id: str
    registry_path: str

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir

    @property
    def registry(self) -> Registry:
        return Registry(self.registry_path)  # never recreated: a deleted registry fails loudly

    def stage_dir(self, stage: str) -> Path:
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d


class Cancelled(BaseException):
    """Raised in the main thread on SIGTERM: stop, stop the children, record CANCELLED."""


def cancel_on_sigterm() -> None:
    """Turn SIGTERM into ``Cancelled`` (main thread only; elsewhere a no-op)."""
    def handler(signum, frame):
        raise Cancelled(f"received signal {signal.Signals(signum).name}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class _Heartbeat(threading.Thread):
    def __init__(self, registry_path: str, run_id: str, every_s: float):
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.registry_path, self.run_id, self.every_s = registry_path, run_id, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                Registry(self.registry_path).heartbeat(self.run_id)
            except Exception as exc:  # noqa: BLE001 - the run's own registry writes will fail loudly
                log.warning("heartbeat of run %s failed: %s", self.run_id, exc)


@contextmanager
def tracked(ctx: RunContext, heartbeat_s: float = HEARTBEAT_S):
    """Lock the run folder, beat, and record FAILED / CANCELLED with a reason on the way out."""
    beat = _Heartbeat(ctx.registry_path, ctx.run_id, heartbeat_s)
    try:
        with run_lock(ctx.run_dir):
            beat.start()
            yield ctx
    except BaseException as exc:
        status = "CANCELLED" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "FAILED"
        log.error("run %s %s: %s", ctx.run_id, status, one_line(exc))
        try:
            ctx.registry.finish_run(ctx.run_id, status, reason=one_line(exc))
        except Exception as reg_exc:  # noqa: BLE001 - e.g. the registry itself is gone: say so, keep the cause
            log.error("could not record %s for run %s: %s", status, ctx.run_id, reg_exc)
        raise
    finally:
        beat.stopped.set()
