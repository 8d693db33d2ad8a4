"""The Inversion Report node: reconstruction quality and the cost of the inversion, as a table and a plot.

What it flags (so that real failures stand out instead of every step "missing" something):

* a step is **bad** when its residual (RMS of x_i − S(z), what the replay from the best *evaluated* point z misses at
  that step; the fixed-point solvers store f(z), one map step further, which lands closer — measured 2–3× on the
  reference model, though not guaranteed) is more than ``BAD_RELATIVE`` of DDIM's first residual there — the
  residual f(x_i) − x_i of the fixed-point map at the current latent, i.e. the step's own size RMS(x_{i+1} − x_i) —
  so the solve did not even halve the error of the plain DDIM guess; or worse than DDIM's own residual where the
  solver measured that (``StepStats.ddim_residual``); or a residual that reaches the image as more than
  ``LANDING_MISS_LIMIT`` of the image latent's RMS (record.landing_misses: what the replay misses the image by, the
  residual carried down from the step's lower level; at one huge step, or a huge step above a tiny lowest one, a
  residual far below the step's own size is still most of the image). A step of one evaluation is
  not judged: its residual is the DDIM guess's by construction and its latent is the DDIM step (plain DDIM is not
  judged either);
* budgeted presets (Exact fast / balanced, every GNRI variant) promise a number of model evaluations per step, not a
  tolerance: the report says what they spent instead of listing every step as "missed tolerance";
  tolerance-driven methods (Exact exact / custom, PreciseInv) list the steps that missed it;
* not judged: BDIA (its pair replay is exact whatever its starter step's residual) and GNRI's reference code (its
  residual is measured at the sign step's iterate z_k; the stored f(z_k) lands far closer);
* a schedule that stops short of the model's σ_max (how far up the inversion went), and a LATENT whose samples are no
  longer the noise this record describes.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..inversion_core import LATENT_KEY
from ..inversion_core.metrics import psnr, ssim
from ..inversion_core.record import (LANDING_MISS_LIMIT, RESIDUAL_BEFORE_MAP, describe_change, landing_misses,
                                     image_share)
from .bridge import tolerance_promise
from .common import CATEGORY
from .host_compat import warn
from .page import preview_image

# A step whose residual exceeds this fraction of the step's own size is flagged. Measured on the reference model
# (8 held-out images, worst item per step): every run that reconstructs at >= 33.9 dB stays below 43% on every step
# (Exact balanced cfg 1 T=10 karras, 59.0 dB: max 20%, the first step from the image, then <= 3.2%; Exact fast,
# 49.2 dB: max 42%; T=4 karras / normal, 36.3 / 33.9 dB: max 20%); every run at <= 30.8 dB has a step above 68%
# (cfg 30, 10.9 dB: 74-110% on steps 1-4; cfg 7.5, 30.8 dB: 68% on step 2; sgm_uniform T=2, 22.0 dB: 94%; GNRI
# reference code, 30.7 dB: 100%).
BAD_RELATIVE = 0.5


def _promise(entry: dict) -> tuple[str, str]:
    """("budget" | "tolerance" | "none", words) for the method's promise, read from its recorded parameters."""
    method, p = entry.get("method", ""), entry.get("params") or {}
    if method == "exact":
        if tolerance_promise(method, p) is None:
            return "budget", f"at most {p.get('budget')} model evaluations per step (preset {p.get('preset')})"
        return "tolerance", f"RMS residual <= {p.get('tolerance'):g} per step (up to {p.get('budget')} evaluations)"
    if method == "gnri":
        if p.get("variant") == "reference code":
            return "budget", "the official code's 2 iterations per step (variant reference code)"
        evals = p.get("budget", p.get("max_iterations"))
        return "budget", f"at most {evals} model evaluations per step (variant {p.get('variant')})"
    if method == "preciseinv":
        return "tolerance", (f"loss <= {p.get('threshold'):g} per step (up to {p.get('max_iterations')} "
                             "iterations)")
    if method == "bdia":
        g = p.get("gamma")
        gamma = f"{g:.4g}" if isinstance(g, (int, float)) else str(g)
        gamma += ", auto" if p.get("gamma_auto") else ""
        return "none", (f"BDIA pair (gamma {gamma}): exact by construction after a starter step of at most "
                        f"{p.get('starter_budget')} evaluations, then one model evaluation per step; replay with "
                        "the Inverted Latent Sampler (a plain sampler on samples alone is a generation)")
    return "none", "one model evaluation per step (residual not measured)"


