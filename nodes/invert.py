"""Inversion nodes: declare inputs/outputs, pick the core step solver, hand over to the bridge."""
from __future__ import annotations

from ..inversion_core import ddim_step
from .bridge import InversionSampler, run_inversion, schedule_from_inputs
from .common import CATEGORY, INVERSION_OUTPUT_NAMES, INVERSION_OUTPUT_TOOLTIPS, INVERSION_OUTPUTS, inversion_inputs


def _invert(model, positive, negative, latent, steps, scheduler, cfg, sigmas, sampler):
    schedule = schedule_from_inputs(model, steps, scheduler, sigmas)
    out = run_inversion(model, positive, negative, cfg, latent, schedule, sampler)
    return out, schedule.clone()


class DDIMInvert:
    DESCRIPTION = ("Plain deterministic DDIM inversion: one model evaluation per step, the baseline every other "
                   "method is measured against.")
    CATEGORY = CATEGORY
    RETURN_TYPES = INVERSION_OUTPUTS
    RETURN_NAMES = INVERSION_OUTPUT_NAMES
    OUTPUT_TOOLTIPS = INVERSION_OUTPUT_TOOLTIPS
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return inversion_inputs()

    def invert(self, model, positive, negative, latent, steps, scheduler, cfg, sigmas=None):
        sampler = InversionSampler(ddim_step, "ddim", {})
        return _invert(model, positive, negative, latent, steps, scheduler, cfg, sigmas, sampler)


NODE_CLASS_MAPPINGS = {"DDIMInvert": DDIMInvert}
NODE_DISPLAY_NAME_MAPPINGS = {"DDIMInvert": "DDIM Invert"}
