"""Inversion nodes: declare inputs/outputs, pick the core step solver, hand over to the bridge."""
from __future__ import annotations

from dataclasses import replace

from ..inversion_core.solvers.ddim import CONVENTIONS, ddim_solver
from ..inversion_core.methods import easyinv
from ..inversion_core.solvers.fixed_point import PRESETS as SOLVER_PRESETS
from ..inversion_core.solvers.fixed_point import FixedPointOptions, make_fixed_point_step
from .bridge import InversionSampler, ReplaySampler, model_family, run_inversion, schedule_from_inputs
from .common import CATEGORY, INVERSION_OUTPUT_NAMES, INVERSION_OUTPUT_TOOLTIPS, INVERSION_OUTPUTS, inversion_inputs


class _InvertNode:
    """Shared declaration: the inputs every inversion node has, plus ``EXTRA`` of its own (required) and
    ``OPTIONAL`` (inputs added later: optional, so that prompts saved before them still validate; they run with
    the input's default); two outputs."""

    CATEGORY = CATEGORY
    RETURN_TYPES = INVERSION_OUTPUTS
    RETURN_NAMES = INVERSION_OUTPUT_NAMES
    OUTPUT_TOOLTIPS = INVERSION_OUTPUT_TOOLTIPS
    FUNCTION = "invert"
    EXTRA: dict = {}
    OPTIONAL: dict = {}

    @classmethod
    def INPUT_TYPES(cls):
        inputs = inversion_inputs()
        inputs["required"].update(cls.EXTRA)
        inputs["optional"].update(cls.OPTIONAL)
        return inputs

    def sampler(self, model, **params) -> InversionSampler:
        raise NotImplementedError

    def invert(self, model, positive, negative, latent, steps, scheduler, cfg, denoise=1.0, sigmas=None, **params):
        schedule = schedule_from_inputs(model, steps, scheduler, sigmas, denoise)
        out = run_inversion(model, positive, negative, cfg, latent, schedule, self.sampler(model, **params),
                            partial=sigmas is None and float(denoise) < 1.0)
        return out, schedule.clone()


CONVENTION_INPUT = ("convention", (list(CONVENTIONS), {"default": "current level", "tooltip": (
    "Where the one model evaluation per step is taken. current level: at the current latent, labelled with its own "
    "sigma - exactly ComfyUI's FlipSigmas + euler unsampling. input-matched: the classic DDIM inversion of "
    "diffusers / EasyInv / PnP - the network sees the current latent at its own input scale, labelled with the next, "
    "noisier sigma. Neither wins everywhere: on the EPS reference model input-matched is +0.3 to +1.0 dB on simple "
    "/ ddim_uniform but -0.1 to -1.6 dB on karras / normal, -1.0 to -2.9 dB on the flow model (README, DDIM's labelling "
    "convention); current level never does worse than stock.")}))


class DDIMInvert(_InvertNode):
    DESCRIPTION = ("Plain deterministic DDIM inversion: one model evaluation per step, the baseline every other "
                   "method is measured against.")
    OPTIONAL = dict([CONVENTION_INPUT])

    def sampler(self, model, convention="current level"):
        return InversionSampler(ddim_solver(convention), "ddim", {"convention": convention})


EASYINV_PRESETS = ["auto", *easyinv.PRESETS, "custom"]


