"""load_balance: each rank's compute time alone, its spread over the ranks, and stragglers.
Needs the manifest's launcher.

Every rank times the same work on its own device at the same time: a forward (or forward and
backward) of the model on `batch` random sequences, with no collective inside, `warmup` + `iters`
runs, all ranks lined up by a barrier before each run (outside the timed region). In a data-parallel
step the ranks wait for each other in collectives, which hides a slow rank behind waiting; timed
alone, a slow GPU, a throttled one or a rank on a busy node shows as it is.

One record per case: compute_ms (median over ranks of each rank's median),
compute_ms_max_over_min_ranks and compute_ms_cv_ranks (population std over mean of the per-rank
medians), compute_ms_slowest_rank, stragglers (ranks whose median is more than straggler_threshold
above the median of the other ranks' medians; listed in info.stragglers, with a warning), and
tokens_per_s_per_rank. Samples: every rank's compute_ms as compute_ms@rank<r>.
"""

from __future__ import annotations

import numpy as np
import torch

from andromeda.measure.balance import load_balance
from andromeda.measure.timing import time_fn
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length, random_tokens, zero_grads
from andromeda.scenarios.config.load_balance import LoadBalanceConfig
from andromeda.scenarios.multiprocess import barrier, dist_of, fixed_count_timing


@register("load_balance")
class LoadBalance:
    Config = LoadBalanceConfig

    def run(self, bundle, p, ctx):
        d = dist_of(ctx)
        if (reason := check_length(bundle, p["seq_len"])) is not None:
            return ctx.skip(reason)
        tokens = random_tokens(bundle, p["batch"], p["seq_len"], ctx.device, seed=ctx.seed + 7919 * d.rank)
        model = bundle.model

        if p["mode"] == "forward":
            def fn():
                with torch.no_grad():
                    return bundle.logits(tokens)

            model.eval()
            setup = lambda: barrier(ctx.device)  # noqa: E731
        else:
            def fn():
                bundle.loss(tokens).backward()

            def setup():
                zero_grads(model)
                barrier(ctx.device)

            model.train()
        t = time_fn(fn, ctx.device, fixed_count_timing(ctx, p["warmup"], p["iters"]), setup=setup)
        zero_grads(model)
        model.eval()
        m = {"compute_ms": t.median_ms, "tokens_per_s": p["batch"] * p["seq_len"] / (t.median_ms / 1e3)}
        return [ctx.record(m, samples={"compute_ms": t.samples_ms}, params={"ranks": d.world_size})]

    def merge(self, merged, per_rank, ctx):
        rec = merged[0]
        ranks = [recs[0] for recs in per_rank]
        m, slow = load_balance([r.samples["compute_ms"] for r in ranks], rec.params["straggler_threshold"],
                               "compute_ms")
        medians = [float(np.median(r.samples["compute_ms"])) for r in ranks]
        m["compute_ms"] = float(np.median(medians))
        m["tokens_per_s_per_rank"] = float(np.median([r.metrics["tokens_per_s"] for r in ranks]))
        rec.metrics = m
        rec.samples = {k: v for k, v in rec.samples.items() if "@rank" in k}
        rec.info = {**rec.info, "stragglers": slow, "rank_medians_ms": medians}
        if slow:
            rec.info["warnings"] = (f"straggler rank(s) {slow}: median compute time more than "
                                    f"{rec.params['straggler_threshold']:.0%} above the median of the other ranks")
        return [rec]


__all__ = ["LoadBalanceConfig", "LoadBalance"]
