"""The estimated peak memory of one training process, before anything runs (`ngrpo plan`).

`estimate(MemoryInputs)` is a pure function of the model's shape and the run's settings; it
returns a `MemoryPlan`: named components (bytes) and the moments ("phases") at which each one is
alive. A step goes through three moments, and the peak is the largest of them:
- `rollout`: decoding with a preallocated KV cache (`ngrpo.rollout.step`);
- `learner`: the end of a micro-batch's forward / start of its backward, where every saved
  activation is alive together with the gradients of the previous micro-batches;
- `step`: AdamW's update.
Components alive throughout (weights, gradients, optimizer moments, reference model) count in
every phase. Gradients are counted as persistent: `update_policy` zeroes them only at the start of
the next mini-batch, so they are alive during the next rollout, and from the second micro-batch of
a mini-batch on they are alive during the forward.

What is modelled, from the code (factors in `_learner_components` etc.):
- full-weight training keeps fp32 master weights, fp32 gradients and AdamW's two fp32 moments
  (16 bytes per parameter); under FSDP all three are sharded 1/W, under DDP with W > 1 the
  gradient buckets add one more fp32 copy of the gradients;
- bf16 / fp16 compute under autocast (DDP): the static decoder holds a compute-dtype copy of every
  projection weight of the body (`ngrpo.rollout.weights`; the head too with `rollout.precision:
  compute`), alive during the rollout, or through every phase when the decoder is kept between
  steps (`rollout.keep_decoder`, as is the KV cache); the learner's forward casts them again
  (autocast, saved for the backward). The chunked head runs outside the model's forward on the
  fp32 weight: no copy of it in the learner.
  The residual stream stays fp32 (embedding output + bf16 sublayer outputs).
- FSDP (`ngrpo.sharding`): parameters in the compute dtype are gathered a few decoder layers at a
  time (`FSDP_GATHERED_LAYERS`) plus the root's (embeddings, final norm, head); the rollout,
  evaluation and neighbour index run on a full-parameter copy in the compute dtype that lives for
  the whole run (refreshed in place after every update); the reference model is sharded like
  the policy (held in the compute dtype, its root gathered for its forward).
- LoRA (`lora_r > 0`): the base is frozen in the compute dtype (fp32 when computing in fp32), the
  adapters (r · (in + out) per targeted projection) train in fp32 with their own gradients and
  moments; the reference is the base with adapters disabled (no second copy); the input
  embedding and the head are frozen, so the head's weight gradient is never built.
- the reference model (`beta > 0`, full-weight): one more copy in the compute dtype.
- the rollout: KV cache rows × (prompt + new tokens) × layers × 2 × kv_heads × head_dim in the
  compute dtype; the prefill of the distinct prompts (all prompts of a generation batch at once);
  per-step (rows, V) fp32 logits buffers; the recorded soft inputs.
- the learner's saved activations per token per decoder layer (Qwen2 / Llama block as transformers
  runs it, see `_layer_activation_bytes`), or with gradient checkpointing the layer inputs plus one
  layer recomputed; the backward's working set at one layer; the padding mask (rows × T² bytes)
  and, with a mask, keys / values repeated to the query heads (transformers' SDPA path); the
  chunked head's chunk buffers and its (V, d) fp32 weight-gradient buffer (`ngrpo.learner.scoring`);
  under FSDP one layer's unsharded fp32 gradient before its reduce-scatter.

Approximations (say so when quoting numbers):
- every prompt is taken at `max_prompt_length` and every response at `max_completion_length`
  (micro-batches of `micro_batch_size` rows, or exactly `max_tokens_per_micro_batch` tokens): an
  upper bound for real batches;
- attention is assumed to run in a fused kernel (flash / memory-efficient SDPA): no T × T score
  tensor. On a backend that materialises scores, add rows × heads × T² × 4 bytes per layer;
- allocator overheads (CUDA caching-allocator fragmentation, the CUDA context, NCCL buffers,
  the graphs' own executable memory) are not included: leave ~10-20% headroom on a GPU; the CUDA
  graph pool is the graphs' shared (rows, V) fp32 logits buffer plus one decode step's
  temporaries (from the code, not measured on a GPU); the evaluation decodes on the rollout's
  decoder: the KV cache is the larger of the two, the row count the larger (its prefill is not
  counted);
- not counted: the soft-input embedding's (tokens, K, d) rows at the start of the forward (freed
  before the activations peak), the reference model's no-grad forward (before the policy's),
  the neighbour index's similarity rows (a few (rows, V) tensors on a cache miss);
- the bf16-on-GPU / FSDP / LoRA factors are read from the code and the design, not measured on a
  GPU; the CPU measurements (tests/test_memory.py) validate the fp32 learner terms (plain and
  with checkpointing), the learner under bf16 autocast, a reference model and the rollout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from ngrpo.memory.shape import LORA_TARGETS, ModelShape
from ngrpo.utils.errors import NgrpoError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STRATEGIES = ("ddp", "fsdp")
PHASES = ("rollout", "learner", "step")
CAPACITIES_GB = (24, 40, 80, 141)
"""GPU memory sizes the plan reports on (GB = 10⁹ bytes, as GPUs are sold: 24 GB consumer cards,
A100 40 / 80 GB, H100 80 GB, H200 141 GB)."""
DEVICES = ("cuda", "cpu")
FSDP_GATHERED_LAYERS = 2
"""Decoder layers whose full parameters FSDP holds at once (the current one and the prefetched)."""


@dataclass(frozen=True)
class MemoryInputs:
    """Everything the estimate depends on (per process)."""

    shape: ModelShape
    micro_rows: int
    """Rows of one learner micro-batch."""
    micro_width: int
    """Tokens per row of a micro-batch (prompt + response, padded): micro tokens = rows × width."""
    response_tokens: int
    """Scored (response) tokens per row: what the chunked head runs on."""
    rollout_rows: int
    """Sequences decoded together by this process (`rollout.generation_batch_size`, else the
    step's prompts per process × `rollout.num_generations`)."""
    prompt_tokens: int
    """Longest prompt (`data.max_prompt_length`): the KV cache and the prefill are sized for it."""
    new_tokens: int
    """Tokens decoded per row (`rollout.max_completion_length`)."""
    num_generations: int = 1
    """Rows per prompt (G): the prefill runs each distinct prompt once."""
    strategy: str = "ddp"
    """ddp | fsdp (`train.strategy`)."""
    world_size: int = 1
    """Processes (GPUs); FSDP shards by it, DDP adds gradient buckets when above 1."""
    dtype: str = "bfloat16"
    """Compute dtype: float32 | bfloat16 | float16 (master weights are fp32 regardless)."""
    device: str = "cuda"
    """cuda | cpu: the default head chunk size and AdamW's implementation (foreach on CUDA)."""
    lora_r: int = 0
    """LoRA rank (0: full-weight training)."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """Projections that get adapters (`model.lora.target_modules`)."""
    gradient_checkpointing: bool = False
    """`model.gradient_checkpointing`: only layer inputs are kept for the backward."""
    reference: bool = False
    """A KL reference model is used (`train.beta > 0`)."""
    chunk_elements: int | None = None
    """Logits elements per head chunk (None: `ngrpo.learner.scoring.CHUNK_ELEMENTS` for the
    device)."""
    candidates: int = 1
    """K, soft-input candidates per position (`exploration.mix_top_k` with neighbour mixing)."""
    noise: bool = False
    """The exploration strategy records a noise vector (d floats) per position (gaussian ...)."""
    step_rows: int | None = None
    """Rows of the step's rollout batch held by this process (None: `rollout_rows`)."""
    padded: bool = True
    """Rows of unequal length in a micro-batch (a padding mask is built): true for rollouts."""
    keep_decoder: bool = False
    """The static decoder (KV cache, weight copies) is kept between steps (`rollout.keep_decoder`):
    alive through the learner phase too."""
    fp32_head: bool = True
    """The decoder's head runs on the fp32 weight (`rollout.precision: learner`): no copy of it."""
    cuda_graphs: bool = False
    """The decode step runs as CUDA graphs (`rollout.cuda_graphs`): a graph pool is counted."""
    eval_rows: int = 0
    """Rows the evaluation decodes together on the rollout's decoder (0: no evaluation)."""
    eval_tokens: int = 0
    """Positions of an evaluation row (`data.max_prompt_length` + `eval.max_new_tokens`)."""

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise NgrpoError(f"strategy must be one of {', '.join(STRATEGIES)}, got "
                             f"{self.strategy!r}")  # fmt: skip
        if self.dtype not in DTYPE_BYTES:
            raise NgrpoError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise NgrpoError(f"device must be cuda or cpu, got {self.device!r}")
        for name in ("world_size", "micro_rows", "micro_width", "response_tokens", "rollout_rows",
                     "prompt_tokens", "new_tokens", "num_generations", "candidates"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NgrpoError(f"{name} must be an integer >= 1, got {value!r}")
        if min(self.eval_rows, self.eval_tokens) < 0:
            raise NgrpoError(f"eval_rows and eval_tokens must be >= 0, got {self.eval_rows}, "
                             f"{self.eval_tokens}")  # fmt: skip
        if self.lora_r < 0:
            raise NgrpoError(f"lora_r must be >= 0 (0: no LoRA), got {self.lora_r}")
        if self.lora_r > 0 and self.strategy == "fsdp":
            raise NgrpoError("FSDP with LoRA is not supported: use strategy ddp with LoRA, or "
                             "LoRA r = 0 with FSDP")  # fmt: skip


@dataclass(frozen=True)
class Component:
    """One named share of memory and the phases during which it is alive."""

    name: str
    bytes: int
    phases: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate: components, the total of each phase and the peak (the largest phase)."""

    inputs: MemoryInputs
    components: tuple[Component, ...]
    parameters: int
    trainable_parameters: int
    phase_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_bytes.values())

    def peak_of(self, phases: tuple[str, ...]) -> int:
        """The largest total among `phases` (e.g. ("learner", "step") for an update alone)."""
        return max(self.phase_bytes[p] for p in phases)

    @property
    def peak_phase(self) -> str:
        return max(self.phase_bytes, key=self.phase_bytes.__getitem__)

    def fits(self, capacities_gb: tuple[int, ...] = CAPACITIES_GB) -> dict[str, bool]:
        """Whether the peak fits in each capacity (GB = 10⁹ bytes), keyed like "80GB"."""
        return {f"{gb}GB": self.peak_bytes <= gb * 10**9 for gb in capacities_gb}

    def to_dict(self) -> dict:
        inputs = asdict(self.inputs)
        inputs["lora_targets"] = list(self.inputs.lora_targets)
        return {
            "inputs": inputs, "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            "components": [asdict(c) | {"phases": list(c.phases)} for c in self.components],
            "phase_bytes": dict(self.phase_bytes), "peak_bytes": self.peak_bytes,
            "peak_phase": self.peak_phase, "fits": self.fits(),
        }  # fmt: skip


# ------------------------------------------------------------------------------- the estimate


def _layer_activation_bytes(s: ModelShape, c: int, residual: int, casts: bool, padded: bool):
    """Bytes one decoder layer saves for its backward, per token (transformers' Qwen2 / Llama
    block in training mode):
    - each RMSNorm upcasts to fp32 and saves its fp32 input, the normalised fp32 tensor and its
      output (3 × 4·d), or with a compute-dtype residual the fp32 upcast, the normalised tensor
      and the compute-dtype output (4·d + 4·d + c·d);
    - under autocast with fp32 weights every projection casts its input to the compute dtype and
      saves that copy: 3 (q, k, v) + 2 (gate, up) copies of c·d;
    - attention: SDPA's inputs q, k, v, its output and o_proj's input (the output made
      contiguous), each in the compute dtype (under autocast the rotary products come out fp32,
      as cos / sin follow the fp32 residual, and SDPA saves its own compute-dtype casts of them);
      with a padding mask transformers repeats k and v to the query heads before SDPA (no GQA
      path), so they are q-sized; rotary sin / cos are per position, shared by the layers;
    - MLP: gate, SiLU(gate), up and their product, each c·I."""
    d, i, q = s.hidden_size, s.intermediate_size, s.q_dim
    kv = q if padded else s.kv_dim
    norm = 12 * d if residual == 4 else (8 + c) * d
    cast = 5 * c * d if casts else 0
    attention = c * (q + 2 * kv) + 2 * c * q
    mlp = 4 * c * i
    return 2 * norm + cast + attention + mlp


def _backward_working_bytes(s: ModelShape, c: int) -> int:
    """Per token: gradients alive while one layer runs its backward (the incoming residual
    gradient and the MLP's intermediate gradients), fp32 for the residual. Calibrated against
    the CPU measurement (fp32); an approximation elsewhere."""
    return 2 * 4 * s.hidden_size + 2 * c * s.intermediate_size


def _persistent(x: MemoryInputs, lora: bool, trainable: int, c: int) -> list[Component]:
    s, shard = x.shape, x.world_size if x.strategy == "fsdp" else 1
    every = PHASES
    out = []
    if lora:
        base = 4 if c == 4 else c
        out.append(Component("frozen base weights", s.parameters * base, every,
                             f"{x.dtype if c != 4 else 'float32'}, not trained"))  # fmt: skip
        out.append(Component("adapter weights", trainable * 4, every, "fp32"))
    else:
        note = "fp32" + (f", sharded 1/{shard}" if shard > 1 else "")
        out.append(Component("master weights", math.ceil(s.parameters * 4 / shard), every, note))
    sharded = f", sharded 1/{shard}" if shard > 1 else ""
    out.append(Component("gradients", math.ceil(trainable * 4 / shard), every,
                         "fp32" + sharded + "; kept until the next mini-batch"))  # fmt: skip
    out.append(Component("AdamW moments", math.ceil(2 * trainable * 4 / shard), every,
                         "exp_avg + exp_avg_sq, fp32" + sharded))  # fmt: skip
    if x.strategy == "ddp" and x.world_size > 1:
        out.append(Component("DDP gradient buckets", trainable * 4, every,
                             "one fp32 copy of the gradients for the all-reduce"))  # fmt: skip
    if x.reference and not lora:  # sharded like the policy under FSDP (ngrpo.trainer.setup._setup)
        out.append(Component("reference model", math.ceil(s.parameters * c / shard), every,
                             f"train.beta > 0: frozen copy in {x.dtype}{sharded}"))  # fmt: skip
    if x.strategy == "fsdp":
        out.append(
            Component(
                "rollout weight copy",
                s.parameters * c,
                every,
                f"full parameters in {x.dtype} for rollout / eval, kept all run",
            )
        )
    # ids (8 B) + weights (4 B) per candidate; token ids, masks, log-probs; the noise vector
    record = 12 * x.candidates + 40 + (4 * s.hidden_size if x.noise else 0)
    tokens = (x.step_rows or x.rollout_rows) * (x.prompt_tokens + x.new_tokens)
    out.append(
        Component(
            "rollout batch",
            tokens * record,
            every,
            f"recorded soft inputs (K={x.candidates}), ids, masks, log-probs",
        )
    )
    return out


def _rollout_components(x: MemoryInputs, lora: bool, trainable: int, c: int) -> list[Component]:
    s, rows = x.shape, x.rollout_rows
    phase = ("rollout",)
    decoder = PHASES if x.keep_decoder else phase  # a kept decoder lives through every phase
    kept = ", kept between steps" if x.keep_decoder else ""
    out = []
    matmul = s.num_layers * s.layer_matmul_params  # the body's projections
    if not x.fp32_head:  # `rollout.precision: compute`: the head is copied too
        matmul += s.vocab_size * s.hidden_size
    if x.strategy == "fsdp":
        pass  # the rollout weight copy is persistent (`_persistent`)
    elif c != 4 and not lora:
        out.append(Component("decoder weight copies", matmul * c, decoder,
                             f"{x.dtype} copies of the fp32 projection weights the static decoder "
                             f"holds (ngrpo.rollout.weights){kept}"))  # fmt: skip
    elif c != 4 and lora:
        out.append(Component("autocast adapter copies", trainable * c, phase))
    length = x.prompt_tokens + x.new_tokens
    per_position = s.num_layers * 2 * s.kv_dim * c
    note = f"{rows} rows × {length} positions, {x.dtype}{kept}"
    if x.eval_rows * x.eval_tokens > rows * length:  # the evaluation re-sizes the decoder
        note = (f"the evaluation's {x.eval_rows} rows × {x.eval_tokens} positions (the rollout's: "
                f"{rows} × {length}), {x.dtype}{kept}")  # fmt: skip
        rows, length = x.eval_rows, x.eval_tokens
    out.append(Component("KV cache", rows * length * per_position, decoder, note))
    rows = max(x.rollout_rows, x.eval_rows)  # the decoder's rows: the rollout's or evaluation's
    if x.cuda_graphs:
        head = s.vocab_size * (4 if x.fp32_head else 4 + c)  # the head's output (and fp32 copy)
        body = 3 * c * s.intermediate_size + 2 * c * (s.q_dim + s.kv_dim) + 12 * s.hidden_size
        mask = max(length, x.eval_tokens)  # one bool per position and row
        out.append(Component("CUDA graph pool", rows * (4 * s.vocab_size + head + body + mask),
                             decoder, f"the graphs' (rows, V) fp32 logits buffer and one decode "
                             f"step's temporaries at {rows} rows{kept}"))  # fmt: skip
    prompts = math.ceil(x.rollout_rows / x.num_generations)
    tokens = prompts * x.prompt_tokens
    per_token = 3 * c * s.intermediate_size + 2 * c * s.q_dim + 3 * 4 * s.hidden_size
    out.append(Component("prefill activations", tokens * per_token + 2 * prompts
                         * x.prompt_tokens**2, phase,
                         f"{prompts} distinct prompts at once: one layer's MLP, repeated keys "
                         "/ values, the mask"))  # fmt: skip
    out.append(
        Component(
            "decode step buffers",
            5 * rows * s.vocab_size * 4,
            phase,
            "(rows, V) fp32 logits, warped, probabilities, by-row copies",
        )
    )
    return out


def _learner_components(x: MemoryInputs, lora: bool, c: int) -> list[Component]:
    s = x.shape
    phase = ("learner",)
    tokens = x.micro_rows * x.micro_width
    scored = x.micro_rows * x.response_tokens
    out = []
    if x.strategy == "fsdp":
        gathered = (
            FSDP_GATHERED_LAYERS * s.layer_params + s.parameters - s.num_layers * (s.layer_params)
        )  # the root: embeddings, head, final norm
        out.append(
            Component(
                "FSDP gathered parameters",
                gathered * c,
                phase,
                f"{FSDP_GATHERED_LAYERS} decoder layers + root, {x.dtype}",
            )
        )
        out.append(
            Component(
                "FSDP unsharded gradients",
                s.layer_params * 4,
                phase,
                "one layer's fp32 gradient before its reduce-scatter",
            )
        )
    elif c != 4 and not lora:
        out.append(Component("autocast weight copies", s.num_layers * s.layer_matmul_params * c,
                             phase, f"{x.dtype} casts of the body's weights, saved for the "
                             "backward"))  # fmt: skip
    residual = 4 if (c == 4 or (x.strategy == "ddp" and not lora)) else c
    casts = c != 4 and x.strategy == "ddp" and not lora
    per_layer = _layer_activation_bytes(s, c, residual, casts, x.padded)
    if x.gradient_checkpointing:
        saved = tokens * (s.num_layers * residual * s.hidden_size + per_layer)
        note = "layer inputs + one layer recomputed (gradient checkpointing)"
    else:
        saved = tokens * s.num_layers * per_layer
        note = f"{per_layer:,} bytes per token per layer"
    out.append(Component("activations", saved, phase, f"{tokens:,} tokens: {note}"))
    out.append(Component("backward working set", tokens * _backward_working_bytes(s, c), phase,
                         "gradients inside one layer's backward"))  # fmt: skip
    if x.padded:
        out.append(
            Component(
                "attention mask",
                2 * x.micro_rows * x.micro_width**2,
                phase,
                "(rows, 1, T, T) bool padding mask and its causal combination",
            )
        )
    # final norm output + the picked (M, d) hidden states and their gradient, fp32
    head_in = tokens * 2 * 4 * s.hidden_size + scored * 2 * 4 * s.hidden_size
    out.append(Component("head inputs", head_in, phase, "final hidden states, fp32"))
    from ngrpo.learner.scoring import CHUNK_ELEMENTS  # the learner's default chunk size per device

    elements = x.chunk_elements or CHUNK_ELEMENTS[x.device]
    chunk_rows = min(scored, max(1, elements // s.vocab_size))
    out.append(
        Component(
            "head chunk buffers",
            2 * chunk_rows * s.vocab_size * 4,
            phase,
            f"{chunk_rows} positions × V fp32, twice (log-softmax, softmax)",
        )
    )
    if not lora:
        out.append(
            Component(
                "head weight-gradient buffer",
                s.vocab_size * s.hidden_size * 4,
                phase,
                "(V, d) fp32, summed over chunks in the backward",
            )
        )
    return out


def _step_components(x: MemoryInputs, trainable: int) -> list[Component]:
    s = x.shape
    shard = x.world_size if x.strategy == "fsdp" else 1
    if x.device == "cuda":  # foreach AdamW: one temporary per moment tensor, all at once
        temp, note = math.ceil(trainable * 4 / shard), "foreach: sqrt(exp_avg_sq) of every tensor"
    else:  # single-tensor AdamW: the largest parameter's temporary
        largest = max(
            s.embedding_params, s.head_params, max(a * b for a, b in s.projections().values())
        )
        temp, note = min(trainable, largest) * 4, "one tensor at a time (CPU)"
    return [Component("AdamW temporaries", temp, ("step",), note)]


def estimate(x: MemoryInputs) -> MemoryPlan:
    """The per-process memory plan of `x` (see the module docstring). FSDP over one process
    shards nothing (the trainer runs it as a plain single-process run): estimated as DDP."""
    x.validate()
    if x.strategy == "fsdp" and x.world_size == 1:
        x = dataclasses.replace(x, strategy="ddp")
    c = DTYPE_BYTES[x.dtype]
    lora = x.lora_r > 0
    trainable = x.shape.lora_params(x.lora_r, x.lora_targets) if lora else x.shape.parameters
    components = (
        _persistent(x, lora, trainable, c)
        + _rollout_components(x, lora, trainable, c)
        + _learner_components(x, lora, c)
        + _step_components(x, trainable)
    )
    phase_bytes = {p: sum(k.bytes for k in components if p in k.phases) for p in PHASES}
    return MemoryPlan(x, tuple(components), x.shape.parameters, trainable, phase_bytes)
