"""Scoring engines: sample -> trajectory (``trajectory``), exact torch engine (``torch_engine``),
frame-level entry point (``score``). Import the engines from their modules: torch is heavy and
the vLLM environment only needs ``trajectory``."""


def scores_in_shards(scoring) -> bool:
    """How a curation run scores; the flow and ``stages.score_stage`` both ask here.

    True: the exact torch engine, in resumable shards the flow fans out over its task runner
    (threads, or Dask workers). False: the vLLM engine (the paper's top-K path), one worker job
    in ``.venv-vllm`` with one resumable step per shard. ``scoring``: ``config.ScoringSettings``.
    """
    return scoring.engine == "torch"
