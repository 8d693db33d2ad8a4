"""The inversion driver: walks a schedule upwards, one implicit step at a time, with a pluggable step solver.

    for i = 0 … T−1:   x_{i+1} = solve( S(x_{i+1}; σ_{i+1} → σ_i) = x_i )

Each method is a *step solver* (plain DDIM guess, fixed point, Newton, gradient descent …); everything around the
solve — the trajectory, per-step stats, progress, errors that name the step, hooks such as EasyInv's blend — lives
here once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from torch import Tensor

from .denoiser import Denoiser, NonFiniteModelOutput
from .record import InversionRecord, StepStats
from .schedule import inversion_pairs
from .steps import input_matched_guess


@dataclass
class StepContext:
    """What a step solver may know beyond its own step: where it is and what came before (free warm starts)."""

    index: int                      # i: this step goes from level i to level i+1 (0 = from the image)
    total: int                      # T
    x0: Tensor                      # the image latent (σ = 0), for solvers that regularise towards it
    states: list[Tensor]            # x_0 … x_i, the trajectory so far
    levels: list[float]             # σ_0 … σ_{i+1}
    model_kind: str = ""            # "EPS" / "V_PREDICTION" / "CONST" … (the host's model sampling), "" if unknown


class StepSolver(Protocol):
    def __call__(self, den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
                 ctx: StepContext) -> tuple[Tensor, StepStats]:
        """Return x_hi with S(x_hi; σ_hi → σ_lo) ≈ target. ``guess`` is the classic DDIM evaluation point for x_i
        (steps.input_matched_guess: x_i rescaled to the network input it had at σ_lo), where a solver without a
        better warm start makes its first model evaluation; f(guess) is plain DDIM inversion."""


class StepHook(Protocol):
    """Modifies the walk around each step (see methods/easyinv.py)."""

    def before_step(self, ctx: StepContext, x_i: Tensor) -> Tensor:
        """Return the target the step must land on when replayed (x_i unless the hook blends)."""

    def after_step(self, ctx: StepContext, x_next: Tensor) -> Tensor:
        """Return the latent stored as x_{i+1}."""


ProgressCallback = Callable[[int, int, Tensor], None]  # (step done, total, x_{i+1})


class StepFailed(RuntimeError):
    pass


def invert(den: Denoiser, x0: Tensor, sampling_sigmas: Tensor, solver: StepSolver, *, method: str,
           params: Optional[dict[str, Any]] = None, hooks: Sequence[StepHook] = (),
           callback: Optional[ProgressCallback] = None, model_kind: str = "") -> InversionRecord:
    """Invert ``x0`` (model sigma space, [B, C, H, W]) along the descending ``sampling_sigmas``.

    Arithmetic is float32 whatever the model's dtype. The input tensor is never modified.
    """
    x = x0.detach().float().clone()
    den.batch_size = x.shape[0]
    pairs = inversion_pairs(sampling_sigmas)
    total = len(pairs)
    states = [x.cpu()]
    levels = [pairs[0][0]]
    steps: list[StepStats] = []
    start = time.perf_counter()
    for i, (sigma_lo, sigma_hi) in enumerate(pairs):
        ctx = StepContext(index=i, total=total, x0=states[0], states=states, levels=levels + [sigma_hi],
                          model_kind=model_kind)
        target = x
        for hook in hooks:
            target = hook.before_step(ctx, target)
        f0, b0 = den.forward_evals, den.backward_evals
        guess = input_matched_guess(x, sigma_lo, sigma_hi, den.input_scale)   # where DDIM evaluates the model
        try:
            x_next, st = solver(den, target, guess, sigma_lo, sigma_hi, ctx)
        except NonFiniteModelOutput as e:
            raise StepFailed(f"inversion step {i + 1}/{total} (sigma {sigma_lo:.4g} -> {sigma_hi:.4g}): {e}") from e
        if not torch.isfinite(x_next).all():
            raise StepFailed(f"inversion step {i + 1}/{total} (sigma {sigma_lo:.4g} -> {sigma_hi:.4g}) "
                             "produced NaN/inf")
        for hook in hooks:
            x_next = hook.after_step(ctx, x_next)
        st.forward_evals = den.forward_evals - f0
        st.backward_evals = den.backward_evals - b0
        steps.append(st)
        x = x_next.float()
        states.append(x.detach().cpu())
        levels.append(sigma_hi)
        if callback is not None:
            callback(i + 1, total, x)
    return InversionRecord(method=method, params=dict(params or {}), sigmas=sampling_sigmas.clone(),
                           states=states, steps=steps, model_kind=model_kind,
                           seconds=time.perf_counter() - start, model_seconds=den.model_seconds)
