#!/usr/bin/env python
"""Quality against cost for every inversion method of the pack, on the reference model's held-out images.

    bash scripts/benchmark.sh                 # full table: every reference model x methods x T in {10, 4, 2}, fp32
    bash scripts/benchmark.sh --quick         # a few-minute subset (used by the tests)
    python scripts/benchmark.py --device cuda --precision fp32,fp16,bf16   # a GPU (an env with CUDA torch)
    bash scripts/benchmark.sh --edits         # the edit engine's benchmark (scripts/benchmark_edits.py)
    bash scripts/benchmark.sh --exact-curve   # Exact Invert: PSNR (mean, worst image) against tolerance and cost

Every shipped reference model is measured (the header says which). The first row of each block is ComfyUI's own
unsampling (BasicScheduler -> FlipSigmas -> SamplerCustom euler, then euler back), run through the host's nodes, the
baseline every "dB vs stock" figure is relative to. Each method runs with its node's default inputs (what a user who
drops the node in gets) unless its label names a change.
Each cell inverts all held-out images as one batch with the empty source prompt at cfg 1 (the usual setting), replays
them with the Inverted Latent Sampler's code path, decodes, and measures: image PSNR and SSIM (pixels in [0, 1]),
latent RMSE (over the whole batch), model forward / backward evaluations per image, seconds (a cell under 5 s: the
fastest of 3 runs,
interleaved with the block's other cells), seconds relative to DDIM at the same T and precision (same run), the
share of time spent outside the model (the pack's overhead) and the peak memory the cell added (CPU: peak RSS; CUDA:
peak allocated). Everything runs through the real host (the pack loaded from a custom_nodes folder, the host's
guider) exactly as the nodes do. Writes a markdown table, a CSV and a PNG plot of PSNR against seconds to --out,
and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))          # tests/host.py starts the real engine with the pack loaded

import torch  # noqa: E402

STOCK = "stock FlipSigmas+euler"
METHODS = [  # (label, node class, widget values that differ from the node's defaults)
    (STOCK, None, {}),          # ComfyUI's own unsampling: BasicScheduler -> FlipSigmas -> euler (no noise)
    ("DDIM", "DDIMInvert", {}),
    ("DDIM input-matched", "DDIMInvert", {"convention": "input-matched"}),
    ("EasyInv", "EasyInvInvert", {}),
    ("Exact fast", "ExactInvert", {"preset": "fast"}),
    ("Exact balanced", "ExactInvert", {}),
    ("Exact balanced, damping off", "ExactInvert", {"damping": "off"}),
    ("Exact exact", "ExactInvert", {"preset": "exact"}),
    ("GNRI quasi-newton", "GNRIInvert", {}),
    ("GNRI newton", "GNRIInvert", {"variant": "newton"}),
    ("GNRI reference code", "GNRIInvert", {"variant": "reference code"}),
    ("PreciseInv fast", "PreciseInvInvert", {"threshold_preset": "fast (1e-2)"}),
    ("PreciseInv precise", "PreciseInvInvert", {}),
    ("PreciseInv precise, ddim init", "PreciseInvInvert", {"initialiser": "ddim"}),
    ("PreciseInv precise, gd", "PreciseInvInvert", {"optimizer": "gd"}),
    ("BDIA", "BDIAInvert", {}),
]
QUICK_METHODS = (STOCK, "DDIM", "EasyInv", "Exact balanced", "GNRI quasi-newton", "GNRI reference code",
                 "PreciseInv fast")
# Methods that differentiate through the model: in bf16 on a CPU this costs many minutes per cell, so a CPU run
# measures them in fp32 only (the table says so); --all-half or --device cuda measures them too.
GRADIENT_METHODS = ("PreciseInv precise", "PreciseInv precise, ddim init", "PreciseInv precise, gd")


def node_params(pack, node_name: str, overrides: dict) -> dict:
    """The node's own default widget values (what a user who drops it in gets), with ``overrides``."""
    types = pack.NODE_CLASS_MAPPINGS[node_name].INPUT_TYPES()
    spec = {**types["required"], **types.get("optional", {})}
    shared = ("model", "positive", "negative", "latent", "steps", "scheduler", "cfg", "denoise")
    params = {k: v[1]["default"] for k, v in spec.items()
              if k not in shared and len(v) > 1 and isinstance(v[1], dict) and "default" in v[1]}
    unknown = set(overrides) - set(spec)
    if unknown:
        raise KeyError(f"{node_name} has no inputs {sorted(unknown)}")
    return {**params, **overrides}


