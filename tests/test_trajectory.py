"""x_T, the last token of the final answer (SPEC section 1), against a slow byte-level reference.

x_T is the token holding the LAST BYTE of the answer's last non-whitespace character. The
reference decodes every token of the tiny byte-level BPE tokenizer to its bytes and walks them;
it shares no code with the engine's offset-based rule.
"""

from __future__ import annotations

import random

import pytest

from undercurve.answers import last_boxed_span
from undercurve.scoring.trajectory import build_trajectory


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table, inverted (what ByteLevel BPE tokens are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def reference_T(response: str, tokenizer, openers=("\\boxed{",)) -> int:
    """1-based index of the token that holds the last byte of the boxed answer's last
    non-whitespace character, found by walking the tokens' bytes."""
    start, end = last_boxed_span(response, openers)
    content = response[start:end]
    last_char = start + len(content.rstrip()) - 1
    target = len(response[: last_char + 1].encode("utf-8")) - 1  # index of that character's last byte
    dec = _byte_decoder()
    pos = 0
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(ids)):
        pos += len(bytes(dec[c] for c in tok))
        if pos > target:
            return i + 1
    raise AssertionError("target byte past the end")


def _traj(tokenizer, response, **kw):
    return build_trajectory({"id": "x", "prompt": "q", "response": response, "answer": "1"}, tokenizer, **kw)


@pytest.mark.parametrize("response", [
    "The angle is \\boxed{180°}. Done.",     # ° = 2 bytes
    "答案是 \\boxed{中} 好",                  # 中 = 3 bytes
    "so \\boxed{7😀} and more",              # emoji = 4 bytes
    "so \\boxed{42 } then",                   # whitespace inside the box
    "so \\boxed{ 5\n\t} then",
    "so \\boxed{x^{2}} ok",                   # nested braces: the last character is "}"
])
def test_x_T_holds_the_last_byte_of_the_answer(tokenizer, response):
    t = _traj(tokenizer, response)
    assert not isinstance(t, str), t
    assert t.T == reference_T(response, tokenizer)
    # and the multi-byte cases really are split over several tokens (else they test nothing)
    last = response[: last_boxed_span(response)[0] + len(response[slice(*last_boxed_span(response))].rstrip())][-1]
    if len(last.encode()) > 1:
        assert t.T - 1 > 0 and tokenizer.decode(t.response_ids[: t.T]).endswith(last)
        assert not tokenizer.decode(t.response_ids[: t.T - 1]).endswith(last)


def test_x_T_on_random_responses(tokenizer):
    """Random text with multi-byte characters and whitespace around and inside the box."""
    rng = random.Random(0)
    alphabet = list("0123456789abcxyz+-=., ") + ["°", "中", "é", "😀", "\n", "\t", "∑", "½"]
    for _ in range(200):
        def word(n):
            return "".join(rng.choice(alphabet) for _ in range(n))
        inner = word(rng.randint(1, 6))
        if not inner.strip():
            inner += rng.choice(["7", "°", "中"])
        response = word(rng.randint(1, 30)) + "\\boxed{" + inner + "}" + word(rng.randint(0, 10))
        t = _traj(tokenizer, response)
        if isinstance(t, str):
            assert t == "trajectory_too_short"  # x_T is the first token: nothing to sum
            assert reference_T(response, tokenizer) == 1
            continue
        assert t.T == reference_T(response, tokenizer), response


def test_only_boxed_by_default_fbox_by_setting(tokenizer):
    assert _traj(tokenizer, "so \\fbox{5} ok") == "no_boxed_answer"
    both = ("\\boxed{", "\\fbox{")
    t = _traj(tokenizer, "so \\fbox{5} ok", box_openers=both)
    assert t.T == reference_T("so \\fbox{5} ok", tokenizer, both)
    # the last box wins, whichever kind
    r = "\\fbox{3} then \\boxed{4} and \\fbox{5}."
    assert _traj(tokenizer, r, box_openers=both).T == reference_T(r, tokenizer, both)
    assert _traj(tokenizer, r).T == reference_T(r, tokenizer)  # \boxed{4} only
