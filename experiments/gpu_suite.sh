#!/usr/bin/env bash
# GPU suite: everything worth measuring on one accelerator, in at most 9 minutes on one H100.
#
#   experiments/gpu_suite.sh RESULTS_DIR [--smoke]
#
# Writes RESULTS_DIR/summary.md (the tables), RESULTS_DIR/suite.log (what ran, with limits and
# exit statuses) and RESULTS_DIR/details.tar.gz (every step's log, versions, the golden tests'
# JUnit XML, benchmark JSON, each run's config.json / metrics.jsonl / train.log): three files,
# so that the device tool's $OUT (at most 8 files come back) can be RESULTS_DIR. Steps, each
# under its own `timeout` and a global deadline, so the suite always finishes and summarises
# what it has:
#   install    the wheels of $WHEELS (below), when set
#   versions   nvidia-smi; python, jax, jaxlib, flax, optax, orbax, torch, ... and the devices
#   golden     the golden tests (PyTorch reference outputs, atol 1e-4) with
#              JAX_DEFAULT_MATMUL_PRECISION=highest (TF32 convolutions would miss 1e-4)
#   prepare    TFDS prepare of NUAA-SIRST 50_50 into $SCRATCH/tfds (python -m irst_jax.data.stats)
#   bench_*    train and inference images/s of ACM-U-Net and DNA-Net, batch 16, 256x256, JAX
#              (benchmark.py) against the PyTorch references (torch_reference/) on the same GPU
#              (experiments/benchmark_gpu.py)
#   bench_seeds  ACM-U-Net train images/s per seed with train.num_seeds = 1, 2, 4 replicas in one
#              program, batch 16, 256x256 (experiments/benchmark_seeds.py)
#   train_*    python -m irst_jax.main: ACM-U-Net's full recipe (400 epochs) and a DNA-Net run of
#              $DNA_EPOCHS epochs (cosine schedule over those), each stopped by
#              train.time_limit_minutes before its step's limit (checkpoint + final evaluation);
#              final IoU / nIoU / Pd / Fa, epochs reached and wall time go to the summary.
# With --smoke everything runs on the CPU (JAX_PLATFORMS=cpu, PyTorch on cpu) with tiny settings
# (smoke configs, tiny networks, 32x32 crops, one benchmark step): the plumbing, not the
# numbers. On 2 CPU cores it takes about 6 minutes, mostly XLA compiling DNA-Net and the two
# programs of bench_seeds;
# tests/test_gpu_suite.py runs its ACM-U-Net steps (about 80 s) and dry-runs the GPU commands.
#
# Environment (all optional):
#   WHEELS=DIR        wheels installed first, for a machine that has jax[cuda], flax, optax,
#                     orbax-checkpoint and torch but not grain, tensorflow-datasets,
#                     ml-collections, tensorboardX: `pip install --no-index --no-deps --target
#                     $SCRATCH/site DIR/*.whl`, then PYTHONPATH=$SCRATCH/site. Fill DIR here with
#                     experiments/download_gpu_wheels.sh DIR (their dependencies that such a
#                     machine lacks included; DIR/fallback/ holds a protobuf wheel installed only
#                     if tensorflow_metadata does not import with the machine's protobuf).
#   IRST_SHARED=DIR   folder holding golden/*.npz and datasets/NUAA-SIRST (default: ../shared,
#                     else ./shared, beside / inside the repository)
#   IRST_DATA_DIR=DIR folder holding NUAA-SIRST/ (default: $IRST_SHARED/datasets)
#   GPU_SUITE_STEPS   comma-separated steps to run (default all: install,versions,golden,prepare,
#                     bench_acm_unet,bench_dnanet,bench_seeds,train_acm_unet,train_dnanet)
#   GPU_SUITE_BUDGET_S  global deadline in seconds (default 530; smoke 600)
#   GPU_SUITE_SCRATCH   scratch folder (default: a new /tmp/irst_gpu_suite.XXXXXX, kept)
#   DNA_EPOCHS        DNA-Net epochs (default 100); BENCH_ROUNDS benchmark rounds (default 1);
#                     PYTHON (default python3)
#   GPU_SUITE_DRY_RUN=1  print each step's command and limit without running it (the config
#                     overrides are still checked against the configs)
#
# For the device tool, which sends the repository (at most 64 MiB) and no ../shared: from the
# repository root, put the wheels (~11 MB), the golden files (19 MB) and NUAA-SIRST (19 MB) into
# an ignored folder,
#   echo /.gpu_carry/ >> .git/info/exclude
#   experiments/download_gpu_wheels.sh .gpu_carry/wheels 3.12
#   mkdir -p .gpu_carry/shared/datasets
#   cp -r --no-preserve=mode ../shared/golden .gpu_carry/shared/
#   cp -r --no-preserve=mode ../shared/datasets/NUAA-SIRST .gpu_carry/shared/datasets/
# then run, with carry [".gpu_carry"] and timeout_s 600 (the suite ends by itself after ~540 s):
#   WHEELS=.gpu_carry/wheels IRST_SHARED=.gpu_carry/shared experiments/gpu_suite.sh $OUT/gpu_suite
set -u -o pipefail

