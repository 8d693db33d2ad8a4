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
# Reference-model workflows (workflows/reference_*.json, converted with tests/workflow_format.py) run when
# models/reference/reference_model.safetensors exists; with REFERENCE_STANDIN=1 and no weights, a copy of the pack
# with a random-initialised stand-in of the same format is used instead (exercises loader/CLIP/VAE host plumbing only).
# Exit status: 0 if every check passed.
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

# ---- pack under test (a stand-in copy when asked and the reference weights are missing)
under_test=$pack
if [ "${REFERENCE_STANDIN:-0}" = 1 ] && [ ! -f "$pack/models/reference/reference_model.safetensors" ]; then
  under_test="$work/pack-standin"; rm -rf "$under_test"; mkdir -p "$under_test"
  (cd "$pack" && tar --exclude=.venv --exclude=.git --exclude=__pycache__ -cf - .) | tar -xf - -C "$under_test"
  (cd "$work/ComfyUI" && "$venv/bin/python" - "$under_test" <<'EOF'
import importlib.util, json, sys, torch
import comfy.cli_args
comfy.cli_args.args.cpu = True
spec = importlib.util.spec_from_file_location("refmod", sys.argv[1] + "/nodes/reference_model.py")
refmod = importlib.util.module_from_spec(spec); spec.loader.exec_module(refmod)
cfg = refmod.reference_unet_config()
sd = {refmod.UNET_PREFIX + k: v.half() for k, v in refmod.init_unet_state_dict(cfg, seed=0).items()}
vocab = ["", "cat", "astronaut", "coffee", "rocket", "galaxy", "bricks", "grass", "gravel"]
sd[refmod.EMBEDDINGS_KEY] = torch.randn(len(vocab), 4, 64, generator=torch.Generator().manual_seed(0)).half()
meta = {"format": refmod.FORMAT_TAG, "vocabulary": json.dumps(vocab), "unet_config": json.dumps(cfg),
        "sampling_settings": json.dumps(refmod.SD1_SAMPLING_SETTINGS), "model_type": "eps", "image_size": "32"}
from safetensors.torch import save_file
save_file(sd, str(refmod.reference_model_path()), metadata=meta)
EOF
  )
  log "using a random-initialised reference stand-in in $under_test"
fi

# ---- base directory and server
base="$work/base"
rm -rf "$base"; mkdir -p "$base"/{custom_nodes,input,output,temp,user,models}
ln -s "$under_test" "$base/custom_nodes/comfyui-inversion"
ln -s "$under_test/tests/testing_nodes" "$base/custom_nodes/inversion-testing-nodes"
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

# ---- workflows
cat > "$work/drive.py" <<'EOF'
"""Drive a running upstream ComfyUI server with the pack's workflows (API format over HTTP + websocket).

usage: python drive.py PACK_ROOT BASE_DIR PORT
Prints one line per check (OK / FAIL with the host's error text); exit status 1 if any check failed.
"""
import asyncio
import copy
import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import torch
from safetensors.torch import load_file

PACK, BASE, PORT = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
URL = f"http://127.0.0.1:{PORT}"
EXACT = {"preset": "exact", "tolerance": 1e-4, "budget": 3, "memory": 3}
results = []


def get(path):
    with urllib.request.urlopen(URL + path, timeout=60) as r:
        return json.loads(r.read())


