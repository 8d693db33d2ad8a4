"""GNRI Invert and PreciseInv Invert: the gradient-based inversion nodes (core solvers in inversion_core/solvers)."""
from __future__ import annotations

from ..inversion_core.solvers.gnri import VARIANTS as GNRI_VARIANTS
from ..inversion_core.solvers.gnri import GNRIAnderson, GNRISolver
from ..inversion_core.solvers.preciseinv import PRESETS as PRECISE_PRESETS
from ..inversion_core.solvers.preciseinv import PreciseInvSolver
from .grad_mode import GradInversionSampler
from .invert import _InvertNode, sampler_node

GRAD_MEMORY_NOTE = (
    "Needs gradients through the model (the host runs nodes in inference mode): while it runs, a second copy of the "
    "diffusion model's weights is held, +1x their size on the model's device (measured: +3.99 MiB for the pack's "
    "3.98 MiB test model; ~1.7 GB for an fp16 SD1.5 UNet, ~5 GB for SDXL)")


class _GradInvertNode(_InvertNode):
    """The shared inversion-node declaration of nodes/invert.py (shared inputs, outputs, schedule handling)."""

    def sampler(self, model, **params) -> GradInversionSampler:
        raise NotImplementedError


GNRI_VARIANTS = ["quasi-newton", *GNRI_VARIANTS]
GNRI_BUDGETS = {"quasi-newton": 3, "newton": 8}      # model evaluations per step when budget = 0 (measured, README)
NEWTON_KRYLOV = 2                                    # directional derivatives per Newton step


class GNRIInvert(_GradInvertNode):
    DESCRIPTION = (
        "GNRI (guided Newton-Raphson inversion): per step, Newton-Raphson on the implicit inversion equation, with "
        "GNRI's guidance term that keeps the latent near the forward marginal of the image. Default quasi-newton: "
        "the Newton update with the Jacobian estimated from the iterates (no model derivative), 3 model evaluations "
        "per step - fast and near-exact. newton: the paper's update with the model's own Jacobian (directional "
        "derivatives by finite differences), ~8 evaluations per step. reference code: the official repository's "
        "cheap sign step. No variant needs gradients or a copy of the weights.")
    EXTRA = {
        "lambda": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01, "round": False, "tooltip": (
            "Guidance weight λ of G(z) = |z - mu|^2 / (2 sigma^2) (mu = the image latent, or (1-sigma)·image for "
            "flow models). 0.1 is the official code's alpha. quasi-newton / newton: the guidance is scaled by the "
            "squared relative residual, so it shapes the first iterations and vanishes at the solution (it cannot "
            "bias the converged latent; quasi-newton caps it at half the unguided step, so a large lambda cannot "
            "stall the solve short of the solution). reference code: added to every element's residual and to the step size, "
            "as in the official code.")}),
        "tolerance": ("FLOAT", {"default": 1e-4, "min": 1e-9, "max": 1.0, "step": 1e-6, "round": False,
                                "tooltip": "Stop a step once the RMS residual |z - f(z)| (latent units) is at most "
                                           "this. fp16 models rarely get below ~1e-3. reference code: only used to "
                                           "flag steps as converged."}),
        "budget": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": (
            "Model evaluations per step; 0 = the variant's default (quasi-newton 3, newton 8). quasi-newton: "
            "exactly the evaluations it may make. newton: 2 to start from the DDIM result, then Newton steps of 3 "
            "evaluations each (1 + 2 directional derivatives) while they fit. reference code: ignored (always the "
            "official 2 iterations).")}),
        "variant": (GNRI_VARIANTS, {"default": "quasi-newton", "tooltip": (
            "quasi-newton: GNRI's guided Newton-Raphson with the Jacobian replaced by the multisecant (Anderson / "
            "Broyden) estimate built from the iterates - departs from the paper only there, to stay near GNRI's "
            "promise of ~1-2 iterations (~2 model evaluations) per step: it takes 3; it runs on the Exact Invert "
            "solver with GNRI's guidance (and its auto damping of a large first step on flow models). newton: the "
            "paper's update, Newton-Krylov with the model's Jacobian (finite-difference directional derivatives), "
            "started from the DDIM result so a step never ends worse than DDIM. reference code: the official "
            "implementation (model step detached, sign step, 2 iterations, lowest-residual iterate); not exact.")}),
    }

    def sampler(self, model, tolerance, budget, variant, **params):
        lam = params.pop("lambda")
        if params:
            raise TypeError(f"GNRIInvert: unexpected inputs {sorted(params)}")
        if variant not in GNRI_VARIANTS:
            raise ValueError(f"variant: one of {GNRI_VARIANTS}, got {variant!r}")
        evals = int(budget) or GNRI_BUDGETS.get(variant, 2)
        settings = {"lambda": float(lam), "tolerance": float(tolerance), "variant": variant}
        if variant == "quasi-newton":
            solver = GNRIAnderson(lam=lam, tol=tolerance, max_evals=evals)
            return GradInversionSampler(solver, "gnri", dict(settings, budget=evals), needs_grad=False)
        if variant == "newton":
            newton_steps = (evals - 2) // (NEWTON_KRYLOV + 1)
            if newton_steps < 1:
                raise ValueError(f"budget: the newton variant needs at least {3 + NEWTON_KRYLOV} model evaluations "
                                 f"per step (2 to start + {NEWTON_KRYLOV + 1} per Newton step), got {evals}")
            solver = GNRISolver(lam=lam, tol=tolerance, max_iter=newton_steps, variant="newton", start="ddim",
                                krylov_dim=NEWTON_KRYLOV, jvp="finite difference")
            return GradInversionSampler(solver, "gnri", dict(settings, budget=2 + newton_steps * (NEWTON_KRYLOV + 1),
                                                             newton_steps=newton_steps, jvp="finite difference"),
                                        needs_grad=False)
        solver = GNRISolver(lam=lam, tol=tolerance, max_iter=2, variant=variant)
        return GradInversionSampler(solver, "gnri", dict(settings, budget=2), needs_grad=False)


