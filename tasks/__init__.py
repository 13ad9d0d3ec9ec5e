"""Prefect tasks: one coarse task per stage, each a thin wrapper over ``undercurve.stages``.

The library logs to the ``undercurve`` logger; naming it an extra Prefect logger (before
Prefect configures logging) makes its progress lines appear in the Prefect UI.
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "undercurve")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import logging  # noqa: E402

logging.getLogger("undercurve").setLevel(logging.INFO)