def post(path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Failed(Exception):
    pass


async def run(prompt, save=(), timeout=600, on_progress=None):
    """Queue ``prompt`` (adding SaveLatent for the node ids in ``save``); return ({node: latent}, progress, history)."""
    prompt = copy.deepcopy(prompt)
    tag = uuid.uuid4().hex[:8]
    for nid in save:
        prompt[f"save_{nid}"] = {"class_type": "SaveLatent",
                                 "inputs": {"samples": [nid, 0], "filename_prefix": f"check/{tag}_{nid}"}}
    cid = uuid.uuid4().hex
    progress = []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{URL}/ws?clientId={cid}") as ws:
            code, resp = post("/prompt", {"prompt": prompt, "client_id": cid})
            if code != 200:
                raise Failed(f"/prompt rejected ({code}): {json.dumps(resp)[:1500]}")
            pid = resp["prompt_id"]
            t0 = time.time()
            while time.time() - t0 < timeout:
                try:
                    msg = await ws.receive(timeout=2)
                except asyncio.TimeoutError:
                    msg = None
                if msg is not None and msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    d = m.get("data", {})
                    if m["type"] == "progress" and d.get("prompt_id") == pid:
                        progress.append((d["node"], d["value"], d["max"]))
                        if on_progress:
                            on_progress(d)
                    if m["type"] in ("execution_success", "execution_error", "execution_interrupted") \
                            and d.get("prompt_id") == pid:
                        break
                elif msg is not None and msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
    for _ in range(60):
        h = get(f"/history/{pid}").get(pid)
        if h:
            break
        time.sleep(0.5)
    else:
        raise Failed("no history entry")
    st = h["status"]
    if st["status_str"] != "success":
        errs = [m for m in st["messages"] if m[0] in ("execution_error", "execution_interrupted")]
        raise Failed(json.dumps(errs)[:3000])
    lat = {}
    for nid in save:
        out = h["outputs"][f"save_{nid}"]["latents"][0]
        f = BASE / "output" / out["subfolder"] / out["filename"]
        lat[nid] = load_file(str(f))["latent_tensor"].float()
    return lat, progress, h


def check(name):
    def deco(fn):
        async def wrapped():
            t0 = time.time()
            try:
                note = await fn()
                results.append((name, True, f"{note or ''} ({time.time() - t0:.1f}s)"))
            except Exception as e:  # noqa: BLE001
                results.append((name, False, f"{type(e).__name__}: {e}"))
            print(("OK   " if results[-1][1] else "FAIL ") + name + ": " + results[-1][2], flush=True)
        CHECKS.append(wrapped)
        return wrapped
    return deco


CHECKS = []


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def tiny(kind="eps", seed=0, channels=4, batch=1, size=16):
    return {
        "model": {"class_type": "InversionTestTinyModel", "inputs": {"kind": kind, "seed": seed, "channels": channels}},
        "positive": {"class_type": "InversionTestConditioning", "inputs": {"seed": seed + 1, "batch": 1, "tokens": 4, "dim": 16}},
        "negative": {"class_type": "InversionTestConditioning", "inputs": {"seed": seed + 2, "batch": 1, "tokens": 4, "dim": 16}},
        "latent": {"class_type": "InversionTestLatent", "inputs": {"seed": seed + 3, "batch": batch, "channels": channels, "size": size}},
    }


def invert_and_replay(kind="eps", method="DDIMInvert", steps=8, extra=None, cfg=1.0, batch=1):
    p = tiny(kind, batch=batch)
    p["invert"] = {"class_type": method, "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "latent": ["latent", 0],
        "steps": steps, "scheduler": "simple" if kind == "flow" else "ddim_uniform", "cfg": cfg, "denoise": 1.0,
        **(extra or {})}}
    p["replay"] = {"class_type": "InvertedLatentSampler", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": cfg,
        "inverted_latent": ["invert", 0], "correction_strength": 0.0, "correction_start_step": 0,
        "correction_end_step": -1}}
    return p


def add_custom_chain(p, sampler_node, sampler_inputs, steps=8):
    p["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "ddim_uniform", "steps": steps, "denoise": 1.0}}
    p["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    p["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 1.0}}
    p["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    p["inv_sampler"] = {"class_type": sampler_node, "inputs": sampler_inputs}
    p["custom"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["inv_sampler", 0], "sigmas": ["flip", 0],
        "latent_image": ["latent", 0]}}
    p["replay_sampler"] = {"class_type": "InvertedReplaySampler", "inputs": {}}
    p["custom_replay"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["replay_sampler", 0], "sigmas": ["sched", 0],
        "latent_image": ["custom", 0]}}
    return p


ERR = {}


@check("object_info: pack nodes, category sampling/inversion, tooltips")
async def _():
    oi = get("/object_info")
    ours = {k: v for k, v in oi.items() if v.get("python_module") == "custom_nodes.comfyui-inversion"}
    if not ours:
        raise Failed("no node from custom_nodes.comfyui-inversion")
    bad = []
    for k, v in ours.items():
        if v["category"] != "sampling/inversion":
            bad.append(f"{k}: category {v['category']}")
        if not v.get("description"):
            bad.append(f"{k}: no description")
        for sec in ("required", "optional"):
            for n, spec in (v["input"].get(sec) or {}).items():
                if not (len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("tooltip")):
                    bad.append(f"{k}.{n}: no tooltip")
    if bad:
        raise Failed("; ".join(bad))
    no_out = [k for k, v in ours.items() if v["output"] and not v.get("output_tooltips")]
    return f"{len(ours)} nodes: {', '.join(sorted(ours))}" + (f"; no output tooltips: {no_out}" if no_out else "")


