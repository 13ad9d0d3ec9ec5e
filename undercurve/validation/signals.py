"""Per-candidate signals from one plain forward pass of the base model (torch, exact).

For every sampled response (prompt chat-templated, response tokenised alone, as the scoring
engines do) the full next-token distributions along the response give:

- ``mean_entropy``: mean entropy (bits) of the distributions the response tokens came from
  (sequence entropy, a best-of-N baseline);
- ``self_certainty``: mean KL(U || p) = -log V - mean_v log p(v) (nats; Kang et al. 2025);
- ``edis``: EDIS of the plain trajectory H_1..H_T (``undercurve.eas.edis``), T = last
  token of the final \\boxed{} answer when there is one, else the last response token;
- top-K mass and the exact entropy lost by truncating to the top K, per position (paper Table 1).

Also the probe option probabilities of paper Fig. 3 (``option_probabilities``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from undercurve import eas
from undercurve.scoring.trajectory import BOX_OPENER, build_trajectory, prompt_token_ids

_LN2 = math.log(2.0)


class SignalScorer:
    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto", top_k: int = 20,
                 chunk_positions: int = 256, batch_tokens: int = 8192,
                 edis: eas.EdisParams = eas.EdisParams()):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from undercurve.scoring.torch_engine import pick_device, pick_dtype

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
        self.base = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.top_k = top_k
        self.chunk = chunk_positions
        self.batch_tokens = batch_tokens
        self.edis = edis

    # ------------------------------------------------------------------ signals
    @torch.inference_mode()
    def signals(self, samples: list[dict]) -> list[dict]:
        """``samples``: dicts with prompt and response (text). One dict of signals each, in order."""
        prepared = []
        for s in samples:
            p_ids = prompt_token_ids(self.tokenizer, s["prompt"])
            r_ids = list(self.tokenizer(s["response"] or "", add_special_tokens=False)["input_ids"])
            traj = build_trajectory({"prompt": s["prompt"], "response": s["response"], "answer": None}, self.tokenizer)
            T = traj.T if not isinstance(traj, str) else len(r_ids)
            prepared.append((p_ids, r_ids, T))
        out: list[dict | None] = [None] * len(samples)
        order = sorted(range(len(prepared)), key=lambda i: -(len(prepared[i][0]) + len(prepared[i][1])))
        batch: list[int] = []
        for i in order + [None]:
            width = max([len(prepared[j][0]) + len(prepared[j][1]) for j in batch], default=0)
            if i is None or (batch and max(width, len(prepared[i][0]) + len(prepared[i][1])) * (len(batch) + 1) > self.batch_tokens):
                if batch:
                    for j, res in zip(batch, self._batch([prepared[j] for j in batch])):
                        out[j] = res
                batch = []
            if i is not None:
                batch.append(i)
        return out  # type: ignore[return-value]

    def _batch(self, items) -> list[dict]:
        seqs = [p + r for p, r, _ in items]
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
        hidden = self.base(input_ids=ids.to(self.device)).last_hidden_state  # right padding + causal: exact
        return [self._one(hidden[b], len(p), len(r), T) for b, (p, r, T) in enumerate(items)]

    def _one(self, hidden, P: int, R: int, T: int) -> dict:
        # row P-1+t holds the distribution after x_1..x_t (t = 0..R)
        rows = hidden[P - 1 : P + R]
        H, sc, mass, lost = [], [], [], []
        for s in range(0, rows.shape[0], self.chunk):
            logp = torch.log_softmax(self.head(rows[s : s + self.chunk]).float(), dim=-1)
            p = logp.exp()
            H.append((-(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1) / _LN2).double().cpu())
            V = logp.shape[-1]
            sc.append((-math.log(V) - logp.clamp(min=-1e4).mean(-1)).double().cpu())
            if self.top_k > 0:
                pk, idx = p.topk(min(self.top_k, V), dim=-1)
                m = pk.sum(-1)
                lpk = logp.gather(-1, idx)
                trunc = -(torch.where(pk > 0, pk * lpk, torch.zeros_like(pk))).sum(-1) / _LN2
                mass.append(m.double().cpu())
                lost.append((H[-1] - trunc.double().cpu()))
        H = torch.cat(H).numpy()
        sc = torch.cat(sc).numpy()
        gen = slice(0, R)  # distributions that produced x_1..x_R
        e = eas.edis(H[1 : T + 1], self.edis)
        res = {
            "n_tokens": R, "T": T,
            "mean_entropy": float(H[gen].mean()) if R else math.nan,
            "self_certainty": float(sc[gen].mean()) if R else math.nan,
            "edis": e.score, "edis_burst": e.burst, "edis_rebound": e.rebound, "edis_var": e.var,
            "plain_entropy": H[1 : T + 1].tolist(),
        }
        if self.top_k > 0:
            res["topk_mass"] = torch.cat(mass).numpy()[gen].tolist()
            res["topk_lost"] = torch.cat(lost).numpy()[gen].tolist()
        return res

    # ------------------------------------------------------------------ Fig. 3
    def option_token_ids(self, letters) -> list[int]:
        """The token each option letter is written with right after "\\boxed{"."""
        prefix = list(self.tokenizer(BOX_OPENER, add_special_tokens=False)["input_ids"])
        ids = []
        for letter in letters:
            full = list(self.tokenizer(BOX_OPENER + letter, add_special_tokens=False)["input_ids"])
            if full[: len(prefix)] == prefix and len(full) > len(prefix):
                ids.append(full[len(prefix)])
            else:  # merged with the brace: fall back to the letter alone
                ids.append(self.tokenizer(letter, add_special_tokens=False)["input_ids"][0])
        return ids

    @torch.inference_mode()
    def option_probabilities(self, prompt: str, response: str, letters, max_positions: int = 64,
                             batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """P_t(option) under the probe context C_t = (prompt, x_1..x_t, "\\boxed{") for
        t = 1..T-1 (evenly thinned to ``max_positions``) -> (t values, [len(t), options])."""
        traj = build_trajectory({"prompt": prompt, "response": response, "answer": None}, self.tokenizer)
        if isinstance(traj, str):
            raise ValueError(f"response cannot be probed: {traj}")
        ts = np.arange(1, traj.T)
        if ts.size > max_positions:
            ts = np.unique(np.linspace(1, traj.T - 1, max_positions).round().astype(int))
        opts = self.option_token_ids(letters)
        probs = []
        for s in range(0, ts.size, batch):
            seqs = [traj.prompt_ids + traj.response_ids[:t] + traj.suffix_ids for t in ts[s : s + batch]]
            L = max(len(q) for q in seqs)
            ids = torch.zeros(len(seqs), L, dtype=torch.long)
            for b, q in enumerate(seqs):
                ids[b, : len(q)] = torch.tensor(q)
            hidden = self.base(input_ids=ids.to(self.device)).last_hidden_state
            last = hidden[torch.arange(len(seqs)), torch.tensor([len(q) - 1 for q in seqs])]
            p = torch.softmax(self.head(last).float(), dim=-1)[:, opts]
            probs.append(p.double().cpu().numpy())
        return ts, np.concatenate(probs)
