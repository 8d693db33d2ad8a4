#!/usr/bin/env python
"""Edit benchmark (issue 14): does an edit carry the new prompt and keep the source's structure?

    bash scripts/benchmark.sh --edits [--quick] [--model reference|sd3-mmdit-flow|all] [--out DIR]
    .venv/bin/python scripts/benchmark_edits.py ...                (the same)

For each reference model: every held-out image is inverted (Exact Invert, balanced, its own prompt, cfg 1) and
replayed with the next prompt of the vocabulary at cfg ``--cfg``: plain replay, replay + source correction, and the
Inversion Edit Engine's modes over their window / strength range. Masked rows edit composites of two held-out images
(image i outside, image i+4 inside an exact square mask) with the edit confined to the square.

Columns (one markdown table per model; the same as CSV; a plot of structure against edit score):

* ``structure``: PIE-Bench's structure distance with the reference model's own features: 1000 × mean squared
  difference of the cosine self-similarity matrices (over spatial positions) of source and edit, features = the
  decoder activations (entering the middle output block) of the model at σ = 0.2 on the empty prompt, fixed noise.
  Lower = structure kept. ``structure (pixels)``: the same on mean-removed 4×4 pixel patches (model-free).
* ``edit score``: the model's own diffusion-classifier margin, ×1000: mean over σ ∈ {0.3, 0.7, 1.5, 3} (flow models:
  {0.2, 0.4, 0.6, 0.8}) and two noise seeds of ‖ε − ε̂(x_σ, source prompt)‖² − ‖ε − ε̂(x_σ, edit prompt)‖² (> 0: the edit prompt explains the image
  better). ``edit %``: of plain replay's. ``accuracy``: the classifier's 9-way choice (vocabulary incl. the empty
  prompt) is the edit prompt.
* ``background PSNR``: dB over the pixels outside the mask, masked rows only (identical backgrounds are capped at
  100 dB).
* ``PSNR to source``: whole image.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

FEATURE_SIGMA = 0.2
CLASSIFIER_SIGMAS = (0.3, 0.7, 1.5, 3.0)          # EPS (SD1 sigma range 0.03 … 14.6)
FLOW_CLASSIFIER_SIGMAS = (0.2, 0.4, 0.6, 0.8)     # flow (CONST): sigma is the noise fraction in [0, 1]
CLASSIFIER_SEEDS = (0, 1)
MODELS = ("sd-unet-eps", "sd3-mmdit-flow")   # the reference models (nodes/reference_model.py); "reference" = the first


def dit_settings(quick: bool) -> list[tuple[str, dict]]:
    """The DiT (SD3 MMDiT) rows: dit_kv over its window range, and the masked rows."""
    E = lambda **k: {"engine": dict(mode="dit_kv", **k)}  # noqa: E731
    rows = [("plain replay", {}), ("replay + source correction", {"correction": 1.0})]
    for end in ((0.3, 0.8, 0.85, 1.0) if quick else (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.85, 1.0)):
        rows.append((f"dit_kv 0-{end:g}", E(window_start=0.0, window_end=end)))
    if not quick:
        for strength in (0.5, 0.6, 0.75):
            rows.append((f"dit_kv 0-1 strength {strength:g}", E(window_start=0.0, window_end=1.0,
                                                                 strength=strength)))
        rows.append(("dit_kv 0.2-1", E(window_start=0.2, window_end=1.0)))
        rows.append(("dit_kv 0.5-1", E(window_start=0.5, window_end=1.0)))
    # layers none: KV-Edit proper, the edit's own keys / values inside the mask (at dit_kv's default layers every
    # masked block takes the source's at strength 1 anyway, so a mask there changes nothing: warned by the engine)
    rows += [("masked: plain replay, latent pin", {"mask": "pin"}),
             ("masked: dit_kv 0-1 layers none, KV mask only", {"mask": "kv", **E(window_start=0.0, window_end=1.0,
                                                                                 layers="none")}),
             ("masked: dit_kv 0-1 layers none, KV mask + latent pin", {"mask": "both", **E(
                 window_start=0.0, window_end=1.0, layers="none")})]
    if not quick:
        rows.insert(-3, ("masked: plain replay, no mask", {"mask": "none"}))
    return rows


def settings(quick: bool) -> list[tuple[str, dict]]:
    """(label, replay/engine parameters); no ``engine`` = no engine."""
    rows = [("plain replay", {}), ("replay + source correction", {"correction": 1.0})]
    E = lambda **k: {"engine": k}  # noqa: E731
    for end in ((0.5,) if quick else (0.25, 0.5, 1.0)):
        rows.append((f"pnp attention 0-{end:g}", E(mode="pnp", window_start=0.0, window_end=end)))
    for end in ((0.2, 0.3) if quick else (0.1, 0.2, 0.3, 0.5)):
        rows.append((f"pnp + features 0-{end:g}", E(mode="pnp", window_start=0.0, window_end=end,
                                                    residual_features=True)))
    if not quick:
        rows.append(("pnp + features 0-1 strength 0.3", E(mode="pnp", window_start=0.0, window_end=1.0,
                                                           residual_features=True, strength=0.3)))
    for start in ((0.0,) if quick else (0.0, 0.1, 0.3)):
        rows.append((f"masactrl {start:g}-1", E(mode="masactrl", window_start=start, window_end=1.0)))
    if not quick:
        rows.append(("masactrl 0-1 all layers", E(mode="masactrl", window_start=0.0, window_end=1.0, layers="all")))
    for end in ((0.8,) if quick else (0.4, 0.8, 1.0)):
        rows.append((f"p2p swap 0-{end:g}", E(mode="p2p", window_start=0.0, window_end=end)))
    if not quick:
        rows.append(("p2p swap 0-1 all layers", E(mode="p2p", window_start=0.0, window_end=1.0, layers="all")))
        rows.append(("p2p swap 0-0.8 reweight 2", E(mode="p2p", window_start=0.0, window_end=0.8, reweight=2.0)))
    masked = [("masked: plain replay, latent pin", {"mask": "pin"}),
              ("masked: masactrl 0-1, KV mask only", {"mask": "kv", **E(mode="masactrl", window_start=0.0,
                                                                         window_end=1.0)}),
              ("masked: pnp + features 0-0.3, KV mask + latent pin", {"mask": "both", **E(
                  mode="pnp", window_start=0.0, window_end=0.3, residual_features=True)})]
    if not quick:
        masked.insert(0, ("masked: plain replay, no mask", {"mask": "none"}))
        masked.insert(3, ("masked: masactrl 0-1, KV mask + latent pin", {"mask": "both", **E(
            mode="masactrl", window_start=0.0, window_end=1.0)}))
    return rows + masked


# ---------------------------------------------------------------------------------------------------- the model
def load_model(name: str, rm):
    if name in ("reference", MODELS[0]):
        return rm.load_reference_model()
    try:
        return rm.load_reference_model(name)
    except Exception as e:  # the second reference model is trained by another job; say so and skip it
        raise RuntimeError(f"reference model {name!r} is not available here ({type(e).__name__}: {e})") from None


def conditioning(clip, prompts: list[str]):
    conds, pooled = [], []
    for p in prompts:
        c, pl = clip.encode_from_tokens(clip.tokenize(p), return_pooled=True)
        conds.append(c)
        pooled.append(pl)
    return [[torch.cat(conds), {"pooled_output": torch.cat(pooled)}]]


class Judge:
    """The model's own features and diffusion classifier, evaluated with the unpatched model."""

    def __init__(self, model, clip, vocab: list[str], edit_metrics):
        self.model, self.base, self.m = model, model.model, edit_metrics
        self.ms = model.get_model_object("model_sampling")
        enc = [clip.encode_from_tokens(clip.tokenize(p), return_pooled=True) for p in vocab]
        self.table = torch.cat([c for c, _ in enc])                                        # [V, T, D]
        self.pooled = torch.cat([p for _, p in enc])                                      # [V, D]
        self.vocab = vocab
        self.dit = hasattr(self.base.diffusion_model, "joint_blocks")

    def _apply(self, x, sigma: float, p: int, patches=None):
        """The network on the device its weights are on (a GPU's after a sampling run); the result on x's."""
        dev = next(self.base.diffusion_model.parameters()).device
        s = torch.full((x.shape[0],), float(sigma), device=dev)
        opts = {"patches": patches} if patches else {}
        context = self.table[p:p + 1].expand(x.shape[0], -1, -1).to(dev)
        extra = {"y": self.pooled[p:p + 1].expand(x.shape[0], -1).to(dev)} if self.dit else {}
        out = self.base.apply_model(x.to(dev), s, c_crossattn=context, transformer_options=opts, **extra)
        return out.to(x.device)

    def _noised(self, x0, sigma: float, seed: int):
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(x0.shape, generator=gen)
        return self.ms.noise_scaling(torch.tensor(sigma), eps, x0), eps

    def features(self, latents) -> torch.Tensor:
        """At σ = FEATURE_SIGMA, empty prompt, fixed noise: UNet — the decoder activations entering the middle
        output block (captured with the host's output_block_patch); MMDiT — the image tokens leaving the middle
        joint block (a forward hook on that block instance, measurement only), as a [B, C, h, w] grid."""
        x, _ = self._noised(latents, FEATURE_SIGMA, 1234)
        got = {}
        if self.dit:
            blocks = self.base.diffusion_model.joint_blocks
            handle = blocks[len(blocks) // 2].register_forward_hook(
                lambda mod, args, out: got.__setitem__("h", out[1].detach().float().cpu().clone()))
            try:
                self._apply(x, FEATURE_SIGMA, 0)
            finally:
                handle.remove()
            tokens = got["h"]
            h, w = latents.shape[-2:]
            gh = int(round((tokens.shape[1] * h / w) ** 0.5))
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, tokens.shape[1] // gh)
        want = len(self.base.diffusion_model.output_blocks) // 2

        def capture(h, hsp, opts):
            if opts.get("block") == ("output", want):
                got["h"] = h.detach().float().cpu().clone()
            return h, hsp

        self._apply(x, FEATURE_SIGMA, 0, {"output_block_patch": [capture]})
        return got["h"]

    def classifier(self, latents) -> torch.Tensor:
        """[B, V] mean noise-prediction errors per vocabulary prompt."""
        alpha = lambda s: float(self.ms.noise_scaling(torch.tensor(s), torch.zeros(1), torch.ones(1)))  # noqa: E731
        total = torch.zeros(latents.shape[0], len(self.vocab))
        n = 0
        import comfy.model_sampling

        flow = isinstance(self.ms, comfy.model_sampling.CONST)
        for sigma in (FLOW_CLASSIFIER_SIGMAS if flow else CLASSIFIER_SIGMAS):
            for seed in CLASSIFIER_SEEDS:
                x, eps = self._noised(latents, sigma, seed)
                for p in range(len(self.vocab)):
                    den = self._apply(x, sigma, p)
                    eps_hat = (x - alpha(sigma) * den) / sigma
                    total[:, p] += (eps_hat - eps).pow(2).flatten(1).mean(1)
                n += 1
        return total / n


