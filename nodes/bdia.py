"""BDIA Invert and its SAMPLER twin: the exactly invertible sampler pair (core: inversion_core/solvers/bdia.py).

The inverted LATENT's ``samples`` is the top latent z_T; its record (method "bdia", params["gamma"], ``states`` whose
last-but-one entry is the pair state z_{T−1}) makes the Inverted Latent Sampler and the Inverted Replay SAMPLER replay
with the BDIA step (bridge.run_replay / ReplaySampler), never with the plain one.
"""
from __future__ import annotations

from ..inversion_core.solvers.bdia import (AUTO_GAMMA, AUTO_GAMMA_BASE, DEFAULT_STARTER, METHOD, SPACES,
                                           BDIAInversionStep, check_gamma_setting, resolve_gamma)
from ..inversion_core.solvers.fixed_point import FixedPointOptions
from ..inversion_core.schedule import as_sampling_schedule
from .bridge import INVERTED, InversionSampler
from .invert import _InvertNode, sampler_node

REPLAY_NOTE = (
    "Replay: the Inverted Latent Sampler (or the Inverted Replay SAMPLER) sees the record and replays with the same "
    "BDIA step and gamma from the pair (z_T, z_{T-1}): the image back bit for bit at T-1 model evaluations. "
    "Any other sampler (KSampler, SamplerCustomAdvanced with euler) sees only samples = z_T and runs its own plain "
    "steps: that is a DDIM generation from BDIA's noise, not a reconstruction (README: measured). The pair state "
    "z_{T-1} is part of what reconstructs the image (at few steps it still holds much of the image).")


class BDIAInversionSampler(InversionSampler):
    """InversionSampler that also tells the process-wide registry (bridge.INVERTED) that its top is a BDIA inversion
    with this pair state and gamma, so the Inverted Replay SAMPLER replays it with BDIA. ``gamma_setting``: the gamma
    input (AUTO_GAMMA = resolved per run from the schedule's step count; the record stores the γ used)."""

    gamma_setting: float = AUTO_GAMMA

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        top_sigma = float(schedule[0])
        gamma = resolve_gamma(self.gamma_setting, len(schedule) - 1)
        self.params["gamma"] = gamma                 # what the inversion and every replay of it use
        self.params["gamma_auto"] = self.gamma_setting == AUTO_GAMMA
        # fresh per run (it is stateful); σ_T sets the bit-exact grid
        self.solver = BDIAInversionStep(gamma, self.solver.starter, sigma_top=top_sigma, space=self.solver.space)
        top = super().sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                             disable_pbar)
        self.record.params["grid"] = self.solver.grid
        INVERTED.mark_bdia(self.record.states, float(self.params["gamma"]), self.solver.grid, self.solver.space,
                           self.record.sigmas, self.record.model_signature, self.record.guidance, masked=self.masked)
        return top


