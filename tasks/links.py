"""Where a run is in the Prefect dashboard (Prefect settings live on this side of the layers)."""

from __future__ import annotations

import os


def prefect_ui_url() -> str:
    """Where the Prefect dashboard is: PREFECT_UI_URL, else Prefect's own settings (derived from
    PREFECT_API_URL or the active profile), else the local `make server`, whose database also
    keeps the runs of the temporary server a run without PREFECT_API_URL starts."""
    url = os.environ.get("PREFECT_UI_URL")
    if not url:
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        url = settings.ui_url or settings.server.ui.api_url.removesuffix("/api")
    return url.rstrip("/")


def flow_run_url(flow_run_id: str | None) -> str | None:
    return f"{prefect_ui_url()}/runs/flow-run/{flow_run_id}" if flow_run_id else None
