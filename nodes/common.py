"""Input declarations shared by the inversion nodes (declaration only; the work is in bridge.py / inversion_core)."""
from __future__ import annotations

import comfy.samplers

CATEGORY = "sampling/inversion"
DEFAULT_SCHEDULER = "ddim_uniform"


def inversion_inputs(default_steps: int = 50) -> dict:
    """MODEL, source conditioning, image LATENT, schedule and cfg: the inputs every inversion node shares."""
    return {
        "required": {
            "model": ("MODEL", {"tooltip": "The diffusion model to invert with (LoRA / patches applied upstream "
                                           "are honoured). Replay with the same model."}),
            "positive": ("CONDITIONING", {"tooltip": "Source prompt describing the image (an empty prompt is the "
                                                     "usual choice)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg != 1."}),
            "latent": ("LATENT", {"tooltip": "The VAE-encoded image to invert."}),
            "steps": ("INT", {"default": default_steps, "min": 1, "max": 1000,
                              "tooltip": "Number of inversion steps T (ignored when a SIGMAS input is connected)."}),
            "scheduler": (comfy.samplers.SCHEDULER_NAMES, {
                "default": DEFAULT_SCHEDULER,
                "tooltip": "Sigma schedule, as in BasicScheduler. ddim_uniform is the classic DDIM-inversion grid (like "
                           "every ComfyUI sampler, it yields one step more when 1000 is not a multiple of steps). "
                           "Use simple for flow models (SD3 / Flux). Replay always uses exactly this schedule."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance during inversion. 1.0 (no guidance) inverts "
                                         "most exactly; higher values make reconstruction drift."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": (
                "Partial inversion, as in BasicScheduler: invert only the lowest `denoise` part of a "
                "steps/denoise schedule; replay starts from there, so edits keep more of the image.")}),
        },
        "optional": {
            "sigmas": ("SIGMAS", {"tooltip": "Optional custom schedule (descending, or ascending from FlipSigmas); "
                                             "overrides steps and scheduler."}),
        },
    }


INVERSION_OUTPUTS = ("LATENT", "SIGMAS")
INVERSION_OUTPUT_NAMES = ("inverted_latent", "sigmas")
INVERSION_OUTPUT_TOOLTIPS = (
    "The noise at the top of the schedule, carrying the schedule and the inversion record; connect it to the "
    "Inverted Latent Sampler.",
    "The sampling schedule (descending) the latent was inverted on.",
)
