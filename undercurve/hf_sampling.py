"""Sampling with transformers where vLLM is too slow (a CPU): the rollout and generate steps'
second backend, behind the same worker job and outputs.

Every sequence draws from its own ``torch.Generator`` seeded by (prompt seed, sample index),
so a sample's text depends on its prompt and seed, not on which other prompts share its
batch or shard (up to float rounding of batched matmuls): results stay reusable when a
corpus is reordered or re-sharded. vLLM keys its per-request seed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    token_ids: list[int]
    finish_reason: str  # "stop" (an end-of-turn token) or "length"


_TOP = 256


def _sample_seed(seed: int, k: int) -> int:
    return (seed * 1_000_003 + k) % (2**63 - 1)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gens: list[torch.Generator]) -> torch.Tensor:
    """Next token per row: greedy at temperature 0, else nucleus sampling with the row's generator.

    The nucleus (the smallest most-probable set with mass >= top_p) almost always lies in the
    top 256 tokens, so rows are cut there and sorted in full only when it does not: the same
    set as a full sort, without sorting the whole vocabulary for every row at every step."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, gens)])
    top_vals, top_idx = probs.topk(min(_TOP, probs.shape[-1]), dim=-1)  # sorted, descending
    picked = []
    for row, g in enumerate(gens):
        vals, idx = top_vals[row], top_idx[row]
        if float(vals.sum()) < top_p:
            vals, idx = probs[row].sort(descending=True)
        keep = vals.cumsum(0) - vals < top_p  # the last kept token takes the mass to top_p
        picked.append(idx[keep][torch.multinomial(vals[keep], 1, generator=g)[0]])
    return torch.stack(picked)


@torch.inference_mode()
def _sample_batch(model, prompts: list[list[int]], seeds: list[int], temperature: float, top_p: float,
                  max_tokens: int, stop_ids: set[int], pad_id: int) -> list[Sample]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    # logits_to_keep=1: the prompt's other positions would cost a [batch x width x V] tensor
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1]
    tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    live = list(range(len(prompts)))  # batch row -> sequence
    for _ in range(max_tokens):
        nxt = _pick(logits, temperature, top_p, [gens[i] for i in live])
        for i, t in zip(live, nxt.tolist()):
            tokens[i].append(t)
            done[i] = t in stop_ids
        keep = [r for r, i in enumerate(live) if not done[i]]
        if not keep or len(tokens[live[0]]) >= max_tokens:
            break
        if len(keep) < len(live):  # finished sequences leave the batch (and the cache)
            rows = torch.tensor(keep)
            cache.batch_select_indices(rows)
            nxt, mask, pos = nxt[rows], mask[rows], pos[rows]
            live = [live[r] for r in keep]
        mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype)], dim=-1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
    return [Sample([t for t in seq if t not in stop_ids], "stop" if d else "length") for seq, d in zip(tokens, done)]


def sample(model, prompts: list[list[int]], seeds: list[int], n: int, temperature: float, top_p: float,
           max_tokens: int, stop_ids: set[int], pad_id: int, batch_size: int = 64, on_batch=None) -> list[list[Sample]]:
    """``n`` samples of each prompt (token ids, chat template applied); -> per prompt, its samples.

    Sequences are batched by prompt length (less padding); each keeps its own generator."""
    jobs = [(len(p), i, k) for i, p in enumerate(prompts) for k in range(n)]
    jobs.sort()
    result: list[list[Sample | None]] = [[None] * n for _ in prompts]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        samples = _sample_batch(model, [prompts[i] for _, i, _ in chunk], [_sample_seed(seeds[i], k) for _, i, k in chunk],
                                temperature, top_p, max_tokens, stop_ids, pad_id)
        for (_, i, k), s in zip(chunk, samples):
            result[i][k] = s
        if on_batch:
            on_batch(min(start + batch_size, len(jobs)), len(jobs))
    return result  # type: ignore[return-value]