class PeakMemory:
    """Peak memory a block adds: CUDA allocator peak, or the process's peak RSS (Linux: VmHWM, reset via clear_refs)."""

    def __init__(self, device: str):
        self.device, self.added_mb = device, float("nan")

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1]) / 1024.0
        return float("nan")

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2 ** 20
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.base = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.added_mb = torch.cuda.max_memory_allocated() / 2 ** 20 - self.base
        else:
            self.added_mb = self._status("VmHWM") - self.base


def reference(dtype: torch.dtype, half_compute: bool = False, name: str = "sd-unet-eps"):
    """(model, clip, vae, module) of the shipped reference model ``name`` with its network weights in ``dtype``;
    ``half_compute`` also computes in ``dtype`` (on a CPU the host keeps half weights but computes in fp32)."""
    import host
    rm = sys.modules[host.pack_module().__name__ + ".nodes.reference_model"]
    with torch.inference_mode():              # as the host's loaders run: the weights are inference tensors
        model, clip, vae = rm.load_reference_model(name)
    if dtype != torch.float32:
        from safetensors.torch import load_file
        meta = rm.reference_metadata(name)
        tensors = load_file(str(rm.reference_model_path(name)))
        tensors.pop(rm.EMBEDDINGS_KEY)
        model = rm.build_model_patcher(meta["unet_config"], tensors, meta.get("model_type", "eps"),
                                       prefix=rm.UNET_PREFIX, sampling_settings=meta["sampling_settings"],
                                       latent_channels=rm.LATENT_CHANNELS, dtype=dtype)
        if half_compute:   # override the host's CPU manual cast: half-precision arithmetic, as on a GPU
            model.model.manual_cast_dtype = None
    return model, clip, vae, rm


def device_name(device: str) -> str:
    """The device in words for the table's note (the GPU's name on CUDA)."""
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"
    return device


def model_names(pack, wanted: str | None) -> list:
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    names = rm.reference_model_names() if hasattr(rm, "reference_model_names") else ["sd-unet-eps"]
    available = [n for n in names if rm.reference_model_path(n).is_file()]
    if wanted:
        bad = set(wanted.split(",")) - set(names)
        if bad:
            raise SystemExit(f"--model: unknown {sorted(bad)}; choose from {names}")
        return [n for n in names if n in wanted.split(",")]
    return available


def encode(clip, text: str):
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def stock_unsampling(model, empty, latent, schedule, device):
    """ComfyUI's own round trip, through its own nodes: FlipSigmas + SamplerCustom(euler, add_noise off) up, then
    SamplerCustom(euler) down the same schedule. Returns (top latent dict, seconds up, reconstructed latent dict)."""
    import host
    custom, flip = host.node_class("SamplerCustom")(), host.node_class("FlipSigmas")()
    euler = host.node_class("KSamplerSelect")().get_sampler("euler")[0]
    start = time.perf_counter()
    up = custom.sample(model, False, 0, 1.0, empty, empty, euler, flip.get_sigmas(schedule)[0], latent)[0]
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    down = custom.sample(model, False, 0, 1.0, empty, empty, euler, schedule, up)[0]
    return up, seconds, down


# A cell's inversion time is the fastest of TIMING_ROUNDS runs when it takes under RETIME_BELOW_S seconds; the extra
# rounds run every such cell of a (model, T) block in turn, so slow drifts of a shared CPU hit all methods alike
# (single runs in sequence moved ratios of the same work by 20 %: 2.64x vs 3.16x for 30 evaluations against 10; a
# 3.4 s GNRI newton cell timed once read 11.7x in one run and 7.7-8.4x in others, so cells up to 5 s are retimed too).
TIMING_ROUNDS = 3
RETIME_BELOW_S = 5.0
PSNR_CAP = 200.0        # dB an identical image counts as in a mean (beyond float32's reach, ~160 dB)