def relative_residuals(entry: dict) -> list[Optional[float]]:
    """Per step (inversion order): the worst item's residual / RMS(x_{i+1} − x_i); None where not measured."""
    st = entry["stats"]
    states = entry.get("states") or []
    out: list[Optional[float]] = []
    for i, res in enumerate(st["residual"]):
        if not res or i + 1 >= len(states):
            out.append(None)
            continue
        move = (states[i + 1] - states[i]).float().flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
        out.append(max(float(r) / float(m) for r, m in zip(res, move.tolist())))
    return out


def _one_map_step_on(entry: dict) -> bool:
    """Whether the stored latents are f(z) one map step beyond the measured points z (the fixed-point solvers)
    rather than the measured points themselves: each solver says so in its steps (StepStats.residual_at)."""
    measured = [s for s in entry.get("step_stats") or [] if s.get("residual")]
    return bool(measured) and all(s.get("residual_at") == RESIDUAL_BEFORE_MAP for s in measured)


def _not_judged(entry: dict) -> Optional[str]:
    """Why this record's steps are not judged (None: they are), as its solver said (StepStats.not_judged)."""
    return next((s["not_judged"] for s in entry.get("step_stats") or [] if s.get("not_judged")), None)


def bad_steps(entry: dict) -> list[tuple[int, str]]:
    """[(step index 0-based, why)] for steps that are actually bad (see the module doc)."""
    if _not_judged(entry):
        return []
    st = entry["stats"]
    ddim = st.get("ddim_residual") or [None] * len(st["residual"])
    evaluations = [s.get("forward_evals") for s in entry.get("step_stats") or []] or [None] * len(st["residual"])
    stats = entry.get("step_stats") or []
    landing = landing_misses([float(s.get("sigma_lo", -1.0)) for s in stats], st["residual"], evaluations,
                             entry["states"][0], entry.get("model_kind", "")) if stats and entry.get("states") else {}
    out = []
    for i, (rel, res, dd, n) in enumerate(zip(relative_residuals(entry), st["residual"], ddim, evaluations)):
        why = []
        if rel is not None and rel > BAD_RELATIVE and not (n is not None and n <= 1.0):
            why.append(f"residual {100 * rel:.0f}% of DDIM's first residual")
        if res and dd and any(r > d for r, d in zip(res, dd)):
            why.append("worse than plain DDIM's step")
        if i in landing:
            why.append(f"residual {100 * max(m for _, m in landing[i]):.0f}% of the image latent's RMS as the replay "
                       "carries it down to the image (the replay lands about that far off the image)")
        if why:
            out.append((i, ", ".join(why)))
    return out


def _fmt_steps(idx: list[int]) -> str:
    return ", ".join(str(i + 1) for i in idx)


