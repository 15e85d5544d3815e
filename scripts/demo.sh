#!/usr/bin/env bash
# The main job on the default data: set up, then `wsi-lab demo` (montage, tiling, a VAE, latents, overlays,
# GeoJSON, a slide classifier and its metrics under demo-out/), then open
# the WSI Lab app (JupyterLab on notebook 01). Usage: scripts/demo.sh [--no-lab] [--port N]
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=1; PORT=8888
while [ $# -gt 0 ]; do
  case "$1" in
    --no-lab) LAB=0 ;;
    --port) PORT=$2; shift ;;
    *) echo "usage: scripts/demo.sh [--no-lab] [--port N]" >&2; exit 2 ;;
  esac
  shift
done
bash scripts/setup.sh
.venv/bin/wsi-lab demo --out demo-out
if [ "$LAB" = 1 ] && [ -z "${CI:-}" ] && [ -f notebooks/01_browse_and_tune.ipynb ]; then
  TOKEN=${WSI_LAB_TOKEN:-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')}
  echo "Open: http://127.0.0.1:${PORT}/lab/tree/notebooks/01_browse_and_tune.ipynb?token=${TOKEN}"
  ROOT_FLAG=(); [ "$(id -u)" = 0 ] && ROOT_FLAG=(--allow-root)   # containers often run as root
  exec .venv/bin/jupyter lab --no-browser --ip=127.0.0.1 --port="$PORT" --IdentityProvider.token="$TOKEN" \
       --ServerApp.root_dir="$PWD" "${ROOT_FLAG[@]}"
fi