usage() { echo "usage: $0 RESULTS_DIR [--smoke]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
SMOKE=0
if [[ $# == 2 ]]; then [[ $2 == --smoke ]] || usage; SMOKE=1; fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
mkdir -p "$1" || exit 1
RESULTS=$(cd "$1" && pwd)
SCRATCH=${GPU_SUITE_SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/irst_gpu_suite.XXXXXX")}
mkdir -p "$SCRATCH/logs" "$SCRATCH/runs" || exit 1
LOG=$RESULTS/suite.log
: > "$LOG"
: > "$SCRATCH/steps.tsv"
if (( SMOKE )); then BUDGET=${GPU_SUITE_BUDGET_S:-600}; else BUDGET=${GPU_SUITE_BUDGET_S:-530}; fi
DEADLINE=$(( SECONDS + BUDGET ))
DRY_RUN=${GPU_SUITE_DRY_RUN:-0}
ALL_STEPS=install,versions,golden,prepare,bench_acm_unet,bench_dnanet,bench_seeds
ALL_STEPS+=,train_acm_unet,train_dnanet
STEPS=${GPU_SUITE_STEPS:-$ALL_STEPS}

say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$SCRATCH/steps.tsv"; }
selected() { [[ ",$STEPS," == *",$1,"* ]]; }

# limit_for CAP RESERVE: sets LIMIT = min(CAP, seconds to the deadline - RESERVE).
limit_for() {
  LIMIT=$1
  local left=$(( DEADLINE - SECONDS - $2 ))
  (( left < LIMIT )) && LIMIT=$left
}

CHILD=
# run_step NAME LIMIT CMD...: CMD under `timeout LIMIT` (in the background, so that a signal to
# the suite reaches its trap at once), output in logs/NAME.log; records its status.
run_step() {
  local name=$1 limit=$2 start=$SECONDS rc status
  shift 2
  if (( limit < 5 )); then
    say "$name: skipped, no time left"; record "$name" "no time left" 0 0; return 1
  fi
  say "$name (limit ${limit}s): $*"
  if (( DRY_RUN )); then record "$name" "dry run" 0 "$limit"; return 0; fi
  timeout -k 10 "$limit" "$@" > "$SCRATCH/logs/$name.log" 2>&1 &
  CHILD=$!
  wait "$CHILD"; rc=$?
  CHILD=
  case $rc in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" $(( SECONDS - start )) "$limit"
  say "$name: $status after $(( SECONDS - start ))s"
  (( rc == 0 )) || tail -n 5 "$SCRATCH/logs/$name.log" | sed 's/^/    /' | tee -a "$LOG"
  return "$rc"
}

FINISHED=0
finish() {
  (( FINISHED )) && return
  FINISHED=1
  [[ -n $CHILD ]] && kill "$CHILD" 2> /dev/null && wait "$CHILD" 2> /dev/null
  say "summary -> $RESULTS/summary.md"
  timeout 60 "$PY" experiments/gpu_suite_helpers.py summary "$SCRATCH" "$RESULTS/summary.md" \
    > "$SCRATCH/logs/summary.log" 2>&1 || tail -n 20 "$SCRATCH/logs/summary.log" | tee -a "$LOG"
  (cd "$SCRATCH" && tar -czf "$RESULTS/details.tar.gz" logs steps.tsv meta.json \
    $(ls versions.json nvidia_smi.csv golden.xml bench_*.json 2> /dev/null) \
    $(find runs -maxdepth 2 \( -name config.json -o -name metrics.jsonl -o -name train.log \) \
        2> /dev/null)) 2>> "$LOG"
  say "done in ${SECONDS}s; scratch (TFDS data, workdirs) kept in $SCRATCH"
}
trap finish EXIT
trap 'say "interrupted"; exit 130' INT TERM

# -- environment ------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1
export TFDS_DATA_DIR=$SCRATCH/tfds
export IRST_JAX_COMPILATION_CACHE_DIR=$SCRATCH/jax_cache
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if (( SMOKE )); then
  export JAX_PLATFORMS=cpu IRST_JAX_MALLOC_TUNING=0   # no restart for huge pages: seconds saved
  TORCH_DEVICE=cpu
else
  TORCH_DEVICE=cuda
fi
SHARED=${IRST_SHARED:-}
if [[ -z $SHARED ]]; then
  for candidate in "$REPO/../shared" "$REPO/shared"; do
    [[ -d $candidate ]] && SHARED=$(cd "$candidate" && pwd) && break
  done
fi
DATA=${IRST_DATA_DIR:-${SHARED:+$SHARED/datasets}}
NUAA=${DATA:+$DATA/NUAA-SIRST}
GOLDEN=${SHARED:+$SHARED/golden}
say "repository $REPO, results $RESULTS, scratch $SCRATCH, budget ${BUDGET}s, smoke $SMOKE"
say "golden files: ${GOLDEN:-none}; NUAA-SIRST: ${NUAA:-none}"

# Settings: the full recipe on the GPU, tiny ones for --smoke.
DNA_EPOCHS=${DNA_EPOCHS:-100}
if (( SMOKE )); then
  BENCH=(--batch_size=2 --image_size=32 --steps=1 --warmup=1 --rounds="${BENCH_ROUNDS:-1}")
  BENCH_ACM=(--jax_flag=--config.model.channels='(4,8,8,16)' --jax_flag=--config.model.num_blocks=1)
  BENCH_DNA=(--jax_flag=--config.model.backbone=resnet10_light)
  ACM_CONFIG=configs/acm_unet.py:nuaa_sirst,smoke
  DNA_CONFIG=configs/dnanet.py:nuaa_sirst,smoke
  TINY=(dataset.crop_size=32 dataset.pad_multiple=96 train.num_epochs=2 train.batch_size=2)
  ACM_FIELDS=(model.channels='(4,8,8,16)' model.num_blocks=1 "${TINY[@]}")
  DNA_FIELDS=(model.backbone=resnet10_light "${TINY[@]}")
  GOLDEN_TESTS=(tests/test_shuffle_attention.py -k matches_sa_net)
  SEEDS_BENCH=(--config.model.channels='(4,8,8,16)' --config.model.num_blocks=1 --batch_size=2
               --crop=32 --seeds=1,2 --rounds=1 --dispatches=1)
  CAP_BENCH_SEEDS=150
  CAP_BENCH_ACM=120; CAP_BENCH_DNA=240; CAP_GOLDEN=60; ACM_MARGIN=0; DNA_MARGIN=0; DNA_RESERVE=60
else
  BENCH=(--batch_size=16 --image_size=256 --rounds="${BENCH_ROUNDS:-1}")
  BENCH_ACM=(--steps=50 --warmup=5)
  BENCH_DNA=(--steps=20 --warmup=3)
  ACM_CONFIG=configs/acm_unet.py:nuaa_sirst
  DNA_CONFIG=configs/dnanet.py:nuaa_sirst
  # Evaluations every 20 epochs (final one included) and checkpoints every 50: on the GPU a
  # blocking checkpoint per epoch would cost more than the training steps.
  ACM_FIELDS=(train.eval_every_epochs=20 train.checkpoint_every_epochs=50)
  # DNA-Net: a shorter run; its evaluation on at most four canvases (each of its programs
  # compiles for tens of seconds; the published per-image padding would compile 34).
  DNA_FIELDS=(train.num_epochs="$DNA_EPOCHS" train.eval_every_epochs=20
              train.checkpoint_every_epochs=50 dataset.eval_network_padding=canvas)
  GOLDEN_TESTS=(tests/test_acm.py tests/test_dnanet.py tests/test_shuffle_attention.py
                tests/test_torch_reference.py -k "matches_reference or matches_sa_net or golden")
  SEEDS_BENCH=(--batch_size=16 --crop=256 --seeds=1,2,4 --rounds=5 --dispatches=3)
  CAP_BENCH_SEEDS=100
  CAP_BENCH_ACM=100; CAP_BENCH_DNA=150; CAP_GOLDEN=120; ACM_MARGIN=45; DNA_MARGIN=40; DNA_RESERVE=120
fi

cat > "$SCRATCH/meta.json" << EOF
{"smoke": $( (( SMOKE )) && echo true || echo false ), "budget_s": $BUDGET,
 "command": "experiments/gpu_suite.sh RESULTS_DIR$( (( SMOKE )) && echo ' --smoke')",
 "started": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "commit": "$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo unknown)$(
     git -C "$REPO" diff --quiet HEAD 2> /dev/null || echo ' (with local changes)')",
 "golden_command": "JAX_DEFAULT_MATMUL_PRECISION=highest pytest ${GOLDEN_TESTS[*]}",
 "bench": {"batch_size": ${BENCH[0]#--batch_size=}, "image_size": ${BENCH[1]#--image_size=},
           "device": "$TORCH_DEVICE", "rounds": ${BENCH[-1]#--rounds=}}}
EOF

# -- install ----------------------------------------------------------------------------------
if selected install && [[ -n ${WHEELS:-} ]]; then
  SITE=$SCRATCH/site
  limit_for 90 0
  run_step install "$LIMIT" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH=$SITE:$PYTHONPATH
  if (( ! DRY_RUN )); then
    if ! "$PY" -c "import tensorflow_metadata.proto.v0.schema_pb2" >> "$LOG" 2>&1 \
        && compgen -G "$WHEELS/fallback/*.whl" > /dev/null; then
      say "tensorflow_metadata does not import with this protobuf: installing $WHEELS/fallback"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/fallback/*.whl >> "$LOG" 2>&1
    fi
    "$PY" -c "import grain, tensorflow_datasets, ml_collections, tensorboardX, flax, optax, \
orbax.checkpoint, irst_jax.main" >> "$LOG" 2>&1 \
      || say "warning: a package does not import (above); the steps that need it will fail"
  fi
fi

# -- versions ---------------------------------------------------------------------------------
if selected versions; then
  if (( ! DRY_RUN )) && command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$SCRATCH/logs/nvidia_smi.log" 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
      > "$SCRATCH/nvidia_smi.csv" 2>> "$LOG"
  fi
  limit_for 60 0
  run_step versions "$LIMIT" "$PY" experiments/gpu_suite_helpers.py versions "$SCRATCH/versions.json"
fi

# -- golden tests -----------------------------------------------------------------------------
# tests/golden.py reads <repository>/../shared/golden; when the golden files are elsewhere, the
# tests run from a copy of tests/ (and the torch references) beside a link to them.
if selected golden; then
  GOLDEN_ROOT=$REPO
  if [[ -n $GOLDEN && -d $GOLDEN ]] && ! [[ "$REPO/../shared/golden" -ef "$GOLDEN" ]]; then
    GOLDEN_ROOT=$SCRATCH/golden_copy/repo
    mkdir -p "$GOLDEN_ROOT/experiments" "$SCRATCH/golden_copy/shared"
    cp -r "$REPO/tests" "$REPO/setup.cfg" "$GOLDEN_ROOT/"
    cp -r "$REPO/experiments/torch_reference" "$GOLDEN_ROOT/experiments/"
    ln -sfn "$(cd "$GOLDEN" && pwd)" "$SCRATCH/golden_copy/shared/golden"
  fi
  limit_for "$CAP_GOLDEN" 0
  run_step golden "$LIMIT" env JAX_DEFAULT_MATMUL_PRECISION=highest \
    bash -c 'cd "$1" && shift && exec "$@"' _ "$GOLDEN_ROOT" \
    "$PY" -m pytest -q -p no:cacheprovider --junitxml="$SCRATCH/golden.xml" "${GOLDEN_TESTS[@]}"
fi

# -- TFDS prepare -----------------------------------------------------------------------------
if selected prepare; then
  limit_for 90 0
  run_step prepare "$LIMIT" "$PY" -m irst_jax.data.stats --dataset=nuaa_sirst \
    --builder_config=50_50 --data_dir="$TFDS_DATA_DIR" ${NUAA:+--manual_dir="$NUAA"} \
    --out_dir="$SCRATCH/stats"
fi

# -- throughput -------------------------------------------------------------------------------
for model in acm_unet dnanet; do
  selected "bench_$model" || continue
  if [[ $model == acm_unet ]]; then
    extra=("${BENCH_ACM[@]}"); cap=$CAP_BENCH_ACM
  else
    extra=("${BENCH_DNA[@]}"); cap=$CAP_BENCH_DNA
  fi
  limit_for "$cap" 0
  run_step "bench_$model" "$LIMIT" "$PY" experiments/benchmark_gpu.py --model="$model" \
    --device="$TORCH_DEVICE" "${BENCH[@]}" "${extra[@]}" --timeout="$LIMIT" \
    --out="$SCRATCH/bench_$model.json"
done

# -- several seeds in one program -------------------------------------------------------------
if selected bench_seeds; then
  limit_for "$CAP_BENCH_SEEDS" 0
  run_step bench_seeds "$LIMIT" "$PY" experiments/benchmark_seeds.py "${SEEDS_BENCH[@]}" \
    --time_limit_s=$(( LIMIT > 30 ? LIMIT - 20 : LIMIT )) --out="$SCRATCH/bench_seeds.json"
fi

# -- training runs ----------------------------------------------------------------------------
# train_run MODEL CONFIG CAP RESERVE MARGIN FIELD=VALUE...: the run stops itself (checkpoint and
# final evaluation) MARGIN seconds before its step's limit (train.time_limit_minutes).
TRAIN_MODELS=()
TRAIN_COMMANDS=()
train_run() {
  local model=$1 config=$2 cap=$3 reserve=$4 margin=$5 minutes
  shift 5
  selected "train_$model" || return 0
  limit_for "$cap" "$reserve"
  if (( margin > 0 )); then   # (smoke runs are short enough without)
    minutes=$(awk -v s="$(( LIMIT - margin ))" 'BEGIN { printf "%.2f", (s > 6 ? s : 6) / 60 }')
    set -- "$@" train.time_limit_minutes="$minutes"
  fi
  local flags
  mapfile -t flags < <("$PY" experiments/gpu_suite_helpers.py overrides "$config" "$@" 2>> "$LOG")
  TRAIN_MODELS+=("$model")
  TRAIN_COMMANDS+=("python -m irst_jax.main --config=$config --workdir=WORKDIR \
${NUAA:+--config.dataset.manual_dir=NUAA-SIRST }${flags[*]}")
  run_step "train_$model" "$LIMIT" "$PY" -m irst_jax.main --config="$config" \
    --workdir="$SCRATCH/runs/$model" ${NUAA:+--config.dataset.manual_dir="$NUAA"} "${flags[@]}"
}
train_run acm_unet "$ACM_CONFIG" "$BUDGET" "$DNA_RESERVE" "$ACM_MARGIN" "${ACM_FIELDS[@]}"
train_run dnanet "$DNA_CONFIG" "$BUDGET" 0 "$DNA_MARGIN" "${DNA_FIELDS[@]}"

# The commands into meta.json, for the summary.
"$PY" - "$SCRATCH/meta.json" "${TRAIN_MODELS[@]}" -- "${TRAIN_COMMANDS[@]}" << 'EOF' 2>> "$LOG"
import json, sys
path, rest = sys.argv[1], sys.argv[2:]
cut = rest.index("--")
meta = json.load(open(path))
meta["train_commands"] = dict(zip(rest[:cut], rest[cut + 1:]))
json.dump(meta, open(path, "w"), indent=1)
EOF
exit 0