def timed_inversion(bridge, model, empty, latent, schedule, sampler, device):
    start = time.perf_counter()
    inv = bridge.run_inversion(model, empty, empty, 1.0, latent, schedule, sampler)
    if device == "cuda":
        torch.cuda.synchronize()
    return inv, time.perf_counter() - start


def cell_inputs(pack, model, clip, vae, images, steps, scheduler=None):
    """(bridge module, empty conditioning, latent dict, schedule) of a cell (the nodes' default scheduler unless
    ``scheduler``); call under inference mode."""
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    common = sys.modules[pack.__name__ + ".nodes.common"]
    schedule = bridge.schedule_from_inputs(model, steps, scheduler or common.DEFAULT_SCHEDULER, None)
    return bridge, encode(clip, ""), {"samples": vae.encode(images)}, schedule


def retime(pack, node_name, params, model, clip, vae, images, steps, device, scheduler=None) -> float:
    """One more timing of a cell's inversion (stock: its FlipSigmas + euler unsampling), same inputs as run_cell."""
    with torch.inference_mode():
        bridge, empty, latent, schedule = cell_inputs(pack, model, clip, vae, images, steps, scheduler)
        if node_name is None:
            return stock_unsampling(model, empty, latent, schedule, device)[1]
        sampler = pack.NODE_CLASS_MAPPINGS[node_name]().sampler(model, **node_params(pack, node_name, params))
        return timed_inversion(bridge, model, empty, latent, schedule, sampler, device)[1]


def warm_up_gradients(pack, model, clip, vae, images, device) -> None:
    """One small gradient inversion per loaded model before the measured cells. The first gradient solve of a model
    whose blocks update saved activations in place pays an aborted attempt once per model and process (README, How
    it works); without this the first gradient cell of each model carried it (68 forward evaluations per image at EPS
    T=10 where a repeat takes 40)."""
    run_cell(pack, "warm-up", "PreciseInvInvert", {"max_iterations": 1, "initialiser": "ddim"}, model, clip, vae,
             images[:1], 2, device)


def run_cell(pack, label, node_name, params, model, clip, vae, images, steps, device, scheduler=None):
    metrics = sys.modules[pack.__name__ + ".inversion_core.metrics"]
    with torch.inference_mode():
        bridge, empty, latent, schedule = cell_inputs(pack, model, clip, vae, images, steps, scheduler)
        with PeakMemory(device) as mem:
            if node_name is None:
                _, seconds, back = stock_unsampling(model, empty, latent, schedule, device)
                st = {"forward_evals": float(steps), "backward_evals": 0.0, "model_seconds": float("nan"),
                      "seconds": seconds, "unconverged_steps": [], "ddim_residual": []}
            else:
                sampler = pack.NODE_CLASS_MAPPINGS[node_name]().sampler(model, **node_params(pack, node_name, params))
                inv, seconds = timed_inversion(bridge, model, empty, latent, schedule, sampler, device)
                st = inv["inversion"]["stats"]
        if node_name is not None:
            back = bridge.run_replay(model, empty, empty, 1.0, inv)
        recon = vae.decode(back["samples"])
    unconverged = len(st["unconverged_steps"])
    psnr = metrics.psnr(images, recon)
    first = (st.get("residual") or [None])[0]
    return {
        "method": label, "T": len(schedule) - 1, "psnr": sum(min(p, PSNR_CAP) for p in psnr) / len(images),
        "psnr_min": min(psnr),
        "first_residual": sum(first) / len(first) if first else float("nan"),
        "ssim": sum(metrics.ssim(images, recon)) / len(images),
        "latent_rmse": (back["samples"] - latent["samples"]).pow(2).mean().sqrt().item(),
        "fwd": st["forward_evals"], "bwd": st["backward_evals"], "seconds": seconds,
        "overhead": 1.0 - st["model_seconds"] / max(st["seconds"], 1e-9), "peak_mb": mem.added_mb,
        "unconverged": unconverged,
    }


