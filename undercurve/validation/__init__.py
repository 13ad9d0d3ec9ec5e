"""Metric validation (EAS paper section 3, EDIS best-of-N): answer entropy across N samples
per question, Pearson r of every metric against it, best-of-N selection, the top-K
truncation table, and the figures. No Prefect import here: ``tasks/validate.py`` wraps
``undercurve.validation.stages``."""
