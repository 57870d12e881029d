"""What the decoding loop needs, resolved once per `generate` call: `Plan` (sampling, EOS ids,
exploration, the answer marker, the neighbour index, the record width), the per-row answer-marker
watch, and the table neighbours are searched in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngrpo.method.exploration import NOISE_STRATEGIES, ExplorationConfig
from ngrpo.method.neighbors import NeighborIndex
from ngrpo.method.soft_inputs import embedding_table
from ngrpo.rollout.hf import input_embeddings
from ngrpo.rollout.sampling import SamplingParams
from ngrpo.utils.errors import NgrpoError


@dataclass
class Plan:
    """Everything the decoding loop needs besides the model, resolved once."""

    sampling: SamplingParams
    eos_ids: torch.LongTensor  # (E,)
    pad_token_id: int
    exploration: ExplorationConfig | None  # None: plain sampling, no gate
    marker: torch.LongTensor | None  # (M,) answer-start ids
    index: NeighborIndex | None
    k: int  # record width

    @property
    def noisy(self) -> bool:
        return self.exploration is not None and self.exploration.strategy in NOISE_STRATEGIES


class MarkerWatch:
    """Per-row flag: has the response emitted the answer-start marker (a token sequence) yet."""

    def __init__(self, marker: torch.LongTensor, rows: int) -> None:
        self.marker = marker  # (M,)
        self.tail = torch.full((rows, len(marker)), -1, dtype=torch.long, device=marker.device)
        self.seen = torch.zeros(rows, dtype=torch.bool, device=marker.device)  # (b,)

    def update(self, y: torch.LongTensor) -> torch.BoolTensor:
        self.tail = torch.cat([self.tail[:, 1:], y.unsqueeze(-1)], dim=1)  # (b, M) last M tokens
        self.seen |= (self.tail == self.marker).all(-1)
        return self.seen


def neighbor_search_table(model, which: str) -> torch.nn.Module:
    """The module whose weight (V, d) neighbours are searched in: `input` = the input embedding,
    `output` = the output projection (`get_output_embeddings()`, the authors' release). The
    mixture is always built from input-embedding rows, so the output table must have one row per
    input-embedding row."""
    embedding = input_embeddings(model)
    if which == "input":
        return embedding
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    if output is None or getattr(output, "weight", None) is None:
        raise NgrpoError(
            "exploration.neighbor_table=output: the model has no output embeddings "
            "(get_output_embeddings() is None); use neighbor_table=input"
        )
    rows_in, rows_out = embedding_table(embedding).shape[0], output.weight.shape[0]
    if rows_in != rows_out:
        raise NgrpoError(
            f"exploration.neighbor_table=output: the output projection has {rows_out} rows but "
            f"the input embedding has {rows_in}; neighbours must index the same vocabulary "
            "(use neighbor_table=input)"
        )
    return output


def make_plan(
    sampling,
    embedding,
    eos_token_id,
    pad_token_id,
    explore,
    answer_start_ids,
    neighbor_index,
    search=None,
) -> Plan:
    """Check the exploration settings against the model and resolve marker, index, record width."""
    table = embedding_table(embedding)
    device = table.device
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    if explore is None:
        return Plan(sampling, eos_ids, pad_token_id, None, None, None, 1)
    explore.validate(vocab_size=table.shape[0])
    if not answer_start_ids:
        raise NgrpoError(
            "mixing needs the tokenised answer marker: pass answer_start_ids="
            "ngrpo.method.exploration.answer_start_ids(tokenizer, exploration.answer_start) "
            "(non-empty)"
        )
    marker = torch.tensor(answer_start_ids, dtype=torch.long, device=device)  # (M,)
    k, index = explore.mix_top_k, None
    if explore.strategy == "neighbor" and k > 1:
        search = embedding if search is None else search
        index = neighbor_index
        if index is None:
            index = NeighborIndex(search, k - 1, explore.metric)
        if index.k < k - 1 or index.metric != explore.metric:
            raise NgrpoError(
                f"neighbor_index has k={index.k}, metric={index.metric!r}; the exploration "
                f"config needs k>={k - 1}, metric={explore.metric!r}"
            )
        if index.table().data_ptr() != embedding_table(search).data_ptr():
            raise NgrpoError(
                "neighbor_index searches a different table than exploration.neighbor_table="
                f"{explore.neighbor_table!r}; build it on ngrpo.rollout.neighbor_search_table"
            )
    return Plan(sampling, eos_ids, pad_token_id, explore, marker, index, k)