for kind in ("eps", "v_prediction", "flow"):
    def make(kind):
        @check(f"{kind}: DDIMInvert -> InvertedLatentSampler, ExactInvert does better, progress per step")
        async def _():
            lat, prog, _h = await run(invert_and_replay(kind), save=("latent", "invert", "replay"))
            x0, rec = lat["latent"], lat["replay"]
            if not torch.isfinite(rec).all():
                raise Failed("non-finite replay")
            ddim = rms(rec, x0)
            inv_prog = [(v, m) for n, v, m in prog if n == "invert"]
            rep_prog = [(v, m) for n, v, m in prog if n == "replay"]
            if inv_prog != [(i, 8) for i in range(1, 9)] or rep_prog != inv_prog:
                raise Failed(f"progress invert={inv_prog} replay={rep_prog}")
            lat2, _p, _h = await run(invert_and_replay(kind, "ExactInvert", extra=EXACT), save=("latent", "replay"))
            exact = rms(lat2["replay"], lat2["latent"])
            if not (exact < ddim / 10 and exact < 0.01 * x0.std().item()):
                raise Failed(f"exact rms {exact:.3g} vs ddim {ddim:.3g}")
            return f"ddim rms {ddim:.3g}, exact rms {exact:.3g}"
    make(kind)


@check("eps: EasyInvInvert auto preset + replay")
async def _():
    extra = {"preset": "auto", "eta": 0.5, "window_start": 0.05, "window_end": 0.25, "variant": "paper"}
    lat, _p, _h = await run(invert_and_replay(method="EasyInvInvert", steps=20, extra=extra), save=("latent", "invert", "replay"))
    ddim, _p, _h = await run(invert_and_replay(steps=20), save=("invert",))
    d = rms(lat["invert"], ddim["invert"])
    if not (d > 1e-4 and torch.isfinite(lat["replay"]).all()):
        raise Failed(f"blend did not act ({d}) or non-finite")
    return f"differs from DDIM by rms {d:.3g}, replay rms {rms(lat['replay'], lat['latent']):.3g}"


for node, method, extra, steps in (("DDIMInvertSampler", "DDIMInvert", {}, 8),
                                   ("ExactInvertSampler", "ExactInvert", EXACT, 8),
                                   ("EasyInvInvertSampler", "EasyInvInvert",
                                    {"preset": "auto", "eta": 0.5, "window_start": 0.05, "window_end": 0.25,
                                     "variant": "paper"}, 20)):
    def make(node, method, extra, steps):
        @check(f"SamplerCustomAdvanced + {node} + FlipSigmas + DisableNoise + CFGGuider, InvertedReplaySampler")
        async def _():
            p = add_custom_chain(invert_and_replay(method=method, extra=extra, steps=steps), node, extra, steps)
            lat, _p, _h = await run(p, save=("invert", "custom", "replay", "custom_replay"))
            a = (lat["custom"] - lat["invert"]).abs().max().item()
            b = (lat["custom_replay"] - lat["replay"]).abs().max().item()
            if a > 1e-5 or b > 1e-5:
                raise Failed(f"chain vs dedicated node: inversion max diff {a:.3g}, replay max diff {b:.3g}")
            return f"max diff {a:.2g} / {b:.2g}"
    make(node, method, extra, steps)


@check("custom sigmas (BasicScheduler karras) and FlipSigmas into DDIMInvert")
async def _():
    p = invert_and_replay()
    p["sched"] = {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "karras", "steps": 5, "denoise": 1.0}}
    p["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    p["invert"]["inputs"]["sigmas"] = ["flip", 0]
    lat, _p, _h = await run(p, save=("replay",))
    return f"replay finite: {bool(torch.isfinite(lat['replay']).all())}"


@check("noise mask (SolidMask 0 + SetLatentNoiseMask) pins the replay at cfg 5")
async def _():
    p = invert_and_replay(method="ExactInvert", extra=EXACT)
    p["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    p["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    p["invert"]["inputs"]["latent"] = ["masked", 0]
    p["replay"]["inputs"]["cfg"] = 5.0
    lat, _p, _h = await run(p, save=("latent", "replay"))
    e = rms(lat["replay"], lat["latent"])
    if e >= 1e-5:
        raise Failed(f"rms {e}")
    return f"rms {e:.2g}"


@check("source correction at cfg 7.5 + batch of 2")
async def _():
    p = invert_and_replay(method="ExactInvert", extra=EXACT, cfg=7.5, batch=2)
    p["replay"]["inputs"]["correction_strength"] = 1.0
    lat, _p, _h = await run(p, save=("latent", "replay"))
    return f"rms {rms(lat['replay'], lat['latent']):.3g}, batch {lat['replay'].shape[0]}"


@check("InversionReport (EmptyImage inputs) -> PreviewAny + PreviewImage")
async def _():
    p = invert_and_replay()
    p["img_a"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x808080}}
    p["img_b"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x8a8080}}
    p["report"] = {"class_type": "InversionReport", "inputs": {"original": ["img_a", 0], "reconstructed": ["img_b", 0],
                                                             "inverted_latent": ["invert", 0]}}
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["report", 0]}}
    p["pimg"] = {"class_type": "PreviewImage", "inputs": {"images": ["report", 1]}}
    _l, _p, h = await run(p)
    text = json.dumps(h["outputs"].get("show", {}))
    return text[:160]


