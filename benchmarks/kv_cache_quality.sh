#!/usr/bin/env bash
# Issue 7 on a CUDA GPU: train `small` on the Markov corpus (bf16, 2K context, built for 32K positions
# with pos_interpolation_factor 2 so that 32K-token evaluation stays inside xPos's range), then run the
# kv-cache-gpu preset on the trained checkpoint: perplexity through bf16 / int8 / int4 caches at 8K
# and 32K, decode tokens/s with each, measured cache bytes.
#   benchmarks/kv_cache_quality.sh [OUT_DIR] [STEPS]
set -euo pipefail
OUT=${1:-runs/kv-cache-quality}
STEPS=${2:-300}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cat > "$OUT/train.yml" <<YAML
name: kv-cache-train
description: small on the Markov corpus, bf16, 2K context, for the KV-cache quality runs.
models: ["andromeda:small?max_seq_len=33792&pos_interpolation_factor=2"]
device: cuda
dtype: float32
report: {formats: [csv, json, md]}
scenarios:
  - scenario: training
    data: "synthetic:markov?val_docs=2&doc_len=32768"
    steps: $STEPS
    batch: 16
    seq_len: 2048
    lr: [1.0e-3]
    warmup_steps: 30
    precision: bf16
    log_every: 25
    eval_every: 0
    eval_max_tokens: 16384
    checkpoint_dir: "$OUT/train/checkpoints"
YAML
$PY -m andromeda.cli run "$OUT/train.yml" --out "$OUT/train"
CKPT=$(ls -d "$OUT"/train/checkpoints/*/model | head -n 1)
echo "trained checkpoint: $CKPT"
$PY -m andromeda.cli run --preset kv-cache-gpu --set "models=[\"andromeda:$CKPT\"]" --out "$OUT/kv"
