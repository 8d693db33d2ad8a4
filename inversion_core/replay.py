"""Replay: the deterministic sampler that regenerates an image from inverted noise on the stored schedule.

It takes exactly the step every inversion method inverts (steps.euler_step, DDIM η = 0), level by level down the
schedule the latent was inverted on, adding no noise. With the source prompt and cfg 1 it returns the image; with a
new prompt it edits. Two optional controls keep what should stay:

* source correction (DirectInversion / PnP Inversion, Ju et al. 2024): per-step offsets
      o_k = x*_{k+1} − S(x*_k; D_src(x*_k, σ_k))
  computed on the stored trajectory x* with the *source* conditioning at the replay cfg, added to the edit branch
  with a weight w_k = strength inside the chosen step range. With the source prompt and w = 1 the replay lands on
  x* exactly at any cfg; with a new prompt the offsets cancel the guidance drift of the source.
* masked edit: after every step x_{k+1} ← m·x_{k+1} + (1 − m)·x*_{k+1}, so outside the mask (m = 0) the walk is pinned
  to the stored trajectory and the unmasked region comes back as exactly as the inversion allows; soft masks blend.

Indices here run down the schedule: level k has σ_k (σ_0 = the top), step k goes σ_k → σ_{k+1}.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .denoiser import Denoiser, NonFiniteModelOutput
from .invert import StepFailed
from .steps import euler_step

ReplayCallback = Callable[[int, int, Tensor, Tensor], None]  # (step done, total, x_{k+1}, denoised)


def _eval(den: Denoiser, x: Tensor, sigma: float, k: int, total: int, sigma_next: float, what: str) -> Tensor:
    try:
        return den(x, sigma)
    except NonFiniteModelOutput as e:
        raise StepFailed(f"{what} step {k + 1}/{total} (sigma {sigma:.4g} -> {sigma_next:.4g}): {e}") from e


def source_offsets(den_src: Denoiser, states_down: Sequence[Tensor], sampling_sigmas: Tensor,
                   weights: Sequence[float], callback: Optional[ReplayCallback] = None) -> list[Optional[Tensor]]:
    """o_k = x*_{k+1} − S(x*_k) with the source denoiser, for steps with weight ≠ 0 (None elsewhere, no cost)."""
    s = sampling_sigmas.tolist()
    total = len(s) - 1
    out: list[Optional[Tensor]] = []
    for k in range(total):
        if weights[k] == 0:
            out.append(None)
        else:
            x_hi = states_down[k].float()
            denoised = _eval(den_src, x_hi, s[k], k, total, s[k + 1], "source correction")
            out.append(states_down[k + 1].float().to(x_hi.device) - euler_step(x_hi, s[k], s[k + 1], denoised))
        if callback is not None:
            callback(k + 1, total, states_down[k], states_down[k])
    return out


def replay(den: Denoiser, x_top: Tensor, sampling_sigmas: Tensor, callback: Optional[ReplayCallback] = None, *,
           offsets: Optional[Sequence[Optional[Tensor]]] = None, weights: Optional[Sequence[float]] = None,
           mask: Optional[Tensor] = None, states_down: Optional[Sequence[Tensor]] = None) -> Tensor:
    """x_T → x_0 along the descending ``sampling_sigmas`` (float32 arithmetic; inputs not modified).

    ``offsets``/``weights``: source correction per step (see module doc). ``mask`` (broadcastable to x, 1 = edit) with
    ``states_down`` (x*_T … x*_0) pins the region outside the mask to the stored trajectory.
    """
    x = x_top.detach().float().clone()
    den.batch_size = x.shape[0]
    s = sampling_sigmas.tolist()
    total = len(s) - 1
    finish = step_finisher(total, x.device, callback, offsets=offsets, weights=weights, mask=mask,
                           states_down=states_down)
    for k in range(total):
        sigma, sigma_next = s[k], s[k + 1]
        denoised = _eval(den, x, sigma, k, total, sigma_next, "sampling")
        x = finish(k, euler_step(x, sigma, sigma_next, denoised), denoised)
    return x


def step_finisher(total: int, device, callback: Optional[ReplayCallback] = None, *,
                  offsets: Optional[Sequence[Optional[Tensor]]] = None, weights: Optional[Sequence[float]] = None,
                  mask: Optional[Tensor] = None, states_down: Optional[Sequence[Tensor]] = None
                  ) -> Callable[[int, Tensor, Tensor], Tensor]:
    """What every replay does after its own step k lands on x_{k+1}: add the weighted source-correction offset, pin
    the region outside the mask to the stored trajectory (x ← m·x + (1 − m)·x*_{k+1}), report progress. Shared by
    the plain replay here and BDIA's (solvers/bdia.py)."""
    if mask is not None:
        if states_down is None:
            raise ValueError("mask: a masked replay needs the stored trajectory")
        mask = mask.float().to(device)

    def finish(k: int, x: Tensor, denoised: Tensor) -> Tensor:
        if offsets is not None and offsets[k] is not None:
            x = x + weights[k] * offsets[k].to(x.device)
        if mask is not None:
            x = mask * x + (1.0 - mask) * states_down[k + 1].float().to(x.device)
        if callback is not None:
            callback(k + 1, total, x, denoised)
        return x

    return finish


def step_weights(total: int, strength: float, start_step: int, end_step: int) -> list[float]:
    """w_k = strength for start_step ≤ k < end_step (end_step −1 = to the last step), else 0. The step range is
    validated only when the correction is on (strength > 0): at strength 0 it is unused."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"correction_strength: must be in [0, 1], got {strength}")
    if strength == 0.0:
        return [0.0] * total
    end = total if end_step < 0 else end_step
    if not 0 <= start_step < total:
        raise ValueError(f"correction_start_step: must be in [0, {total - 1}] for this {total}-step schedule, "
                         f"got {start_step}")
    if not start_step < end <= total:
        raise ValueError(f"correction_end_step: must be in [{start_step + 1}, {total}] (or -1 for the last step) "
                         f"for this {total}-step schedule, got {end_step}")
    return [float(strength) if start_step <= k < end else 0.0 for k in range(total)]
