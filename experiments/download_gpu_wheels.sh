#!/usr/bin/env bash
# Fills DIR with the wheels that experiments/gpu_suite.sh installs (WHEELS=DIR) on a machine
# that has jax[cuda], flax, optax, orbax-checkpoint, PyTorch, numpy, pyarrow, protobuf, etils,
# PyYAML, ... (e.g. the device tool's image) but not grain, tensorflow-datasets, ml-collections
# and tensorboardX: those four and their dependencies that such a machine lacks, without their
# other dependencies (`pip download --no-deps`), for CPython PYTHON_VERSION (default 3.12, the
# device machines' python3) on manylinux x86_64. The versions are the ones this repository is
# tested with. promise (a TFDS dependency) is published as a source archive only: its pure-Python
# wheel is built here. DIR/fallback/ gets a protobuf wheel, which gpu_suite.sh installs only if
# tensorflow_metadata (generated with protobuf 6.31) does not import with the machine's protobuf.
#
#   experiments/download_gpu_wheels.sh DIR [PYTHON_VERSION]
#   experiments/download_gpu_wheels.sh .gpu_carry/wheels 3.12     # about 11 MB
set -euo pipefail
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 DIR [PYTHON_VERSION]" >&2; exit 2; }
DIR=$1
PYV=${2:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR/fallback"

PACKAGES=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
  tensorflow-datasets==4.9.10 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9
  docstring-parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
  termcolor==3.3.0 toml==0.10.2
  ml-collections==1.1.0
  tensorboardX==2.6.5
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp "${PLATFORMS[@]}" "$@"
}
download -d "$DIR" "${PACKAGES[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DIR" promise==2.3
download -d "$DIR/fallback" protobuf==6.33.5
ls -l "$DIR" "$DIR/fallback"
du -sh "$DIR"