class EasyInvInvert(_InvertNode):
    DESCRIPTION = ("EasyInv (ICML 2025): DDIM inversion that blends the current latent with the previous one inside "
                   "a window of steps. Same cost as DDIM. Measured on the reference models: within 2 dB of DDIM at "
                   "10-20 steps, but below it from about 30 (at 50: -5.6 dB EPS, -7.0 dB flow), since the blend's "
                   "drift does not shrink with more steps; it warns then.")
    EXTRA = {
        "preset": (EASYINV_PRESETS, {"default": "auto", "tooltip": (
            "auto: the reference implementation's setting for the model family (SDXL: eta 0.8, window 0.85-0.95; "
            "others: eta 0.5, window 0.05-0.25: no step at T <= 4, SDXL's none at T <= 6, where EasyInv is plain "
            "DDIM and warns). custom: use the eta and window inputs below.")}),
        "eta": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                          "tooltip": "Blend weight of the current latent (1 = plain DDIM). Used with preset custom."}),
        "window_start": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            "Blend on steps i with start*T < i < end*T (0-based, open interval). Used with preset custom. A window "
            "that holds no step of the schedule (few steps, a narrow window) blends nothing: the result is plain "
            "DDIM, and the inversion says so in a warning.")}),
        "window_end": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "End of the blend window as a fraction of the steps. Used with custom."}),
        "variant": (list(easyinv.VARIANTS), {"default": "paper", "tooltip": (
            "paper: the model sees the unblended latent and the step starts from the blended one. output: the step "
            "outputs are blended (the reference repository's short example).")}),
    }
    OPTIONAL = {
        "convention": (list(CONVENTIONS), {"default": "input-matched", "tooltip": (
            "Where DDIM's model evaluation is taken (see DDIM Invert). input-matched is EasyInv's own (diffusers "
            "inverse DDIM); current level is ComfyUI's FlipSigmas + euler.")}),
    }

    def sampler(self, model, preset, eta, window_start, window_end, variant, convention="input-matched"):
        step = ddim_solver(convention)
        if preset == "auto" and model is not None:
            preset = "SDXL" if model_family(model) == "SDXL" else "SD1.x / SD2.x"
        elif preset == "auto":   # SAMPLER twin: no model yet; the sampler resolves the family when it runs
            hook = easyinv.EasyInvBlend(variant=variant)
            return InversionSampler(step, "easyinv", {"preset": "auto", "variant": variant,
                                                      "convention": convention}, hooks=[hook],
                                    resolve_family=lambda fam: hook.use_preset("SDXL" if fam == "SDXL"
                                                                               else "SD1.x / SD2.x"))
        if preset != "custom":
            eta, (window_start, window_end) = easyinv.PRESETS[preset]["eta"], easyinv.PRESETS[preset]["window"]
        hook = easyinv.EasyInvBlend(eta=eta, window=(window_start, window_end), variant=variant)
        params = {"eta": hook.eta, "window": list(hook.window), "variant": variant, "preset": preset,
                  "convention": convention}
        return InversionSampler(step, "easyinv", params, hooks=[hook])


EXACT_PRESETS = [*SOLVER_PRESETS, "custom"]
DAMPING = ["auto", "off"]


class ExactInvert(_InvertNode):
    DESCRIPTION = ("Exact inversion: per step, fixed-point iteration with Anderson mixing and a free warm start solves "
                   "for the latent the sampler's step maps back onto the previous one.")
    EXTRA = {
        "preset": (EXACT_PRESETS, {"default": "balanced", "tooltip": (
            "fast: 2 model evaluations per step; balanced: 3; exact: iterate each step to an RMS residual of 1e-4 "
            "(up to 40; >= 80 dB on every reference image at T=10 on the EPS model, chosen from the measured "
            "PSNR-vs-tolerance curve in the README). How exact a step can be depends on the schedule: the first "
            "steps invert the denoiser at the lowest levels, so on a flow model pick a scheduler whose low levels "
            "shrink geometrically (exponential: 90 dB at T=10 on the flow reference model, simple: 59). A step left "
            "above its tolerance is warned. custom: use the inputs below.")}),
        "tolerance": ("FLOAT", {"default": 1e-4, "min": 1e-9, "max": 1.0, "step": 1e-6, "round": False,
                                "tooltip": "RMS residual (latent units) at which a step stops. Used with custom."}),
        "budget": ("INT", {"default": 3, "min": 1, "max": 200,
                           "tooltip": "Maximum model evaluations per step. Used with custom."}),
        "memory": ("INT", {"default": 3, "min": 0, "max": 20,
                           "tooltip": "Anderson memory (0 = plain fixed point). Used with custom."}),
    }
    OPTIONAL = {
        "stall": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": (
            "Used with custom: stop an image's step when its residual has fallen less than 10 % over this many "
            "evaluations (0 = never). Where the model cannot map any latent onto the target (a flow model's first "
            "step at a coarse schedule) the rest of the budget would buy nothing; the report names such steps.")}),
        "damping": (DAMPING, {"default": "auto", "tooltip": (
            "Every preset. auto: on flow models (SD3, Flux) damp the first step's iteration when that step is so "
            "large that the plain iteration would overshoot on the image's own content (e.g. a 2-step schedule; "
            "measured 22.0 -> 27.5 dB at T=2 on the flow reference model, no change at T >= 3); EPS / V models are "
            "never damped. off: the plain iteration, for comparison.")}),
    }

    def sampler(self, model, preset, tolerance, budget, memory, stall=0, damping="auto"):
        if damping not in DAMPING:
            raise ValueError(f"damping: one of {DAMPING}, got {damping!r}")
        opts = (SOLVER_PRESETS[preset] if preset != "custom"
                else FixedPointOptions(tolerance, budget, memory, stall=int(stall)))
        opts = replace(opts, relax=damping == "auto")
        params = {"preset": preset, "tolerance": opts.tol, "budget": opts.max_evals, "memory": opts.memory,
                  "stall": opts.stall, "damping": damping}
        return InversionSampler(make_fixed_point_step(opts), "exact", params)


