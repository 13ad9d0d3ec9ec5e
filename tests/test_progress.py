"""Progress read out of child jobs' output (undercurve.progress), on lines those tools print."""

from undercurve.progress import EVAL_SAMPLES, SFT_STEP, VLLM_STEP_DONE, from_lines


def _read(pattern, lines, total=None):
    got = []
    on_line = from_lines(pattern, lambda done, n: got.append((done, n)), total)
    for line in lines:
        on_line(line)
    return got


def test_evalscope_samples_not_benchmarks():
    lines = [
        "Running[eval]:   0%|          | 0/1 [00:00<?, ?benchmark/s]\n",  # benchmarks: not samples
        "Evaluating[aime24]:   0%|          | 0/96 [00:06<?, ?it/s]\rEvaluating[aime24]:  40%|####      | 38/96 [00:40]\n",
        "2026-12-01 16:15:42 - evalscope - INFO: Evaluating[aime24]  50%| 48/96 [Elapsed: 01:00 < Remaining: 01:00]\n",
    ]
    assert _read(EVAL_SAMPLES, lines) == [(38, 96), (48, 96)]  # a redrawn bar: its last state


def test_sft_steps_and_worker_steps():
    assert _read(SFT_STEP, ["{'loss': 1.2, 'global_step/max_steps': '3/6', 'percentage': '50%'}"]) == [(3, 6)]
    lines = ["[vllm-worker 10:00:00] step score-00000: done in 3.1s", "noise",
             "[vllm-worker 10:00:01] step score-00001: outputs up to date and verified, skipped"]
    assert _read(VLLM_STEP_DONE, lines, total=2) == [(1, 2), (2, 2)]
