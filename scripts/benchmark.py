#!/usr/bin/env python
"""Quality against cost for every inversion method of the pack, on the reference model's held-out images.

    bash scripts/benchmark.sh                 # full table: methods x T in {50, 10, 4, 2} x {fp32, bf16}
    bash scripts/benchmark.sh --quick         # a < 1 min subset (used by the tests)
    bash scripts/benchmark.sh --device cuda   # the same on a GPU (fp16 instead of bf16)

Each cell inverts all held-out images as one batch with the empty source prompt at cfg 1 (the usual setting), replays
them with the Inverted Latent Sampler's code path, decodes, and measures: image PSNR and SSIM (pixels in [0, 1]),
latent RMSE, model forward / backward evaluations per image, seconds, seconds relative to DDIM at the same T and
precision (same run), the share of time spent outside the model (the pack's overhead) and the peak memory the cell
added (CPU: peak RSS; CUDA: peak allocated). Everything runs through the real host (the pack loaded from a
custom_nodes folder, the host's guider) exactly as the nodes do. Writes a markdown table, a CSV and a PNG plot of PSNR
against seconds to --out, and prints the table.
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

METHODS = [  # (label, node class, widget params)
    ("DDIM", "DDIMInvert", {}),
    ("EasyInv", "EasyInvInvert", {"preset": "auto", "eta": 0.5, "window_start": 0.05, "window_end": 0.25,
                                  "variant": "paper"}),
    ("Exact fast", "ExactInvert", {"preset": "fast", "tolerance": 1e-4, "budget": 2, "memory": 3}),
    ("Exact balanced", "ExactInvert", {"preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}),
    ("Exact exact", "ExactInvert", {"preset": "exact", "tolerance": 1e-6, "budget": 40, "memory": 5}),
    ("GNRI paper", "GNRIInvert", {"lambda": 0.1, "tolerance": 1e-4, "max_iterations": 5, "variant": "paper"}),
    ("GNRI anderson", "GNRIInvert", {"lambda": 0.1, "tolerance": 1e-4, "max_iterations": 3, "variant": "anderson"}),
    ("GNRI reference code", "GNRIInvert", {"lambda": 0.1, "tolerance": 1e-4, "max_iterations": 2,
                                           "variant": "reference code"}),
    ("PreciseInv fast", "PreciseInvInvert", {"threshold_preset": "fast (1e-2)", "custom_threshold": 1e-4,
                                             "max_iterations": 100, "step_size": 1.0}),
    ("PreciseInv precise", "PreciseInvInvert", {"threshold_preset": "precise (1e-5)", "custom_threshold": 1e-4,
                                                "max_iterations": 100, "step_size": 1.0}),
    ("PreciseInv precise, exact init", "PreciseInvInvert", {
        "threshold_preset": "precise (1e-5)", "custom_threshold": 1e-4, "max_iterations": 100, "step_size": 1.0,
        "initialiser": "exact"}),
]
QUICK_METHODS = ("DDIM", "EasyInv", "Exact balanced", "GNRI reference code", "PreciseInv fast")
# Methods that differentiate through the model: in bf16 on a CPU this costs many minutes per cell, so a CPU run
# measures them in fp32 only (the table says so); --all-half or --device cuda measures them too.
GRADIENT_METHODS = ("GNRI paper", "PreciseInv precise", "PreciseInv precise, exact init")


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


def reference(dtype: torch.dtype, half_compute: bool = False):
    """(model, clip, vae) of the shipped reference model with its UNet weights in ``dtype``; ``half_compute`` also
    computes in ``dtype`` (on a CPU the host keeps half weights but computes in fp32)."""
    import host
    rm = sys.modules[host.pack_module().__name__ + ".nodes.reference_model"]
    model, clip, vae = rm.load_reference_model()
    if dtype != torch.float32:
        from safetensors.torch import load_file
        meta = rm.reference_metadata()
        tensors = load_file(str(rm.reference_model_path()))
        tensors.pop(rm.EMBEDDINGS_KEY)
        model = rm.build_model_patcher(meta["unet_config"], tensors, meta.get("model_type", "eps"),
                                       prefix=rm.UNET_PREFIX, sampling_settings=meta["sampling_settings"],
                                       latent_channels=rm.LATENT_CHANNELS, dtype=dtype)
        if half_compute:   # override the host's CPU manual cast: half-precision arithmetic, as on a GPU
            model.model.manual_cast_dtype = None
    return model, clip, vae, rm


def encode(clip, text: str):
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def run_cell(pack, label, node_name, params, model, clip, vae, images, steps, device):
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    metrics = sys.modules[pack.__name__ + ".inversion_core.metrics"]
    empty = encode(clip, "")
    with torch.inference_mode():
        latent = {"samples": vae.encode(images)}
        schedule = bridge.schedule_from_inputs(model, steps, "ddim_uniform", None)
        sampler = pack.NODE_CLASS_MAPPINGS[node_name]().sampler(model, **params)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            inv = bridge.run_inversion(model, empty, empty, 1.0, latent, schedule, sampler)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        back = bridge.run_replay(model, empty, empty, 1.0, inv)
        recon = vae.decode(back["samples"])
    st = inv["inversion"]["stats"]
    unconverged = len(st["unconverged_steps"])
    return {
        "method": label, "T": len(schedule) - 1, "psnr": sum(metrics.psnr(images, recon)) / len(images),
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
        if label not in ("DDIM", "Exact balanced", "GNRI anderson") or node_name not in pack.NODE_CLASS_MAPPINGS:
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
        "load": {"class_type": "InversionReferenceModelLoader", "inputs": {}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "lat": {"class_type": "InversionTestLatent", "inputs": {"seed": 0, "batch": len(images), "channels": 3,
                                                                "size": 32}},
        "inv": {"class_type": "DDIMInvert", "inputs": {
            "model": ["load", 0], "positive": ["empty", 0], "negative": ["empty", 0], "latent": ["lat", 0],
            "steps": 10, "scheduler": "ddim_uniform", "cfg": 1.0, "denoise": 1.0}},
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


def plot(rows, path: Path):
    """PSNR against seconds, one line per method (log-x), drawn with PIL (no plotting library needed)."""
    from PIL import Image, ImageDraw
    W, H, L, B, T_, R = 900, 520, 70, 60, 30, 230
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [math.log10(max(r["seconds"], 1e-3)) for r in rows]
    ys = [min(r["psnr"], 120.0) for r in rows]
    x0, x1, y0, y1 = min(xs) - 0.1, max(xs) + 0.1, min(ys) - 2, max(ys) + 2
    px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)          # noqa: E731
    py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - B - T_)     # noqa: E731
    d.line([(L, T_), (L, H - B), (W - R, H - B)], fill="black")
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        if x0 <= e <= x1:
            d.text((px(e) - 10, H - B + 6), f"1e{e}s", fill="black")
    for v in range(int(y0) // 10 * 10, int(y1) + 1, 10):
        if y0 <= v <= y1:
            d.text((8, py(v) - 6), f"{v} dB", fill="black")
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    groups = {}
    for r, x, y in zip(rows, xs, ys):
        groups.setdefault((r["method"], r["precision"]), []).append((x, y, r["T"]))
    for i, ((method, prec), pts) in enumerate(sorted(groups.items())):
        c = colours[i % len(colours)]
        pts.sort()
        d.line([(px(x), py(y)) for x, y, _ in pts], fill=c, width=2) if len(pts) > 1 else None
        for x, y, t in pts:
            d.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=c)
            d.text((px(x) + 4, py(y) - 12), f"T{t}", fill=c)
        d.text((W - R + 10, T_ + 16 * i), f"{method} ({prec})", fill=c)
    d.text((L, 8), "reconstruction PSNR vs inversion seconds (reference model, held-out images)", fill="black")
    img.save(path)


def table(rows) -> str:
    head = ("| method | precision | T | PSNR dB | SSIM | latent RMSE | fwd/img | bwd/img | s | x DDIM | overhead | "
            "peak MB | missed tol |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        out.append(f"| {r['method']} | {r['precision']} | {r['T']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                   f"{r['latent_rmse']:.2e} | {r['fwd']:.1f} | {r['bwd']:.1f} | {r['seconds']:.2f} | "
                   f"{r['x_ddim']:.2f} | {100 * r['overhead']:.0f}% | {r['peak_mb']:.0f} | {r['unconverged']} |")
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
    ap.add_argument("--quick", action="store_true", help="a < 1 min subset: T in {10, 4}, fp32, 5 methods")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=str(ROOT / "out" / "benchmark"))
    ap.add_argument("--steps", default=None, help="comma-separated T values (default 50,10,4,2)")
    ap.add_argument("--methods", default=None, help="comma-separated method labels to run")
    ap.add_argument("--precision", default=None, choices=["fp32", "half"],
                    help="only this precision (default: both; --quick: fp32)")
    ap.add_argument("--half-compute", action="store_true",
                    help="on CPU, compute in bf16 too (the host computes in fp32 there; ~36x slower)")
    ap.add_argument("--all-half", action="store_true",
                    help="on CPU, also run the gradient methods in bf16 (slow: many minutes per cell)")
    ap.add_argument("--update-readme", action="store_true",
                    help="replace README.md's results section with this run's table (full runs only)")
    args = ap.parse_args(argv)

    import host
    if args.device == "cpu":
        host.engine()
    else:
        import comfy.cli_args
        comfy.cli_args.args.cpu = False
        host.engine()
    pack = host.pack_module()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    steps = [int(s) for s in args.steps.split(",")] if args.steps else ([10, 4] if args.quick else [50, 10, 4, 2])
    half = torch.float16 if args.device == "cuda" else torch.bfloat16
    half_compute = args.half_compute or args.device == "cuda"
    half_name = str(half)[6:] if half_compute else "bf16 weights"
    precisions = [("fp32", torch.float32)] if args.quick else [("fp32", torch.float32), (half_name, half)]
    if args.precision:
        precisions = [p for p in precisions if (p[1] == torch.float32) == (args.precision == "fp32")]
    wanted = set(args.methods.split(",")) if args.methods else (set(QUICK_METHODS) if args.quick else None)
    methods = [m for m in METHODS if m[1] in pack.NODE_CLASS_MAPPINGS and (wanted is None or m[0] in wanted)]
    skipped = [m[0] for m in METHODS if m[1] not in pack.NODE_CLASS_MAPPINGS]

    rows = []
    half_skipped: set = set()
    half_grad = sum(m[0] in GRADIENT_METHODS for m in methods) if args.device == "cpu" and not args.all_half else 0
    cells = len(steps) * sum(len(methods) - (half_grad if d != torch.float32 else 0) for _, d in precisions)
    done = 0
    start_all = time.perf_counter()
    for prec_name, dtype in precisions:
        model, clip, vae, rm = reference(dtype, half_compute)
        images = torch.cat([img for _, _, img in rm.heldout_images()])
        for t in steps:
            ddim_seconds = None
            for label, node_name, params in methods:
                if (dtype != torch.float32 and args.device == "cpu" and not args.all_half
                        and label in GRADIENT_METHODS):
                    half_skipped.add(label)
                    continue
                r = run_cell(pack, label, node_name, params, model, clip, vae, images, t, args.device)
                r["precision"] = prec_name
                if label == "DDIM":
                    ddim_seconds = r["seconds"]
                r["x_ddim"] = r["seconds"] / ddim_seconds if ddim_seconds else float("nan")
                rows.append(r)
                done += 1
                print(f"[{done}/{cells}] {label:20s} {prec_name} T={t:3d}  PSNR {r['psnr']:6.2f} dB  "
                      f"{r['seconds']:7.2f} s  x{r['x_ddim']:.2f} DDIM", flush=True)
    md = table(rows)
    if not args.quick:
        model, clip, vae, rm = reference(torch.float32)
        images = torch.cat([img for _, _, img in rm.heldout_images()])
        md += "\n" + extras(pack, model, clip, vae, images, args.device)
    note = (f"\n\n{len(images)} held-out 32x32 images, batch {len(images)}, device {args.device}, "
            + ("'bf16 weights' = half-precision weights with fp32 arithmetic, what ComfyUI does on a CPU; "
               "--half-compute measures bf16 arithmetic. " if not half_compute else "")
            + f"torch {torch.__version__}, {os.environ.get('OMP_NUM_THREADS')} thread(s); total "
            f"{time.perf_counter() - start_all:.0f} s." + (f" Not registered (skipped): {', '.join(skipped)}."
                                                             if skipped else "")
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
