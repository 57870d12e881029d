"""Answer equivalence: a cheap in-process pre-check, then math-verify behind `math_equal`.

Two layers:
- `quick_equal(pred, gold)` runs in the caller's process on plain strings and numbers only: it
  returns True / False when the answer is decided (identical after normalisation; two plain numbers)
  and None when the symbolic checker is needed. Most rewards on the embedded task and on integer
  benchmarks (AIME, AMC, GSM8K) are decided here, without any inter-process traffic.
- `math_equal(pred, gold)` calls math-verify (LaTeX parsing into sympy, then numeric / symbolic /
  set / interval / relation comparison). It has no time bound of its own: math-verify's timeout
  uses `signal.alarm` and only works in a main thread, so this function is only ever run inside a
  worker process of `ngrpo.rewards.pool.GradingPool`, which kills it at the deadline.

`screen_answer` rejects, before any parsing, answers that are only ever model garbage and are
expensive or dangerous to parse: longer than `MAX_ANSWER_CHARS`, braces nested deeper than
`MAX_BRACE_DEPTH`, control characters, Python dunder names, and power towers (an exponent that
itself contains `^`) when the gold answer has none.

Numeric tolerance policy (math-verify's, kept as is): when either side is a decimal number both are
rounded to `FLOAT_ROUNDING` = 6 decimal places and compared; integers and fractions compare
exactly; other expressions are equal when their difference evaluates to 0 at 15 significant digits
or simplifies to 0. The quick check agrees with this: it says "equal" only for exactly equal
numbers and "different" only for numbers at least 1e-6 apart, and defers everything else.

Deviations from math-verify's defaults (both decided in the worker, after math-verify):
- only its LaTeX extraction is used (not its plain expression extraction, which goes through sympy's
  `parse_expr`, an `eval`), on the answer we extracted ourselves wrapped in `\\boxed{}`;
- tiny magnitudes: an absolute tolerance cannot tell numbers below 1e-6 apart (`1/2004!` and
  `1/2006!` both round to 0, and so does a plain `0`), so when math-verify says "equal" to two
  numbers whose larger magnitude is below `10^-FLOAT_ROUNDING`, they must also agree to a relative
  `RELATIVE_TOLERANCE` (evaluated at 30 digits) — the comparison math-verify's tracker asks for;
- radicals: sympy keeps `sqrt(1/n)` and `1/sqrt(n)` apart because they differ for negative n. When
  math-verify says "different" to two plain expressions with free symbols, at least one radical
  (a fractional power) and no absolute value, their difference is simplified again with every
  symbol assumed positive, the reading a grader of `\\sqrt{1/n}` intends.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from ngrpo.rewards.extract import gsm8k_answer, last_boxed

MAX_ANSWER_CHARS = 1_000
MAX_BRACE_DEPTH = 20
FLOAT_ROUNDING = 6
NUMERIC_PRECISION = 15
RELATIVE_TOLERANCE = 1e-6

# Text wrappers that never change the value of an answer.
_STRIP_PATTERNS = (
    (re.compile(r"\\(?:left|right|displaystyle|!|,|;|:|quad|qquad)(?![A-Za-z])"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\text\{\s*\}"), ""),
    (re.compile(r"\s+"), ""),
)
_PLAIN_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+]?)(?:\\\$|\$)?(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?(?:\\\$|\$)?\.?$"
)
# Unicode categories of control, surrogate, private-use and unassigned code points.
_JUNK_CATEGORIES = frozenset(("Cc", "Cs", "Co", "Cn"))
_NESTED_POWER_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^")


@dataclass(frozen=True)
class GoldAnswer:
    """A gold answer normalised once: its text, its key for string comparison, its exact value."""

    text: str
    key: str
    number: Fraction | None
    has_nested_power: bool


def normalize_text(answer: str) -> str:
    """A comparison key: spacing, `\\left`/`\\right`, `\\dfrac`, surrounding `$` removed."""
    key = answer.strip().strip("$").strip()
    for pattern, replacement in _STRIP_PATTERNS:
        key = pattern.sub(replacement, key)
    return key.rstrip(".")


def plain_number(answer: str) -> Fraction | None:
    """The exact value of a plain decimal number (`-1,234.5`, `\\$18`, `18.`), else None."""
    match = _PLAIN_NUMBER_RE.match(normalize_text(answer))
    if match is None or not (match.group("int") or match.group("frac")):
        return None
    digits = (match.group("int") or "0").replace(",", "") + (match.group("frac") or "")
    value = Fraction(digits)
    return -value if match.group("sign") == "-" else value


@lru_cache(maxsize=65_536)
def normalize_gold(gold: str) -> GoldAnswer:
    """Normalise a gold answer (cached: each distinct gold string is processed once).

    A gold written as a full solution (`... #### 42`, or containing `\\boxed{...}`) is reduced to
    its final answer first.
    """
    text = gold.strip()
    if "####" in text:
        text = gsm8k_answer(text) or text
    elif "\\boxed" in text or "\\fbox" in text:
        text = last_boxed(text) or text
    return GoldAnswer(
        text=text,
        key=normalize_text(text),
        number=plain_number(text),
        has_nested_power=bool(_NESTED_POWER_RE.search(text)),
    )


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth -= 1
    return deepest


def screen_answer(pred: str, gold: GoldAnswer) -> str | None:
    """Why `pred` must not be parsed (a short reason), or None when it is safe to parse."""
    if len(pred) > MAX_ANSWER_CHARS:
        return "too long"
    if any(unicodedata.category(c) in _JUNK_CATEGORIES and c not in "\n\r\t" for c in pred):
        return "control characters"
    if "__" in pred:
        return "code"
    if _brace_depth(pred) > MAX_BRACE_DEPTH:
        return "nesting too deep"
    if not gold.has_nested_power and _NESTED_POWER_RE.search(pred):
        return "power tower"
    return None


def quick_equal(pred: str, gold: GoldAnswer) -> bool | None:
    """True / False when decided by string or exact-number comparison, None when undecided."""
    if normalize_text(pred) == gold.key:
        return True
    if gold.number is None:
        return None
    number = plain_number(pred)
    if number is None:
        return None
    if number == gold.number:
        return True
    if abs(number - gold.number) >= Fraction(1, 10**FLOAT_ROUNDING):
        return False
    return None


# ---- symbolic layer: runs inside grading worker processes only ----------------------------------


def _latex_config():
    from math_verify import LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0)]


@lru_cache(maxsize=4_096)
def _parse_gold(gold_text: str):
    from math_verify import parse

    return parse(f"\\boxed{{{gold_text}}}", extraction_config=_latex_config(), parsing_timeout=None)


def math_equal(pred: str, gold_text: str) -> bool:
    """math-verify equivalence of an extracted answer and a gold. No time bound: see above."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold_text)
    pred_parsed = parse(
        f"\\boxed{{{pred}}}", extraction_config=_latex_config(), parsing_timeout=None
    )
    if not gold_parsed or not pred_parsed:
        return False
    same = bool(
        verify(
            gold_parsed,
            pred_parsed,
            float_rounding=FLOAT_ROUNDING,
            numeric_precision=NUMERIC_PRECISION,
            timeout_seconds=None,
        )
    )
    try:  # the second opinions below never turn an error into a verdict: math-verify's stands
        if same:
            return not tiny_numbers_differ(gold_parsed[0], pred_parsed[0])
        return radicals_equal(gold_parsed[0], pred_parsed[0])
    except (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError):
        return same


