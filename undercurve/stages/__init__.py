"""The curation stages as plain functions, one module per stage.

A stage takes a ``RunContext`` and the path of its input, reads Parquet, does one thing, writes
its output under ``<run_dir>/<stage>/`` atomically (set-aside rows in ``set_aside.parquet``
beside it), records both in the registry (with lineage to the input artifact) and returns a
small ``StageResult``. Prefect tasks wrap these one to one; tests call them directly.

    inputs.py         prepare_inputs, clear_stale_outputs (before the first stage)
    ingest.py         ingest_stage
    decontaminate.py  decontaminate_stage
    length_cap.py     length_cap_stage
    score.py          score_stage; for the torch engine score_plan -> score_shard x N -> score_merge
    pass_rate.py      pass_rate_stage; on a cluster pass_rate_plan -> rollout_shard x N -> pass_rate_merge
    features.py       features_stage, model_stages
    select.py         select_stage
    result.py         StageResult and what every stage shares (atomic writes, record), run_summary
"""

from undercurve.stages.decontaminate import decontaminate_stage
from undercurve.stages.features import features_stage, model_stages
from undercurve.stages.ingest import ingest_stage
from undercurve.stages.inputs import CURATE_STAGES, clear_stale_outputs, prepare_inputs
from undercurve.stages.length_cap import length_cap_stage
from undercurve.stages.pass_rate import pass_rate_stage
from undercurve.stages.pass_rate import pass_rate_merge, pass_rate_plan, rollout_shard
from undercurve.stages.result import StageResult, prune_cache, run_summary, worker_identity
from undercurve.stages.score import ASIDE_FLAG, score_merge, score_plan, score_shard, score_stage
from undercurve.stages.select import select_stage

__all__ = [
    "ASIDE_FLAG", "CURATE_STAGES", "StageResult", "clear_stale_outputs", "decontaminate_stage", "features_stage",
    "ingest_stage", "length_cap_stage", "model_stages", "pass_rate_merge", "pass_rate_plan", "pass_rate_stage",
    "prepare_inputs", "rollout_shard", "prune_cache", "run_summary",
    "score_merge", "score_plan", "score_shard", "score_stage", "select_stage", "worker_identity",
]
