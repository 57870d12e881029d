"""The static decoder: the model's layers over a preallocated KV cache; the step as a CUDA graph.

`StaticDecoder` runs a Llama-family decoder (`model_type` llama or qwen2 without sliding-window
layers) by calling the model's own submodules — norms, q/k/v/o projections, MLPs, rotary
embedding, final norm, LM head — over a `StaticKVCache` sized to prompt + max_new_tokens:

- `prefill` runs the distinct prompts once (a causal + padding mask; a padding query attends to
  itself, so no attention row is empty) and copies each prompt's keys and values to the rows of
  its samples (`expand`): the n samples of a prompt share one prefill.
- `decode` takes the input embeddings (b, 1, d) of the b rows still in the batch — plain or mixed:
  exploration happens outside, in the engine — and returns their next-token logits (b, V). The
  attention reads the first `length` cache positions, `length` = the positions used so far rounded
  up to `length_quantum` (256 on CUDA, exact on CPU) under a mask of the valid ones, so a step
  costs what the sequence length needs, not the whole preallocated cache. With `cuda_graphs` the
  step is captured once per (batch size, length bucket) as a `torch.cuda.CUDAGraph` (all graphs
  share one memory pool) and replayed: one launch instead of hundreds of small kernels. Capture
  and replay run on the model's GPU (made current, its own streams), whichever GPU is current.
  Every graph writes its logits into one shared (rows, V) fp32 buffer, so a graph pins no output
  of its own, and at most `max_graphs` graphs are kept (the least recently used is dropped):
  within one call the (batch size, length) pairs visited form a monotone path (sizes shrink,
  lengths grow), so the default bound, twice the length buckets plus batch sizes, never evicts a
  graph the same call needs again.
- `compact(keep)` moves the rows still decoding to the front (cache rows, masks, positions), so
  finished rows stop costing compute.

Grouped-query attention for one query token packs the query heads of a key/value head into the
query-length dimension, (b, H_kv, H_q / H_kv, D), so SDPA reads each cached key once instead of
`repeat_kv`'s H_q / H_kv copies (transformers 5.17's SDPA path repeats them whenever a padding mask
is passed). The arithmetic is the model's own (same modules, same rotary formula); in fp32 the
logits equal the model's forward to ~1e-6, which the replay-invariant tests check.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ngrpo.rollout.cache import StaticKVCache
from ngrpo.rollout.weights import LayerWeights, Projection

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def static_unsupported(model) -> str | None:
    """Why the static decoder cannot run `model` (None: it can)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model_type {kind!r} (static decoder: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "sliding-window attention layers"
    rope_type = getattr(model.get_decoder().rotary_emb, "rope_type", "default")
    if "dynamic" in rope_type or rope_type == "longrope":  # frequencies change with the length
        return f"rope type {rope_type!r}"
    return None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (the Llama formula): x (b, H, q, D), cos/sin (b, 1, q, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half
    return x * cos + rotated * sin


def attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of q (b, H_q, q, D) over keys/values (b, H_kv, L, D) under a bool mask
    (b, 1, q, L) -> (b, q, H_q·D). Query head h reads key/value head h // (H_q / H_kv)."""
    b, heads, q_len, dim = q.shape
    groups = heads // keys.shape[1]
    if q_len == 1:  # pack the group into the query dimension: no copies of the cache
        packed = q.reshape(b, keys.shape[1], groups, dim)  # (b, H_kv, G, D)
        out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, scale=scale)
        return out.reshape(b, 1, heads * dim)  # (b, 1, H_q·D)
    keys = keys.repeat_interleave(groups, dim=1)  # (b, H_q, L, D), prefill only
    values = values.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, q_len, heads * dim)  # (b, q, H_q·D)


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


PRECISIONS = ("learner", "compute")
LENGTH_QUANTUM = {"cuda": 256}
"""Attention length buckets by device type (1 elsewhere: exact lengths, nothing is captured)."""


