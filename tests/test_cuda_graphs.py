"""The static decoder's CUDA-graph branch, forced on CPU: `torch.cuda`'s stream, graph and
synchronisation calls are replaced by recorders that assert every one of them acts on the model's
device, whichever device is current; and the graphs kept across many pooled calls stay bounded.

A recorded "capture" runs its body eagerly (real CPU arithmetic), and a recorded replay does
nothing: with exact lengths (CPU's length quantum of 1) every step is a new (batch size, length)
pair, so every step is captured and its logits are the step's own; with the GPU's bucketing forced,
replays return stale logits (fine for counting graphs, not for sampling)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_rollout import _tiny

import ngrpo.rollout.decoders as decoders
import ngrpo.rollout.step as step
from ngrpo.rollout import DecoderPool, EngineOptions
from ngrpo.rollout.step import StaticDecoder


class FakeCuda:
    """Recorders for `torch.cuda.{device, synchronize, Stream, current_stream, stream, graph,
    CUDAGraph, graph_pool_handle}`. The current device starts as `cuda:0`, which is not the
    model's; every call must act on `expected` (the model's device), given explicitly or made
    current first."""

    def __init__(self, monkeypatch, expected: torch.device):
        self.expected = expected
        self.current = torch.device("cuda", 0)
        self.calls: list[str] = []
        self.replays = 0
        self.live_graphs = 0
        fake = self

        class Stream:
            def __init__(self, device=None, priority=0):
                self.device = fake._on(device, "Stream")

            def wait_stream(self, other):
                assert other.device == self.device == fake.expected, "stream of another device"

        class CUDAGraph:
            def __init__(self):
                fake.live_graphs += 1

            def __del__(self):
                fake.live_graphs -= 1

            def replay(self):
                fake._on(None, "replay")
                fake.replays += 1

        default_capture_stream = Stream.__new__(Stream)  # `graph`'s own: made once, on cuda:0
        default_capture_stream.device = torch.device("cuda", 0)

        @contextlib.contextmanager
        def graph(cuda_graph, pool=None, stream=None, **_):
            fake._on(None, "graph")
            capture = stream or default_capture_stream
            assert capture.device == fake.expected, f"captured on {capture.device}'s stream"
            yield

        @contextlib.contextmanager
        def device(where):
            before, fake.current = fake.current, torch.device(where)
            try:
                yield
            finally:
                fake.current = before

        @contextlib.contextmanager
        def stream(s):
            assert s.device == fake.expected, f"stream of {s.device}"
            yield

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", CUDAGraph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: self._on(d, "synchronize"))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: Stream(d))
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool", 1))

    def _on(self, device, what: str) -> torch.device:
        where = self.current if device is None else torch.device(device)
        self.calls.append(what)
        assert where == self.expected, f"{what} on {where}, the model is on {self.expected}"
        return where


def _decode(decoder: StaticDecoder, model, steps: int) -> list[torch.Tensor]:
    """Prefill two prompts, then feed `steps` fixed tokens; the logits of every decode step."""
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    embed = model.get_input_embeddings()
    decoder.prefill(embed(ids), mask, positions, torch.tensor([0, 0, 1]))
    return [decoder.decode(embed(torch.tensor([[11 + t]] * 3))).clone() for t in range(steps)]


def test_graphs_are_captured_and_replayed_on_the_models_device(monkeypatch):
    model = _tiny("qwen2")
    with torch.no_grad():
        plain = _decode(StaticDecoder(model, 3, 12), model, 6)
        fake = FakeCuda(monkeypatch, expected=torch.device("cpu"))
        graphed = StaticDecoder(model, 3, 12, cuda_graphs=True)
        logits = _decode(graphed, model, 6)
    assert fake.calls.count("graph") == graphed.captures == 6  # one (3, length) pair per step
    assert fake.replays == 6 and fake.current == torch.device("cuda", 0)  # restored afterwards
    for a, b in zip(logits, plain, strict=True):  # the graphed step computes the plain step
        assert torch.equal(a, b)


def test_kept_graphs_and_their_pinned_bytes_stay_bounded_over_many_pooled_calls(monkeypatch):
    fake = FakeCuda(monkeypatch, expected=torch.device("cpu"))
    monkeypatch.setitem(step.LENGTH_QUANTUM, "cpu", 2)  # the GPU's bucketing, at test scale
    monkeypatch.setattr(decoders, "decoder_kind", lambda *a: ("static", True))
    model, pool, visited, sizes = _tiny("qwen2"), DecoderPool(), set(), []
    embed = model.get_input_embeddings()
    prompt = torch.tensor([[5, 6, 7]] * 16)
    for call in range(8):  # rows finish later in every call: other (batch size, length) pairs
        decoder = pool.get(model, EngineOptions("static"), 16, 27, torch.device("cpu"))
        with torch.no_grad():
            decoder.prefill(embed(prompt), torch.ones_like(prompt), torch.arange(3).expand(16, 3),
                            torch.arange(16))  # fmt: skip
            for t in range(24):
                if decoder.rows > 1 and t >= 2 * call and (t - 2 * call) % 3 == 2:  # half finish
                    decoder.compact(torch.arange(decoder.rows // 2))
                visited.add((decoder.rows, min(27, -(-(decoder.used + 1) // 2) * 2)))
                decoder.decode(embed(torch.tensor([[11]] * decoder.rows)))
        assert len(decoder.graphs) <= decoder.max_graphs
        assert all(isinstance(g, torch.cuda.CUDAGraph) for g in decoder.graphs.values())  # no
        sizes.append(decoder.nbytes)  # output tensor per graph: one shared (R, V) logits buffer
    assert pool.decoder is decoder and pool.reused == 7
    assert decoder.max_graphs == 2 * (14 + 5)  # 27 positions in buckets of 2; sizes 16 .. 1
    assert decoder.captures == len(visited) > decoder.max_graphs  # the bound was reached ...
    assert fake.live_graphs == len(decoder.graphs) == decoder.max_graphs  # ... and held
    assert len(set(sizes)) == 1  # the decoder's memory does not grow with its graphs
    assert decoder.nbytes >= decoder.logits.numel() * 4 == 16 * 100 * 4


@pytest.mark.parametrize("max_graphs", [1, 3])
def test_a_call_needing_more_graphs_than_the_bound_still_decodes(monkeypatch, max_graphs):
    FakeCuda(monkeypatch, expected=torch.device("cpu"))
    model = _tiny("qwen2")
    with torch.no_grad():
        plain = _decode(StaticDecoder(model, 3, 12), model, 5)
        graphed = StaticDecoder(model, 3, 12, cuda_graphs=True, max_graphs=max_graphs)
        logits = _decode(graphed, model, 5)
    assert len(graphed.graphs) == max_graphs and graphed.captures == 5
    assert all(torch.equal(a, b) for a, b in zip(logits, plain, strict=True))
