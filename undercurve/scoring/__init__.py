"""Scoring engines: sample -> trajectory (``trajectory``), exact torch engine (``torch_engine``),
frame-level entry point (``score``). Import the engines from their modules: torch is heavy and
the vLLM environment only needs ``trajectory``."""
