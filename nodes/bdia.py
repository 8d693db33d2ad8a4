"""BDIA Invert and its SAMPLER twin: the exactly invertible sampler pair (core: inversion_core/solvers/bdia.py).

The inverted LATENT's ``samples`` is the top latent z_T; its record (method "bdia", params["gamma"], ``states`` whose
last-but-one entry is the pair state z_{T−1}) makes the Inverted Latent Sampler and the Inverted Replay SAMPLER replay
with the BDIA step (bridge.run_replay / ReplaySampler), never with the plain one.
"""
from __future__ import annotations

from ..inversion_core.solvers.bdia import DEFAULT_STARTER, METHOD, SPACES, BDIAInversionStep, check_gamma
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
    with this pair state and gamma, so the Inverted Replay SAMPLER replays it with BDIA."""

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        top_sigma = float(as_sampling_schedule(sigmas, "sigmas")[0])
        # fresh per run (it is stateful); σ_T sets the bit-exact grid
        self.solver = BDIAInversionStep(self.solver.gamma, self.solver.starter, sigma_top=top_sigma,
                                        space=self.solver.space)
        top = super().sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                             disable_pbar)
        self.record.params["grid"] = self.solver.grid
        INVERTED.mark_bdia(self.record.states, float(self.params["gamma"]), self.solver.grid, self.solver.space,
                           self.record.sigmas, self.record.model_signature, self.record.guidance)
        return top


class BDIAInvert(_InvertNode):
    DESCRIPTION = (
        "BDIA (bi-directional integration approximation, Zhang et al. ECCV 2024): an exactly invertible sampler "
        "pair. The sampling step uses two consecutive latents, so inverting it needs no solve: after a starter step "
        "from the image, one model evaluation per step walks the pair up, and the Inverted Latent Sampler walks it "
        "back down onto the image bit for bit. Costs what DDIM Invert costs (+ the starter's extra "
        "evaluations). " + REPLAY_NOTE)
    EXTRA = {
        "gamma": ("FLOAT", {"default": 0.7, "min": 0.01, "max": 1.0, "step": 0.05, "round": False, "tooltip": (
            "BDIA's gamma. 0.7 (default): edits and generations with another prompt or cfg come out as clean as "
            "DDIM's, and the round trip is still exact (bit for bit on both reference models: the replay settles on "
            "the recorded states, also with fp16 / bf16 networks); each inversion step divides by gamma, so the "
            "inverted latent carries an alternating non-noise component that grows like (1/gamma)^T: small at T = 10, but "
            "at 0.7 and 50 steps the inverted latent is 5.7e5x the noise level on the EPS reference model (3.1e4x "
            "flow; warned: edits from it fail, its own replay is still exact); for many steps use 0.9 (3.3x). "
            "1 = the time-symmetric step: bit for "
            "bit even in its float algebra, but edits and generations are only marginally stable (speckle on SD-type "
            "models, can blow up on flow models). 0 would be plain DDIM. Replay always uses the inversion's gamma.")}),
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

    def sampler(self, model, gamma=0.7, starter_tolerance=DEFAULT_STARTER.tol,
                starter_budget=DEFAULT_STARTER.max_evals, space="vp"):
        starter = FixedPointOptions(tol=float(starter_tolerance), max_evals=int(starter_budget),
                                    memory=DEFAULT_STARTER.memory)
        step = BDIAInversionStep(check_gamma(gamma), starter, space=space)
        params = {"gamma": step.gamma, "starter_tolerance": starter.tol, "starter_budget": starter.max_evals,
                  "space": space, "pair_state": "states[-2]"}
        return BDIAInversionSampler(step, METHOD, params)


BDIAInvertSampler = sampler_node(BDIAInvert, "BDIA")
BDIAInvertSampler.DESCRIPTION += (" BDIA: replay with the Inverted Replay SAMPLER on the same sigmas - it finds the "
                                  "pair state of this process's inversion (kept in memory, not in the LATENT) and "
                                  "uses the BDIA step. A plain sampler (euler) on the returned latent runs a DDIM "
                                  "generation from BDIA's noise, not a reconstruction.")

NODE_CLASS_MAPPINGS = {"BDIAInvert": BDIAInvert, "BDIAInvertSampler": BDIAInvertSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"BDIAInvert": "BDIA Invert", "BDIAInvertSampler": "BDIA Inversion SAMPLER"}