def sampler_node(invert_node: type[_InvertNode], method: str) -> type:
    """The SAMPLER twin of an inversion node, for SamplerCustomAdvanced chains (with FlipSigmas' ascending sigmas)."""

    class _SamplerNode:
        DESCRIPTION = (f"{method} inversion as a SAMPLER: give SamplerCustomAdvanced ascending sigmas (FlipSigmas) "
                       "and DisableNoise; it returns the inverted noise. Replay with Inverted Replay SAMPLER on the "
                       "original (descending) sigmas. A latent noise_mask does not apply to inversion; masked "
                       "edits need the Inverted Latent Sampler.")
        CATEGORY = CATEGORY
        RETURN_TYPES = ("SAMPLER",)
        OUTPUT_TOOLTIPS = (f"{method} inversion; connect to SamplerCustomAdvanced with FlipSigmas' ascending sigmas.",)
        FUNCTION = "get_sampler"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": dict(invert_node.EXTRA), "optional": dict(invert_node.OPTIONAL)}

        def get_sampler(self, **params):
            return (invert_node().sampler(None, **params),)

    _SamplerNode.__name__ = _SamplerNode.__qualname__ = f"{invert_node.__name__}Sampler"
    return _SamplerNode


class InvertedReplaySampler:
    DESCRIPTION = ("The replay step of the Inverted Latent Sampler as a SAMPLER for SamplerCustomAdvanced: "
                   "deterministic, no noise added. Use the same (descending) sigmas the latent was inverted on.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("Deterministic replay; connect to SamplerCustomAdvanced with the descending sigmas.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def get_sampler(self):
        return (ReplaySampler(),)


_SAMPLERS = {f"{cls.__name__}Sampler": (sampler_node(cls, name), f"{name} Inversion SAMPLER")
             for cls, name in ((DDIMInvert, "DDIM"), (EasyInvInvert, "EasyInv"), (ExactInvert, "Exact"))}

NODE_CLASS_MAPPINGS = {"DDIMInvert": DDIMInvert, "EasyInvInvert": EasyInvInvert, "ExactInvert": ExactInvert}
NODE_DISPLAY_NAME_MAPPINGS = {"DDIMInvert": "DDIM Invert", "EasyInvInvert": "EasyInv Invert",
                              "ExactInvert": "Exact Invert"}
NODE_CLASS_MAPPINGS["InvertedReplaySampler"] = InvertedReplaySampler
NODE_DISPLAY_NAME_MAPPINGS["InvertedReplaySampler"] = "Inverted Replay SAMPLER"
for _key, (_cls, _title) in _SAMPLERS.items():
    NODE_CLASS_MAPPINGS[_key] = _cls
    NODE_DISPLAY_NAME_MAPPINGS[_key] = _title