@check("error text reaches the client (latent with 3 channels on a 4-channel model)")
async def _():
    p = invert_and_replay()
    p["latent"]["inputs"]["channels"] = 3
    try:
        await run(p, save=("replay",))
    except Failed as e:
        if "3 channels" in str(e) and "4-channel" in str(e):
            return str(e)[str(e).find("exception_message"):][:200]
        raise
    raise Failed("no error")


@check("interrupt (/interrupt after 2 progress steps of a 50-step ExactInvert) stops it; server usable after")
async def _():
    fired = []

    def on_progress(d):
        if d["node"] == "invert" and d["value"] >= 2 and not fired:
            fired.append(d["value"])
            post("/interrupt", {})
    try:
        await run(invert_and_replay(method="ExactInvert", steps=50, extra=EXACT), save=("replay",), on_progress=on_progress)
    except Failed as e:
        if "execution_interrupted" not in str(e):
            raise
    else:
        raise Failed("ran to the end despite the interrupt")
    await run(invert_and_replay(steps=4), save=("replay",))
    return f"interrupted after step {fired}"


# ---- the host's real architectures that the PyPI fork lacks (tests/architectures.py; the fork's tier is
# tests/test_architectures.py). Flux.1-schnell layout at a tiny size, seeded random weights, 16x16 latent, T=5
# "simple". Margins from numbers measured on upstream 0.3.64 (this check, 2026-12-02): stock (unscaled euler) 50.43 dB,
# DDIM 50.43, EasyInv 46.55, Exact 107.96, GNRI newton 94.68, PreciseInv (ddim initialiser, 4 iterations) 66.43,
# ExactInvertSampler twin bit-identical to ExactInvert.
UPSTREAM_ARCH_FAMILIES = ("flux",)


def widget_defaults(oi, name, **given):
    out = {}
    for k, spec in (oi[name]["input"].get("required") or {}).items():
        kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
        if isinstance(kind, list):
            out[k] = opts.get("default", kind[0])
        elif kind in ("INT", "FLOAT", "STRING", "BOOLEAN") and "default" in opts:
            out[k] = opts["default"]
    out.update(given)
    return out


