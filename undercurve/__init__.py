"""undercurve: choose fine-tuning data by the model's own uncertainty (Entropy Area Score).

The library holds the science and the I/O; it never imports Prefect (see docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