def report_table(original: torch.Tensor, reconstructed: torch.Tensor, entry: Optional[dict],
                 notes: tuple[str, ...] = ()) -> str:
    rows = ["| item | PSNR (dB) | SSIM |", "|---|---|---|"]
    for i, (p, s) in enumerate(zip(psnr(original, reconstructed), ssim(original, reconstructed))):
        rows.append(f"| {i} | {p:.2f} | {s:.4f} |")
    if entry is None:
        return "\n".join(rows)
    st = entry["stats"]
    residual = [max(r) for r in st["residual"] if r]
    lines = [
        "", f"method: {entry['method']}  params: {entry['params']}",
        f"steps: {st['steps']}  model evaluations: forward {st['forward_evals']:.1f}"
        + (f" (of which {st['check_evals']:g} checked that the patched model is a function of its input)"
           if st.get("check_evals") else "")
        + f", backward {st['backward_evals']:.1f}  seconds: {st['seconds']:.2f}",
    ]
    top, smax = st.get("top_sigma"), st.get("model_sigma_max")
    if top is not None and smax:
        kind = entry.get("model_kind", "")
        lines.append(f"schedule: sigma 0 -> {top:.4g}, {100 * top / smax:.1f}% of the model's sigma_max {smax:.4g} "
                     f"(the image's share of the latent there: {100 * image_share(top, kind):.0f}%)")
    lines += [f"{'NOTE' if w.startswith('partial inversion') else 'WARNING'}: {w}"      # partial: asked for
              for w in list(entry.get("warnings") or []) + list(notes)]
    where = ("; measured at the best evaluated point, one map step before the stored latent, which typically lands "
             "closer" if _one_map_step_on(entry) else "; measured at the stored latent") if residual else ""
    lines.append(f"per-step residual (RMS, latent units, inversion order{where}): "
                 + (", ".join(f"{r:.2e}" for r in residual) if residual else "not measured by this method"))
    rel = relative_residuals(entry)
    if any(r is not None for r in rel):
        lines.append("residual / DDIM's first residual (the step's size): " + ", ".join("-" if r is None else f"{100 * r:.2g}%" for r in rel))
    kind, words = _promise(entry)
    lines.append(f"promise: {words}")
    if kind == "budget":
        spent = len(st["unconverged_steps"])
        lines.append(f"budget spent on {spent} of {st['steps']} steps, {st['steps'] - spent} stopped early at the "
                     "tolerance (neither is a failure: see bad steps)")
    elif kind == "tolerance":
        lines.append(f"steps that missed their tolerance: {_fmt_steps(st['unconverged_steps']) or 'none'}")
    bad = bad_steps(entry)
    if bad:
        lines.append(f"BAD STEPS (the replay drifts there; more steps, a larger budget or a lower cfg help): "
                     + "; ".join(f"step {i + 1}: {why}" for i, why in bad))
    stalled = [(i, s["note"]) for i, s in enumerate(entry.get("step_stats") or [])
               if str(s.get("note", "")).startswith("stalled")]
    if stalled:
        lines.append("STALLED steps (more evaluations would not help; on the first steps more inversion steps, a "
                     "scheduler whose low levels shrink geometrically (exponential, karras), or BDIA Invert do): "
                     + "; ".join(f"step {i + 1}: {note}" for i, note in stalled))
    if _not_judged(entry):
        lines.append(f"bad steps: not judged ({_not_judged(entry)})")
    elif not bad and any(r is not None for r in rel):
        lines.append(f"bad steps: none (every measured residual <= {100 * BAD_RELATIVE:.0f}% of DDIM's first residual, "
                     f"and <= {100 * LANDING_MISS_LIMIT:.0f}% of the image latent's RMS as it reaches the image)")
    return "\n".join(rows + lines)


