#!/usr/bin/env bash
# Check the pack against UPSTREAM ComfyUI (not the PyPI fork the test suite uses): start upstream's own server on
# loopback with this checkout in custom_nodes/ (plus tests/testing_nodes), POST API-format workflows to /prompt and
# read /history, /object_info and the websocket (progress, interrupt). Nothing here is run by CI or by scripts/test.sh.
#
#   scripts/check_upstream.sh [UPSTREAM]      # UPSTREAM: a ComfyUI source tree or a (bare) git dir of one
#
# Upstream is not on PyPI: get a snapshot yourself (e.g. a bare clone of github.com/Comfy-Org/ComfyUI); a git dir is
# exported (blobs missing from a partial mirror are skipped). Work folder: $UPSTREAM_WORK (default /tmp/upstream):
# ComfyUI/ (the tree), venv/ (built once: torch==2.13.0 first, then upstream's requirements.txt minus torchaudio plus
# requests, with torch and transformers<5 pinned; the torchvision CPU shim as in setup_env.sh), base/ (the
# --base-directory). Port: $UPSTREAM_PORT (default 8199). The server is stopped on exit.
#
# The checks are in scripts/check_upstream_drive.py (one line each, OK / FAIL): every prompt is built from the
# server's /object_info (widgets at the nodes' declared defaults; a check names only what it changes) and linted
# against it, and /prompt's node_errors fail a check (upstream drops outputs that do not validate and runs the rest).
# Tiny test models (tests/testing_nodes) for every inversion node, its SAMPLER twin, masks, source correction, the
# inversion record, report, errors and interrupt; Flux (upstream-only architecture); both bundled reference models;
# and every workflows/reference_*.json (converted with tests/workflow_format.py) as dropped, on an empty input folder.
# CHECK_ONLY=<part of a check name> runs only the matching checks. Exit status: 0 if every check passed.
set -euo pipefail
pack=$(cd "$(dirname "$0")/.." && pwd)
work=${UPSTREAM_WORK:-/tmp/upstream}
port=${UPSTREAM_PORT:-8199}
src=${1:-/work/.mirror/Comfy-Org+ComfyUI/repo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$work"
log() { echo "[check_upstream] $*" >&2; }

# ---- upstream tree
if [ ! -f "$work/ComfyUI/main.py" ]; then
  if [ -f "$src/main.py" ]; then
    cp -r "$src" "$work/ComfyUI"
  elif git --git-dir="$src" rev-parse HEAD >/dev/null 2>&1; then
    mkdir -p "$work/ComfyUI"
    git --git-dir="$src" ls-tree -r -z HEAD | while IFS= read -r -d '' entry; do
      meta=${entry%%$'\t'*}; path=${entry#*$'\t'}; sha=$(echo "$meta" | cut -d' ' -f3)
      if git --git-dir="$src" cat-file -e "$sha" 2>/dev/null; then printf '%s\0' "$path"; else log "absent in the snapshot: $path"; fi
    done > "$work/present.lst"
    # (git archive still names the absent blobs on stderr; the listed files all come out)
    xargs -0 git --literal-pathspecs --git-dir="$src" archive HEAD -- < "$work/present.lst" 2>"$work/archive.err" \
      | tar -x -i -C "$work/ComfyUI"
    [ "$(find "$work/ComfyUI" -type f | wc -l)" -eq "$(tr -cd '\0' < "$work/present.lst" | wc -c)" ] \
      || { cat "$work/archive.err" >&2; log "export incomplete"; exit 1; }
    git --git-dir="$src" log -1 --format='%H %cd %s' > "$work/ComfyUI/.upstream_commit"
  else
    log "no ComfyUI tree or git dir at $src"; exit 2
  fi
fi
log "upstream $(cat "$work/ComfyUI/.upstream_commit" 2>/dev/null || true) version $(sed -n 's/__version__ = //p' "$work/ComfyUI/comfyui_version.py")"

# ---- environment
venv="$work/venv"
if [ ! -f "$venv/.complete" ]; then
  log "building $venv (one time, ~2 min)"
  rm -rf "$venv"; python3 -m venv "$venv"
  printf 'torch==2.13.0\ntransformers<5\n' > "$work/constraints.txt"
  { grep -v '^torchaudio' "$work/ComfyUI/requirements.txt"; echo requests; } > "$work/requirements.txt"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  { "${pip[@]}" torch==2.13.0 && "${pip[@]}" -c "$work/constraints.txt" -r "$work/requirements.txt"; } \
    > "$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; exit 1; }
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp "$pack/scripts/torchvision_cpu_shim.py" "$site/"
  echo "import torchvision_cpu_shim" > "$site/torchvision_cpu_shim.pth"
  touch "$venv/.complete"
fi

# ---- base directory and server
base="$work/base"
rm -rf "$base"; mkdir -p "$base"/{custom_nodes,input,output,temp,user,models}
ln -s "$pack" "$base/custom_nodes/comfyui-inversion"
ln -s "$pack/tests/testing_nodes" "$base/custom_nodes/inversion-testing-nodes"
(cd "$work/ComfyUI" && exec "$venv/bin/python" main.py --cpu --listen 127.0.0.1 --port "$port" --base-directory "$base" \
   --database-url sqlite:///:memory: --disable-auto-launch) > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  kill -0 $server 2>/dev/null || { tail -n 40 "$work/server.log" >&2; exit 1; }
  sleep 1
done
grep -q "Cannot import $base/custom_nodes" "$work/server.log" && { grep -B20 "Cannot import $base/custom_nodes" "$work/server.log" >&2; exit 1; }
log "server up; pack: $(grep -o 'comfyui-inversion [0-9.]*: [0-9]* nodes' "$work/server.log" || echo 'NO LOAD MESSAGE')"

# ---- checks (scripts/check_upstream_drive.py: prompts built from /object_info, so they follow the nodes' inputs)
"$venv/bin/python" "$pack/scripts/check_upstream_drive.py" "$pack" "$base" "$port" "${CHECK_ONLY:-}"
