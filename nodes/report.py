"""The Inversion Report node: reconstruction quality and the cost of the inversion, as a table and a plot."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..inversion_core import LATENT_KEY
from ..inversion_core.metrics import psnr, ssim
from .common import CATEGORY


def report_table(original: torch.Tensor, reconstructed: torch.Tensor, entry: Optional[dict]) -> str:
    rows = ["| item | PSNR (dB) | SSIM |", "|---|---|---|"]
    for i, (p, s) in enumerate(zip(psnr(original, reconstructed), ssim(original, reconstructed))):
        rows.append(f"| {i} | {p:.2f} | {s:.4f} |")
    if entry is None:
        return "\n".join(rows)
    st = entry["stats"]
    residual = [max(r) for r in st["residual"] if r]
    lines = [
        "", f"method: {entry['method']}  params: {entry['params']}",
        f"steps: {st['steps']}  model evaluations: forward {st['forward_evals']:.1f}, "
        f"backward {st['backward_evals']:.1f}  seconds: {st['seconds']:.2f}",
        "per-step residual (RMS, latent units): " + (", ".join(f"{r:.2e}" for r in residual) if residual
                                                     else "not measured by this method"),
        f"steps that missed their tolerance: {st['unconverged_steps'] or 'none'}",
    ]
    return "\n".join(rows + lines)


def residual_plot(entry: Optional[dict], width: int = 512, height: int = 256) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: log10 of each step's worst residual as bars (grey bars: not measured)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    steps = entry["stats"]["residual"] if entry else []
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
            draw.rectangle([x0, y, x0 + max(bar - 2, 1), bottom], fill=(40, 90, 200))
    title = "per-step residual (log10, inversion order)" if known else "residual not measured by this method"
    draw.text((left + 8, 4), title, fill="black")
    draw.text((left, bottom + 6), f"step 1 … {len(values)}", fill="black")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


class InversionReport:
    DESCRIPTION = "Reconstruction PSNR/SSIM against the original and what the inversion cost, per step."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("table", "residual_plot")
    OUTPUT_TOOLTIPS = ("A markdown table of quality and cost.", "Per-step residual of the inversion.")
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "original": ("IMAGE", {"tooltip": "The source image."}),
            "reconstructed": ("IMAGE", {"tooltip": "The decoded replay of the inverted latent."}),
        }, "optional": {
            "inverted_latent": ("LATENT", {"tooltip": "The inversion node's LATENT, for its cost and residuals."}),
        }}

    def report(self, original, reconstructed, inverted_latent=None):
        if original.shape != reconstructed.shape:
            raise ValueError(f"reconstructed: shape {tuple(reconstructed.shape)} differs from original "
                             f"{tuple(original.shape)}")
        entry = inverted_latent.get(LATENT_KEY) if isinstance(inverted_latent, dict) else None
        table = report_table(original, reconstructed, entry)
        return {"ui": {"text": [table]}, "result": (table, residual_plot(entry))}


NODE_CLASS_MAPPINGS = {"InversionReport": InversionReport}
NODE_DISPLAY_NAME_MAPPINGS = {"InversionReport": "Inversion Report"}
