"""A short demo: parameter counts of every preset, then generation from one of them."""

from __future__ import annotations

import time

import torch

from andromeda.devices import resolve_device
from andromeda.model import PRESETS, Andromeda, ByteTokenizer, from_name


def demo(model: str, prompt: str, tokens: int, device: str = "auto") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Andromeda presets")
    for col in ("preset", "params", "non-embedding", "dim", "depth", "heads", "kv heads"):
        table.add_column(col, justify="right" if col != "preset" else "left")
    for name in PRESETS:
        cfg = from_name(name)
        with torch.device("meta"):
            m = Andromeda(cfg)
        table.add_row(name, f"{m.num_params() / 1e6:,.1f}M", f"{m.num_params(True) / 1e6:,.1f}M",
                      str(cfg.dim), str(cfg.depth), str(cfg.heads), str(cfg.n_kv_heads))
    console.print(table)
    dev = resolve_device(device)
    net = Andromeda(from_name(model)).to(dev).eval()
    tok = ByteTokenizer()
    ids = torch.tensor([tok.encode(prompt, add_bos=True)], device=dev)
    start = time.perf_counter()
    out = net.generate(ids, tokens, temperature=0.8, top_k=50)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - start
    console.print(f"[bold]{model}[/] on {dev}: {tokens} tokens in {dt * 1e3:.1f} ms (random weights)")
    console.print(repr(tok.decode(out[0].tolist())))