# ---------------------------------------------------------------------------------------------------- running
def run_model(name: str, quick: bool, steps: int, cfg: float, pack, out_dir: Path, log, scheduler: str = "",
              preset: str = "balanced") -> dict:
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    edit = sys.modules[pack.__name__ + ".nodes.edit"]
    em = sys.modules[pack.__name__ + ".inversion_core.edit.metrics"]
    from benchmark import PeakMemory

    model, clip, vae = load_model(name, rm)
    vocab = list(rm.vocabulary())
    words = [p for p in vocab if p]
    images = rm.heldout_images()
    if quick:
        images = images[:4]
    names = [n for n, _, _ in images]
    src_prompts = [p for _, p, _ in images]
    tgt_prompts = [words[(words.index(p) + 1) % len(words)] for p in src_prompts]
    pixels = torch.cat([img for _, _, img in images])                      # [B, H, W, 3]
    b, h, w = pixels.shape[:3]
    # composites: image i outside, image i + B/2 inside an exact centred square
    mask = torch.zeros(h, w)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
    other = torch.roll(pixels, shifts=b // 2, dims=0)
    composite = pixels * (1 - mask[None, :, :, None]) + other * mask[None, :, :, None]
    comp_src = [src_prompts[(i + b // 2) % b] for i in range(b)]            # the inside's prompt
    comp_tgt = [words[(words.index(p) + 1) % len(words)] for p in comp_src]

    judge = Judge(model, clip, vocab, em)
    empty = conditioning(clip, [""] * b)
    t_all = time.perf_counter()
    with torch.inference_mode():
        jobs = {}
        for key, pix, sp, tp in (("plain", pixels, src_prompts, tgt_prompts),
                                 ("masked", composite, comp_src, comp_tgt)):
            latent = {"samples": vae.encode(pix)}
            schedule = bridge.schedule_from_inputs(
                model, steps, scheduler or ("simple" if judge.dit else "ddim_uniform"), None)
            sampler = pack.NODE_CLASS_MAPPINGS["ExactInvert"]().sampler(
                model, preset=preset, tolerance=1e-4, budget=3, memory=3)
            src, tgt = conditioning(clip, sp), conditioning(clip, tp)
            inv = bridge.run_inversion(model, src, empty, 1.0, latent, schedule, sampler)
            jobs[key] = dict(pixels=pix, latent=latent["samples"], inv=inv, src=src, tgt=tgt,
                             src_idx=torch.tensor([vocab.index(p) for p in sp]),
                             tgt_idx=torch.tensor([vocab.index(p) for p in tp]),
                             feats=judge.features(latent["samples"]))
        rows, examples = [], {}
        for label, spec in (dit_settings(quick) if judge.dit else settings(quick)):
            job = jobs["masked" if "mask" in spec else "plain"]
            mode = spec.get("mask", "none")
            start = time.perf_counter()
            use_model = model
            engine = None
            if spec.get("engine"):
                kv_mask = mask if mode in ("kv", "both") else None
                use_model, engine = edit.build_engine_patch(model, job["inv"], job["src"], mask=kv_mask,
                                                            **spec["engine"])
            out = bridge.run_replay(use_model, job["tgt"], empty, cfg, job["inv"], source_positive=job["src"],
                                    correction_strength=spec.get("correction", 0.0),
                                    mask=mask if mode in ("pin", "both") else None)
            seconds = time.perf_counter() - start
            lat = out["samples"]
            dec = vae.decode(lat)
            structure = em.structure_distance(job["feats"], judge.features(lat))
            structure_px = em.structure_distance(em.patch_features(job["pixels"]), em.patch_features(dec))
            errs = judge.classifier(lat)
            margin = 1000.0 * (errs.gather(1, job["src_idx"][:, None]) - errs.gather(1, job["tgt_idx"][:, None]))[:, 0]
            acc = (errs.argmin(1) == job["tgt_idx"]).float()
            bg = em.background_psnr(dec, job["pixels"], mask[None]) if "mask" in spec else None
            row = {"setting": label, "structure": structure.mean().item(), "structure (pixels)":
                   structure_px.mean().item(), "edit score": margin.mean().item(), "accuracy": acc.mean().item(),
                   "background PSNR": bg.mean().item() if bg is not None else float("nan"),
                   "PSNR to source": em.psnr(dec, job["pixels"]).mean().item(), "seconds": seconds,
                   "source evals": engine.stats["source_calls"] if engine is not None else 0,
                   "images": "composites" if "mask" in spec else "held-out"}
            rows.append(row)
            examples[label] = dec
            log(f"  [{name}] {label}: structure {row['structure']:.2f}, edit {row['edit score']:.3f}, "
                f"acc {row['accuracy']:.2f}, {seconds:.1f}s")
        src_errs = judge.classifier(jobs["plain"]["latent"])
        src_margin = 1000.0 * (src_errs.gather(1, jobs["plain"]["src_idx"][:, None])
                               - src_errs.gather(1, jobs["plain"]["tgt_idx"][:, None]))[:, 0]
        cost = measure_cost(model, jobs["plain"], empty, cfg, bridge, edit, PeakMemory,
                            "dit_kv" if judge.dit else "masactrl")
    plain = rows[0]
    for r in rows:
        r["edit %"] = 100.0 * r["edit score"] / plain["edit score"] if plain["edit score"] > 0 else float("nan")
    result = {"model": name, "rows": rows, "source margin": src_margin.mean().item(), "cost": cost,
              "images": names, "targets": tgt_prompts, "examples": examples, "pixels": pixels,
              "seconds": time.perf_counter() - t_all, "steps": steps, "cfg": cfg,
              "steps_run": len(jobs["plain"]["inv"]["inversion"]["sigmas"]) - 1}
    return result


def measure_cost(model, job, empty, cfg, bridge, edit, PeakMemory, mode: str = "masactrl") -> dict:
    """Seconds and peak memory of one replay (batch of all images): plain, engine batched, engine cached (full window,
    MasaCtrl: every step pays the source branch)."""
    out = {}
    for label, branch in (("plain", None), ("batched", "batched"), ("cached", "cached")):
        use = model
        if branch:
            use, _ = edit.build_engine_patch(model, job["inv"], job["src"], mode, window_start=0.0,
                                             window_end=1.0, source_branch=branch)
        bridge.run_replay(use, job["tgt"], empty, cfg, job["inv"])          # warm-up
        times, peaks = [], []
        for _ in range(3):      # a shared CPU is noisy: the fastest of three, the largest peak
            with PeakMemory("cpu") as mem:
                start = time.perf_counter()
                bridge.run_replay(use, job["tgt"], empty, cfg, job["inv"])
                times.append(time.perf_counter() - start)
            peaks.append(mem.added_mb)
        seconds = min(times)
        mem.added_mb = max(peaks)
        out[label] = {"seconds": seconds, "peak_mb": mem.added_mb}
    return out


# ---------------------------------------------------------------------------------------------------- output
COLUMNS = ("setting", "structure", "structure (pixels)", "edit score", "edit %", "accuracy", "background PSNR",
           "PSNR to source", "seconds", "source evals", "images")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "—" if v != v else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def verdict(result: dict) -> list[str]:
    rows = result["rows"]
    plain = rows[0]
    keep = [r for r in rows if not r["setting"].startswith("masked") and r is not plain
            and r["edit score"] >= 0.8 * plain["edit score"] and r["structure"] <= 0.5 * plain["structure"]]
    masked = [r for r in rows if r["setting"].startswith("masked") and r["background PSNR"] >= 35.0
              and "no mask" not in r["setting"]]
    out = [f"plain replay: structure {plain['structure']:.2f}, edit score {plain['edit score']:.3f} "
           f"(the source image itself: {result['source margin']:.3f}), accuracy {plain['accuracy']:.2f}"]
    if keep:
        best = min(keep, key=lambda r: r["structure"])
        out.append(f"edit kept (>= 80 % of plain's edit score) with structure <= half of plain's: YES — "
                   + "; ".join(f"{r['setting']} ({r['edit %']:.0f} %, structure {r['structure']:.2f})" for r in keep)
                   + f"; lowest structure: {best['setting']}")
    else:
        out.append("edit kept (>= 80 % of plain's edit score) with structure <= half of plain's: NO setting")
    out.append("masked edits with background PSNR >= 35 dB: " + (", ".join(
        f"{r['setting']} ({r['background PSNR']:.1f} dB)" for r in masked) or "none"))
    c = result["cost"]
    out.append("source branch cost (one replay of the batch, injection on every step): "
               + ", ".join(f"{k} {v['seconds']:.2f} s / +{v['peak_mb']:.0f} MB peak" for k, v in c.items()))
    return out


def write_outputs(results: list[dict], out_dir: Path, docs: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "edits.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(("model",) + COLUMNS)
        for res in results:
            for r in res["rows"]:
                wr.writerow([res["model"]] + [r[c] for c in COLUMNS])
    paths = [out_dir / "edits.png"] + ([ROOT / "docs" / "edit_tradeoff.png"] if docs else [])
    for p in paths:
        plot(results, p)
    if docs:
        _examples(results[0], ROOT / "docs" / "edit_examples.png")


COLOURS = {"plain": (0, 0, 0), "replay": (127, 127, 127), "pnp": (31, 119, 180), "masactrl": (255, 127, 14),
           "p2p": (44, 160, 44)}


def plot(results: list[dict], path: Path) -> None:
    """Structure (x) against edit score (y) per setting, one panel per model, with the 'done' lines (80 % of plain
    replay's edit score, half its structure); drawn with PIL (no plotting library in the environment)."""
    from PIL import Image, ImageDraw

    W, H, L, B, T_ = 760, 560, 60, 50, 40
    img = Image.new("RGB", (W * len(results), H), "white")
    d = ImageDraw.Draw(img)
    for i, res in enumerate(results):
        ox = i * W
        rows = [r for r in res["rows"] if not r["setting"].startswith("masked")]
        xs = [r["structure"] for r in rows]
        ys = [r["edit score"] for r in rows]
        x1, y0, y1 = max(xs) * 1.1, min(0.0, min(ys)) - 0.5, max(ys) * 1.1 + 0.5
        px = lambda x: ox + L + x / x1 * (W - L - 40)                  # noqa: E731
        py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - B - T_)     # noqa: E731
        d.line([(ox + L, T_), (ox + L, H - B), (ox + W - 40, H - B)], fill="black")
        for k in range(6):
            xv, yv = x1 * k / 5, y0 + (y1 - y0) * k / 5
            d.text((px(xv) - 10, H - B + 5), f"{xv:.0f}", fill="black")
            d.text((ox + 5, py(yv) - 6), f"{yv:.1f}", fill="black")
        plain = rows[0]
        gx, gy = px(0.5 * plain["structure"]), py(0.8 * plain["edit score"])
        for t in range(T_, H - B, 8):
            d.line([(gx, t), (gx, t + 3)], fill=(150, 150, 150))
        for t in range(ox + L, ox + W - 40, 8):
            d.line([(t, gy), (t + 3, gy)], fill=(150, 150, 150))
        for r in rows:
            c = COLOURS.get(r["setting"].split()[0], (214, 39, 40))
            x, y = px(r["structure"]), py(r["edit score"])
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=c)
            d.text((x + 5, y - 12), r["setting"], fill=c)
        d.text((ox + L, 8), f"{res['model']}: edit score (classifier margin x1000, up = edit carried) vs structure "
               "distance (right = structure lost)", fill="black")
        d.text((ox + L, 22), f"{len(res['images'])} held-out images, T={res['steps_run']}, cfg {res['cfg']}; "
               "dotted: 80 % of plain replay's edit score, half its structure", fill=(90, 90, 90))
        d.text((ox + W // 2 - 60, H - 20), "structure distance", fill="black")
    img.save(path)


def _examples(res: dict, path: Path) -> None:
    from demo import _grid

    labels = ["source", "plain replay", "replay + source correction", "pnp + features 0-0.3", "pnp attention 0-0.5",
              "masactrl 0-1", "p2p swap 0-0.8"]
    labels = [l for l in labels if l == "source" or l in res["examples"]]
    rows = []
    for i in range(len(res["images"])):
        rows.append([res["pixels"][i:i + 1]] + [res["examples"][l][i:i + 1] for l in labels[1:]])
    short = [l.replace("replay + source correction", "correction").replace("attention ", "attn ")
             .replace(" + features", "+feat") for l in labels]
    _grid(rows, short, path)


def start_host():
    """The engine with the pack loaded, as the scripts use it: (pack module, a log function to stderr)."""
    import host

    host.engine()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return host.pack_module(), lambda s: print(s, file=sys.stderr, flush=True)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 images, fewer settings (about a minute)")
    ap.add_argument("--model", default="all", choices=MODELS + ("reference", "all"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--scheduler", default="", help="the inversion's and edits' scheduler (default: simple on the "
                    "flow model, ddim_uniform on the EPS one)")
    ap.add_argument("--preset", default="balanced", choices=("fast", "balanced", "exact"),
                    help="Exact Invert's preset for the inversions")
    ap.add_argument("--out", default=str(ROOT / "out" / "edits"))
    ap.add_argument("--docs", action="store_true", help="also write docs/edit_tradeoff.png and docs/edit_examples.png")
    args = ap.parse_args(argv)
    pack, log = start_host()
    results = []
    for name in (MODELS if args.model == "all" else (args.model,)):
        try:
            results.append(run_model(name, args.quick, args.steps, args.cfg, pack, Path(args.out), log,
                                     args.scheduler, args.preset))
        except RuntimeError as e:
            if args.model != "all" or name == MODELS[0]:
                raise
            print(f"\n## {name}\n\nskipped: {e}\n")
    write_outputs(results, Path(args.out), args.docs)
    for res in results:
        print(f"\n## {res['model']}: {len(res['images'])} held-out images (+ as many composites), Exact Invert "
              f"balanced at T={res['steps_run']}, edit prompt = the next word, cfg {res['cfg']}, "
              f"{res['seconds']:.0f} s\n")
        print(markdown(res))
        print()
        for line in verdict(res):
            print("- " + line)
    print(f"\nwritten: {Path(args.out) / 'edits.csv'}, {Path(args.out) / 'edits.png'}")
    return results


if __name__ == "__main__":
    main()
