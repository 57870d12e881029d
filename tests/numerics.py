"""Numerical tolerances of the test suite, set from arithmetic rather than from one machine.

Two fp32 computations of the same value that run different operations (another kernel, another
summation order, another batch shape) round differently, and which kernels run depends on the CPU
(`ATEN_CPU_CAPABILITY`, MKL's instruction set). Every test that compares floating-point results
of two paths says which of three claims it makes:

- **same operations**: both paths run the very same kernels on the same data (the same function
  called twice, a checkpoint loaded back, one process vs two with identical shapes): asserted
  bitwise (`torch.equal`, or `atol=0`).
- **same math, another order**: asserted at a bound derived below, never at the error one machine
  happened to show.
- **same function, checked in float64**: to show that two paths compute the same function, the
  test runs both in float64, where rounding (relative 1e-16 per operation) stays many orders of
  magnitude below float32's resolution, and allows only the rounding to float32 of what the
  engine stores (`fp32_storage_atol`). This is the check to use whenever a path feeds its own
  output back: a mixed input is built from the step's logits, so in float32 two decoders' rounding
  differences are amplified at every mixed step (measured: 2e-6 in the logits before a run of
  three mixed Gaussian steps, 4e-4 after them, on `ATEN_CPU_CAPABILITY=default`), while each
  decoder stays consistent with its own records (the replay invariant).

Tests making the second or third kind of claim are marked `numerics`; CI runs them a second time
under another CPU kernel path (`.ci/run`).
"""

from __future__ import annotations

import math

import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23: the spacing of float32 numbers in [1, 2)

REPLAY_ATOL = 1e-4
"""The replay invariant in fp32 (DESIGN section 2): the learner's log-probability of a sampled
token, recomputed by one full-sequence forward over the recorded inputs, equals the rollout's
within 1e-4. The arithmetic, for the test models (2 layers, inner dimensions K <= 64, |logits| <=
10): a rounded dot product of length K has a relative error of about sqrt(K) * eps = 1e-6; a
forward chains about 20 such operations (4 projections, attention and 2 norms per layer, the head),
whose errors add like a random walk, sqrt(20) * 1e-6 = 4.5e-6 relative, i.e. |dz| <= 4.5e-5 at
|z| = 10; a log-probability z_y - logsumexp(z) moves by at most 2 |dz| = 9e-5. Measured on four
kernel paths: at most 6e-6 between a decoder and the exact (float64) replay of its records."""


def ulp32(value: float) -> float:
    """The spacing of float32 numbers at `value` (1 ulp): 2^floor(log2 |value|) * eps."""
    magnitude = abs(float(value))
    if magnitude == 0.0:
        return torch.finfo(torch.float32).tiny
    return FP32_EPS * 2.0 ** math.floor(math.log2(magnitude))


def fp32_storage_atol(max_abs_logit: float) -> float:
    """How far two float64 computations of one log-probability may end up apart once stored in
    float32, when they agree to float64 precision: the engine rounds the logits to float32 before
    its log-softmax (`token_logprobs`), each logit moving by at most half an ulp, and
    z_y - logsumexp(z) moves by at most twice the largest logit change: 1 ulp at the largest
    |logit|, plus 1 ulp of the result's own rounding, doubled for the two paths."""
    return 4.0 * ulp32(max(max_abs_logit, 1.0))
