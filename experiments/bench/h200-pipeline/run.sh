#!/usr/bin/env bash
# One GPU session: the pipeline bench at full size and a shortened f32_d5 run end to end, with
# nvidia-smi sampled every 2 s. Run from the repository root with the project uninstalled
# (PYTHONPATH), the packages the GPU image lacks installed into /tmp/site from carried wheels:
#   OUT=<folder> bash experiments/bench/h200-pipeline/run.sh
set -u
OUT=${OUT:-/tmp/h200-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 WANDB_MODE=disabled CASCADE_CACHE=/tmp/cascade-cache
if [ -d .gpu ]; then
  pip install -q --no-deps --target /tmp/site .gpu/sitk/*.whl .gpu/wheels/*.whl 2>&1 | grep -v WARNING
fi
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > "$OUT/smi.csv" &
sampler=$!
mark() { echo "$(date -u +%Y/%m/%d\ %H:%M:%S) $*" | tee -a "$OUT/phases.txt"; }

mark "bench start"
timeout 230 python -m experiments.bench --sections pipeline --device cuda --steps 30 --warmup 5 --out "$OUT/bench" \
  +experiment=f32_d5 > "$OUT/bench.log" 2>&1
mark "bench end rc=$?"

mark "train start"
timeout 270 python -m cascade.train +experiment=f32_d5 synthetic.shape=[240,240,155] \
  synthetic.cases=16 data.split.val_count=4 trainer.devices=1 trainer.strategy=auto logger=csv \
  trainer.stage1.max_epochs=2 trainer.stage1.check_val_every_n_epoch=1 \
  trainer.stage2.max_epochs=2 trainer.stage2.check_val_every_n_epoch=2 \
  hydra.run.dir=/tmp/f32-run > "$OUT/train.log" 2>&1
mark "train end rc=$?"
cp /tmp/f32-run/timings.json "$OUT/" 2>/dev/null
cp /tmp/f32-run/metrics.json "$OUT/" 2>/dev/null
kill $sampler
