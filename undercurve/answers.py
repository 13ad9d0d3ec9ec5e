"""Answer extraction and equivalence.

The EAS trajectory ends at the last token of the final answer, so extraction returns the
character span of the last ``\\boxed{...}`` content as well as its text.
"""

from __future__ import annotations

import re

# The paper names only \\boxed{; other boxes (e.g. "\\fbox{") are a setting
# (``answers.box_openers``) that applies everywhere an answer is read: ingest, rollouts,
# scoring, validation.
BOXED = "\\boxed{"
DEFAULT_BOX_OPENERS: tuple[str, ...] = (BOXED,)


def last_boxed_span(text: str, openers: tuple[str, ...] = DEFAULT_BOX_OPENERS) -> tuple[int, int] | None:
    """Character span [start, end) of the content of the last box (nested braces ok)."""
    if not text:
        return None
    best = -1
    opener_len = 0
    for opener in openers:
        i = text.rfind(opener)
        if i > best:
            best, opener_len = i, len(opener)
    if best < 0:
        return None
    start = best + opener_len
    close = text.find("}", start)
    if close >= 0 and text.find("{", start, close) < 0:
        return (start, close)  # no nested brace: the first "}" closes it (most boxes)
    depth = 1
    for j in range(start, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return (start, j)
    return None  # unbalanced: no usable answer


def last_boxed(text: str, openers: tuple[str, ...] = DEFAULT_BOX_OPENERS) -> str | None:
    span = last_boxed_span(text, openers)
    return None if span is None else text[span[0] : span[1]]


_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)


def gsm8k_final(text: str) -> str | None:
    """The answer after the last '#### ' line of a GSM8K solution."""
    if not text:
        return None
    found = _GSM8K_RE.findall(text)
    return found[-1].strip() if found else None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in the text ('1,234', '-3.5'), or None."""
    found = _NUMBER.findall(text or "")
    return found[-1] if found else None


def extract_answer(text: str, openers: tuple[str, ...] = DEFAULT_BOX_OPENERS, last_number_fallback: bool = False) -> str | None:
    """Final answer of a model response: last \\boxed{}, else a GSM8K '####' line, else (when
    asked: small models often answer in plain text, as lm-eval's flexible GSM8K extraction
    assumes) the last number."""
    boxed = last_boxed(text, openers)
    found = boxed if boxed is not None else gsm8k_final(text)
    return last_number(text) if found is None and last_number_fallback else found


_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_UNITS_TAIL = re.compile(r"\^\{?\\circ\}?|\\%|%|\\\$|\$")


def normalize_answer(ans: str | None) -> str | None:
    """Canonical string form: strip TeX decoration, spaces, thousands separators."""
    if ans is None:
        return None
    s = ans.strip()
    s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = _UNITS_TAIL.sub("", s)
    s = s.replace(" ", "").rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*", s):  # 12.50 -> 12.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    return s


def _as_number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
        if m and int(m.group(3)) != 0:
            sign = -1.0 if m.group(1) else 1.0
            return sign * int(m.group(2)) / int(m.group(3))
    return None


def is_equivalent(pred: str | None, gold: str | None) -> bool:
    """Math equivalence: normalised strings, then numbers, then math-verify (symbolic)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        return abs(pn - gn) <= 1e-6 * max(1.0, abs(gn))
    return _math_verify(p, g)


def _math_verify(p: str, g: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency of both envs
        return False
    try:
        gold = parse("$" + g + "$", parsing_timeout=None)
        pred = parse("$" + p + "$", parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - a parser crash means "not shown equal"
        return False
