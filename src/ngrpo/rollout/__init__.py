"""The rollout engine (a package; one module per part).

- `sampling`: sampling parameters and the pure warp / sample / log-probability math;
- `batch`: `RolloutBatch`, the record handed to rewards and the learner;
- `cache`: the preallocated (static) KV cache;
- `step`: the static decoder — the model's layers over that cache, the one-token step as a CUDA
  graph;
- `weights`: the static decoder's compute-dtype copies of the projection weights;
- `hf`: calling a Hugging Face model across transformers versions, and the dynamic-cache decoder;
- `plan`: what a call resolves once (sampling, EOS, exploration, marker, neighbour index);
- `decoders`: `EngineOptions`, which decoder runs, `DecoderPool` (a decoder kept from one call to
  the next), compaction of finished rows;
- `engine`: `generate` — the per-step sampling / exploration / recording loop, shared prefill;
- `replay`: the learner's full-sequence forward over the recorded inputs.
"""

from ngrpo.rollout.batch import RolloutBatch
from ngrpo.rollout.decoders import DecoderPool, EngineOptions
from ngrpo.rollout.engine import EXPLORATION_SALT, generate
from ngrpo.rollout.hf import hf_forward, input_embeddings
from ngrpo.rollout.plan import neighbor_search_table
from ngrpo.rollout.replay import replay_logits, replay_logprobs
from ngrpo.rollout.sampling import (
    SamplingParams,
    left_pad,
    position_ids_from_mask,
    sample_tokens,
    token_logprobs,
    warp_logits,
)

__all__ = [
    "EXPLORATION_SALT",
    "DecoderPool",
    "EngineOptions",
    "RolloutBatch",
    "SamplingParams",
    "generate",
    "hf_forward",
    "input_embeddings",
    "left_pad",
    "neighbor_search_table",
    "position_ids_from_mask",
    "replay_logits",
    "replay_logprobs",
    "sample_tokens",
    "token_logprobs",
    "warp_logits",
]