def extras(pack, model, clip, vae, images, device) -> str:
    """Throughput against batch size, PreciseInv's memory against one forward+backward, executor vs direct calls."""
    import host
    lines = ["", "### Throughput (T = 10, fp32): seconds per image against batch size", "",
             "| method | batch 1 | batch 4 | batch 16 |", "|---|---|---|---|"]
    for label, node_name, params in METHODS:
        if label not in ("DDIM", "Exact balanced", "GNRI quasi-newton") or node_name not in pack.NODE_CLASS_MAPPINGS:
            continue
        cells = []
        for b in (1, 4, 16):
            batch = images.repeat((b + len(images) - 1) // len(images), 1, 1, 1)[:b]
            r = run_cell(pack, label, node_name, params, model, clip, vae, batch, 10, device)
            cells.append(f"{r['seconds'] / b:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "PreciseInvInvert" in pack.NODE_CLASS_MAPPINGS:
        one = dict(METHODS[[m[0] for m in METHODS].index("PreciseInv precise")][2], max_iterations=1)
        single = run_cell(pack, "PreciseInv", "PreciseInvInvert", one, model, clip, vae, images, 1, device)
        full = run_cell(pack, "PreciseInv", "PreciseInvInvert",
                        METHODS[[m[0] for m in METHODS].index("PreciseInv precise")][2], model, clip, vae, images,
                        10, device)
        lines += ["", "### PreciseInv memory", "",
                  f"Peak memory added by a T = 10 'precise' inversion: {full['peak_mb']:.0f} MB; by one forward + "
                  f"one backward pass in the same setting (T = 1, one iteration): {single['peak_mb']:.0f} MB; ratio "
                  f"{full['peak_mb'] / max(single['peak_mb'], 1e-9):.2f} (target <= 1.2)."]
    # the host's executor around the same node call
    prompt = {
        "load": {"class_type": "InversionReferenceModelLoader", "inputs": {"model": "sd-unet-eps"}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "lat": {"class_type": "InversionTestLatent", "inputs": {"seed": 0, "batch": len(images), "channels": 3,
                                                                "size": 32}},
        "inv": {"class_type": "DDIMInvert", "inputs": {
            "model": ["load", 0], "positive": ["empty", 0], "negative": ["empty", 0], "latent": ["lat", 0],
            "steps": 10, "scheduler": sys.modules[pack.__name__ + ".nodes.common"].DEFAULT_SCHEDULER, "cfg": 1.0,
            "denoise": 1.0}},
    }
    host.run_workflow(prompt)                                    # warm: model loaded, caches filled
    start = time.perf_counter()
    res = host.run_workflow(prompt)
    executor = time.perf_counter() - start
    inner = res["inv"][0]["inversion"]["stats"]["seconds"]
    lines += ["", "### Executor overhead", "",
              f"DDIM Invert, T = 10, batch {len(images)}: {executor:.3f} s for the whole workflow through the host's "
              f"executor (loader, text encode, latent, inversion) vs {inner:.3f} s inside the inversion loop."]
    return "\n".join(lines)


# Exact Invert's custom setting swept for the PSNR-vs-tolerance curve the "exact" preset is chosen from (budget 40,
# Anderson memory 5, with and without the stall stop)
CURVE_TOLERANCES = (3e-4, 1e-4, 3e-5, 1e-5, 1e-6)
CURVE_STALLS = (0, 6)


def exact_curve(pack, names, steps, device, quick: bool) -> str:
    """Exact Invert over tolerances: mean and worst-image PSNR, evaluations per step, time against DDIM, and the
    first step's residual (σ 0 → σ_1: the replay's last step is the denoiser itself, D(x_1, σ_1) = x_0, the hardest
    equation of the schedule)."""
    lines = ["", "### Exact Invert: PSNR against tolerance (budget 40, memory 5)", "",
             "| model | T | tolerance | stall stop | PSNR dB | worst image dB | fwd/step | x DDIM | "
             "first-step residual |",
             "|---|---|---|---|---|---|---|---|---|"]
    tols = CURVE_TOLERANCES[1:2] if quick else CURVE_TOLERANCES
    for name in names:
        model, clip, vae, rm = reference(torch.float32, name=name)
        images = torch.cat([img for _, _, img in rm.heldout_images()])[: 2 if quick else None]
        for t in steps:
            ddim = run_cell(pack, "DDIM", "DDIMInvert", {}, model, clip, vae, images, t, device)["seconds"]
            for tol in tols:
                for stall in CURVE_STALLS:
                    params = {"preset": "custom", "tolerance": tol, "budget": 40, "memory": 5, "stall": stall}
                    r = run_cell(pack, "Exact", "ExactInvert", params, model, clip, vae, images, t, device)
                    for _ in range(TIMING_ROUNDS - 1):        # DDIM and the cell in turn (see TIMING_ROUNDS)
                        ddim = min(ddim, retime(pack, "DDIMInvert", {}, model, clip, vae, images, t, device))
                        if r["seconds"] < RETIME_BELOW_S:
                            r["seconds"] = min(r["seconds"], retime(pack, "ExactInvert", params, model, clip, vae,
                                                                    images, t, device))
                    lines.append(f"| {name} | {t} | {tol:.0e} | {stall or 'off'} | {r['psnr']:.2f} | "
                                 f"{r['psnr_min']:.2f} | {r['fwd'] / t:.1f} | {r['seconds'] / ddim:.2f} | "
                                 f"{r['first_residual']:.1e} |")
                    print(lines[-1], flush=True)
    return "\n".join(lines)


SCHEDULES = ("karras", "exponential", "normal", "simple")


def exact_schedules(pack, names, steps, device, quick: bool) -> str:
    """Exact Invert's exact preset on each scheduler, with DDIM and the balanced preset on the same schedule: how
    exact an inversion can be depends on the schedule's lowest level σ_1 (the first step inverts the denoiser from
    there). Times are against DDIM Invert on the nodes' default schedule."""
    lines = ["", "### Exact Invert's exact preset per scheduler", "",
             "| model | scheduler | T | sigma_1 | DDIM dB | balanced dB | exact dB | exact worst image dB | "
             "exact fwd/step | exact x DDIM (default schedule) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        model, clip, vae, rm = reference(torch.float32, name=name)
        images = torch.cat([img for _, _, img in rm.heldout_images()])[: 2 if quick else None]
        for t in steps:
            ddim = run_cell(pack, "DDIM", "DDIMInvert", {}, model, clip, vae, images, t, device)["seconds"]
            for _ in range(TIMING_ROUNDS - 1):
                ddim = min(ddim, retime(pack, "DDIMInvert", {}, model, clip, vae, images, t, device))
            for scheduler in (SCHEDULES[:1] + SCHEDULES[-1:] if quick else SCHEDULES):
                cells = [run_cell(pack, label, node, params, model, clip, vae, images, t, device, scheduler)
                         for label, node, params in (("DDIM", "DDIMInvert", {}), ("balanced", "ExactInvert", {}),
                                                     ("exact", "ExactInvert", {"preset": "exact"}))]
                exact = cells[2]
                if exact["seconds"] < RETIME_BELOW_S:
                    for _ in range(TIMING_ROUNDS - 1):
                        exact["seconds"] = min(exact["seconds"], retime(pack, "ExactInvert", {"preset": "exact"},
                                                                        model, clip, vae, images, t, device,
                                                                        scheduler))
                with torch.inference_mode():
                    sigma_1 = float(cell_inputs(pack, model, clip, vae, images[:1], t, scheduler)[3][-2])
                lines.append(f"| {name} | {scheduler} | {t} | {sigma_1:.3g} | {cells[0]['psnr']:.2f} | "
                             f"{cells[1]['psnr']:.2f} | {exact['psnr']:.2f} | {exact['psnr_min']:.2f} | "
                             f"{exact['fwd'] / t:.1f} | {exact['seconds'] / ddim:.2f} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def plot(rows, path: Path):
    """PSNR against seconds (log-x), one panel per reference model, one line per method joining its T values (drawn
    with PIL: no plotting library needed). Rows whose PSNR is not finite (stock unsampling at a flow model's σ = 1)
    are left out."""
    from PIL import Image, ImageDraw
    rows = [r for r in rows if math.isfinite(r["psnr"]) and math.isfinite(r["seconds"])]
    models = sorted({r["model"] for r in rows})
    PW, H, L, B, T_, LEG = 560, 560, 60, 50, 40, 200
    img = Image.new("RGB", (PW * len(models), H), "white")
    d = ImageDraw.Draw(img)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (90, 60, 150),
               (200, 80, 0), (0, 120, 120)]
    methods = sorted({r["method"] for r in rows})
    colour = {m: colours[i % len(colours)] for i, m in enumerate(methods)}
    for k, model in enumerate(models):
        ox = k * PW
        mine = [r for r in rows if r["model"] == model]
        xs = [math.log10(max(r["seconds"], 1e-3)) for r in mine]
        ys = [min(r["psnr"], 120.0) for r in mine]
        x0, x1, y0, y1 = min(xs) - 0.1, max(xs) + 0.1, min(ys) - 2, max(ys) + 2
        right = ox + PW - LEG
        px = lambda x: ox + L + (x - x0) / (x1 - x0) * (right - ox - L)          # noqa: E731
        py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - B - T_)              # noqa: E731
        d.line([(ox + L, T_), (ox + L, H - B), (right, H - B)], fill="black")
        for e in range(math.floor(x0), math.ceil(x1) + 1):
            if x0 <= e <= x1:
                d.text((px(e) - 10, H - B + 6), f"1e{e}s", fill="black")
        for v in range(int(y0) // 10 * 10, int(y1) + 1, 10):
            if y0 <= v <= y1:
                d.text((ox + 8, py(v) - 6), f"{v} dB", fill="black")
        d.text((ox + L, 8), f"{model}: reconstruction PSNR vs inversion seconds (above 120 dB drawn at 120)", fill="black")
        for i, method in enumerate(m for m in methods if any(r["method"] == m for r in mine)):
            c = colour[method]
            pts = sorted((r["T"], math.log10(max(r["seconds"], 1e-3)), min(r["psnr"], 120.0))
                         for r in mine if r["method"] == method)
            if len(pts) > 1:
                d.line([(px(x), py(y)) for _, x, y in pts], fill=c, width=2)
            for t, x, y in pts:
                d.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=c)
                d.text((px(x) + 4, py(y) - 12), f"T{t}", fill=c)
            d.text((right + 10, T_ + 14 * i), method, fill=c)
    img.save(path)


def table(rows) -> str:
    head = ("| model | method | precision | T | PSNR dB | dB vs stock | SSIM | latent RMSE | fwd/img | bwd/img | s | "
            "x DDIM | overhead | peak MB | missed tol |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        out.append(f"| {r['model']} | {r['method']} | {r['precision']} | {r['T']} | {r['psnr']:.2f} | "
                   f"{r['vs_stock']:+.2f} | {r['ssim']:.4f} | {r['latent_rmse']:.2e} | {r['fwd']:.1f} | "
                   f"{r['bwd']:.1f} | {r['seconds']:.2f} | {r['x_ddim']:.2f} | {100 * r['overhead']:.0f}% | "
                   f"{r['peak_mb']:.0f} | {r['unconverged']} |")
    return "\n".join(out)


def update_readme(results: str) -> None:
    """Replace the text between README's results markers with ``results``."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = ("\nMeasured by `bash scripts/benchmark.sh --update-readme` (plot: `docs/psnr_vs_seconds.png`).\n\n"
            + results.strip() + "\n")
    readme.write_text(head + start + body + end + tail)
    print(f"updated {readme}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a few-minute subset: T in {10, 4}, fp32, the quick methods, 2 images, every model")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=str(ROOT / "out" / "benchmark"))
    ap.add_argument("--model", default=None,
                    help="comma-separated reference model names (default: every shipped one)")
    ap.add_argument("--steps", default=None, help="comma-separated T values (default 10,4,2)")
    ap.add_argument("--methods", default=None,
                    help="semicolon-separated method labels to run (labels hold commas), e.g. 'DDIM;Exact balanced'")
    ap.add_argument("--precision", default="fp32",
                    help="comma-separated, from fp32 (default), fp16, bf16, half (bf16 weights on CPU, fp16 on "
                         "CUDA) and both (fp32,half); fp16 / bf16 compute in that type (on CPU: --half-compute)")
    ap.add_argument("--half-compute", action="store_true",
                    help="on CPU, compute in bf16 too (the host computes in fp32 there; ~36x slower)")
    ap.add_argument("--all-half", action="store_true",
                    help="on CPU, also run the gradient methods in bf16 (slow: many minutes per cell)")
    ap.add_argument("--extras", action="store_true",
                    help="also measure throughput vs batch, PreciseInv memory and executor overhead")
    ap.add_argument("--exact-curve", action="store_true",
                    help="only Exact Invert's PSNR-vs-tolerance curve (T 10 and 4 unless --steps; --quick: 2 images, "
                         "one tolerance)")
    ap.add_argument("--exact-schedules", action="store_true",
                    help="only Exact Invert's exact preset (with DDIM and balanced) on each of "
                         f"{', '.join(SCHEDULES)} (T 10 and 4 unless --steps; --quick: 2 images, 2 schedulers)")
    ap.add_argument("--keep-going", action="store_true",
                    help="a cell that raises is reported (listed under the table) and the run goes on")
    ap.add_argument("--update-readme", action="store_true",
                    help="replace README.md's results section with this run's table (full runs only)")
    args = ap.parse_args(argv)

    if args.device != "cpu":
        os.environ["INVERSION_TEST_GPU"] = "1"   # tests/host.py otherwise pins the engine to the CPU
    import host
    host.engine()
    pack = host.pack_module()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    steps = [int(s) for s in args.steps.split(",")] if args.steps else ([10, 4] if args.quick else [10, 4, 2])
    half = torch.float16 if args.device == "cuda" else torch.bfloat16
    wanted_precisions = [w.strip() for w in args.precision.replace("both", "fp32,half").split(",") if w.strip()]
    unknown = set(wanted_precisions) - {"fp32", "fp16", "bf16", "half"}
    if unknown or not wanted_precisions:
        raise SystemExit(f"--precision: unknown {sorted(unknown)}; choose from fp32, fp16, bf16, half, both")
    explicit = {"fp16", "bf16"} & set(wanted_precisions)
    half_compute = args.half_compute or args.device == "cuda" or bool(explicit)
    half_name = str(half)[6:] if half_compute else "bf16 weights"
    dtypes = {"fp32": ("fp32", torch.float32), "half": (half_name, half),
              "fp16": ("fp16", torch.float16), "bf16": ("bf16", torch.bfloat16)}
    precisions = list(dict.fromkeys(dtypes[w] for w in wanted_precisions))
    wanted = {w.strip() for w in args.methods.split(";")} if args.methods else \
        (set(QUICK_METHODS) if args.quick else None)
    if wanted and wanted - {m[0] for m in METHODS}:
        raise SystemExit(f"--methods: unknown {sorted(wanted - {m[0] for m in METHODS})}; choose from "
                         + "; ".join(m[0] for m in METHODS))
    methods = [m for m in METHODS if (m[1] is None or m[1] in pack.NODE_CLASS_MAPPINGS)
               and (wanted is None or m[0] in wanted)]
    skipped = [m[0] for m in METHODS if m[1] is not None and m[1] not in pack.NODE_CLASS_MAPPINGS]
    names = model_names(pack, args.model)
    print(f"reference models: {', '.join(names)}", flush=True)
    for wanted_mode, mode in ((args.exact_schedules, exact_schedules), (args.exact_curve, exact_curve)):
        if wanted_mode:     # an Exact Invert study alone: T 10 and 4 unless --steps
            mode_steps = [int(s) for s in args.steps.split(",")] if args.steps else [10, 4]
            md = mode(pack, names, mode_steps, args.device, args.quick)
            path = out_dir / f"{mode.__name__}.md"
            path.write_text(md + "\n")
            print("\n" + md + f"\n\nwritten: {path}")
            return md

    rows = []
    half_skipped: set = set()
    failed: list = []
    start_all = time.perf_counter()
    for name in names:
        for prec_name, dtype in precisions:
            model, clip, vae, rm = reference(dtype, half_compute, name)
            images = torch.cat([img for _, _, img in rm.heldout_images()])
            if args.quick:
                images = images[:2]
            if any(m[1] == "PreciseInvInvert" for m in methods):
                try:
                    warm_up_gradients(pack, model, clip, vae, images, args.device)
                except Exception as e:      # noqa: BLE001 -- the PreciseInv cells report it
                    if not args.keep_going:
                        raise
                    print(f"[{name}] warm-up failed: {type(e).__name__}: {e}", flush=True)
            for t in steps:
                block = []
                for label, node_name, params in methods:
                    if (dtype != torch.float32 and args.device == "cpu" and not args.all_half
                            and label in GRADIENT_METHODS):
                        half_skipped.add(label)
                        continue
                    try:
                        r = run_cell(pack, label, node_name, params, model, clip, vae, images, t, args.device)
                    except Exception as e:  # noqa: BLE001 -- --keep-going: report the cell and go on
                        if not args.keep_going:
                            raise
                        failed.append(f"{name} {prec_name} T={t} {label}: {type(e).__name__}: {e}")
                        print(f"[{name}] {label} {prec_name} T={t} FAILED: {failed[-1]}", flush=True)
                        continue
                    r.update(model=name, precision=prec_name)
                    block.append((r, node_name, params))
                for _ in range(TIMING_ROUNDS - 1):
                    for r, node_name, params in block:
                        if r["seconds"] < RETIME_BELOW_S:
                            r["seconds"] = min(r["seconds"], retime(pack, node_name, params, model, clip, vae,
                                                                    images, t, args.device))
                base = {r["method"]: r for r, _, _ in block if r["method"] in (STOCK, "DDIM")}
                for r, _, _ in block:
                    ddim, stock = base.get("DDIM"), base.get(STOCK)
                    r["x_ddim"] = r["seconds"] / ddim["seconds"] if ddim else float("nan")
                    r["vs_stock"] = r["psnr"] - stock["psnr"] if stock else float("nan")
                    rows.append(r)
                    print(f"[{name}] {r['method']:30s} {prec_name} T={r['T']:3d}  PSNR {r['psnr']:6.2f} dB "
                          f"({r['vs_stock']:+6.2f} vs stock)  {r['seconds']:7.2f} s  x{r['x_ddim']:.2f} DDIM",
                          flush=True)
                (out_dir / "partial.md").write_text(table(rows) + "\n")   # what a stopped run still leaves
    md = table(rows)
    if args.extras:
        model, clip, vae, rm = reference(torch.float32)
        images = torch.cat([img for _, _, img in rm.heldout_images()])
        md += "\n" + extras(pack, model, clip, vae, images, args.device)
    scheduler = sys.modules[pack.__name__ + ".nodes.common"].DEFAULT_SCHEDULER
    note = (f"\n\nReference models {', '.join(names)}; {len(images)} held-out 32x32 images each, one batch, the "
            f"nodes' default inputs (scheduler {scheduler}, empty prompt, cfg 1) unless the label says otherwise; "
            f"'dB vs stock' = PSNR minus ComfyUI's own FlipSigmas + euler round trip in the same run; device "
            f"{device_name(args.device)}, "
            + ("'bf16 weights' = half-precision weights with fp32 arithmetic, what ComfyUI does on a CPU; "
               "--half-compute measures bf16 arithmetic. " if not half_compute and any(d != torch.float32 for _, d in precisions) else "")
            + f"PSNR = mean over the images of each image's dB (an identical image counts as {PSNR_CAP:.0f}); "
            f"cells over {RETIME_BELOW_S:g} s are timed once, the others (DDIM among them) best of {TIMING_ROUNDS}, "
            "so the largest 'x DDIM' ratios lean high; 'overhead' = time outside the model's forward and backward "
            "passes; 'peak MB' on a CPU is the growth of the process's peak RSS, which depends on what earlier "
            "cells freed (compare it on CUDA only); 'latent RMSE' is over the whole batch; 'missed tol' = steps whose "
            "residual stayed above the method's tolerance: for the budgeted presets (Exact fast / balanced, GNRI) "
            "the budget, which is what they promise, ran out first, and BDIA's 1 is its 2-evaluation starter step, "
            "which does not limit the replay's exactness; "
            + f"torch {torch.__version__}, {os.environ.get('OMP_NUM_THREADS')} thread(s); total "
            f"{time.perf_counter() - start_all:.0f} s." + (f" Not registered (skipped): {', '.join(skipped)}."
                                                             if skipped else "")
            + (f" FAILED cells: {'; '.join(failed)}." if failed else "")
            + (f" Measured in fp32 only on this CPU run (bf16 autograd on CPU is too slow; --all-half or a GPU "
               f"measures them): {', '.join(sorted(half_skipped))}." if half_skipped else ""))
    (out_dir / "results.md").write_text(md + note + "\n")
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out_dir / "psnr_vs_seconds.png")
    print("\n" + md + note)
    print(f"\nwritten: {out_dir / 'results.md'}, results.csv, psnr_vs_seconds.png")
    if args.update_readme:
        update_readme(md + note)
    return rows


if __name__ == "__main__":
    main()