THRESHOLD_PRESETS = {"fast (1e-2)": PRECISE_PRESETS["fast"], "precise (1e-5)": PRECISE_PRESETS["precise"]}


class PreciseInvInvert(_GradInvertNode):
    DESCRIPTION = (
        "PreciseInv (NeurIPS 2025): per step, a noise variable relative to the image latent is optimised through "
        "the model (default L-BFGS; the paper's gradient descent is an option) until the step replays onto the "
        "previous latent: loss = mean squared mismatch below a threshold. Slow (tens of model evaluations + "
        "backward passes per step) but precise. "
        + GRAD_MEMORY_NOTE + "; plus, per iteration, the activations of one forward pass for the backward pass, as "
        "in training at batch size 1 (measured ~1 GB for the tiny test model at a 64x64 latent; hosts whose model "
        "updates saved activations in place, like the PyPI ComfyUI fork, need them copied once more).")
    EXTRA = {
        "threshold_preset": ([*THRESHOLD_PRESETS, "custom"], {"default": "precise (1e-5)", "tooltip": (
            "Loss threshold eta per step, the paper's two settings. The loss is the mean squared step mismatch in "
            "the model's latent units: 1e-2 is an RMS mismatch of 0.1 (about a DDIM step's error; the default exact "
            "initialiser already meets it on most steps, so fast measured Exact balanced's PSNR or up to 5 dB "
            "more on the reference models, README Results), 1e-5 of 0.003. custom: use custom_threshold.")}),
        "custom_threshold": ("FLOAT", {"default": 1e-4, "min": 1e-12, "max": 1.0, "step": 1e-6, "round": False,
                                       "tooltip": "Loss threshold eta when threshold_preset is custom."}),
        "max_iterations": ("INT", {"default": 50, "min": 1, "max": 10000, "tooltip": (
            "Cap on gradient evaluations per step (each = 1 model evaluation + 1 backward pass, ~3 forward passes "
            "of time). A step that hits it keeps its best iterate and is reported as missing the threshold. 50 "
            "holds PreciseInv (lbfgs) within ~13x DDIM's time at T=10 and ~65x at T=4 on the reference models "
            "(README, Results).")}),
        "step_size": ("FLOAT", {"default": 1.0, "min": 1e-6, "max": 1000.0, "step": 0.01, "round": False,
                                "tooltip": (
            "First trial step of each update. gd: normalised so that 1 moves the latent by J^T·residual (a "
            "Gauss-Newton-sized step, independent of latent size and noise level), doubled after a step that lowered "
            "the loss. lbfgs: 1 = the full quasi-Newton step, every new direction starts there. Both halve it and "
            "retry from the best point after a step that raised the loss. adam: the learning rate.")}),
        "initialiser": (["exact", "ddim"], {"default": "exact", "tooltip": (
            "exact (default): start each step from the pack's Exact Invert solve (3 model evaluations, no "
            "gradients) - measured closer to the threshold, so fewer gradient steps: +1 to +14 dB at the same "
            "budget on the reference models (lbfgs; most at T = 10). ddim: start from one DDIM inversion step, as "
            "the paper does.")}),
    }
    OPTIONAL = {
        "optimizer": (["lbfgs", "gd", "adam"], {"default": "lbfgs", "tooltip": (
            "lbfgs (default, the pack's choice): the same loss and gradient, stepped along the limited-memory BFGS "
            "direction (the last 5 gradient changes per image), each step starting at step_size; measured +5 to "
            "+9 dB over gd at T = 2-4 and on the flow model at T = 10, at 0.7-1.2x its model passes (README, Results). gd: "
            "the paper's gradient descent (Algorithm 1), with the step-size rule above. adam: Adam at learning rate "
            "step_size (try 0.1), the optimiser common in reference code; slowest here.")}),
    }

    def sampler(self, model, threshold_preset, custom_threshold, max_iterations, step_size, initialiser="exact",
                optimizer="lbfgs"):
        if threshold_preset == "custom":
            threshold = float(custom_threshold)
        elif threshold_preset in THRESHOLD_PRESETS:
            threshold = THRESHOLD_PRESETS[threshold_preset]
        else:
            raise ValueError(f"threshold_preset: one of {[*THRESHOLD_PRESETS, 'custom']}, got {threshold_preset!r}")
        solver = PreciseInvSolver(threshold=threshold, max_iter=int(max_iterations), step_size=float(step_size),
                                  init=initialiser, optimizer=optimizer)
        return GradInversionSampler(solver, "preciseinv", {
            "threshold_preset": threshold_preset, "threshold": threshold, "max_iterations": int(max_iterations),
            "step_size": float(step_size), "optimizer": solver.optimizer, "initialiser": initialiser})


NODE_CLASS_MAPPINGS = {"GNRIInvert": GNRIInvert, "PreciseInvInvert": PreciseInvInvert,
                       "GNRIInvertSampler": sampler_node(GNRIInvert, "GNRI"),
                       "PreciseInvInvertSampler": sampler_node(PreciseInvInvert, "PreciseInv")}
NODE_DISPLAY_NAME_MAPPINGS = {"GNRIInvert": "GNRI Invert", "PreciseInvInvert": "PreciseInv Invert",
                              "GNRIInvertSampler": "GNRI Inversion SAMPLER",
                              "PreciseInvInvertSampler": "PreciseInv Inversion SAMPLER"}