def tiny_numbers_differ(gold, pred) -> bool:
    """True when two numbers below `10^-FLOAT_ROUNDING` in magnitude are not relatively close."""
    import sympy

    if not all(isinstance(x, sympy.Expr) and x.is_number for x in (gold, pred)):
        return False
    # sympy numbers (no underflow at 1e-5753); `doit` evaluates math-verify's unevaluated forms
    a, b = (sympy.N(x.doit(), 30) for x in (gold, pred))
    if not (a.is_Number and b.is_Number):
        return False  # complex or not reducible to one number: math-verify's verdict stands
    scale = max(abs(a), abs(b))
    if scale == 0 or scale >= sympy.Float(10) ** -FLOAT_ROUNDING:
        return False
    return bool(abs(a - b) > RELATIVE_TOLERANCE * scale)


def _has_radical(expr) -> bool:
    import sympy

    return any(
        isinstance(p.exp, sympy.Rational) and not p.exp.is_integer for p in expr.atoms(sympy.Pow)
    )


def radicals_equal(gold, pred) -> bool:
    """Equal once every symbol is assumed positive (the module docstring says when it applies)."""
    import sympy

    if not all(isinstance(x, sympy.Expr) for x in (gold, pred)):
        return False  # relations, sets, intervals, tuples: math-verify's verdict stands
    symbols = gold.free_symbols | pred.free_symbols
    if not symbols or not (_has_radical(gold) or _has_radical(pred)):
        return False
    if gold.atoms(sympy.Abs) or pred.atoms(sympy.Abs):
        return False
    positive = {s: sympy.Symbol(s.name, positive=True) for s in symbols}
    difference = sympy.simplify((gold - pred).xreplace(positive))
    return difference == 0
