"""Sigma schedules: validation and the inversion (ascending) view of a sampling (descending) schedule.

A *sampling schedule* is what ComfyUI's schedulers produce: σ_T > … > σ_1 > σ_0, usually with σ_0 = 0. Inversion walks
the same levels upwards, so every method here takes the sampling schedule and visits (σ_lo, σ_hi) = (σ_i, σ_{i+1}) for
i = 0 … T−1. Keeping the descending schedule as the single source of truth is what lets the replay sampler run on
*exactly* the levels the latent was inverted on.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class ScheduleError(ValueError):
    """A sigma schedule that cannot be inverted (the message names what is wrong)."""


def as_sampling_schedule(sigmas: Tensor | Sequence[float], name: str = "sigmas") -> Tensor:
    """Validate a sampling schedule and return it as a descending float32 CPU copy.

    Accepts either direction: an ascending schedule (e.g. the output of the host's FlipSigmas, whose first level is
    lifted from 0 to 1e-4) is turned back into the descending one it came from.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float32).detach()
    if sum(d > 1 for d in s.shape) > 1:
        raise ScheduleError(f"{name}: expected one list of sigma levels (1-D), got a tensor of shape {tuple(s.shape)}")
    s = s.flatten().cpu().clone()
    if s.numel() < 2:
        raise ScheduleError(f"{name}: a schedule needs at least 2 sigma levels (1 step), got {s.numel()}")
    if not torch.isfinite(s).all():
        # e.g. upstream's kl_optimal scheduler at 1 step puts NaN at the top
        raise ScheduleError(f"{name}: contains NaN or inf: {s.tolist()} (the scheduler or SIGMAS node made no valid "
                            "level there: try another scheduler or step count)")
    if (s < 0).any():
        raise ScheduleError(f"{name}: sigmas must be >= 0, got {s.tolist()}")
    if s[0] < s[-1]:
        s = s.flip(0)
    diffs = s[:-1] - s[1:]
    if not (diffs > 0).all():
        raise ScheduleError(f"{name}: sigmas must be strictly monotonic (no repeated levels), got {s.tolist()}")
    if s[-1] <= 1e-4:
        # FlipSigmas lifts a leading 0 to 1e-4 so that its Euler step does not divide by zero; the level is zero.
        s[-1] = 0.0
    return s


def inversion_pairs(sampling_sigmas: Tensor) -> list[tuple[float, float]]:
    """[(σ_lo, σ_hi)] for i = 0 … T−1, the order inversion visits the steps (from the image upwards)."""
    s = sampling_sigmas.tolist()
    return [(s[i + 1], s[i]) for i in range(len(s) - 2, -1, -1)]
