"""The measurement core, pure: it returns data and never prints or writes a file.

timing (time_fn, its stopping rule, TimingConfig), stats (median with a bootstrap CI, IQR, CV), memory (peak
memory, OOM), flops (FLOPs, TFLOP/s, MFU, device peaks), facts (a model's shape for the formulas), recompute
(which attention kernel runs, so the backward's FLOPs), floors (matmul rate, copy bandwidth, datasheet),
env (the run's environment and threads), host_load (CPU other processes took), balance (bus bandwidth,
stragglers, scaling efficiency). It imports no scenario, runner, report or command line.
"""
