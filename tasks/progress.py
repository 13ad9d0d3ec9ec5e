"""Prefect progress artifacts for the library's progress callbacks."""

from __future__ import annotations

import logging
import re

from undercurve.progress import Progress, logged

log = logging.getLogger("undercurve")


def artifact(key: str, description: str, unit: str) -> Progress:
    """A progress callback that logs and keeps a Prefect progress artifact (0-100 %) current.
    Prefect being unreachable never fails the work: it is logged once."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
    state: dict = {"id": None, "broken": False}

    def update(done: int, total: int) -> None:
        if state["broken"]:
            return
        pct = 100.0 * done / total if total > 0 else 0.0
        text = f"{description}: {done}/{total} {unit}" if total > 0 else f"{description}: {done} {unit} so far"
        try:
            if state["id"] is None:
                state["id"] = create_progress_artifact(progress=pct, key=key, description=text)
            else:
                update_progress_artifact(state["id"], progress=pct, description=text)
        except Exception as exc:  # noqa: BLE001 - progress display must not break the run
            state["broken"] = True
            log.warning("progress artifact %s not updated: %s", key, exc)

    return logged(description, unit, then=update)
