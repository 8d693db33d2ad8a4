#!/usr/bin/env bash
# Create (once) and link the environment the demo, the benchmark and the tests run in.
#
# The environment is cached outside the checkout, keyed on the files that define it, so a second run (or a fresh clone
# on the same machine) reuses it in a second; any change to those files builds a new one. `.venv` in the checkout is a
# symlink to it.  Override the cache folder with INVERSION_ENV_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${INVERSION_ENV_CACHE:-$HOME/.cache/comfyui-inversion}
py=${PYTHON:-python3}
key=$(cat "$here/scripts/setup_env.sh" "$here/scripts/test-requirements.txt" "$here/scripts/test-constraints.txt" \
      "$here/scripts/torchvision_cpu_shim.py" | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "[setup_env] building the test environment in $venv (one time, ~2 min)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  log="$cache/install-$key.log"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  # torch first, from its exact pin: a bare requirement would pull several GB of CUDA packages
  { "${pip[@]}" "torch==2.13.0" &&
    "${pip[@]}" -c "$here/scripts/test-constraints.txt" -r "$here/scripts/test-requirements.txt"; } >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; echo "[setup_env] install failed; full log: $log" >&2; exit 1; }
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Test-environment fix only (never shipped in the pack): PyPI's torchvision is a CUDA build whose import fails
  # on CPU torch; registering the two missing op schemas first lets it import.
  cp "$here/scripts/torchvision_cpu_shim.py" "$site/"
  echo "import torchvision_cpu_shim" > "$site/torchvision_cpu_shim.pth"
  "$venv/bin/python" -c "import torchvision, comfy.samplers" >/dev/null 2>&1 \
    || { echo "[setup_env] the engine does not import; see $venv" >&2; exit 1; }
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$here/.venv"
echo "$venv"
