"""Contamination filtering against benchmark suites (n-gram + embedding), with evidence.

Entry points: :func:`decontaminate` (``df -> kept, removed, report``) and
:class:`Decontaminator` (the same, for a corpus streamed through it in batches). Suites are
registered in :mod:`.suites`; matching lives in :mod:`.ngram` and :mod:`.embed`.
"""

from undercurve.decontam.filter import DEFAULTS, REMOVED_SCHEMA, Decontaminator, decontaminate, resolve_settings
from undercurve.decontam.suites import DEFAULT_SUITES, REGISTRY, SuiteSpec, load_suite, load_suites, tokenize

__all__ = [
    "DEFAULTS", "DEFAULT_SUITES", "Decontaminator", "REGISTRY", "REMOVED_SCHEMA", "SuiteSpec",
    "decontaminate", "load_suite", "load_suites", "resolve_settings", "tokenize",
]
