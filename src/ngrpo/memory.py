"""Memory planning: the estimated peak memory of one training process, before anything runs.

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
- bf16 / fp16 compute under autocast (DDP): autocast caches a compute-dtype copy of every matmul
  weight for the whole autocast region, so the rollout holds one (the whole `generate` call runs
  under `accelerator.autocast()`) and so does the learner's forward (saved for the backward). The
  chunked head runs outside the model's forward on the fp32 weight: no copy of it in the learner.
  The residual stream stays fp32 (embedding output + bf16 sublayer outputs).
- FSDP (from the design, DESIGN section 6 and issue 12; checked by the coordinator against the
  merged code): parameters in the compute dtype are gathered a few decoder layers at a time
  (`FSDP_GATHERED_LAYERS`) plus the root's (embeddings, final norm, head); the rollout runs on a
  full-parameter copy in the compute dtype; the reference model is sharded like the policy.
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
  chunked head's chunk buffers and its (V, d) fp32 weight-gradient buffer (`ngrpo.scoring`).

Approximations (say so when quoting numbers):
- every prompt is taken at `max_prompt_length` and every response at `max_completion_length`
  (micro-batches of `micro_batch_size` rows, or exactly `max_tokens_per_micro_batch` tokens): an
  upper bound for real batches;
- attention is assumed to run in a fused kernel (flash / memory-efficient SDPA): no T × T score
  tensor. On a backend that materialises scores, add rows × heads × T² × 4 bytes per layer;
- allocator overheads (CUDA caching-allocator fragmentation, the CUDA context, NCCL buffers,
  CUDA graph pools) are not included: leave ~10-20% headroom on a GPU;
- the bf16 / FSDP / LoRA factors are read from the code and the design, not measured here; the
  CPU measurements (tests/test_memory.py) validate the fp32 full-weight learner terms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ngrpo.errors import NgrpoError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STRATEGIES = ("ddp", "fsdp")
PHASES = ("rollout", "learner", "step")
CAPACITIES_GB = (24, 40, 80, 141)
"""GPU memory sizes the plan reports on (GB = 10⁹ bytes, as GPUs are sold: 24 GB consumer cards,
A100 40 / 80 GB, H100 80 GB, H200 141 GB)."""
FSDP_GATHERED_LAYERS = 2
"""Decoder layers whose full parameters FSDP holds at once (the current one and the prefetched)."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Default LoRA targets (`model.lora.target_modules`): every projection of the decoder layers."""
DEFAULT_CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**22}  # as `ngrpo.scoring.CHUNK_ELEMENTS`


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-family decoder (Qwen2, Llama): what memory depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # Qwen2: q, k, v projections have biases

    @classmethod
    def from_config(cls, config: Mapping, source: str = "config.json") -> ModelShape:
        """From a Hugging Face `config.json` mapping; an `NgrpoError` naming a missing key."""
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")  # fmt: skip
        missing = [k for k in keys if not isinstance(config.get(k), int)]
        if missing:
            raise NgrpoError(f"{source}: needs integer {', '.join(missing)} for a memory plan")
        heads = config["num_attention_heads"]
        bias = config.get("attention_bias", config.get("model_type") == "qwen2")
        return cls(
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"], num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(bias),
        )  # fmt: skip

    @classmethod
    def from_preset(cls, name: str) -> ModelShape:
        """The shape of a preset of `ngrpo.presets.PRESETS` (Qwen2)."""
        from ngrpo.presets import PRESETS

        if name not in PRESETS:
            raise NgrpoError(f"unknown model shape {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_config({**PRESETS[name], "model_type": "qwen2"}, source=f"preset {name}")

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ModelShape:
        """From `path/config.json` (a Hugging Face model directory)."""
        file = Path(path).expanduser() / "config.json"
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise NgrpoError(f"{file}: cannot read the model's shape ({err})") from None
        return cls.from_config(config.get("text_config", config), source=str(file))

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one decoder layer."""
        d, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (d, self.q_dim), "k_proj": (d, self.kv_dim), "v_proj": (d, self.kv_dim),
                "o_proj": (self.q_dim, d), "gate_proj": (d, i), "up_proj": (d, i),
                "down_proj": (i, d)}  # fmt: skip

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's projections (no biases, no norms)."""
        return sum(a * b for a, b in self.projections().values())

    @property
    def layer_params(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        return self.layer_matmul_params + bias + 2 * self.hidden_size  # + two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The output projection's own weight (0 when tied to the input embedding)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def parameters(self) -> int:
        return (self.embedding_params + self.head_params + self.num_layers * self.layer_params
                + self.hidden_size)  # fmt: skip  (+ the final norm)

    def lora_params(self, r: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
        """Adapter parameters: r · (in + out) per targeted projection per layer."""
        shapes = self.projections()
        unknown = [t for t in targets if t.split(".")[-1] not in shapes]
        if unknown:
            raise NgrpoError(f"LoRA target {unknown[0]!r} is not a projection of this model "
                             f"(plan knows {', '.join(shapes)})")  # fmt: skip
        per_layer = sum(r * sum(shapes[t.split(".")[-1]]) for t in targets)
        return self.num_layers * per_layer


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
    new_tokens: int
    num_generations: int = 1
    strategy: str = "ddp"
    world_size: int = 1
    dtype: str = "bfloat16"
    device: str = "cuda"
    lora_r: int = 0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    gradient_checkpointing: bool = False
    reference: bool = False
    chunk_elements: int | None = None
    candidates: int = 1
    """K, soft-input candidates per position (`exploration.mix_top_k` with neighbour mixing)."""
    noise: bool = False
    """The exploration strategy records a noise vector (d floats) per position (gaussian ...)."""
    step_rows: int | None = None
    """Rows of the step's rollout batch held by this process (None: `rollout_rows`)."""
    padded: bool = True
    """Rows of unequal length in a micro-batch (a padding mask is built): true for rollouts."""

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise NgrpoError(f"strategy must be one of {', '.join(STRATEGIES)}, got "
                             f"{self.strategy!r}")  # fmt: skip
        if self.dtype not in DTYPE_BYTES:
            raise NgrpoError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.device not in DEFAULT_CHUNK_ELEMENTS:
            raise NgrpoError(f"device must be cuda or cpu, got {self.device!r}")
        for name in ("world_size", "micro_rows", "micro_width", "rollout_rows", "prompt_tokens",
                     "new_tokens", "num_generations", "candidates"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NgrpoError(f"{name} must be an integer >= 1, got {value!r}")
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
    - attention: q and k after the rotary embedding, v, SDPA's output and o_proj's input (the
      output made contiguous); with a padding mask transformers repeats k and v to the query
      heads before SDPA (no GQA path), so they are q-sized; rotary sin / cos are per position;
    - MLP: gate, SiLU(gate), up and their product, each c·I.
    The rotary products promote q and k to the residual dtype (fp32 cos / sin) under autocast:
    counted at `residual` bytes."""
    d, i, q = s.hidden_size, s.intermediate_size, s.q_dim
    kv = q if padded else s.kv_dim
    norm = 12 * d if residual == 4 else (8 + c) * d
    cast = 5 * c * d if casts else 0
    attention = residual * (q + kv) + c * kv + 2 * c * q
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
    if x.reference and not lora:
        out.append(Component("reference model", math.ceil(s.parameters * c / shard), every,
                             f"train.beta > 0: frozen copy in {x.dtype}{sharded}"))  # fmt: skip
    # ids (8 B) + weights (4 B) per candidate; token ids, masks, log-probs; the noise vector
    record = 12 * x.candidates + 40 + (4 * s.hidden_size if x.noise else 0)
    tokens = (x.step_rows or x.rollout_rows) * (x.prompt_tokens + x.new_tokens)
    out.append(Component("rollout batch", tokens * record, every,
                         f"recorded soft inputs (K={x.candidates}), ids, masks, log-probs"))
    return out


def _rollout_components(x: MemoryInputs, lora: bool, trainable: int, c: int) -> list[Component]:
    s, rows = x.shape, x.rollout_rows
    phase = ("rollout",)
    out = []
    matmul = s.num_layers * s.layer_matmul_params + s.vocab_size * s.hidden_size  # body + head
    if x.strategy == "fsdp":
        out.append(Component("rollout weight copy", s.parameters * c, phase,
                             f"full parameters gathered in {x.dtype}"))  # fmt: skip
    elif c != 4 and not lora:
        out.append(Component("autocast weight copies", matmul * c, phase,
                             f"{x.dtype} casts of the fp32 matmul weights, cached by autocast "
                             "for the whole rollout"))  # fmt: skip
    elif c != 4 and lora:
        out.append(Component("autocast adapter copies", trainable * c, phase))
    length = x.prompt_tokens + x.new_tokens
    out.append(Component("KV cache", rows * length * s.num_layers * 2 * s.kv_dim * c, phase,
                         f"{rows} rows × {length} positions, {x.dtype}"))  # fmt: skip
    prompts = math.ceil(rows / x.num_generations)
    tokens = prompts * x.prompt_tokens
    per_token = 3 * c * s.intermediate_size + 2 * c * s.q_dim + 3 * 4 * s.hidden_size
    out.append(Component("prefill activations", tokens * per_token + 2 * prompts
                         * x.prompt_tokens**2, phase,
                         f"{prompts} distinct prompts at once: one layer's MLP, repeated keys "
                         "/ values, the mask"))  # fmt: skip
    out.append(Component("decode step buffers", 5 * rows * s.vocab_size * 4, phase,
                         "(rows, V) fp32 logits, warped, probabilities, by-row copies"))
    return out


def _learner_components(x: MemoryInputs, lora: bool, c: int) -> list[Component]:
    s = x.shape
    phase = ("learner",)
    tokens = x.micro_rows * x.micro_width
    scored = x.micro_rows * x.response_tokens
    out = []
    if x.strategy == "fsdp":
        gathered = FSDP_GATHERED_LAYERS * s.layer_params + s.parameters - s.num_layers * (
            s.layer_params)  # the root: embeddings, head, final norm
        out.append(Component("FSDP gathered parameters", gathered * c, phase,
                             f"{FSDP_GATHERED_LAYERS} decoder layers + root, {x.dtype}"))
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
        out.append(Component("attention mask", 2 * x.micro_rows * x.micro_width**2, phase,
                             "(rows, 1, T, T) bool padding mask and its causal combination"))
    # final norm output + the picked (M, d) hidden states and their gradient, fp32
    head_in = tokens * 2 * 4 * s.hidden_size + scored * 2 * 4 * s.hidden_size
    out.append(Component("head inputs", head_in, phase, "final hidden states, fp32"))
    elements = x.chunk_elements or DEFAULT_CHUNK_ELEMENTS[x.device]
    chunk_rows = min(scored, max(1, elements // s.vocab_size))
    out.append(Component("head chunk buffers", 2 * chunk_rows * s.vocab_size * 4, phase,
                         f"{chunk_rows} positions × V fp32, twice (log-softmax, softmax)"))
    if not lora:
        out.append(Component("head weight-gradient buffer", s.vocab_size * s.hidden_size * 4,
                             phase, "(V, d) fp32, summed over chunks in the backward"))
    return out


def _step_components(x: MemoryInputs, trainable: int) -> list[Component]:
    s = x.shape
    shard = x.world_size if x.strategy == "fsdp" else 1
    if x.device == "cuda":  # foreach AdamW: one temporary per moment tensor, all at once
        temp, note = math.ceil(trainable * 4 / shard), "foreach: sqrt(exp_avg_sq) of every tensor"
    else:  # single-tensor AdamW: the largest parameter's temporary
        largest = max(s.embedding_params, s.head_params, max(a * b for a, b in
                                                               s.projections().values()))
        temp, note = min(trainable, largest) * 4, "one tensor at a time (CPU)"
    return [Component("AdamW temporaries", temp, ("step",), note)]


def estimate(x: MemoryInputs) -> MemoryPlan:
    """The per-process memory plan of `x` (see the module docstring)."""
    x.validate()
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


# ------------------------------------------------------------------------ from a training config

SHAPE_HINTS = {"7b": "r1-distill-7b", "1.5b": "r1-distill-1.5b"}
"""Config-name fragments -> preset shapes, for the R1 configs whose `model.path` is `???`."""


def shape_for_config(cfg, config_name: str = "", preset: str | None = None) -> ModelShape:
    """The model shape of a training config: `preset` when given, else `model.path`'s
    config.json (`base`: the embedded base model, once built), else for a required (`???`) path
    the preset named by the config's name (`..._7b_...` -> r1-distill-7b)."""
    from ngrpo.config import MISSING

    if preset is not None:
        return ModelShape.from_preset(preset)
    path = str(cfg.model.path)
    if path == MISSING:
        name = Path(config_name).name.lower()
        for hint, shape in SHAPE_HINTS.items():
            if f"_{hint}_" in f"_{name}_".replace(".yaml", "_"):
                return ModelShape.from_preset(shape)
        raise NgrpoError(f"model.path is {MISSING}: give model.path=DIR or --model-shape PRESET")
    if path == "base":
        from ngrpo.base_model import default_base_dir, is_complete_build

        if not is_complete_build(default_base_dir()):
            raise NgrpoError("the embedded base model is not built yet: run `ngrpo build-base` "
                             "or give --model-shape PRESET")  # fmt: skip
        return ModelShape.from_model_dir(default_base_dir())
    return ModelShape.from_model_dir(path)


def inputs_from_config(
    cfg, shape: ModelShape, *, world_size: int = 1, strategy: str | None = None,
    lora_r: int | None = None, device: str = "cuda",
) -> MemoryInputs:  # fmt: skip
    """`MemoryInputs` for a `TrainConfig` run on `world_size` processes of `device`.

    `strategy` / `lora_r` default to the config's `train.strategy` / `model.lora.r` when the
    config has them (else ddp / 0). `model.dtype: auto` plans bfloat16 on CUDA, float32 on CPU.
    Micro-batches are `train.micro_batch_size` rows of prompt + response at their maximum
    lengths, or as many such rows as `train.max_tokens_per_micro_batch` holds (at least one)."""
    from ngrpo.exploration import NOISE_STRATEGIES

    if not isinstance(world_size, int) or world_size < 1:
        raise NgrpoError(f"world size must be an integer >= 1, got {world_size!r}")
    lora = getattr(cfg.model, "lora", None)
    if lora_r is None:
        lora_r = getattr(lora, "r", 0) or 0
    targets = tuple(getattr(lora, "target_modules", None) or LORA_TARGETS)
    strategy = strategy or getattr(cfg.train, "strategy", "ddp")
    dtype = cfg.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    prompt, new = cfg.data.max_prompt_length, cfg.rollout.max_completion_length
    width = prompt + new
    rows = cfg.train.micro_batch_size
    if cfg.train.max_tokens_per_micro_batch is not None:
        rows = max(1, cfg.train.max_tokens_per_micro_batch // width)
    step_rows = max(1, cfg.train.prompts_per_step // world_size) * cfg.rollout.num_generations
    explore = cfg.exploration
    k = explore.mix_top_k if explore.strategy == "neighbor" else 1
    return MemoryInputs(
        shape=shape, micro_rows=rows, micro_width=width, response_tokens=new,
        rollout_rows=cfg.rollout.generation_batch_size or step_rows, step_rows=step_rows,
        prompt_tokens=prompt, new_tokens=new, num_generations=cfg.rollout.num_generations,
        strategy=strategy, world_size=world_size, dtype=dtype, device=device, lora_r=lora_r,
        lora_targets=targets, gradient_checkpointing=cfg.model.gradient_checkpointing,
        reference=cfg.train.beta > 0, candidates=k, noise=explore.strategy in NOISE_STRATEGIES,
    )  # fmt: skip
