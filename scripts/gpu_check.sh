#!/usr/bin/env bash
# The GPU half of issue 23 (several optimizer steps per Lightning step), as one device call of at
# most 8 minutes: no host sync inside the step loop, the `make bench` table at one step per call and
# at auto for every model, and experiment=lenet_fashion's wall time to its test accuracy.
#
#   here, once (needs the package index):  bash scripts/gpu_check.sh prepare
#       -> .gpu/ (ignored by git): the wheels the device image lacks (hydra-core, omegaconf, antlr4
#          at requirements.lock's versions), Fashion-MNIST (Debian's files) and JapaneseVowels
#          (`make data`'s copy from the aeon wheel: lstm_seq's data)
#   there: the device tool's run, command "bash scripts/gpu_check.sh run", carry [".gpu"],
#          timeout_s 600; everything lands in $OUT (gpu_check.log, bench_one.json, bench_auto.json,
#          sync.txt, lenet_fashion.json)
#   a dry run of the same steps on this CPU, tiny:  GPU_CHECK_CPU=1 bash scripts/gpu_check.sh run
#
# The device image has its own torch (2.11 when last seen) and Lightning 2.6.6: nnlab's version
# check is relaxed with NNLAB_UNPINNED=1 (a warning), and nothing is installed beyond .gpu/whl and
# nnlab itself (into /tmp/site, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
PINS=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3)

if [ "$mode" = prepare ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
  mkdir -p .gpu/whl .gpu/fashion-mnist
  # wheels only (antlr4 4.9.3 is an sdist: built into a pure-Python wheel here)
  python3 -m pip wheel --quiet --no-deps --wheel-dir .gpu/whl "${PINS[@]}" 2>&1 | grep -v "^WARNING" || true
  rm -f .gpu/whl/*.tar.gz
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .gpu/fashion-mnist/
  jv=${PKGDATA:-/work/main/.venv/share/nnlab}/aeon-1.6.0/JapaneseVowels
  mkdir -p .gpu/data/JapaneseVowels
  cp "$jv"/JapaneseVowels_TRAIN.ts "$jv"/JapaneseVowels_TEST.ts .gpu/data/JapaneseVowels/
  du -sh .gpu
  exit 0
fi
[ "$mode" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }

OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
t0=$(date +%s)
since() { echo "[gpu_check] +$(($(date +%s) - t0)) s: $*"; }

PY=${PYTHON:-python3}
if [ -z "${GPU_CHECK_CPU:-}" ]; then  # the device: install offline into /tmp/site
  $PY -m pip install --quiet --no-index --no-deps --no-build-isolation --target /tmp/site \
    .gpu/whl/* . 2>&1 | grep -v "WARNING: Target directory" || true
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p /usr/share/datasets/fashion-mnist
  cp -n .gpu/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
  nvidia-smi -L || true
  ACCEL=accelerator=gpu
  LIMIT=()
  MODELS=ae,lenet,lstm,lstm_seq,dcgan
else  # the dry run on this CPU: the same steps, tiny
  ACCEL=accelerator=cpu
  LIMIT=(--limit-batches 12)
  MODELS=ae,lstm_seq
fi
# JapaneseVowels from .gpu/data (the other datasets fall through to their usual places)
export NNLAB_DATA_DIR=$PWD/.gpu/data
export NNLAB_UNPINNED=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
# -P: the installed nnlab (with its configs), never the source folder of the current directory
[ -z "${GPU_CHECK_CPU:-}" ] && PY="$PY -P"
$PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning',
pl.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
since "installed"

# 1. no host synchronisation inside the step loop: CUDA's sync debug mode raises on any sync
#    between the first and the last step of each call (on the CPU dry run it only runs)
timeout 100 $PY - "$ACCEL" "$MODELS" <<'EOF' | tee "$OUT/sync.txt" || since "SYNC CHECK FAILED"
import sys, time, tempfile
import torch
from nnlab.models import steps
from nnlab.train import main

accel, models = sys.argv[1], sys.argv[2].split(",") + ["vae", "rbm"]
# the bench's names -> the configs (lstm_seq: variable-length sequences, packed)
configs = {"lstm_seq": "experiment=japanese_vowels"}
cuda = torch.cuda.is_available()
begin, count = steps.StepLoop.begin, steps.StepLoop.count
calls = []

def begin_(loop, j):
    if j == 0 and cuda:
        torch.cuda.set_sync_debug_mode("error")
    begin(loop, j)

def count_(loop, n):
    if cuda:
        torch.cuda.set_sync_debug_mode("default")
    calls.append(n)
    count(loop, n)

steps.StepLoop.begin, steps.StepLoop.count = begin_, count_
for model in models:
    calls.clear()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["nnlab train", configs.get(model, f"model={model}"), accel,
                    "steps_per_execution=8",
                    "trainer.max_steps=48", "trainer.limit_val_batches=2", "test_after_fit=false",
                    "logger=none", "callbacks=none", "trainer.log_every_n_steps=4",
                    "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                    f"hydra.run.dir={tmp}/run"]
        main()
    print(f"sync check {model}: {len(calls)} calls of {sorted(set(calls))} steps, no host sync "
          f"inside them (sync debug mode 'error': {cuda}), {time.perf_counter() - t:.1f} s",
          flush=True)
EOF
since "sync check done"

# 2. the bench table, every model: one step per call (Lightning's loop) and auto
for setting in 1 auto; do
  name=$([ "$setting" = 1 ] && echo one || echo auto)
  timeout 140 $PY scripts/bench.py --models "$MODELS" --reps 1 --epochs 2 \
    --paths nnlab,hand,interleaved --no-cli "${LIMIT[@]}" --set "steps_per_execution=$setting" \
    --json "$OUT/bench_$name.json" | grep -v "^  [a-z]* rep " || since "BENCH FAILED"
  since "bench at steps_per_execution=$setting done"
done

# 3. experiment=lenet_fashion: wall time to its test accuracy (91% on the CPU)
if [ -z "${GPU_CHECK_CPU:-}" ]; then
  start=$(date +%s.%N)
  timeout 100 $PY -m nnlab.cli train experiment=lenet_fashion "$ACCEL" \
    callbacks.progress_bar.refresh_rate=0 hydra.run.dir=/tmp/lenet_fashion | tail -5 ||
    since "LENET_FASHION FAILED"
  $PY - "$start" "$(date +%s.%N)" <<'EOF' | tee "$OUT/lenet_fashion.json"
import json, sys
record = json.load(open("/tmp/lenet_fashion/metrics.json"))
m = record["metrics"]
print(json.dumps({"wall_s": float(sys.argv[2]) - float(sys.argv[1]), "status": record["status"],
                  "test_acc": m.get("test/acc"), "global_step": record.get("global_step")}))
EOF
fi
since "all done"
