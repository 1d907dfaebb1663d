#!/usr/bin/env bash
# The bundle the load benchmark serves: EfficientNet-Lite0 (ImageNet weights) at 128 px, linear probe, one
# epoch on the small offline corpus, attribution + fusion, and a watermark decoder reference. Its accuracy
# is beside the point (one epoch on ~100 images); its compute is that of the demo bundle's backbone.
set -euo pipefail
OUT=${1:-runs/service-load}
export WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT"
[ -f "$OUT/corpus/manifest.csv" ] || detector corpus build --out "$OUT/corpus" --small
[ -f "$OUT/run/model.safetensors" ] || detector train --corpus "$OUT/corpus/manifest.csv" --out "$OUT/run" \
  --method linear-probe --backbone effnet-lite0 --set data.image_size=128 --set optim.epochs=1 --set wandb.mode=disabled
[ -f "$OUT/wm.key" ] || detector watermark keygen "$OUT/wm.key"
[ -f "$OUT/bundle/bundle.json" ] || detector bundle "$OUT/run" --corpus "$OUT/corpus/manifest.csv" --out "$OUT/bundle" \
  --watermark-key "$OUT/wm.key" --watermark-registry "$OUT/registry.db" --set fusion.min_rows=5
echo "bundle: $OUT/bundle"
