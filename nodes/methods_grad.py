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


class GNRIInvert(_GradInvertNode):
    DESCRIPTION = (
        "GNRI (guided Newton-Raphson inversion): per step, Newton's method on the implicit inversion equation, with "
        "a guidance term that keeps the latent near the forward marginal of the image. paper: true Newton steps "
        "using the model's Jacobian (forward-mode autograd, matrix-free GMRES), quadratic convergence to the "
        "tolerance. reference code: the official repository's cheap sign-step update (model detached, 2 "
        "iterations). " + GRAD_MEMORY_NOTE + " (paper variant only; its Jacobian-vector products use forward-mode AD, "
        "which stores no activations).")
    EXTRA = {
        "lambda": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01, "round": False, "tooltip": (
            "Guidance weight λ of G(z) = |z - mu|^2 / (2 sigma^2) (mu = the image latent, or (1-sigma)·image for "
            "flow models). 0.1 is the official code's alpha. paper variant: the guidance is scaled by the squared "
            "relative residual, so it shapes the first Newton step and vanishes at the solution (it cannot bias "
            "the converged latent; larger values cost extra iterations). reference code: added to every element's "
            "residual and to the step size, as in the official code.")}),
        "tolerance": ("FLOAT", {"default": 1e-4, "min": 1e-9, "max": 1.0, "step": 1e-6, "round": False,
                                "tooltip": "paper variant: stop a step once the RMS residual |z - f(z)| (latent "
                                           "units) is at most this. fp16 models rarely get below ~1e-3. reference "
                                           "code: only used to flag steps as converged."}),
        "max_iterations": ("INT", {"default": 5, "min": 1, "max": 100, "tooltip": (
            "paper variant: at most this many Newton steps per inversion step (each costs 1 model evaluation plus "
            "1-8 Jacobian-vector products). reference code: ignored; it always runs the official 2 iterations.")}),
        "variant": ([*GNRI_VARIANTS, "anderson"], {"default": "paper", "tooltip": (
            "anderson: GNRI's guidance on the pack's Exact Invert solver (fixed point + Anderson mixing, warm "
            "start; max_iterations = model evaluations per step), no gradients. "
            "paper: Newton with the model's derivative (autograd), converges to the tolerance. reference code: "
            "the official implementation's update (model step detached, sign step, 2 iterations, keeps the "
            "lowest-residual iterate); cheap, no gradients, no extra memory, not exact.")}),
    }

    def sampler(self, model, tolerance, max_iterations, variant, **params):
        lam = params.pop("lambda")
        if params:
            raise TypeError(f"GNRIInvert: unexpected inputs {sorted(params)}")
        if variant == "anderson":
            solver = GNRIAnderson(lam=lam, tol=tolerance, max_evals=int(max_iterations))
            return GradInversionSampler(solver, "gnri", {"lambda": float(lam), "tolerance": float(tolerance),
                                                         "max_iterations": int(max_iterations), "variant": variant},
                                        needs_grad=False)
        max_iter = int(max_iterations) if variant == "paper" else 2
        solver = GNRISolver(lam=lam, tol=tolerance, max_iter=max_iter, variant=variant)
        return GradInversionSampler(solver, "gnri", {"lambda": float(lam), "tolerance": float(tolerance),
                                                     "max_iterations": max_iter, "variant": variant},
                                    needs_grad=variant == "paper")


THRESHOLD_PRESETS = {"fast (1e-2)": PRECISE_PRESETS["fast"], "precise (1e-5)": PRECISE_PRESETS["precise"]}


class PreciseInvInvert(_GradInvertNode):
    DESCRIPTION = (
        "PreciseInv (NeurIPS 2025): per step, a noise variable relative to the image latent is optimised by "
        "gradient descent (through the model) until the step replays onto the previous latent: loss = mean squared "
        "mismatch below a threshold. Slow (tens of model evaluations + backward passes per step) but precise. "
        + GRAD_MEMORY_NOTE + "; plus, per iteration, the activations of one forward pass for the backward pass, as "
        "in training at batch size 1 (measured ~1 GB for the tiny test model at a 64x64 latent; hosts whose model "
        "updates saved activations in place, like the PyPI ComfyUI fork, need them copied once more).")
    EXTRA = {
        "threshold_preset": ([*THRESHOLD_PRESETS, "custom"], {"default": "precise (1e-5)", "tooltip": (
            "Loss threshold eta per step, the paper's two settings. The loss is the mean squared step mismatch in "
            "the model's latent units: 1e-2 is an RMS mismatch of 0.1 (roughly DDIM quality), 1e-5 of 0.003. "
            "custom: use custom_threshold.")}),
        "custom_threshold": ("FLOAT", {"default": 1e-4, "min": 1e-12, "max": 1.0, "step": 1e-6, "round": False,
                                       "tooltip": "Loss threshold eta when threshold_preset is custom."}),
        "max_iterations": ("INT", {"default": 100, "min": 1, "max": 10000, "tooltip": (
            "Cap on gradient evaluations per step (each = 1 model evaluation + 1 backward pass). A step that hits "
            "it keeps its best iterate and is reported as not converged.")}),
        "step_size": ("FLOAT", {"default": 1.0, "min": 1e-6, "max": 1000.0, "step": 0.01, "round": False,
                                "tooltip": (
            "Initial gradient-descent step, normalised so that 1 moves the latent by J^T·residual (a Gauss-Newton-"
            "sized step, independent of latent size and noise level). Adapted per step and image: doubled after a "
            "step that lowered the loss, halved (retrying from the best point) after one that raised it.")}),
        "initialiser": (["ddim", "exact"], {"default": "ddim", "tooltip": (
            "ddim: start each step from one DDIM inversion step (the paper). exact: start from the pack's Exact "
            "Invert solve (3 model evaluations, no gradients), usually much closer to the threshold.")}),
    }

    def sampler(self, model, threshold_preset, custom_threshold, max_iterations, step_size, initialiser="ddim"):
        if threshold_preset == "custom":
            threshold = float(custom_threshold)
        elif threshold_preset in THRESHOLD_PRESETS:
            threshold = THRESHOLD_PRESETS[threshold_preset]
        else:
            raise ValueError(f"threshold_preset: one of {[*THRESHOLD_PRESETS, 'custom']}, got {threshold_preset!r}")
        solver = PreciseInvSolver(threshold=threshold, max_iter=int(max_iterations), step_size=float(step_size),
                                  init=initialiser)
        return GradInversionSampler(solver, "preciseinv", {
            "threshold_preset": threshold_preset, "threshold": threshold, "max_iterations": int(max_iterations),
            "step_size": float(step_size), "optimizer": solver.optimizer, "initialiser": initialiser})


NODE_CLASS_MAPPINGS = {"GNRIInvert": GNRIInvert, "PreciseInvInvert": PreciseInvInvert,
                       "GNRIInvertSampler": sampler_node(GNRIInvert, "GNRI"),
                       "PreciseInvInvertSampler": sampler_node(PreciseInvInvert, "PreciseInv")}
NODE_DISPLAY_NAME_MAPPINGS = {"GNRIInvert": "GNRI Invert", "PreciseInvInvert": "PreciseInv Invert",
                              "GNRIInvertSampler": "GNRI Inversion SAMPLER",
                              "PreciseInvInvertSampler": "PreciseInv Inversion SAMPLER"}