def psnr(x, ref):
    import math
    mse = (x.double() - ref.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10((ref.max() - ref.min()).item() ** 2 / mse)


for family in UPSTREAM_ARCH_FAMILIES:
    def make(family):
        @check(f"{family} (real architecture, random weights): every inversion node, stock baseline, SAMPLER twin")
        async def _():
            oi = get("/object_info")
            steps, sched = 5, "simple"
            p = {
                "model": {"class_type": "InversionTestArchModel", "inputs": {"family": family, "seed": 0}},
                "positive": {"class_type": "InversionTestArchConditioning", "inputs": {"family": family, "seeds": "1", "tokens": 4}},
                "negative": {"class_type": "InversionTestArchConditioning", "inputs": {"family": family, "seeds": "2", "tokens": 4}},
                "latent": {"class_type": "InversionTestArchLatent", "inputs": {"family": family, "seeds": "3", "size": 16}},
                "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": sched, "steps": steps, "denoise": 1.0}},
                "flip": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}},
                # stock unsampling minus KSAMPLER's flow scaling (which divides by 1 - sigma = 0 at the top)
                "euler": {"class_type": "InversionTestUnscaledEuler", "inputs": {}},
            }
            common = {"model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "add_noise": False,
                      "noise_seed": 0, "cfg": 1.0, "sampler": ["euler", 0]}
            p["unsample"] = {"class_type": "SamplerCustom", "inputs": {**common, "sigmas": ["flip", 0], "latent_image": ["latent", 0]}}
            p["resample"] = {"class_type": "SamplerCustom", "inputs": {**common, "sigmas": ["sched", 0], "latent_image": ["unsample", 0]}}
            variants = oi["GNRIInvert"]["input"]["required"]["variant"][0]
            methods = {"DDIMInvert": {}, "EasyInvInvert": {}, "ExactInvert": {},
                       "GNRIInvert": {"variant": "newton"} if "newton" in variants else {},
                       "PreciseInvInvert": {"initialiser": "ddim", "max_iterations": 4}}
            links = {"model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0]}
            for m, extra in methods.items():
                p[f"inv_{m}"] = {"class_type": m, "inputs": {**widget_defaults(oi, m, steps=steps, scheduler=sched, **extra),
                                                              **links, "latent": ["latent", 0]}}
                p[f"rep_{m}"] = {"class_type": "InvertedLatentSampler", "inputs": {
                    **widget_defaults(oi, "InvertedLatentSampler"), **links, "inverted_latent": [f"inv_{m}", 0]}}
            p["guider"] = {"class_type": "CFGGuider", "inputs": {**links, "cfg": 1.0}}
            p["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
            p["twin_sampler"] = {"class_type": "ExactInvertSampler", "inputs": widget_defaults(oi, "ExactInvertSampler")}
            p["twin"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["twin_sampler", 0], "sigmas": ["flip", 0],
                "latent_image": ["latent", 0]}}
            save = ("latent", "resample", "twin", "inv_ExactInvert", *[f"rep_{m}" for m in methods])
            lat, _p, _h = await run(p, save=save)
            x0 = lat["latent"]
            got = {m: psnr(lat[f"rep_{m}"], x0) for m in methods}
            stock = psnr(lat["resample"], x0)
            twin = (lat["twin"] - lat["inv_ExactInvert"]).abs().max().item() / lat["inv_ExactInvert"].abs().max().item()
            note = f"stock {stock:.2f} dB, " + ", ".join(f"{m} {v:.2f}" for m, v in got.items()) + f"; twin rel diff {twin:.2g}"
            ddim = got["DDIMInvert"]
            bad = []
            if not all(map(lambda v: v == v, got.values())):
                bad.append("non-finite PSNR")
            if ddim < stock - 0.3:
                bad.append("DDIM below stock - 0.3 dB")
            if got["ExactInvert"] < ddim + 30:
                bad.append("Exact not >= DDIM + 30 dB")
            if got["GNRIInvert"] < ddim + 20:
                bad.append("GNRI not >= DDIM + 20 dB")
            if got["PreciseInvInvert"] < ddim + 8:
                bad.append("PreciseInv (4 gradient iterations) not >= DDIM + 8 dB")
            if twin > 1e-5:
                bad.append("ExactInvertSampler twin differs from ExactInvert")
            if bad:
                raise Failed("; ".join(bad) + ": " + note)
            return note
    make(family)


class _Def:
    """A node class stand-in built from /object_info (what tests/workflow_format.py reads)."""


def node_defs():
    oi = get("/object_info")
    defs = {}
    for k, v in oi.items():
        c = type(k, (_Def,), {})
        inputs = {s: v["input"].get(s) or {} for s in ("required", "optional")}
        c.INPUT_TYPES = classmethod(lambda cls, inputs=inputs: inputs)
        c.RETURN_TYPES = tuple(v["output"])
        c.RETURN_NAMES = tuple(v.get("output_name") or v["output"])
        c.OUTPUT_NODE = v.get("output_node", False)
        defs[k] = c
    return defs


async def reference_workflows():
    weights = PACK / "models" / "reference" / "reference_model.safetensors"
    heldout = PACK / "models" / "reference" / "heldout"
    if not weights.is_file():
        results.append(("reference workflows", None, f"skipped: {weights} not there yet"))
        print(f"SKIP reference workflows: {weights} not there yet")
        return
    (BASE / "input").mkdir(parents=True, exist_ok=True)
    import shutil
    for png in heldout.glob("*.png"):
        shutil.copy(png, BASE / "input" / png.name)
    sys.path.insert(0, str(PACK / "tests"))
    from workflow_format import ui_to_api  # noqa: E402
    defs = node_defs()
    for wf in sorted((PACK / "workflows").glob("reference_*.json")):
        @check(f"reference workflow {wf.name}")
        async def _(wf=wf):
            api = ui_to_api(json.loads(wf.read_text()), defs)
            _l, _p, h = await run(api)
            return f"{len(api)} nodes, outputs from {sorted(h['outputs'])}"
        await _()


async def main():
    for c in CHECKS:
        await c()
    await reference_workflows()
    failed = [r for r in results if r[1] is False]
    print(f"\n{sum(1 for r in results if r[1])} OK, {len(failed)} failed, "
          f"{sum(1 for r in results if r[1] is None)} skipped")
    sys.exit(1 if failed else 0)


asyncio.run(main())
EOF
"$venv/bin/python" "$work/drive.py" "$under_test" "$base" "$port"
