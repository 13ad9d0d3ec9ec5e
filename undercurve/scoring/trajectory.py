"""A sample -> the token ids the scoring engines need (SPEC section 1).

Imports only the stdlib and ``undercurve.answers`` (the tokenizer is passed in): this module
also runs inside the separate vLLM environment.

- prompt_ids: the chat template applied to the user prompt, with the generation prompt.
- response_ids: the response tokenised alone (no special tokens).
- T: 1-based index of the response token holding the LAST BYTE of the last non-whitespace
  character of the content of the last ``\\boxed{...}``: the trajectory x_1..x_T ends at the
  final answer, not at the end of the response. Byte-level BPE may split one character
  (°, 中, an emoji) over several tokens; x_T is the one holding its final byte.
- suffix_ids: "\\boxed{" + the first ``answer_prefix_tokens`` tokens of the ground truth
  (the answer tokenised alone; an answer shorter than that contributes all its tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from undercurve.answers import BOXED, DEFAULT_BOX_OPENERS, last_boxed_span

BOX_OPENER = BOXED  # the probe suffix is always the paper's "\\boxed{"


@dataclass(frozen=True)
class Trajectory:
    id: str
    prompt_ids: list[int]
    response_ids: list[int]
    T: int
    suffix_ids: list[int]

    @property
    def P(self) -> int:
        return len(self.prompt_ids)

    @property
    def length(self) -> int:
        return len(self.response_ids)


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # older/newer transformers may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def last_token_of_char(offsets, char_index: int) -> int | None:
    """0-based index of the token holding the last byte of character ``char_index``.

    Tokens that split one character's bytes all report that character's span, in byte
    order, so the last token covering it holds its final byte.
    """
    found = None
    for i, (s, e) in enumerate(offsets):
        if s <= char_index < e:
            found = i
        elif s > char_index:
            break
    if found is None:  # a gap in the offsets (trimmed spaces): the first token ending after it
        found = next((i for i, (_, e) in enumerate(offsets) if e > char_index), None)
    return found


def build_trajectory(sample: dict, tokenizer, answer_prefix_tokens: int = 0,
                     box_openers: tuple[str, ...] = DEFAULT_BOX_OPENERS) -> Trajectory | str:
    """The sample's trajectory, or a reason string when it cannot be scored (caller sets it aside)."""
    response = sample.get("response") or ""
    prompt = sample.get("prompt") or ""
    if not response.strip():
        return "empty_response"
    span = last_boxed_span(response, tuple(box_openers))
    if span is None:
        return "no_boxed_answer"
    start, end = span
    content = response[start:end].rstrip()  # whitespace inside the box never makes x_T
    if not content.strip():
        return "empty_boxed_answer"
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    response_ids = list(enc["input_ids"])
    idx = last_token_of_char(enc["offset_mapping"], start + len(content) - 1)
    if idx is None:
        return "answer_not_tokenised"
    T = idx + 1
    if T < 2:
        return "trajectory_too_short"
    suffix_ids = list(tokenizer(BOX_OPENER, add_special_tokens=False)["input_ids"])
    if answer_prefix_tokens > 0:
        answer = sample.get("answer")
        if answer is None or not str(answer).strip():
            return "no_ground_truth_answer"
        answer_ids = tokenizer(str(answer).strip(), add_special_tokens=False)["input_ids"]
        suffix_ids += list(answer_ids[:answer_prefix_tokens])
    return Trajectory(
        id=str(sample.get("id")),
        prompt_ids=prompt_token_ids(tokenizer, prompt),
        response_ids=response_ids,
        T=T,
        suffix_ids=suffix_ids,
    )
