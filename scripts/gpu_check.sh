#!/usr/bin/env bash
# The GPU figures of the speed work, in one run on a lent GPU machine (about 7 minutes on an
# H200; the timeouts add up to 555 s, under the device tool's 600 s per command). Here, in the
# checkout: `bash scripts/gpu_prepare.sh` (wheels the GPU image lacks, at the pinned versions,
# into .gpu/, ignored by git); then the device tool's run with carry [".gpu"] and the command
# `bash scripts/gpu_check.sh`. Figures and logs land in $OUT.
#   1. bench train, full preset, 128^3, batch 2: glioseg's step (precision, layout and compile
#      chosen by the device probe) and, in the same run, the reference loop's rows (nnU-Net's
#      PlainConvUNet fp16 + GradScaler and bf16, MONAI's DynUNet bf16) with the ratio to the best
#      (goal >= 1.2x), and the real loader's data wait (goal < 5%);
#   2. bench data --device cuda: the loader workers the CPU and the device augmentation need;
#   3. a short full-preset training run (a model to predict with);
#   4. bench predict --device cuda: our rows against MONAI's sliding_window_inference on the same
#      case and weights (goal >= 3x, Dice agreement >= 0.99 per region).
set -u
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpuout}; mkdir -p "$OUT"
W=/tmp/gw; rm -rf $W; mkdir -p $W
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$root"/.gpu/whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$root/src:/tmp/site
G="python3 -m glioseg"
t0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
ts env; nvidia-smi -L
python3 -c "import torch,monai;print('torch',torch.__version__,'cuda',torch.cuda.is_available(),'monai',monai.__version__)"
ts synth; timeout 40 $G synth $W/raw --cases 6 --layout brats2021 --seed 0 --workers 12 2>&1 | tail -1
ts preprocess; timeout 30 $G preprocess $W/raw -o $W/cache --workers 12 2>&1 | tail -1
# rows print as they are measured: a timeout keeps the finished ones
ts "bench train"; timeout 240 $G bench train --config full --device cuda --reference --amp auto \
  --steps 20 --warmup 5 --cache $W/cache 2>&1 | tee $OUT/bench_train.txt | tail -30
# the step rate to feed is the one just measured (synthetic batches), not a second probe + compile
rate=$(awk '$5 == "synthetic" {print $6; exit}' $OUT/bench_train.txt)
ts "bench data"; timeout 45 $G bench data $W/cache --patch 128 --workers 8 --batches 20 \
  --device cuda --config full ${rate:+--step-rate "$rate"} 2>&1 | tee $OUT/bench_data.txt | tail -12
ts train; timeout 110 $G train --data $W/cache --out $W/run --config full \
  --set train.steps=200 --set train.val_every=200 --set train.ckpt_every=200 \
  --set data.n_val=2 --set train.log_every=25 > $OUT/train.log 2>&1; echo "train exit $?"
tail -n 2 $W/run/metrics.jsonl; cp $W/run/metrics.jsonl $W/run/device_choice.json $OUT/ 2>/dev/null
model=$W/run/best; [ -f $model/model.safetensors ] || model=$W/run/last  # a run cut short
ts "bench predict"; timeout 90 $G bench predict -m $model --device cuda --batch 4 \
  -o $OUT/bench_predict.json 2>&1 | tee $OUT/bench_predict.txt | tail -30
ts done
