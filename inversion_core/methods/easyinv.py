"""EasyInv (ICML 2025): a periodic blend of the current and previous latent, as a hook for any inversion solver.

Inside the window of step indices a·T < i < b·T (open interval, 0-based i, as in the paper) the walk is blended with
weight η ∈ [0, 1]:

* variant "paper" (default; the paper's SD-1.4 reference path): the model sees the unblended x_i; the step is taken
  from the blended latent  x̄_i = η·x_i + (1 − η)·x̄_{i−1}  (x̄ the previous step's already blended input; outside the
  window x̄_i = x_i). In this package's terms the blend changes the step's *target*: replaying x_{i+1} lands on x̄_i.
* variant "output" (the reference repository's short example, and Algorithm 1 as printed): the step's output is
  blended, x_{i+1} ← η·x_{i+1} + (1 − η)·x_i, so the next model call sees the blended latent.

No model evaluation is added. Blend arithmetic is float32. Because it is a hook, it composes with DDIM, the
fixed-point solver, GNRI and PreciseInv alike ("plug-and-play with any inversion method").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from ..invert import StepContext

VARIANTS = ("paper", "output")
# From this many blended steps on, the blend's drift costs more than it saves. Each blended step moves the walk's
# target off the trajectory by a fraction of one step's change, and the replay does not undo it, so the loss does
# not shrink with more steps while DDIM's own error does. Measured (scripts/benchmark.py, 8 held-out images, SD1.x
# preset, DDIM / EasyInv dB): EPS reference model T=20 (3 blended) 33.3 / 32.1, T=30 (6) 36.4 / 33.4, T=50 (10)
# 40.2 / 34.6, T=200 (40) 47.5 / 35.3; flow reference model 28.8 / 30.0, 32.0 / 29.7, 36.2 / 29.2, 48.1 / 28.6.
MANY_BLENDED = 6

# Defaults of the reference implementation per model family (SDXL driver: 20 steps).
PRESETS = {
    "SD1.x / SD2.x": {"eta": 0.5, "window": (0.05, 0.25)},
    "SDXL": {"eta": 0.8, "window": (0.85, 0.95)},
}


def in_window(i: int, total: int, window: tuple[float, float]) -> bool:
    """a·T < i < b·T, the paper's open interval on the 0-based step index."""
    a, b = window
    return a * total < i < b * total


@dataclass
class EasyInvBlend:
    eta: float = 0.5
    window: tuple[float, float] = (0.05, 0.25)
    variant: str = "paper"
    _prev_target: Optional[Tensor] = field(default=None, repr=False)
    blended: list = field(default_factory=list, repr=False)   # the step indices the last walk blended

    def __post_init__(self):
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta: must be in [0, 1], got {self.eta}")
        a, b = (float(v) for v in self.window)
        if not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
            raise ValueError(f"window: start and end must lie in [0, 1], got ({a}, {b})")
        if a >= b:
            raise ValueError(f"window: start must be below end, got ({a}, {b})")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: one of {VARIANTS}, got {self.variant!r}")
        self.window = (a, b)

    def use_preset(self, name: str) -> None:
        """Switch to one of PRESETS (the reference implementation's per-family settings)."""
        self.eta, self.window = PRESETS[name]["eta"], tuple(PRESETS[name]["window"])

    def before_step(self, ctx: StepContext, x_i: Tensor) -> Tensor:
        if ctx.index == 0:
            self._prev_target = None
            self.blended = []
        target = x_i
        if self.variant == "paper" and self._prev_target is not None and in_window(ctx.index, ctx.total, self.window):
            target = self.eta * x_i + (1.0 - self.eta) * self._prev_target.to(x_i.device)
            self.blended.append(ctx.index)
        self._prev_target = target
        return target

    def after_step(self, ctx: StepContext, x_next: Tensor) -> Tensor:
        if self.variant == "output" and in_window(ctx.index, ctx.total, self.window):
            self.blended.append(ctx.index)
            return self.eta * x_next + (1.0 - self.eta) * ctx.states[-1].to(x_next.device)
        return x_next

    def notice(self, total: int) -> Optional[str]:
        """What the user must know after a walk of ``total`` steps: a window that held no step (or an eta of 1)
        left the inversion plain DDIM."""
        a, b = self.window
        if not self.blended:
            return (f"EasyInv's window {a:g}-{b:g} holds no step of this {total}-step schedule (it blends steps i "
                    f"with {a:g}*T < i < {b:g}*T, 0-based): nothing was blended and the result is plain DDIM; widen "
                    "the window (preset custom) or invert with more steps")
        if self.eta == 1.0:
            return "EasyInv's eta is 1 (keep all of the current latent): nothing was blended, the result is plain DDIM"
        if len(self.blended) >= MANY_BLENDED:
            return (f"EasyInv blended {len(self.blended)} of {total} steps: its blend moves each blended step off the "
                    "trajectory and the replay does not undo it, so with many steps it reconstructs worse than plain "
                    "DDIM Invert (measured on the reference models, 50 steps: -5.6 dB EPS, -7.0 dB flow; 200 steps: "
                    "-12 / -20 dB). Use EasyInv at about 10-20 steps, or DDIM / Exact Invert for many steps")
        return None
