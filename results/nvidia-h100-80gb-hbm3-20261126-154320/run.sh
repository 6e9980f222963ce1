#!/bin/bash
# Second device script: the tests that failed or were not reached, with their tracebacks; where a
# step's GPU memory goes; then 30-second trainings with the defaults and with --backend torch.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
python3 - <<'PY' || exit 1
from safetensors.torch import load_file, save_file
w = load_file(".gpu/minilm/model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in w.items()}, ".gpu/minilm/model.safetensors")
PY
rm .gpu/minilm/model.fp16.safetensors
python3 -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "pip install failed"
export PYTHONPATH=$PWD MOPS_EMBEDDED_CHECKPOINT=$PWD/.gpu/minilm MOPS_FAILURE_LOG=$OUT/failures.jsonl
timeout 140 python3 -m pytest -n 8 -v -p no:cacheprovider -rfE --tb=short --timeout 120 \
  tests/test_lora.py tests/test_distributed.py tests/test_precision.py tests/test_kernel_autocast.py \
  tests/test_prefix_cache.py tests/test_model_triton.py tests/test_trainer.py tests/test_export.py \
  tests/test_prediction.py tests/test_gpu_check.py tests/test_dispatch.py tests/test_devices.py > $OUT/tests.log 2>&1
echo "tests exit: $?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | tail -40
timeout 35 python3 .gpu/diag_memory.py $OUT/memory.json 2>&1 | tail -5
for b in default torch; do
  extra=""; [ $b = torch ] && extra="--backend torch"
  timeout 55 python3 -m mops train --data .gpu/cs224n --checkpoint .gpu/minilm --seconds 30 --eval-every 1000000 \
    --max-eval-examples 500 --out /tmp/train-$b --quiet --fresh $extra > $OUT/train-$b.log 2>&1
  python3 -c "import json,sys; r=json.load(open('/tmp/train-$b/results.json')); t=r['timing']; print('$b', r.get('kernels'), r.get('precision'), t['steps'], round(t['examples_per_second'],1))" | tee -a $OUT/train.txt
  cp /tmp/train-$b/results.json $OUT/train-$b.json
done
ls $OUT