class StaticDecoder:
    """Decode up to `rows` rows of up to `max_len` positions; see the module docstring.

    `precision` (under autocast; identical otherwise): `learner` rounds as the learner's
    full-sequence forward does (the residual stream in the input embedding's dtype, the head and
    log-softmax in the head's dtype outside autocast), `compute` runs everything in the autocast
    dtype (the decoder before the rollout–learner gap was measured: a cheaper head, a larger gap).
    """

    can_compact = True

    def __init__(
        self, model, rows: int, max_len: int, *, cuda_graphs: bool = False,
        precision: str = "learner", max_graphs: int | None = None,
    ) -> None:  # fmt: skip
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.decoder = model.get_decoder()
        self.layers = list(self.decoder.layers)
        lm_head = model.get_output_embeddings()
        config = model.config
        device = lm_head.weight.device
        compute = lm_head.weight.dtype
        if torch.is_autocast_enabled(device.type):  # the projections' output dtype
            compute = torch.get_autocast_dtype(device.type)
        residual = compute
        self.head_autocast = precision == "compute"
        if precision == "learner":
            residual = model.get_input_embeddings().weight.dtype
        self.weights = LayerWeights(self.layers, compute)
        self.head = Projection(lm_head, compute if self.head_autocast else lm_head.weight.dtype)
        self.head_dim = self.layers[0].self_attn.head_dim
        self.cache = StaticKVCache(
            len(self.layers), rows, config.num_key_value_heads, max_len, self.head_dim, compute,
            device,
        )  # fmt: skip
        self.kv_dtype = compute
        self.valid = torch.zeros((rows, max_len), dtype=torch.bool, device=device)  # (R, L)
        self.pos = torch.zeros((rows, 1), dtype=torch.long, device=device)  # (R, 1) next position
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # (1,) next cache column
        self.x = torch.zeros((rows, 1, config.hidden_size), dtype=residual, device=device)
        self.used = 0  # cache columns filled (host copy of `slot`)
        self.rows = 0  # rows in the batch now
        self.capacity = rows  # rows the buffers hold
        self.max_len = max_len
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.device = device
        self.length_quantum = LENGTH_QUANTUM.get(device.type, 1)
        buckets = -(-max_len // self.length_quantum) + rows.bit_length()
        self.max_graphs = max_graphs or 2 * buckets
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # least recently used first
        self.captures = 0  # graphs captured since construction
        self.logits = None  # (R, V) fp32: every graph's output
        self.pool = self.stream = None
        if cuda_graphs:
            vocab = lm_head.weight.shape[0]
            self.logits = torch.zeros((rows, vocab), dtype=torch.float32, device=device)
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(device)  # warm-up and capture, on the model's GPU
        self.capture_seconds = 0.0  # wall time spent warming up and capturing graphs (this call)

    def refresh_weights(self, force: bool = False) -> None:
        """Bring the compute-dtype weight copies up to date, in place (`ngrpo.rollout.weights`:
        all of them with `force`, else those whose source's version counter moved)."""
        self.weights.refresh(force)
        self.head.refresh(force)

    def begin_call(self) -> None:
        """Make a kept decoder ready for another `generate` call: weight copies whose source's
        version counter moved brought up to date (in place; the pool's `weights_changed` refreshes
        them all), graphs kept only when they read nothing autocast caches per call."""
        self.refresh_weights()
        if not (self.weights.graph_safe and self.head.plain):
            self.graphs.clear()
        self.capture_seconds = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the decoder's own buffers: KV cache, compute-dtype weight copies and the
        graphs' logits buffer (not the graph pool: the allocator's, see `ngrpo.memory`)."""
        head = self.head.weight.numel() * self.head.weight.element_size() if self.head.copy else 0
        out = 0 if self.logits is None else self.logits.numel() * 4
        return self.cache.nbytes + self.weights.nbytes + head + out

    # ------------------------------------------------------------------------ model arithmetic

    def _forward(self, x, positions, slots, mask, length) -> torch.Tensor:
        """Hidden states (b, q, d) of inputs x (b, q, d) at `positions` (b, q), written to cache
        columns `slots` (q,), attending to the first `length` columns under `mask` (b, 1, q, L)."""
        cos, sin = self.decoder.rotary_emb(x, positions)  # (b, q, D) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (b, 1, q, D)
        h = x
        for i, layer in enumerate(self.layers):
            w = self.weights[i]
            h = h + self._attention(i, w, layer.self_attn, layer.input_layernorm(h), cos, sin,
                                    slots, mask, length)  # fmt: skip
            g = layer.post_attention_layernorm(h)
            h = h + w["down_proj"](layer.mlp.act_fn(w["gate_proj"](g)) * w["up_proj"](g))
        return self.decoder.norm(h)  # (b, q, d)

    def _attention(self, i, w, attn, h, cos, sin, slots, mask, length) -> torch.Tensor:
        b, q_len, _ = h.shape
        shape = (b, q_len, -1, self.head_dim)
        q = w["q_proj"](h).view(shape).transpose(1, 2)  # (b, H_q, q, D)
        k = w["k_proj"](h).view(shape).transpose(1, 2)  # (b, H_kv, q, D)
        v = w["v_proj"](h).view(shape).transpose(1, 2)  # (b, H_kv, q, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        self.cache.write(i, slots, k.to(self.kv_dtype), v.to(self.kv_dtype))
        keys, values = self.cache.view(i, b, length)  # (b, H_kv, L, D)
        return w["o_proj"](attend(q, keys, values, mask, attn.scaling))  # (b, q, d)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (b, V) fp32 of final hidden states (b, d)."""
        if self.head_autocast:
            return self.head(hidden).float()
        with torch.autocast(hidden.device.type, enabled=False):  # as the learner's chunked head
            return self.head(hidden.to(self.head.weight.dtype)).float()

    # ------------------------------------------------------------------------ engine interface

    def prefill(self, embeds, prompt_mask, positions, expand) -> torch.Tensor:
        """Run the distinct prompts embeds (u, P, d) once; row r of the batch continues prompt
        `expand[r]`. Returns the last prompt position's logits for every row (N, V) fp32."""
        u, width = prompt_mask.shape
        device = prompt_mask.device
        real = prompt_mask.bool()  # (u, P)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()  # (P, P)
        own = torch.eye(width, dtype=torch.bool, device=device)  # a pad query attends to itself
        mask = (causal & real[:, None, :]) | own  # (u, P, P)
        slots = torch.arange(width, device=device)  # (P,)
        hidden = self._forward(embeds.to(self.x.dtype), positions, slots, mask[:, None], width)
        logits = self._logits(hidden[:, -1])  # (u, V)
        self.cache.gather_rows(expand, width)
        self.valid.zero_()
        self.valid[: len(expand), :width] = real[expand]
        self.pos[: len(expand)] = prompt_mask.sum(-1, keepdim=True)[expand]  # (N, 1)
        self.slot.fill_(width)
        self.used, self.rows = width, len(expand)
        return logits[expand]  # (N, V)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Feed inputs x (b, 1, d) to the b = `rows` rows; next-token logits (b, V) fp32."""
        b = self.rows
        self.valid[:, self.used] = True
        length = min(self.max_len, _round_up(self.used + 1, self.length_quantum))
        self.x[:b].copy_(x)
        logits = self._replay(b, length) if self.cuda_graphs else self._step(b, length)
        self.pos.add_(1)
        self.slot.add_(1)
        self.used += 1
        return logits

    def compact(self, keep: torch.Tensor) -> None:
        """Row i of the batch becomes row keep[i] (b' = len(keep) rows remain)."""
        self.cache.gather_rows(keep, self.used)
        self.valid[: len(keep)] = self.valid[keep]
        self.pos[: len(keep)] = self.pos[keep]
        self.rows = len(keep)

    # ------------------------------------------------------------------------ the step, graphed

    def _step(self, b: int, length: int) -> torch.Tensor:
        mask = self.valid[:b, :length].contiguous()[:, None, None]  # (b, 1, 1, L) aligned rows
        hidden = self._forward(self.x[:b], self.pos[:b], self.slot, mask, length)  # (b, 1, d)
        return self._logits(hidden[:, 0])  # (b, V)

    def _replay(self, b: int, length: int) -> torch.Tensor:
        with torch.cuda.device(self.device):  # capture and replay on the model's GPU
            graph = self.graphs.pop((b, length), None)
            if graph is None:
                while len(self.graphs) >= self.max_graphs:  # drop the least recently used
                    del self.graphs[next(iter(self.graphs))]
                graph = self._capture(b, length)
            self.graphs[(b, length)] = graph  # most recently used last
            graph.replay()
        return self.logits[:b]  # (b, V), overwritten by the next replay of any graph

    def _graphed_step(self, b: int, length: int) -> None:
        self.logits[:b].copy_(self._step(b, length))

    def _capture(self, b: int, length: int) -> torch.cuda.CUDAGraph:
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        # warm-up off the capture (cuBLAS workspaces, lazy init); it computes this very step,
        # so writing its keys and values now is harmless: the replay writes the same ones
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self._graphed_step(b, length)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        # the stream named: `torch.cuda.graph`'s own default is made once, on whichever GPU was
        # current then
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            self._graphed_step(b, length)
        torch.cuda.synchronize(self.device)
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
        return graph
