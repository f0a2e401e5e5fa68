"""benchmarks/context_parallel.py --smoke through torchrun (2 gloo processes on the CPU): the JSON's rows and
their arithmetic. The comparison with PyTorch's context_parallel runs on CUDA only; here: its arguments, why it is
skipped, and the matched Llama it runs with the call it makes (in this process)."""

import importlib
import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench_scripts import load

from andromeda.measure.facts import facts_from_config
from andromeda.model import from_name

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "context_parallel.py"


@pytest.fixture(scope="module")
def cpb():
    return load("context_parallel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_smoke_two_ranks(tmp_path):
    out = tmp_path / "cp.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(_free_port()), str(BENCH), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"git_commit", "device", "versions", "args", "rows"} <= set(res)
    if importlib.util.find_spec("transformers") is not None:  # on by default, and it says why it did not run
        why = res["torch_cp"]["skipped"]
        assert "CUDA" in why and "_for_cpu has no sharding strategy" in why
    assert not any("torch_cp" in row for row in res["rows"])
    for row, n in zip(res["rows"], [128, 256], strict=True):
        assert row["n"] == n and row["world"] == 2
        assert row["prefill_ms"] == sorted(row["prefill_ms_runs"])[len(row["prefill_ms_runs"]) // 2]
        assert all(0 <= c <= t for c, t in zip(row["rank_comm_ms"], row["rank_ms_timed_run"], strict=True))
        assert row["balance_max_over_min"] >= 1
        assert row["scaling_efficiency"] == row["single_device_ms"] / (2 * row["prefill_ms"])
        chunks = sorted(tuple(c) for rank in row["chunks"] for c in rank)
        assert chunks[0][0] == 0 and chunks[-1][1] == n


def test_torch_cp_arguments_and_why_it_does_not_run(cpb, monkeypatch):
    args = cpb.parser().parse_args(["--json", "x.json"])
    assert args.torch_cp is None and args.cp_rotate == "alltoall" and not args.cp_repeat_kv
    assert cpb.parser().parse_args(["--json", "x", "--no-torch-cp"]).torch_cp is False
    assert cpb.parser().parse_args(["--json", "x", "--torch-cp", "--cp-rotate", "allgather"]).cp_rotate == "allgather"
    with pytest.raises(SystemExit):
        cpb.parser().parse_args(["--json", "x", "--cp-rotate", "ring"])
    cpu = torch.device("cpu")
    assert cpb.torch_cp_unavailable(cpu, False) == "not asked for (--no-torch-cp)"
    assert cpb.torch_cp_unavailable(cpu, True) == cpb.CPU_REASON
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    assert "pip install 'andromeda[hf]'" in cpb.torch_cp_unavailable(torch.device("cuda"), None)


def _sdpa_calls(monkeypatch) -> list[dict]:
    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append({"mask": kw.get("attn_mask"), "causal": kw.get("is_causal"), "gqa": kw.get("enable_gqa", False),
                      "q_heads": q.shape[1], "kv_heads": k.shape[1]})
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)  # transformers calls it through the module
    return calls


def test_matched_llama_and_the_call_context_parallel_needs(cpb, monkeypatch):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    llama = cpb.matched_llama("tiny", 64, torch.device("cpu"), torch.float32)
    cfg, facts = from_name("tiny"), facts_from_config(from_name("tiny"))
    assert llama.source == "hf:matched:tiny?max_seq_len=64" and llama.info["matched"]["within_2pct"]
    c = llama.model.config
    shape = (c.num_key_value_heads, c.num_attention_heads, c.head_dim)
    assert shape == (cfg.n_kv_heads, cfg.heads, cfg.dim_head) == (1, 4, 16)
    n_params = sum(p.numel() for p in llama.model.parameters())
    assert abs(n_params / facts.params - 1) <= 0.02  # the same work: parameters within 2%
    tokens = torch.randint(0, cfg.num_tokens, (1, 32), generator=torch.Generator().manual_seed(1))
    calls = _sdpa_calls(monkeypatch)
    out = cpb.llama_prefill(llama.model, tokens, torch.arange(32)[None])
    with torch.no_grad():
        ref = llama.model(input_ids=tokens, use_cache=False).logits[:, -1:]
    torch.testing.assert_close(out, ref)  # the last position's logits, as the plain forward's
    # rank 0 of 2 under context_parallel's head-tail shard holds positions 0-7 and 24-31: a jump
    shard = torch.cat([tokens[:, :8], tokens[:, 24:]], 1)
    positions = torch.cat([torch.arange(8), torch.arange(24, 32)])[None]
    calls.clear()
    cpb.llama_prefill(llama.model, shard, positions)
    assert all(c["mask"] is None and c["causal"] is True and c["gqa"] for c in calls) and len(calls) == cfg.depth
    calls.clear()
    with torch.no_grad():  # without the all-ones mask, transformers reads the jump as two packed sequences
        llama.model(input_ids=shard, position_ids=positions, use_cache=False)
    assert calls[0]["mask"] is not None and not calls[0]["causal"]
    calls.clear()
    with cpb.repeated_kv(True):
        cpb.llama_prefill(llama.model, shard, positions)
    assert all(not c["gqa"] and c["kv_heads"] == c["q_heads"] == 4 for c in calls)
    from transformers.integrations import sdpa_attention

    assert sdpa_attention.use_gqa_in_sdpa(None, torch.zeros(1, 1, 2, 16), torch.zeros(1, 1, 2, 16))  # restored