def residual_plot(entry: Optional[dict], width: int = 512, height: int = 256) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: log10 of each step's worst residual as bars (grey: not measured, red: a bad step)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    steps = entry["stats"]["residual"] if entry else []
    bad = {i for i, _ in bad_steps(entry)} if entry else set()
    values = [math.log10(max(max(r), 1e-12)) if r else None for r in steps]
    known = [v for v in values if v is not None]
    lo, hi = (min(known) - 0.5, max(known) + 0.5) if known else (-1.0, 0.0)
    left, top, bottom = 48, 20, height - 24
    draw.line([(left, top), (left, bottom), (width - 8, bottom)], fill="black")
    for tick in range(math.ceil(lo), math.floor(hi) + 1):
        y = bottom - (tick - lo) / (hi - lo) * (bottom - top)
        draw.text((4, y - 6), f"1e{tick}", fill="black")
    n = max(len(values), 1)
    bar = (width - left - 16) / n
    for i, v in enumerate(values):
        x0 = left + 4 + i * bar
        if v is None:
            draw.rectangle([x0, top, x0 + max(bar - 2, 1), bottom], fill=(220, 220, 220))
        else:
            y = bottom - (v - lo) / (hi - lo) * (bottom - top)
            draw.rectangle([x0, y, x0 + max(bar - 2, 1), bottom], fill=(200, 40, 40) if i in bad else (40, 90, 200))
    title = "per-step residual (log10, inversion order; red = bad step)" if known else \
        "residual not measured by this method"
    draw.text((left + 8, 4), title, fill="black")
    draw.text((left, bottom + 6), f"step 1 … {len(values)}", fill="black")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def check_entry(original: torch.Tensor, inverted_latent) -> tuple[Optional[dict], tuple[str, ...]]:
    """The record of ``inverted_latent`` and notes on whether it still belongs to it (errors name the input)."""
    if inverted_latent is None:
        return None, ()
    if not isinstance(inverted_latent, dict) or not isinstance(inverted_latent.get("samples"), torch.Tensor):
        raise ValueError(f"inverted_latent: expected a LATENT, got {type(inverted_latent).__name__}")
    entry = inverted_latent.get(LATENT_KEY)
    if not isinstance(entry, dict) or "stats" not in entry:
        raise ValueError("inverted_latent: this LATENT carries no inversion record; connect the LATENT output of an "
                         "inversion node directly (or leave inverted_latent unconnected for PSNR/SSIM only)")
    states = entry.get("states") or []
    # a video latent [B, C, T, h, w] decodes to the frames of its B videos, one IMAGE item per frame
    video = bool(states) and states[0].ndim == 5 and states[0].shape[2] > 1
    if video and original.shape[0] % states[0].shape[0]:
        raise ValueError(f"inverted_latent: the inversion is of {states[0].shape[0]} video(s) but original has "
                         f"{original.shape[0]} frames, not the same number for each: the record belongs to another "
                         "inversion")
    if states and not video and states[0].shape[0] != original.shape[0]:
        raise ValueError(f"inverted_latent: the inversion is of {states[0].shape[0]} image(s) but original has "
                         f"{original.shape[0]}: the record belongs to another inversion")
    if states:
        lh, lw = states[0].shape[-2:]
        ih, iw = original.shape[1:3]
        if ih % lh or iw % lw or ih // lh != iw // lw:
            raise ValueError(f"inverted_latent: the inverted latent is {lh}x{lw} but original is {ih}x{iw} (not one "
                             "VAE scale factor): the record belongs to another image")
    notes = []
    top = entry.get("top_samples")
    if isinstance(top, torch.Tensor):
        change = describe_change(top, inverted_latent["samples"])
        if change is not None:
            notes.append(f"inverted_latent's samples are no longer the noise this record describes ({change}); "
                         "the costs and residuals below are those of the original inversion")
    return entry, tuple(notes)


class InversionReport:
    DESCRIPTION = ("Reconstruction PSNR/SSIM against the original and what the inversion cost, per step; flags bad "
                   "steps, a schedule that stops short of the model's sigma_max, and a latent changed after "
                   "inversion.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("table", "residual_plot")
    OUTPUT_TOOLTIPS = ("A markdown table of quality and cost, with warnings and flagged steps.",
                       "Per-step residual of the inversion (red bars: bad steps).")
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "original": ("IMAGE", {"tooltip": "The source image."}),
            "reconstructed": ("IMAGE", {"tooltip": "The decoded replay of the inverted latent."}),
        }, "optional": {
            "inverted_latent": ("LATENT", {"tooltip": (
                "The inversion node's LATENT, for its cost, residuals and flags. It must be the inversion of "
                "original (checked: image count and size); a latent changed after inversion is noted.")}),
        }}

    def report(self, original, reconstructed, inverted_latent=None):
        if original.ndim == 4 and original.shape[-1] == 4 and reconstructed.shape[-1] == 3:
            original = original[..., :3]      # an RGBA source: VAEEncode used its colour channels only
        if original.shape != reconstructed.shape:
            raise ValueError(f"reconstructed: shape {tuple(reconstructed.shape)} differs from original "
                             f"{tuple(original.shape)}")
        entry, notes = check_entry(original, inverted_latent)
        for note in notes:
            warn(f"Inversion Report: {note}")
        table = report_table(original, reconstructed, entry, notes)
        if entry is not None:
            bad = bad_steps(entry)
            if bad:
                warn(f"Inversion Report ({entry['method']}): bad steps " + "; ".join(f"{i + 1}: {w}" for i, w in bad))
        plot = residual_plot(entry)
        # shown on the node itself (page.py): the table by the pack's web script, the plot as the host shows previews
        return {"ui": {"text": [table], "images": preview_image(plot)}, "result": (table, plot)}


NODE_CLASS_MAPPINGS = {"InversionReport": InversionReport}
NODE_DISPLAY_NAME_MAPPINGS = {"InversionReport": "Inversion Report"}
