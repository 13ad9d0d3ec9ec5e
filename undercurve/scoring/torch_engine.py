"""Exact full-vocabulary scoring engine on torch/transformers (SPEC sections 1-3).

One batch of samples costs:
1. one causal pass of the base model over prompt + response (right padded, no mask so sdpa
   can use its causal kernels). Its hidden states give the plain entropies H_1..H_T, the
   response log-probs (PPL) and, in plain mode, everything. Its KV cache is kept.
2. probe mode only: for every t = 1..T-1 the suffix block ("\\boxed{" + answer prefix, m
   tokens) is fed on top of that cache, in chunks of t. A 4D float additive mask lets block t
   see only prompt + x_1..x_t and its own earlier suffix tokens; position ids continue from
   t. This is exactly T-1 separate contexts C_t, for about m extra tokens per position.

The LM head runs on chunks of positions and log_softmax is taken in fp32 per chunk, so the
[T x V] fp32 logits never exist at once. Validation asks the same passes for more (``score``'s
options): statistics of the distributions the response tokens were drawn from, and option
probabilities in every probe context; it has no engine of its own.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from undercurve import eas
from undercurve.scoring.trajectory import Trajectory

_LN2 = math.log(2.0)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU half-precision matmuls are slow and inexact
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
            "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]


def next_token_stats(logits: torch.Tensor, targets: torch.Tensor | None = None, work: torch.Tensor | None = None,
                     top_k: int = 0, certainty: bool = False) -> dict[str, torch.Tensor]:
    """Statistics of every row's next-token distribution p, in fp32, from one chunk of logits.

    - "H": entropy in bits;
    - with ``targets`` ([rows] or [rows, k] token ids): "logprob", log p(target) in nats;
    - with ``top_k``: "topk_mass" = sum of the top-K p, "topk_H" = -sum_{top-K} p log2 p (bits);
    - with ``certainty``: "mean_logp" = (1/V) sum_v log p(v), nats, each term floored at -1e4
      (a masked, -inf logit would make it -inf).

    ``logits`` is overwritten when it is already fp32 (it is shifted by its row max in place);
    ``work`` is an optional [rows, V] fp32 buffer. Six passes over [rows, V] for H, two buffers:
    on CPU every fresh [rows, V] tensor costs page faults, so nothing else that size is allocated.
    H = log s - sum_v e_v (z_v - max) / s with e = exp(z - max), s = sum e: all terms have
    one sign, so nothing cancels.
    """
    z = logits.float()
    z.sub_(z.amax(-1, keepdim=True))  # z <= 0
    e = torch.exp(z, out=work) if work is not None else torch.exp(z)
    s = e.sum(-1)
    log_s = s.log()
    H = (log_s - e.mul_(z).sum(-1) / s) / _LN2
    if not bool(torch.isfinite(H).all()):  # -inf logits: e * z = 0 * -inf; redo the slow, safe way
        logp = z - log_s[:, None]
        p = logp.exp()
        H = -torch.where(p > 0, p * logp, torch.zeros((), device=p.device)).sum(-1) / _LN2
    out = {"H": H}
    if targets is not None:
        idx = targets if targets.ndim == 2 else targets.unsqueeze(-1)
        lp = z.gather(-1, idx) - log_s[:, None]
        out["logprob"] = lp if targets.ndim == 2 else lp.squeeze(-1)
    if top_k > 0:
        lpk = z.topk(min(top_k, z.shape[-1]), dim=-1).values - log_s[:, None]  # [rows, K] only
        pk = lpk.exp()
        out["topk_mass"] = pk.sum(-1)
        out["topk_H"] = -torch.where(pk > 0, pk * lpk, torch.zeros((), device=pk.device)).sum(-1) / _LN2
    if certainty:  # last: the floor is applied to z in place
        floor = (log_s - 1e4)[:, None]
        out["mean_logp"] = z.clamp_(min=floor).mean(-1) - log_s
    return out


class TorchScorer:
    """Exact entropy engine. ``model`` is a path or an already loaded causal LM."""

    def __init__(
        self,
        model,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        chunk_positions: int = 256,
        probe_chunk: int = 128,
        batch_tokens: int = 16384,
        edis: eas.EdisParams = eas.EdisParams(),
    ):
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=self.dtype, attn_implementation="sdpa")
        else:
            model.set_attn_implementation("sdpa")  # a float 4D mask is exact under sdpa (SPEC 4)
        self.model = model.to(self.device, self.dtype).eval()
        layer_types = getattr(self.model.config, "layer_types", None) or []
        if any(lt != "full_attention" for lt in layer_types):
            # the probe mask assumes every layer sees the whole prefix
            raise NotImplementedError(f"only full-attention models are supported, got {set(layer_types)}")
        self.base = self.model.get_decoder()
        self.lm_head = self.model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])  # V of every next-token distribution
        self.chunk_positions = chunk_positions
        self.probe_chunk = probe_chunk
        self.batch_tokens = batch_tokens
        self._buf = self._work = None  # LM-head scratch, see _buffers
        self.edis = edis

    # ---------------------------------------------------------------- public
    @torch.inference_mode()
    def score(self, trajectories: list[Trajectory], mode: str = "probe", *, signals: bool = False,
              top_k: int = 0, option_ids: list[int] | None = None) -> list[dict]:
        """One row per trajectory, in input order (see ``_row`` for the columns).

        Options, computed in the same passes (validation uses them):
        - ``signals``: the best-of-N signals of each response from the distributions its tokens
          were drawn from (``eas.candidate_signals``); with ``top_k`` > 0 also the top-K mass
          and the entropy a top-K truncation loses, per position;
        - ``option_ids`` (probe mode): the probability of each of these tokens after the whole
          suffix of every probe context C_t, t = 1..T-1 (paper Fig. 3).
        Plain mode accepts any T >= 0; probe mode needs T >= 2.
        """
        if mode not in ("probe", "plain"):
            raise ValueError(f"mode must be 'probe' or 'plain', not {mode!r}")
        if option_ids and mode != "probe":
            raise ValueError("option_ids need probe mode")
        rows: list[dict | None] = [None] * len(trajectories)
        for batch in self._batches(trajectories):
            raws = self._score_batch([trajectories[i] for i in batch], mode, signals, top_k, option_ids)
            for i, raw in zip(batch, raws):
                rows[i] = self._row(trajectories[i], mode, raw)
        return rows  # type: ignore[return-value]

    def _batches(self, trajs: list[Trajectory]) -> list[list[int]]:
        """Longest first, so padding stays small; padded tokens per batch <= batch_tokens."""
        order = sorted(range(len(trajs)), key=lambda i: -(trajs[i].P + trajs[i].length))
        batches, cur, cur_len = [], [], 0
        for i in order:
            n = trajs[i].P + trajs[i].length
            width = max(cur_len, n)
            if cur and width * (len(cur) + 1) > self.batch_tokens:
                batches.append(cur)
                cur, width = [], n
            cur.append(i)
            cur_len = width
        if cur:
            batches.append(cur)
        return batches

    # ---------------------------------------------------------------- passes
    def _score_batch(self, trajs: list[Trajectory], mode: str, signals: bool, top_k: int,
                     option_ids: list[int] | None) -> list[dict]:
        dev = self.device
        seqs = [t.prompt_ids + t.response_ids for t in trajs]
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
        ids = ids.to(dev)
        # Right padding + pure causal attention: real positions never see the pads.
        out = self.base(input_ids=ids, use_cache=(mode == "probe"))
        results = [self._plain(out.last_hidden_state[b], ids[b], t, signals, top_k) for b, t in enumerate(trajs)]
        if mode == "probe":
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            del out  # the hidden states are done with; the KV cache lives on in kv
            for res, probe in zip(results, self._probe(trajs, kv, option_ids)):
                res.update(probe)
        return results

    def _plain(self, hidden: torch.Tensor, ids: torch.Tensor, t: Trajectory, signals: bool, top_k: int) -> dict:
        """Plain entropies H_1..H_T and the response log-probs from one sample's hidden states;
        with ``signals``, the statistics of the distributions x_1..x_R were drawn from."""
        # rows P-1 .. P+R-1: row P+k-1 predicts x_{k+1} (log-prob) and gives H_k (k = 0..R)
        R = t.length
        rows = hidden[t.P - 1 : t.P + R]
        targets = torch.cat([ids[t.P : t.P + R], ids.new_zeros(1)])  # last row: no target
        head = self._head(rows, targets, top_k=top_k if signals else 0, certainty=signals)
        res = {"plain_H": head["H"][1 : t.T + 1], "logprobs": head["logprob"][:R]}
        if signals:  # rows 0..R-1: the distributions x_1..x_R were drawn from
            res["drawn"] = {k: v[:R] for k, v in head.items() if k != "logprob"}
        return res

    def _head(self, rows: torch.Tensor, targets: torch.Tensor | None = None, **stats) -> dict[str, np.ndarray]:
        """``next_token_stats`` of every row as float64 arrays, the LM head run in position chunks."""
        W, bias = self.lm_head.weight, getattr(self.lm_head, "bias", None)
        # fp32 Linear head: write the logits straight into a reused buffer (no page faults)
        direct = isinstance(self.lm_head, torch.nn.Linear) and bias is None and rows.dtype == torch.float32
        c = self.chunk_positions
        parts: dict[str, list[torch.Tensor]] = {}
        for s in range(0, rows.shape[0], c):
            h = rows[s : s + c]
            buf, work = self._buffers(h.shape[0], W.shape[0])
            logits = torch.mm(h, W.t(), out=buf) if direct else self.lm_head(h)
            tgt = None if targets is None else targets[s : s + c]
            for name, v in next_token_stats(logits, tgt, work, **stats).items():
                parts.setdefault(name, []).append(v.double().cpu())
        return {name: torch.cat(v).numpy() for name, v in parts.items()}

    def _buffers(self, n: int, V: int):
        """Two [n, V] fp32 views on buffers of chunk_positions rows, kept between calls."""
        if self._buf is None or self._buf.shape[1] != V:
            shape = (self.chunk_positions, V)
            self._buf = torch.empty(shape, dtype=torch.float32, device=self.device)
            self._work = torch.empty(shape, dtype=torch.float32, device=self.device)
        return self._buf[:n], self._work[:n]

    def _probe(self, trajs: list[Trajectory], kv, option_ids: list[int] | None = None) -> list[dict]:
        """Per sample "suffix_H": entropy [T-1, m] at every suffix position of every probe context
        C_t; with ``option_ids`` "option_probs": [T-1, options] after the last suffix token."""
        from transformers import DynamicCache

        dev, B = self.device, len(trajs)
        # Blocks tile a chunk, so shorter suffixes are padded at their END: causal within the
        # block, real suffix tokens never see the pads; the pads' outputs are dropped.
        ms = [len(t.suffix_ids) for t in trajs]
        m = max(ms)
        n_pos = [t.T - 1 for t in trajs]
        # Same number of chunks for every sample, so the batch rows stay evenly filled.
        n_chunks = max(1, math.ceil(max(n_pos) / self.probe_chunk))
        per = [max(1, math.ceil(n / n_chunks)) for n in n_pos]
        width = max(per)  # blocks per row in a chunk
        q = width * m
        suffix = torch.tensor([t.suffix_ids + [0] * (m - len(t.suffix_ids)) for t in trajs], device=dev)  # [B, m]
        P = torch.tensor([t.P for t in trajs], device=dev)
        j = torch.arange(m, device=dev)
        blk = torch.arange(q, device=dev) // m  # block of each query
        own = (blk[:, None] == blk[None, :]) & (torch.arange(q, device=dev)[None, :] <= torch.arange(q, device=dev)[:, None])
        neg = torch.finfo(self.dtype).min
        out = [np.zeros((n, mb)) for n, mb in zip(n_pos, ms)]
        n_opt = len(option_ids or [])
        opt = torch.tensor(option_ids or [], dtype=torch.long, device=dev)
        probs = [np.zeros((n, n_opt)) for n in n_pos]
        for c in range(n_chunks):
            # t of every block in this chunk; blocks past a sample's last t repeat t=1 (discarded)
            t_blk = torch.tensor(
                [[c * per[b] + k + 1 if c * per[b] + k < n_pos[b] else 1 for k in range(width)] for b in range(B)],
                device=dev,
            )  # [B, width]
            valid = torch.tensor(
                [[c * per[b] + k < n_pos[b] for k in range(width)] for b in range(B)], device=dev
            )
            if not bool(valid.any()):
                continue
            K = int((P + t_blk.max(1).values).max())  # keys past this are never visible to the chunk
            t_q = t_blk.repeat_interleave(m, dim=1)  # [B, q]
            seen = torch.arange(K, device=dev)[None, None, :] < (P[:, None] + t_q)[:, :, None]  # [B, q, K]
            allowed = torch.cat([seen, own.expand(B, q, q)], dim=2)
            mask = torch.full(allowed.shape, neg, dtype=self.dtype, device=dev)
            mask.masked_fill_(allowed, 0.0)
            cache = DynamicCache(ddp_cache_data=[(k[:, :, :K], v[:, :, :K]) for k, v in kv])
            pos = (P[:, None, None] + t_blk[:, :, None] + j[None, None, :]).reshape(B, q)
            h = self.base(
                input_ids=suffix.repeat(1, width), position_ids=pos, attention_mask=mask[:, None],
                past_key_values=cache, use_cache=True,
            ).last_hidden_state  # [B, q, D]
            del cache
            for b in range(B):
                nb = int(valid[b].sum())
                if nb:
                    rows = h[b, : nb * m].reshape(nb, m, -1)[:, : ms[b]].reshape(nb * ms[b], -1)
                    head = self._head(rows, opt.expand(rows.shape[0], n_opt) if n_opt else None)
                    out[b][c * per[b] : c * per[b] + nb] = head["H"].reshape(nb, ms[b])
                    if n_opt:
                        lp = head["logprob"].reshape(nb, ms[b], n_opt)[:, -1]
                        probs[b][c * per[b] : c * per[b] + nb] = np.exp(lp)
        return [{"suffix_H": o, **({"option_probs": p} if n_opt else {})} for o, p in zip(out, probs)]

    # ---------------------------------------------------------------- rows
    def _row(self, t: Trajectory, mode: str, raw: dict) -> dict:
        """The score columns (``scoring.score.SCORE_SCHEMA``), plus what the options asked for:
        ``eas.candidate_signals``' columns, ``option_probs`` [T-1][options]."""
        plain_H, suffix_H = raw["plain_H"], raw.get("suffix_H")
        H = suffix_H[:, -1] if mode == "probe" else plain_H[: t.T - 1]
        row = {
            "id": t.id, "engine": "torch", "mode": mode, "T": t.T, "response_tokens": t.length,
            **eas.scores(H, plain_H, raw["logprobs"], self.edis, exact=True),
            "topk_mass_mean": None, "topk_mass_min": None, "topk_bound": None,
            "entropy": H.tolist(), "plain_entropy": plain_H.tolist(),
            "suffix_entropy": suffix_H.tolist() if suffix_H is not None else None,
        }
        if "drawn" in raw:
            d = raw["drawn"]
            row.update(eas.candidate_signals(d["H"], d["mean_logp"], self.vocab_size, d.get("topk_mass"), d.get("topk_H")))
        if "option_probs" in raw:
            row["option_probs"] = raw["option_probs"].tolist()
        return row