class BDIAInvert(_InvertNode):
    DESCRIPTION = (
        "BDIA (bi-directional integration approximation, Zhang et al. ECCV 2024): an exactly invertible sampler "
        "pair. The sampling step uses two consecutive latents, so inverting it needs no solve: after a starter step "
        "from the image, one model evaluation per step walks the pair up, and the Inverted Latent Sampler walks it "
        "back down onto the image bit for bit. Costs what DDIM Invert costs (+ the starter's extra "
        "evaluations). " + REPLAY_NOTE)
    EXTRA = {
        "gamma": ("FLOAT", {"default": AUTO_GAMMA, "min": -1.0, "max": 1.0, "step": 0.05, "round": False, "tooltip": (
            "BDIA's gamma; -1 = auto (default): 0.7 up to 10 steps, 0.7^(10/steps) above (0.837 at 20 steps, 0.931 "
            "at 50); the record stores the gamma used and replay always uses it. Each inversion step divides by "
            "gamma, so the inverted latent carries an alternating non-noise component that grows like (1/gamma)^T; "
            "auto keeps it at its size for 0.7 and 10 steps. Measured (4 images, edit with another prompt at cfg 3, "
            "PSNR to Exact Invert's edit, EPS / flow reference model): fixed 0.7 gives 22.3 / 18.5 dB at 10 steps "
            "but 17.9 / 17.1 at 50, its latent 6.7e5x / 6.9e4x the noise level (warned; edits washed out, its own "
            "replay still exact); auto gives 25.0 / 21.2 at 20 steps and 27.9 / 25.2 at 50 (1.9x / 0.8x the noise "
            "level). The round trip is exact (bit for bit on both reference models, also with fp16 / bf16 "
            "networks) wherever float32 can walk the pair back: a gamma small for its step count (EPS reference "
            "model: 0.01 at 10 steps) grows the pair past that, and the inversion stops with an error naming "
            "the step instead of returning a latent that would not replay. 1 = the time-symmetric step: bit for "
            "bit even in its float algebra, but edits and generations are only marginally stable (speckle on SD-type models, can blow up on flow models). "
            "0 would be plain DDIM. Values in (-1, 0.01) are an error.")}),
        "starter_tolerance": ("FLOAT", {"default": DEFAULT_STARTER.tol, "min": 1e-9, "max": 1.0, "step": 1e-6,
                                        "round": False, "tooltip": (
            "The first step (z_1 from the image) is solved by the Exact Invert solver to this RMS residual. It "
            "decides how close the pair is to the sampling ODE (how noise-like the inverted latent is and how well "
            "other samplers or edits behave), not how exactly the BDIA replay lands (exact anyway).")}),
        "starter_budget": ("INT", {"default": DEFAULT_STARTER.max_evals, "min": 1, "max": 200, "tooltip": (
            "Most model evaluations for the first step; its last evaluation is reused by the next step, so the whole "
            "inversion costs T + (starter evaluations) - 2. 1 = no solve (z_1 = the DDIM guess's input).")}),
        "space": (list(SPACES), {"default": "vp", "tooltip": (
            "Where the two latents are combined. vp: the paper's DDIM form, on the latent scaled by the model's "
            "input scaling (1/sqrt(sigma^2+1) for SD-type models; flow models are unscaled, so both choices are "
            "the same there). sigma: on ComfyUI's sigma-space latent. Both are exact; they differ in how stable "
            "edits and generations with another prompt or cfg are (README: measured).")}),
    }

    def sampler(self, model, gamma=AUTO_GAMMA, starter_tolerance=DEFAULT_STARTER.tol,
                starter_budget=DEFAULT_STARTER.max_evals, space="vp"):
        setting = check_gamma_setting(gamma)
        starter = FixedPointOptions(tol=float(starter_tolerance), max_evals=int(starter_budget),
                                    memory=DEFAULT_STARTER.memory)
        # auto: the step's gamma is set per run from the schedule's step count (BDIAInversionSampler.sample)
        step = BDIAInversionStep(AUTO_GAMMA_BASE if setting == AUTO_GAMMA else setting, starter, space=space)
        params = {"gamma": None if setting == AUTO_GAMMA else step.gamma, "gamma_auto": setting == AUTO_GAMMA,
                  "starter_tolerance": starter.tol, "starter_budget": starter.max_evals, "space": space,
                  "pair_state": "states[-2]"}
        out = BDIAInversionSampler(step, METHOD, params)
        out.gamma_setting = setting
        return out


BDIAInvertSampler = sampler_node(BDIAInvert, "BDIA")
BDIAInvertSampler.DESCRIPTION += (" BDIA: replay with the Inverted Replay SAMPLER on the same sigmas - it finds the "
                                  "pair state of this process's inversion (kept in memory, not in the LATENT) and "
                                  "uses the BDIA step. A plain sampler (euler) on the returned latent runs a DDIM "
                                  "generation from BDIA's noise, not a reconstruction.")

NODE_CLASS_MAPPINGS = {"BDIAInvert": BDIAInvert, "BDIAInvertSampler": BDIAInvertSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"BDIAInvert": "BDIA Invert", "BDIAInvertSampler": "BDIA Inversion SAMPLER"}
