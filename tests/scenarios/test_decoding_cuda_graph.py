"""Decoder(cuda_graph=True): the static decode step drives Andromeda steps; other models are refused."""

from types import SimpleNamespace

import pytest
import torch

from andromeda.errors import UnsupportedError
from andromeda.records import RecordStore
from andromeda.runs.manifest import validate
from andromeda.runs.runner import run
from andromeda.scenarios.decoding import Decoder
from andromeda.sources.models import build


def test_graph_decoder_steps_match_the_cached_forward():
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    prompt = torch.randint(0, 256, (2, 8))
    plain, graphed = (Decoder(bundle, 2, 20, True, cuda_graph=g) for g in (False, True))
    assert graphed.graph is not None and graphed.graph.graph is None  # CPU: the static step, eagerly
    a, b = plain.prefill(prompt), graphed.prefill(prompt)
    for _ in range(10):
        assert (a - b).abs().max().item() < 1e-5
        nxt = a.argmax(-1, keepdim=True)
        a, b = plain.step(nxt), graphed.step(nxt)
    assert graphed.cache.length == 18


def test_cuda_graph_is_refused_where_it_is_not_wired():
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    for kw in (dict(use_cache=False), dict(use_cache=True, cache="int8", group_size=16)):
        with pytest.raises(UnsupportedError, match="CUDA-graph"):
            Decoder(bundle, 1, 8, cuda_graph=True, **kw)
    hf = SimpleNamespace(info={"kind": "hf"}, source="hf:gpt2", model=None)
    with pytest.raises(UnsupportedError, match="hf:gpt2: CUDA-graph decoding is wired for Andromeda"):
        Decoder(hf, 1, 8, True, cuda_graph=True)


def test_generation_sweeps_cuda_graph_and_skips_it_off_cuda(tmp_path):
    m = validate({
        "models": ["andromeda:tiny"], "device": "cpu", "report": {"formats": ["csv"]},
        "timing": {"warmup": 1, "min_runs": 2, "max_runs": 3, "budget_s": 0.1},
        "scenarios": [{"scenario": "generation", "prompt_len": [8], "gen_len": [3], "runs": 1,
                       "cuda_graph": [False, True]}]})
    run(m, tmp_path / "run")
    by = {r.params["cuda_graph"]: r for r in RecordStore(tmp_path / "run" / "results.jsonl").read()}
    assert by[False].status == "ok"
    assert by[True].status == "skipped" and "CUDA" in by[True].message


def test_decoder_reports_the_graphed_steps_kernels():
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    assert Decoder(bundle, 1, 8, True).kernels is None  # no graph, no graphed step
    kernels, why = Decoder(bundle, 1, 8, True, cuda_graph=True).kernels
    assert kernels == "torch" and "CUDA" in why  # auto on a CPU cache: the torch step
    with pytest.raises(Exception, match="decode_kernels"):
        validate({"models": ["andromeda:tiny"], "scenarios": [{"scenario": "generation", "decode_kernels": ["cuda"]}]})


@pytest.mark.cuda
def test_generation_records_which_kernels_decoded(tmp_path):
    m = validate({
        "models": ["andromeda:tiny"], "device": "cuda", "report": {"formats": ["csv"]},
        "scenarios": [{"scenario": "generation", "prompt_len": [8], "gen_len": [4], "runs": 1,
                       "cuda_graph": [True], "decode_kernels": ["torch", "triton"]}]})
    run(m, tmp_path / "run")
    by = {r.params["decode_kernels"]: r for r in RecordStore(tmp_path / "run" / "results.jsonl").read()}
    assert {k: r.info["decode_kernels"] for k, r in by.items()} == {"torch": "torch", "triton": "triton"}
    assert all(r.status == "ok" and r.metrics["tpot_ms"] > 0 for r in by.values())
