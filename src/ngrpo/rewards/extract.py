"""Answer extraction: which part of a model response is "the answer".

Order for math (`extract_answer`):
1. keep only the text after the last `</think>` when there is one (the reasoning is never graded;
   a response with no `</think>` is graded as a whole);
2. the content of the last `\\boxed{...}` or `\\fbox{...}`, nested braces handled;
3. else a GSM8K-style `#### 42` line;
4. else, only when asked (`fallback_last_number=True`), the last number in the text. Off by default
   for math: a reward that accepts any trailing number teaches the policy to stop boxing answers.

Multiple choice (`extract_choice`): the last `Answer: X` (X a letter A-J), else a boxed letter.

Every function here is a single linear scan or a regex without nested quantifiers, so the time
taken is bounded by the (capped) length of the input; nothing is evaluated.
"""

from __future__ import annotations

import re

THINK_END = "</think>"
MAX_RESPONSE_CHARS = 200_000  # longer responses are graded on their last MAX_RESPONSE_CHARS

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_MAX_BOX_ATTEMPTS = 4
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")
# Bounded repeats only ({0,5}): no catastrophic backtracking on long runs of spaces.
_CHOICE_RE = re.compile(
    r"(?i:answer)[ \t]{0,5}(?:(?i:is)[ \t]{1,5})?[:：]?[ \t]{0,5}\**[ \t]{0,5}"
    r"\(?([A-J])\)?(?![A-Za-z0-9])"
)
_BOXED_LETTER_RE = re.compile(r"^\s*(?:\\text\{)?\s*\(?([A-Ja-j])\)?\s*\}?\s*$")


def final_segment(response: str) -> str:
    """The text after the last `</think>`, or the whole response when there is none."""
    response = response[-MAX_RESPONSE_CHARS:]
    cut = response.rfind(THINK_END)
    return response if cut < 0 else response[cut + len(THINK_END) :]


def _brace_content(text: str, open_at: int) -> str | None:
    """The text inside the balanced braces opening at `text[open_at] == '{'`, or None.

    A backslash escapes the next character, so `\\{` and `\\}` (set braces) are not counted.
    """
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (also `\\boxed 5`), or None.

    An unbalanced box is skipped in favour of the one before it; only the last
    `_MAX_BOX_ATTEMPTS` boxes are tried, which keeps the scan linear on adversarial text.
    """
    end = len(text)
    for _ in range(_MAX_BOX_ATTEMPTS):
        start, command = max((text.rfind(c, 0, end), c) for c in _BOX_COMMANDS)
        if start < 0:
            return None
        after = start + len(command)
        rest = text[after:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            content = _brace_content(text, len(text) - len(stripped))
            if content is not None:
                return content.strip()
        elif rest[:1] == " " and stripped:
            return re.split(r"[\s$]", stripped, maxsplit=1)[0]  # `\\boxed 5`
        end = start
    return None


def gsm8k_answer(text: str) -> str | None:
    """The text after the last `####` marker (GSM8K's gold format), or None."""
    matches = _GSM8K_RE.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip()
    return answer or None


def last_number(text: str) -> str | None:
    """The last number written in the text (commas between digits kept), or None."""
    matches = _NUMBER_RE.findall(text[-10_000:])
    return matches[-1] if matches else None


def extract_answer(response: str, *, fallback_last_number: bool = False) -> str | None:
    """The final answer of a math response (see the module docstring for the order), or None."""
    text = final_segment(response)
    answer = last_boxed(text)
    if answer is None:
        answer = gsm8k_answer(text)
    if answer is None and fallback_last_number:
        answer = last_number(text)
    return answer


def extract_choice(response: str) -> str | None:
    """The chosen letter (upper case) of a multiple-choice response, or None."""
    text = final_segment(response)
    matches = _CHOICE_RE.findall(text)
    if matches:
        return matches[-1].upper()
    boxed = last_boxed(text)
    if boxed is not None:
        match = _BOXED_LETTER_RE.match(boxed)
        if match:
            return match.group(1).upper()
    return None
