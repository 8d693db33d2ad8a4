"""The denoiser every method calls: D(x, σ) → x̂0, with the bookkeeping users and tests rely on.

The host (ComfyUI) supplies the raw function — its guider already applies CFG, LoRA, ControlNet and model patches —
and this wrapper adds what must not be re-implemented in each method: evaluation counts, fp32 results whatever the
model dtype, a NaN/inf check that names the sigma, an interrupt check before every evaluation, and evaluation of
only the still-active items of a batch (an item that converged stops paying). On request it also checks that the
model is a function: the same input evaluated again must give the same output (``repeat_difference``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

RawDenoiser = Callable[[Tensor, float], Tensor]

# repeat_difference above this share of the model's own prediction means the model is not a function of its input:
# a patch that draws random numbers on every call or keeps state between calls. A plain network gives exactly 0 on a
# CPU (so do FreeU, PAG and SAG); measured on patches that vary: ToMe 0.8-1.7e-2 (tiny SD1, ratio 0.1-0.3), HyperTile
# with a random tile choice 0.10-0.21, upstream's APG with momentum -0.5 at cfg 3 0.9-9.8 (reference models). Floored
# at the network's compute precision (repeat_rtol), where round-off of a non-deterministic kernel could show.
REPEAT_RTOL = 1e-4


class NonFiniteModelOutput(FloatingPointError):
    """The model returned NaN or inf."""


@dataclass
class Denoiser:
    """Wraps ``raw(x, sigma) -> denoised``.

    ``forward_evals`` / ``backward_evals`` count model passes in units of one full batch (evaluating 1 of 4 items
    costs 0.25); solvers that backpropagate through the model add to ``backward_evals`` themselves.
    ``subset_ok`` says whether ``raw`` may be called on a subset of the batch items: the host bridge clears it when
    the conditioning differs per item, because the host would pair a sub-batch with the wrong prompts.
    ``on_eval()`` is called after every successful model evaluation (solvers need no change to report progress).
    """

    raw: RawDenoiser
    check_interrupt: Optional[Callable[[], None]] = None
    subset_ok: bool = True
    batch_size: int = 1
    calls: int = 0
    forward_evals: float = 0.0
    backward_evals: float = 0.0
    model_seconds: float = 0.0          # wall time spent inside ``raw`` (the rest of a run is the pack's overhead)
    on_eval: Optional[Callable[[], None]] = None
    input_scale: Optional[Callable[[float], float]] = None   # c_in(σ), the model's input scaling (None: 1)
    compute_dtype: torch.dtype = torch.float32   # what the network computes in (its input is rounded to this)
    # keep a copy of the first full-batch evaluation at σ > 0, which repeat_difference evaluates once more
    remember_first: bool = False
    _first: Optional[tuple[Tensor, float, Tensor]] = None

    def __call__(self, x: Tensor, sigma: float, active: Optional[Tensor] = None) -> Tensor:
        """D(x, σ) as float32. With a boolean ``active`` mask over the batch, only those rows are meaningful in the
        result (the others are returned as zeros when the model could skip them)."""
        if self.check_interrupt is not None:
            self.check_interrupt()
        if active is not None and not bool(active.any()):
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)   # nothing to evaluate: no model call
        if active is not None and self.subset_ok and not bool(active.all()):
            idx = active.nonzero().flatten()
            part = self._eval(x[idx], sigma)
            out = torch.zeros(x.shape, dtype=part.dtype, device=part.device)
            out = out.index_copy(0, idx, part)
        else:
            out = self._eval(x, sigma)
        if self.on_eval is not None:
            self.on_eval()
        return out

    def _eval(self, x: Tensor, sigma: float) -> Tensor:
        start = time.perf_counter()
        out = self.raw(x, float(sigma)).float()
        self.model_seconds += time.perf_counter() - start
        self.calls += 1
        self.forward_evals += x.shape[0] / max(self.batch_size, 1)
        if not torch.isfinite(out).all():
            raise NonFiniteModelOutput(f"the model returned NaN/inf at sigma={float(sigma):.6g}")
        if self.remember_first and self._first is None and float(sigma) > 0 and x.shape[0] == self.batch_size:
            self._first = (x.detach().clone(), float(sigma), out.detach().clone())
        return out

    def repeat_difference(self) -> Optional[float]:
        """Evaluate the remembered first evaluation (``remember_first``) once more and return how far the two outputs
        are apart: RMS(D₂ − D₁) / RMS(x − D₁), the change relative to the model's own correction of its input (D
        itself is mostly x at small σ, which would hide a changed prediction). 0 for a model that is a function of its
        input; None when nothing was remembered. Costs one evaluation, counted like any other."""
        if self._first is None:
            return None
        x, sigma, before = self._first
        with torch.no_grad():
            again = self._eval(x, sigma)
        scale = (x.float() - before).pow(2).mean().sqrt()
        if float(scale) == 0.0:
            return 0.0 if torch.equal(again, before) else float("inf")
        return float((again - before).pow(2).mean().sqrt() / scale)

    def repeat_rtol(self) -> float:
        """The repeat_difference above which the model is not a function of its input, at this compute dtype."""
        return max(REPEAT_RTOL, float(torch.finfo(self.compute_dtype).eps))

    def count_backward(self, items: int) -> None:
        """Record one backward pass through the model for ``items`` batch items."""
        self.backward_evals += items / max(self.batch_size, 1)
