"""ms-swift SFT and evalscope evaluation, for real, on the tiny model (kept minimal for CPU CI)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from undercurve.evaluate import run_eval, task_config_kwargs, EVAL_DEFAULTS, write_local_benchmark
from undercurve.report import comparison_table, to_markdown, write_report
from undercurve.jobs import JobFailed
from undercurve.train import list_checkpoints, load_sft_result, run_sft, sft_command

AIME_TINY = Path(__file__).parent / "data" / "eval" / "aime_tiny.jsonl"

# 4 optimizer steps, a checkpoint (and a validation loss) every 2: two checkpoints per run
TINY_SFT = {
    "max_length": 128,
    "max_steps": 4,
    "learning_rate": 1e-4,
    "seed": 0,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "save_strategy": "steps",
    "save_steps": 2,
    "split_dataset_ratio": 0.25,
    "logging_steps": 1,
    "torch_dtype": "float32",
    "dataloader_num_workers": 0,
    "lora_rank": 4,
    "lora_alpha": 8,
}


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    with open(path, "w") as fh:
        for i in range(8):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Tom has {i} apples and buys 4 more. How many apples does Tom have?"},
                {"role": "assistant", "content": f"<think>{i} + 4 = {i + 4}</think> Tom has \\boxed{{{i + 4}}}"},
            ]}) + "\n")
    return path


@pytest.fixture(scope="module")
def lora_run(tiny_model, sft_data, tmp_path_factory):
    return run_sft(sft_data, tiny_model, tmp_path_factory.mktemp("lora"), {**TINY_SFT, "tuner_type": "lora"})


def _check_run(run, tuner: str):
    assert [c.name for c in run.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    weights = "adapter_model.safetensors" if tuner == "lora" else "model.safetensors"
    assert all((c / weights).exists() for c in run.checkpoints)
    assert all(isinstance(run.val_loss[str(c)], float) for c in run.checkpoints)
    assert run.log_path.exists() and run.metrics["global_step"] == 4
    top = run.top_k(3)
    assert len(top) == 2 and run.val_loss[str(top[0])] <= run.val_loss[str(top[1])]
    assert load_sft_result(run.out_dir).checkpoints == run.checkpoints


def test_sft_full(tiny_model, sft_data, tmp_path):
    run = run_sft(sft_data, tiny_model, tmp_path / "full", {**TINY_SFT, "tuner_type": "full"})
    _check_run(run, "full")
    with pytest.raises(FileExistsError):  # never silently mixes two runs' checkpoints
        run_sft(sft_data, tiny_model, tmp_path / "full", TINY_SFT)


def test_sft_lora_then_eval(lora_run, tmp_path):
    _check_run(lora_run, "lora")
    records = [json.loads(line) for line in AIME_TINY.read_text().splitlines()]
    benchmarks = {
        "aime24": write_local_benchmark(records[:2], tmp_path / "aime24"),
        "aime25": write_local_benchmark(records[2:4], tmp_path / "aime25"),
    }
    assert (benchmarks["aime24"] / "test.jsonl").exists()
    settings = {"generation_config": {"max_tokens": 8, "temperature": 0.6, "top_p": 0.95},
                "eval_batch_size": 4, "seed": 0}
    ckpt = lora_run.top_k(1)[0]
    res = run_eval(ckpt, benchmarks, repeats=2, settings=settings, work_dir=tmp_path / "eval")
    assert Path(res.model).name == ckpt.name + "-merged"  # LoRA merged before evalscope loads it
    assert set(res.benchmarks) == {"aime24", "aime25"}
    for score in res.benchmarks.values():
        assert 0.0 <= score.pass1_mean <= 1.0
        assert len(score.per_repeat) == 2 and score.n_problems == 2
        assert score.pass1_mean == pytest.approx(sum(score.per_repeat) / 2)
        assert score.report_path.exists()
    rows = res.to_rows(model="tiny", strategy="random", checkpoint_rank=1)
    assert {r["benchmark"] for r in rows} == {"aime24", "aime25"} and rows[0]["n_repeats"] == 2


def test_failed_sft_names_the_log(tiny_model, tmp_path):
    with pytest.raises(JobFailed) as err:
        run_sft(tmp_path / "missing.jsonl", tiny_model, tmp_path / "out", TINY_SFT)
    log = tmp_path / "out" / "sft.log"
    assert err.value.log_path == log and log.exists()
    assert str(log) in str(err.value) and "does not exist" in str(err.value)
    assert list_checkpoints(tmp_path / "out") == []


def test_eval_rejects_missing_benchmark_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        run_eval(tmp_path, {"aime24": tmp_path / "nothing"}, repeats=1, work_dir=tmp_path / "w")


def test_sft_command_flags(tiny_model):
    argv = sft_command("d.jsonl", tiny_model, "out", {"tuner_type": "lora", "deepspeed": "zero3", "seed": 7,
                                                       "target_modules": ["q_proj", "v_proj"]})
    pairs = dict(zip(argv[::2], argv[1::2]))
    assert pairs["--tuner_type"] == "lora" and pairs["--check_model"] == "false"
    assert pairs["--model_type"] == "qwen2" and pairs["--template"] == "qwen"  # from config.json
    assert pairs["--deepspeed"] == "zero3" and pairs["--seed"] == "7"
    assert pairs["--gradient_accumulation_steps"] == "16"
    assert argv[argv.index("--target_modules") + 1:argv.index("--target_modules") + 3] == ["q_proj", "v_proj"]
    with pytest.raises(ValueError):
        sft_command("d.jsonl", tiny_model, "out", {"tuner_type": "qlora"})
    with pytest.raises(ValueError, match="learning_rat"):  # typos fail loudly
        sft_command("d.jsonl", tiny_model, "out", {"learning_rat": 1e-5})


def test_openai_api_task_config(tmp_path):
    s = {**EVAL_DEFAULTS, "eval_type": "openai_api", "api_url": "http://127.0.0.1:8000/v1"}
    kw = task_config_kwargs("served", {"aime24": tmp_path, "aime25": None}, 32, s, tmp_path)
    assert kw["api_url"] == s["api_url"] and kw["repeats"] == 32 and kw["dataset_hub"] == "modelscope"
    assert kw["dataset_args"] == {"aime24": {"local_path": str(tmp_path.resolve())}}
    assert "do_sample" not in kw["generation_config"]
    with pytest.raises(ValueError, match="api_url"):
        task_config_kwargs("served", {"aime24": tmp_path}, 1, {**s, "api_url": None}, tmp_path)


def _results() -> pl.DataFrame:
    rows = []
    for strategy, base in [("eas", 0.60), ("random", 0.50), ("length", 0.45)]:
        for rank in (1, 2):
            for bench, offset in [("aime24", 0.0), ("aime25", 0.10)]:
                rows.append({"model": "m", "strategy": strategy, "checkpoint_rank": rank, "benchmark": bench,
                             "pass1_mean": base + offset + 0.02 * rank, "pass1_std": 0.03, "n_repeats": 4})
    return pl.DataFrame(rows)


def test_comparison_table_deltas(tmp_path):
    t = comparison_table(_results())
    get = lambda s, r, b: t.filter((pl.col("strategy") == s) & (pl.col("checkpoint_rank") == r)
                                   & (pl.col("benchmark") == b)).row(0, named=True)
    assert get("random", "1", "aime24")["value"] == pytest.approx(52.0) and not get("random", "1", "aime24")["is_delta"]
    assert get("eas", "2", "aime25")["value"] == pytest.approx(10.0) and get("eas", "2", "aime25")["is_delta"]
    assert get("eas", "2", "aime25")["pass1"] == pytest.approx(74.0)
    assert get("length", "1", "average")["value"] == pytest.approx(-5.0)
    assert get("random", "mean", "average")["value"] == pytest.approx(58.0)  # (52+62+54+64)/4
    assert get("random", "1", "aime24")["pass1_std"] == pytest.approx(3.0)
    assert get("random", "mean", "average")["pass1_std"] == pytest.approx(1.5)  # sqrt(4 * 9) / 4
    assert t["strategy"].to_list()[:3] == ["random", "length", "eas"]  # paper's column order
    md = to_markdown(t)
    assert "| m | 58.0 ±1.5 | -5.0 (±1.5) | +10.0 (±1.5) |" in md
    md_path, csv_path = write_report(t, tmp_path)
    assert pl.read_csv(csv_path).height == t.height and md_path.read_text() == md
    with pytest.raises(ValueError, match="baseline"):
        comparison_table(_results().filter(~((pl.col("strategy") == "random") & (pl.col("checkpoint_rank") == 2))))


class _AnswerServer:
    """An OpenAI-compatible chat server on loopback whose answers are known in advance: the
    edge of the system (a model server) replaced, evalscope and our parsing run for real.
    Problems in ``always`` get the right answer; problems in ``once`` only on their first call."""

    def __init__(self, answers: dict[str, str], always: set[str], once: set[str]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        calls: dict[str, int] = {}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = " ".join(str(m.get("content")) for m in body["messages"])
                problem = next(p for p in answers if p in text)
                with lock:
                    calls[problem] = calls.get(problem, 0) + 1
                    first = calls[problem] == 1
                right = problem in always or (problem in once and first)
                content = f"So the answer is \\boxed{{{answers[problem] if right else '999'}}}."
                out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": content}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_pass1_is_parsed_from_real_evalscope_output(tmp_path):
    """Known correct/incorrect answers -> known Pass@1, per benchmark and per repeat."""
    records = [json.loads(line) for line in AIME_TINY.read_text().splitlines()][:4]
    answers = {r["problem"]: r["answer"] for r in records}
    p = [r["problem"] for r in records]
    server = _AnswerServer(answers, always={p[0], p[2], p[3]}, once={p[1]})
    try:
        benchmarks = {"aime24": write_local_benchmark(records[:2], tmp_path / "aime24"),
                      "aime25": write_local_benchmark(records[2:4], tmp_path / "aime25")}
        settings = {"eval_type": "openai_api", "api_url": server.url, "served_model_name": "known",
                    "generation_config": {"max_tokens": 16, "temperature": 0.6}, "eval_batch_size": 1}
        res = run_eval(None, benchmarks, repeats=2, settings=settings, work_dir=tmp_path / "eval")
    finally:
        server.close()
    a24, a25 = res.benchmarks["aime24"], res.benchmarks["aime25"]
    # aime24: p0 right twice, p1 right once of 2 -> 3 of 4; one repeat has both right, the other one
    assert a24.pass1_mean == pytest.approx(0.75) and sorted(a24.per_repeat) == [0.5, 1.0]
    assert a25.pass1_mean == pytest.approx(1.0) and a25.per_repeat == [1.0, 1.0]
    assert a24.n_problems == 2 and a25.n_problems == 2


def test_checkpoints_load_in_float32_on_a_cpu_unless_told(tmp_path):
    """evalscope's default precision is float16, many times slower than float32 on a CPU."""
    import torch

    kw = task_config_kwargs("ckpt", {"aime24": tmp_path}, 1, EVAL_DEFAULTS, tmp_path)
    expected = None if torch.cuda.is_available() else "torch.float32"
    assert kw.get("model_args", {}).get("precision") == expected
    mine = {**EVAL_DEFAULTS, "model_args": {"precision": "torch.bfloat16"}}
    assert task_config_kwargs("ckpt", {"aime24": tmp_path}, 1, mine, tmp_path)["model_args"]["precision"] == "torch.bfloat16"
