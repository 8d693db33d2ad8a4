"""The pack's exact-inversion solver: fixed-point iteration with Anderson mixing and a free warm start.

Per step it solves z = f(z), f(z) = x̄_i + (σ_{i+1} − σ_i)·d(z, σ_{i+1})  (steps.fixed_point_map), so that the replay
step from z lands on x̄_i.

* Warm start (no model cost): extrapolate the previous increment to the new step size,
      z⁰ = x_i + h_i · (x_i − x_{i−1}) / h_{i−1},   h_i = σ_{i+1} − σ_i.
  The first step has no history and starts at x_i, whose first iterate f(x_i) is exactly DDIM inversion.
* Anderson mixing (type II, memory m): with residuals r_k = f(z_k) − z_k and differences ΔR, ΔF of the last m
  residuals / map values, γ_k = argmin ‖r_k − ΔR γ‖₂ per batch item, and z_{k+1} = f(z_k) − ΔF γ_k.
  m = 0 is the plain fixed-point iteration z_{k+1} = f(z_k).
* Damping (``relax``, default on): the map is iterated as z ← z + ω·(f(z) − z) with ω = steps.relaxation(σ_lo, σ_hi,
  kind) — 1 on EPS / V models and small steps; below 1 on a flow model's first step when it is so large that the
  plain iteration overshoots on the image's own content (measured on the flow reference model at T=2, 3
  evaluations: 18.1 dB plain, 22.0 with the secant safeguard below, 27.5 damped). The fixed point, the stopping
  rule and the reported residual are unchanged.
* Safeguards: an item whose residual grew takes the secant step across its newest pair (z_{k−1}, z_k) — the
  overshoot it just measured — where that lands within the overshooting step's reach; otherwise it falls back to
  the plain step from its best iterate and forgets its history (measured on the flow reference model at T=3:
  29.97 → 31.52 dB; the exact preset +0.5–2.5 dB on flow). An Anderson step moves at most ``STEP_CAP`` (30) times
  the plain step: where the model cannot reach the target, Anderson would extrapolate without bound along the
  directions the model ignores, and at such magnitudes the measured residual f(z) − z loses the target to
  rounding (no effect measured on the reference models). The result is always the map's value z* + ω·r(z*)
  (f(z*) when ω = 1) at the best iterate z* seen (lowest measured residual), never a worse one.
* Stopping: per item, on RMS residual ≤ tol (that item is no longer evaluated), when the step's budget of model
  evaluations is spent, or (``stall`` > 0) when its best residual has not fallen by 10 % over the last ``stall``
  evaluations: the model cannot bring the replay any closer to the target there (measured on the flow reference
  model's first step, σ 0 → σ_1, D(z, σ_1) = x_0: 150 evaluations plateau at ~2e-3, while a gradient solve of the
  same equation goes below 3e-4, README), so further evaluations only cost time. The step's note says so. The
  reported residual is ‖f(z*) − z*‖_RMS, measured at z*; the returned value is one more (damped) contraction closer.

An optional ``correction(z, r, ctx, sigma_hi)`` is added to the map's output (GNRI's guidance term uses it), so other
methods share this solver instead of copying it; ``r`` is the unguided residual f(z) − z, on which stopping and the
reported residual are measured (so a guidance that vanishes with r keeps the solution exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..invert import StepContext
from ..record import RESIDUAL_BEFORE_MAP, StepStats
from ..steps import fixed_point_map, relaxation, residual_rms

Correction = Callable[[Tensor, Tensor, StepContext, float], Tensor]
STALL_GAIN = 0.9     # "stalled": the best residual is above this fraction of its value ``stall`` evaluations ago
STEP_CAP = 30.0      # an Anderson step moves at most this many times the plain step f(z) − z (see Safeguards)


@dataclass(frozen=True)
class FixedPointOptions:
    tol: float = 1e-4          # RMS residual (model latent units) at which an item stops
    max_evals: int = 3         # model evaluations per step
    memory: int = 3            # Anderson memory m; 0 = plain fixed point
    warm_start: bool = True    # extrapolate the previous increment (free)
    ridge: float = 1e-10       # relative Tikhonov term for the small least-squares problem
    stall: int = 0             # stop an item whose best residual fell < 10 % over this many evaluations (0 = off)
    relax: bool = True         # damp a flow model's first step where the plain iteration overshoots (steps.relaxation)

    def validate(self) -> "FixedPointOptions":
        if not self.tol > 0:
            raise ValueError(f"tolerance: must be > 0, got {self.tol}")
        if int(self.max_evals) < 1:
            raise ValueError(f"budget: must be at least 1 model evaluation per step, got {self.max_evals}")
        if int(self.stall) < 0:
            raise ValueError(f"stall: must be >= 0 (0 = never stop on a stalled residual), got {self.stall}")
        if int(self.memory) < 0:
            raise ValueError(f"memory: must be >= 0 (0 = plain fixed point), got {self.memory}")
        return self


PRESETS = {
    "fast": FixedPointOptions(tol=1e-4, max_evals=2, memory=3),
    "balanced": FixedPointOptions(tol=1e-4, max_evals=3, memory=3),
    # tolerance chosen from the measured PSNR-vs-tolerance curve (bash scripts/benchmark.sh --exact-curve, README):
    # 1e-4 is the loosest measured that keeps every held-out image >= 80 dB at T=10 on the EPS reference model (86.5 dB
    # worst, 7.2x DDIM); 1e-6 bought +26 dB mean (worst image +4.6 dB) for 1.9x the time
    "exact": FixedPointOptions(tol=1e-4, max_evals=40, memory=5),
}


def warm_start_guess(ctx: StepContext) -> Optional[Tensor]:
    """z⁰ = x_i + h_i (x_i − x_{i−1}) / h_{i−1}; None on the first step."""
    if ctx.index == 0 or len(ctx.states) < 2:
        return None
    lv = ctx.levels
    h_prev, h = lv[-2] - lv[-3], lv[-1] - lv[-2]
    x_i, x_prev = ctx.states[-1], ctx.states[-2]
    return x_i + (h / h_prev) * (x_i - x_prev)


def _anderson(z_hist: list[Tensor], g_hist: list[Tensor], valid: Tensor, ridge: float) -> Tensor:
    """z_{k+1} = g_k − ΔG γ with γ = argmin ‖r_k − ΔR γ‖, solved per item; columns an item may not use are masked."""
    r = [g - z for z, g in zip(z_hist, g_hist)]
    b = r[-1].flatten(1)                                               # [B, N]
    dR = torch.stack([(r[j + 1] - r[j]).flatten(1) for j in range(len(r) - 1)], -1)   # [B, N, m]
    dG = torch.stack([(g_hist[j + 1] - g_hist[j]).flatten(1) for j in range(len(r) - 1)], -1)
    mask = valid[:, -dR.shape[-1]:].to(dR.dtype).unsqueeze(1)          # [B, 1, m]
    dR, dG = dR * mask, dG * mask
    # the m×m system is tiny: solve it in float64, where a vanishing history (a converged item) stays regular
    dR64 = dR.double()
    gram = dR64.transpose(1, 2) @ dR64                                 # [B, m, m]
    scale = gram.diagonal(dim1=1, dim2=2).sum(-1)                      # trace, per item
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    m2 = mask.double().transpose(1, 2) * mask.double()
    gram = gram + (ridge * scale + 1e-200)[:, None, None] * eye + (1 - m2) * eye
    gamma, info = torch.linalg.solve_ex(gram, dR64.transpose(1, 2) @ b.double().unsqueeze(-1))
    gamma = torch.where((info == 0)[:, None, None], gamma, torch.zeros_like(gamma)).to(dG.dtype)   # [B, m, 1]
    return (g_hist[-1].flatten(1) - (dG @ gamma).squeeze(-1)).view_as(g_hist[-1])


def make_fixed_point_step(options: FixedPointOptions = FixedPointOptions(), correction: Optional[Correction] = None):
    """A StepSolver (see invert.py) running the safeguarded Anderson iteration with ``options``."""
    opt = options.validate()

    def solve(den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
              ctx: StepContext) -> tuple[Tensor, StepStats]:
        batch = target.shape[0]

        def rows(v: Tensor) -> Tensor:                   # a per-item [B] value broadcast over a latent's dims
            return v.view(-1, *([1] * (target.ndim - 1)))

        warm = warm_start_guess(ctx) if opt.warm_start else None
        z = (warm if warm is not None else guess).to(target.device, torch.float32)
        active = torch.ones(batch, dtype=torch.bool, device=target.device)
        best_rn = torch.full((batch,), float("inf"), device=target.device)
        best_g = torch.zeros_like(target)
        best_z = torch.zeros_like(target)
        prev_rn = best_rn.clone()
        z_hist: list[Tensor] = []
        g_hist: list[Tensor] = []
        valid = torch.zeros(batch, 0, dtype=torch.bool, device=target.device)  # usable history columns per item
        evals = 0
        best_trace: list[Tensor] = []                    # best residual per item after each evaluation
        stalled = torch.zeros(batch, dtype=torch.bool, device=target.device)
        omega = relaxation(sigma_lo, sigma_hi, ctx.model_kind) if opt.relax else 1.0
        ddim_rn = None       # from the guess, iterate 1 is f(guess) = the DDIM result: its residual is DDIM's
        for k in range(int(opt.max_evals)):
            denoised = den(z, sigma_hi, active)
            evals += 1
            g = fixed_point_map(z, denoised, target, sigma_lo, sigma_hi)
            r = g - z
            rn = residual_rms(r)
            if omega != 1.0:
                g = z + omega * r
            if correction is not None:
                g = g + correction(z, r, ctx, sigma_hi)
            if k == 1 and warm is None and correction is None and omega == 1.0:
                ddim_rn = torch.where(active, rn, best_rn).tolist()   # an item done at k = 0 was already exact
            rn = torch.where(active, rn, best_rn)
            improved = active & (rn < best_rn)
            sel = rows(improved)
            best_rn = torch.where(improved, rn, best_rn)
            best_g = torch.where(sel, g, best_g)
            best_z = torch.where(sel, z, best_z)
            active = active & (best_rn > opt.tol)
            best_trace.append(best_rn)
            if opt.stall and len(best_trace) > opt.stall:
                now_stalled = active & (best_rn > STALL_GAIN * best_trace[-1 - opt.stall])
                stalled, active = stalled | now_stalled, active & ~now_stalled
            if not active.any() or k == int(opt.max_evals) - 1:
                break
            grew = active & (rn > prev_rn)
            prev_rn = torch.where(active, rn, prev_rn)
            z_hist.append(z)
            g_hist.append(g)
            valid = torch.cat([valid, (~grew).unsqueeze(1)], 1)
            valid[grew] = False                      # an item that regressed forgets its history
            keep = opt.memory + 1
            z_hist, g_hist, valid = z_hist[-keep:], g_hist[-keep:], valid[:, -keep:]
            if opt.memory > 0 and len(z_hist) >= 2:
                z_next = _anderson(z_hist, g_hist, valid[:, 1:] & valid[:, :-1], opt.ridge)
            else:
                z_next = g
            if opt.memory > 0 and bool(grew.any()):
                # the step z_{k−1} → z_k overshot: the secant across that pair is the correction, accepted where it
                # stays within the overshooting step's reach (a model that cannot reach the target makes the
                # secant extrapolate far: there the item falls back as before)
                z_sec = _anderson(z_hist[-2:], g_hist[-2:], torch.ones_like(valid[:, :1]), opt.ridge)
                reach = (z_hist[-1] - z_hist[-2]).flatten(1).norm(dim=1)
                dist = (z_sec - z_hist[-2]).flatten(1).norm(dim=1)
                secant = grew & (dist <= reach) & torch.isfinite(dist)
                valid[secant, -2:] = True
                z_next = torch.where(rows(secant), z_sec, z_next)
                grew = grew & ~secant
            scale = STEP_CAP * (g - z).flatten(1).norm(dim=1) / (z_next - z).flatten(1).norm(dim=1).clamp(min=1e-30)
            z_next = torch.where(rows(scale < 1.0), z + (z_next - z) * rows(scale.clamp(max=1.0)), z_next)
            z = torch.where(rows(grew), best_g, z_next)
        note = ""
        if stalled.any():
            items = [i for i, s_ in enumerate(stalled.tolist()) if s_]
            note = (f"stalled: item(s) {items} stopped at residual "
                    f"{', '.join(f'{best_rn[i].item():.1e}' for i in items)} (< 10 % gain over the last {opt.stall} "
                    "evaluations: the model maps no nearby latent closer to the target at this sigma)")
        st = StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=evals,
                       residual=best_rn.tolist(), converged=bool((best_rn <= opt.tol).all()),
                       ddim_residual=ddim_rn, note=note, residual_at=RESIDUAL_BEFORE_MAP)
        return best_g, st

    return solve
