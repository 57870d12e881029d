"""Preloaded by the grading forkserver (`ngrpo.rewards.pool`): one numeric and one symbolic
comparison warm math-verify's parser and sympy's caches once, in the server, so that every worker
forked from it (a replacement after a timeout included) answers its first question at full speed
instead of spending its first deadline on warm-up."""

import logging

logging.getLogger("math_verify").setLevel(logging.ERROR)

from ngrpo.rewards.equivalence import math_equal  # noqa: E402 - after silencing the logger

math_equal("1/2004!", "1/2006!")
math_equal("\\sqrt{1/n}", "\\frac{1}{\\sqrt{n}}")
