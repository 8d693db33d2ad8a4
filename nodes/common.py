"""Input declarations shared by the inversion nodes (declaration only; the work is in bridge.py / inversion_core)."""
from __future__ import annotations

import comfy.samplers

CATEGORY = "sampling/inversion"
# karras starts at the model's sigma_max at every step count (ddim_uniform tops out at t = 1000 - 1000/T: sigma 0.041
# at T=1, 4.1 at T=4 on SD1 models, i.e. not noise). Measured on the reference model (8 held-out images, cfg 1,
# invert + replay PSNR, DDIM / Exact balanced): karras 27.7 / 59.0 dB at T=10, 20.5 / 36.3 at T=4; of the schedules
# that reach sigma_max the best at T=10 (normal 25.2 / 47.0, simple 21.8 / 36.8, sgm_uniform 22.1 / 35.0) and
# second at T=4 (a pack-made exponential-to-zero schedule: 21.1 / 38.9, but 52.8 at T=10).
# Flow (CONST) models: karras is a poor grid (measured on the flow reference model, DDIM at T=10 / 4: karras 16.3 /
# 15.3 dB, normal 23.2 / 17.2, simple 23.6 / 17.8), and simple is what SD3 / Flux workflows use.
SCHEDULER_BY_KIND = {"CONST": "simple"}
# karras with 2 steps is [sigma_max, sigma_min, 0]: one tiny step and one jump over the whole range. sgm_uniform puts
# the middle level at 1.6 instead (SD1 schedule); measured on the EPS reference model at T=2 (8 images, DDIM / Exact
# balanced): karras 5.9 / 11.9 dB, sgm_uniform 12.5 / 22.0 (at T=3 karras 16.2 / 26.4 is already on par: 15.5 / 27.2).
FEW_STEP_SCHEDULER = {"karras": ("sgm_uniform", 2)}     # scheduler -> (replacement, for at most this many steps)
AUTO_SCHEDULER = "auto"
DEFAULT_SCHEDULER = AUTO_SCHEDULER


def scheduler_for(kind: str, steps: int = 1000) -> str:
    """What the "auto" scheduler means for a model kind (EPS / V_PREDICTION / CONST …) and a schedule of ``steps``."""
    name = SCHEDULER_BY_KIND.get(kind, "karras")
    replacement, upto = FEW_STEP_SCHEDULER.get(name, (name, 0))
    return replacement if int(steps) <= upto else name


def inversion_inputs(default_steps: int = 50) -> dict:
    """MODEL, source conditioning, image LATENT, schedule and cfg: the inputs every inversion node shares."""
    return {
        "required": {
            "model": ("MODEL", {"tooltip": "The diffusion model to invert with (LoRA / patches applied upstream "
                                           "are honoured). Replay with the same model."}),
            "positive": ("CONDITIONING", {"tooltip": "Source prompt describing the image (an empty prompt is the "
                                                     "usual choice)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg != 1."}),
            "latent": ("LATENT", {"tooltip": "The VAE-encoded image to invert. A noise_mask on it "
                                             "(SetLatentNoiseMask) does not limit the inversion (the whole image "
                                             "is inverted); it moves into the inverted LATENT's record and becomes "
                                             "the Inverted Latent Sampler's edit mask (stock samplers do not see "
                                             "it)."}),
            "steps": ("INT", {"default": default_steps, "min": 1, "max": 1000,
                              "tooltip": "Number of inversion steps T (ignored when a SIGMAS input is connected)."}),
            "scheduler": ([AUTO_SCHEDULER, *comfy.samplers.SCHEDULER_NAMES], {
                "default": DEFAULT_SCHEDULER,
                "tooltip": "Sigma schedule, as in BasicScheduler; replay always uses exactly this schedule. auto "
                           "(default): karras for EPS / v-prediction models (sgm_uniform at T <= 2, where karras "
                           "wastes its only middle level on sigma_min), simple for flow models (SD3 / Flux), the best "
                           "measured per kind (README). karras starts at the model's sigma_max (pure noise) at every "
                           "T. "
                           "normal, simple, sgm_uniform, "
                           "exponential and upstream's beta, linear_quadratic and kl_optimal (from 2 steps; at 1 step "
                           "kl_optimal gives NaN, an error) also start at sigma_max. ddim_uniform does NOT: its top is sigma at "
                           "t = 1000 - 1000/T (0.041 at T=1, 4.1 at T=4 on SD1 models), so the inverted latent is "
                           "still mostly the image; the node then warns and the record and Inversion Report say "
                           "how far up it went (as a fraction of sigma_max). So does a SIGMAS input that stops short. "
                           "Exactly T steps, as BasicScheduler gives them (for ddim_uniform, KSampler runs one "
                           "step more at some T, e.g. 8 at T=7, starting higher)."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance during inversion. 1.0 (no guidance) inverts "
                                         "most exactly; higher values make reconstruction drift."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": (
                "Partial inversion, as in BasicScheduler: invert only the lowest `denoise` part of a "
                "steps/denoise schedule; replay starts from there, so edits keep more of the image. Below 1 the "
                "top is below sigma_max on purpose: recorded (a NOTE in the Inversion Report), not warned.")}),
        },
        "optional": {
            "sigmas": ("SIGMAS", {"tooltip": "Optional custom schedule (descending, or ascending from FlipSigmas); "
                                             "overrides steps, scheduler and denoise. One whose top is below the "
                                             "model's sigma_max is warned about and reported (a partial "
                                             "inversion)."}),
        },
    }


INVERSION_OUTPUTS = ("LATENT", "SIGMAS")
INVERSION_OUTPUT_NAMES = ("inverted_latent", "sigmas")
INVERSION_OUTPUT_TOOLTIPS = (
    "The noise at the top of the schedule, carrying the schedule and the inversion record; connect it to the "
    "Inverted Latent Sampler.",
    "The sampling schedule (descending) the latent was inverted on.",
)
