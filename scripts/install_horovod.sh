#!/usr/bin/env bash
# Install Horovod 0.28.1 (the last release) into ./.venv for the `horovod` training backend.
# 0.28.1 does not build against torch >= 2 unpatched (its CMake asks for C++14, torch needs C++17, and C++20
# from torch 2.14): this
# script patches that, builds a wheel once (about 5-6 minutes on 2 cores) with Gloo (no MPI needed) and the
# PyTorch bindings (+ TensorFlow's when TensorFlow is installed), caches it outside the repository, and
# installs from the cache on later runs (seconds). Usage: bash scripts/install_horovod.sh
# Environment: VPY (python, default .venv/bin/python), WSI_LAB_WHEEL_CACHE (default ~/.cache/wsi-lab/wheels),
# JOBS (parallel compile jobs, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
[ -x "$VPY" ] && VPY=$(cd "$(dirname "$VPY")" && pwd)/$(basename "$VPY")  # absolute: the build runs in a temp folder
VER=0.28.1
say() { printf '\033[1m[horovod]\033[0m %s\n' "$*" >&2; }

[ -x "$VPY" ] || { echo "no $VPY: run scripts/setup.sh first (or set VPY)" >&2; exit 2; }
if "$VPY" -c 'import horovod.torch' 2>/dev/null; then say "Horovod is already installed"; exit 0; fi
torch_ver=$("$VPY" -c 'import torch; print(torch.__version__.replace("+", "_"))') \
  || { echo "torch is not installed in $VPY: run scripts/setup.sh first" >&2; exit 2; }
tf=0; "$VPY" -c 'import tensorflow' 2>/dev/null && tf=1
cache="${WSI_LAB_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wsi-lab/wheels}/horovod-$VER-torch-$torch_ver-tf$tf"
mkdir -p "$cache"

if ! ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
  say "building Horovod $VER for torch $torch_ver (TensorFlow bindings: $tf); this takes a few minutes"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$VPY" -m pip install -q --disable-pip-version-check cmake numpy
  (cd "$tmp" && "$VPY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: "horovod==$VER" \
    && tar xzf "horovod-$VER.tar.gz")
  src="$tmp/horovod-$VER"
  # torch >= 2 needs C++17 (>= 2.14: C++20) where Horovod's CMake asks for C++14
  torch_std=$("$VPY" -c 'import torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); print(20 if v >= (2, 14) else 17)')
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt"
  sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $torch_std)/" "$src/horovod/torch/CMakeLists.txt"
  if [ -z "${HOROVOD_GPU_OPERATIONS:-}" ]; then
    # CPU (Gloo) build: a CUDA build of torch (the pair set-up installs) would otherwise make Horovod
    # compile its CUDA extension and look for a CUDA toolkit; set HOROVOD_GPU_OPERATIONS=NCCL for GPU ops
    sed -i 's/print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)/print(False)/' \
      "$src/cmake/Modules/FindPytorch.cmake"
  fi
  if [ "$tf" = 1 ]; then
    sed -i '/horovod\/tensorflow\/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
    tfflag=HOROVOD_WITH_TENSORFLOW=1
  else
    tfflag=HOROVOD_WITHOUT_TENSORFLOW=1
  fi
  (cd "$src" && env HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_CPU_OPERATIONS=GLOO "$tfflag" MAKEFLAGS="-j${JOBS:-2}" \
    "$VPY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps . -w "$cache")
fi
"$VPY" -m pip install -q --disable-pip-version-check "$(ls "$cache"/horovod-*.whl | head -1)"
"$VPY" -c 'import horovod.torch as hvd; hvd.init(); print("[horovod] ready:", hvd.size(), "process")' >&2
