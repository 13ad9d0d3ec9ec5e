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


def _sample_seed(seed: int, k: int) -> int:
    return (seed * 1_000_003 + k) % (2**63 - 1)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gens: list[torch.Generator]) -> torch.Tensor:
    """Next token per row: greedy at temperature 0, else nucleus sampling with the row's generator."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (its last token included)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, gens)])


@torch.inference_mode()
def _sample_batch(model, prompts: list[list[int]], seeds: list[int], temperature: float, top_p: float,
                  max_tokens: int, stop_ids: set[int], pad_id: int) -> list[Sample]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_tokens):
        nxt = _pick(logits, temperature, top_p, gens)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                tokens[i].append(t)
                done[i] = t in stop_ids
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=-1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
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
