"""BDIA: an exactly invertible sampler pair at one model evaluation per step (Zhang, Lewis & Kleijn, "Exact diffusion
inversion via bi-directional integration approximation", ECCV 2024), written in the pack's sigma space (steps.py).

Paper symbols, index i on the schedule's levels with z_0 the image (σ_0, usually 0) and z_T the noise (σ_T):
the one model call at level i gives d_i = d(z_i, σ_i) = (z_i − D(z_i, σ_i)) / σ_i, and the two integration
approximations conditioned on z_i are the DDIM (= sigma-space Euler) increments

    Δ(t_i → t_{i−1} | z_i) = (σ_{i−1} − σ_i) · d_i        (forward: the next sampling interval)
    Δ(t_i → t_{i+1} | z_i) = (σ_{i+1} − σ_i) · d_i        (backward: the previous interval, re-approximated)

BDIA's sampling step takes the *pair* (z_{i+1}, z_i) to z_{i−1}:

    z_{i−1} = γ·z_{i+1} + (1 − γ)·z_i − γ·Δ(t_i → t_{i+1} | z_i) + Δ(t_i → t_{i−1} | z_i)          (BDIA-DDIM)

γ = 0 is plain DDIM (z_{i−1} = z_i + Δ(t_i → t_{i−1} | z_i)); γ = 1 is the time-symmetric leapfrog
z_{i−1} = z_{i+1} + (σ_{i−1} − σ_{i+1}) · d_i. The step is linear in z_{i+1} and d_i depends only on z_i, so for
γ > 0 it is inverted exactly, with the same single model call, by

    z_{i+1} = [ z_{i−1} − (1 − γ)·z_i + γ·Δ(t_i → t_{i+1} | z_i) − Δ(t_i → t_{i−1} | z_i) ] / γ       (inversion)

Inversion (``BDIAInversionStep``, a StepSolver for invert.invert): the starter pair (z_0, z_1) — z_1 from the image by
the shared fixed-point solver (fixed_point.py) on the plain step's implicit equation D(z_1, σ_1) = z_0, to a tolerance
within a budget, with z_1 the best *evaluated* iterate so that its model call is reused by the next step — then one
model call per level i = 1 … T−1 walks the pair up: T + k − 2 model calls in all for a k-call starter (DDIM: T).
Replay (``bdia_replay``) starts from the pair (z_T, z_{T−1}) — z_T is the LATENT's ``samples``, z_{T−1} the record's
``states[-2]`` — and takes T − 1 BDIA steps down, one model call each (none at σ_T): it lands on z_0 to float
precision whatever the starter was. Without the pair (noise that is not the inverted one) it starts as the paper's
sampler does, with one plain DDIM step z_{T−1} = z_T + Δ(t_T → t_{T−1} | z_T).

Notes, measured in tests/test_bdia.py and scripts/bdia_compare.py:
* Space. The paper states BDIA for DDIM in the VP latent Z = α·z; in ComfyUI's sigma space α is the model's input
  scaling c_in(σ) = 1/√(σ² + 1) for EPS/V (1 for flow, whose latent already is DDIM's), and DDIM's VP step is
  Δ(t_i → t | z_i) = c_t·S(z_i; σ_i → σ_t) − c_i·z_i. space "vp" (default) runs the formula on Z = c·z, exactly the
  paper's; space "sigma" runs it on z itself (c ≡ 1). They differ in how the carried difference z_{i+1} − ẑ is
  scaled across levels, which decides how stable edits and generations with another prompt are (measured in
  scripts/bdia_compare.py: on the EPS reference model the sigma form blows up at cfg 3, the vp form does not).
  Both are exactly invertible; for flow models they coincide.
* Bit-exact at γ = 1 (``grid``): the leapfrog z_{i+1} = z_{i−1} − (σ_{i−1} − σ_{i+1})·d_i is an addition, so on a
  fixed-point grid of spacing q = 2^−k (every state and increment rounded to a multiple of q, |z| < 2^24·q) float32
  adds and subtracts exactly, and the replay reproduces every state bit for bit whenever the model returns the same
  bits for the same input. The grid (``bdia_grid``: the finest power of two with 2^21·q ≥ max|z_0| + 12·c_T·σ_T,
  three bits below float32's 24 so that ulp-level changes snap back) costs a rounding of the image of q/√12 RMS
  (q = 2^−17 in the vp space and for flow, 2^−13 in sigma space for SD's σ_max 14.6), and it makes the replay
  immune to ulp-level changes of z_T (the host's latent-format round trip): ``snap`` restores the bits. Without the
  grid, float round-off injected on the way down is amplified by γ = 1's undamped second root (|μ| > 1 going down
  with Karras-like steps): measured 77–82 dB at T = 10 on the reference model instead of ~100.
* γ < 1: the inversion's homogeneous part has the root −1/γ, so every deviation of the pair from a smooth trajectory
  (the starter's error, round-off) grows by 1/γ per step on the way up and is damped by γ on the way down. The round
  trip stays exact in float32 (no grid: 100–150 dB measured), but the inverted noise can carry that growing
  alternating component (EPS reference model, vp, γ = 0.5: 2.6× the exact inverse's norm away from it).
* γ = 1 (default): both roots on the unit circle — the noise stays as close to the ODE's inverse as at any γ, the
  replay is bit-exact, but nothing damps the second root on the way down either: replaying with *another* prompt or
  cfg (an edit, a generation) lets it grow, seen as speckle (EPS, vp) or a blow-up (the flow reference model with
  Karras steps at T = 10). γ = 0.7 damps it (clean edits and generations, docs/bdia_gamma.png) at the noise cost
  above; scripts/bdia_compare.py measures both.
* Half-precision networks (the pack's own; off the grid, γ < 1): the replay's inverse step lands on the recorded
  state only up to float32 round-off (~1e-6), and an fp16 / bf16 network turns such a difference into ~5e-3 at the
  next evaluation (its input is rounded to 8–11 bits), which the walk down carries on: 35–70 dB instead of 114+ on
  the reference models. A replay of an unchanged record is therefore given the recorded trajectory, and a state
  within ``ROUND_OFF`` (relative RMS) of the recorded one *is* the recorded one: the network sees the inputs it saw
  while inverting. Anything that changes the walk (another prompt or cfg, source correction's offsets, a mask)
  moves it orders of magnitude further than ``ROUND_OFF`` at once, and then nothing is snapped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..denoiser import Denoiser, NonFiniteModelOutput
from ..invert import StepContext, StepFailed
from ..record import RESIDUAL_AT_STORED, StepStats
from ..replay import step_finisher
from ..steps import fixed_point_map, residual_rms, to_d
from .fixed_point import FixedPointOptions, make_fixed_point_step

METHOD = "bdia"
# why a BDIA step's residual is not judged (StepStats.not_judged): judging the starter flagged exact (inf dB)
# inversions as drifting
PAIR_REPLAY = "the pair replay lands on the image whatever the starter step's residual"
MIN_GAMMA = 0.01
DEFAULT_STARTER = FixedPointOptions(tol=1e-4, max_evals=2, memory=3)   # measured: scripts/bdia_compare.py


EXACT_INTEGERS = 2 ** 21          # float32 holds n·q exactly up to |n| ≤ 2^24; 3 bits are kept so that ulp-level
                                  # changes (c·(Z/c), the host's latent-format round trip) stay below q/2 and snap back


SPACES = ("vp", "sigma")
ROUND_OFF = 1e-5                  # relative RMS: float32 round-off of the BDIA algebra is ~1e-7 of a state's norm


def bdia_grid(x0: Tensor, sigma_top: float, c_top: float = 1.0) -> float:
    """The finest fixed-point grid q = 2^−k with 2^21·q ≥ M = max|z_0| + 12·c_T·σ_T (the states' reach in the space
    the walk runs in: the image plus twelve standard deviations of the top level's noise — BDIA's inverted latents
    reach ~7 on the reference model). An element beyond 2^21·q is merely rounded, as in float32 (the step's note
    says so)."""
    bound = float(x0.detach().abs().max()) + 12.0 * float(sigma_top) * float(c_top)
    return 2.0 ** math.ceil(math.log2(max(bound, 1e-6) / EXACT_INTEGERS))


def snap(x: Tensor, grid: Optional[float]) -> Tensor:
    """x rounded to the nearest multiple of ``grid`` (a power of two: exact in float32); unchanged for None."""
    return x if grid is None else torch.round(x / grid) * grid


_GAMMA_RANGE = f"in [{MIN_GAMMA}, 1] (BDIA's inversion divides by gamma; 1 = exactly time-symmetric)"


def check_gamma(gamma: float, allowed: str = "must be " + _GAMMA_RANGE) -> float:
    """γ as a float, or a ValueError naming the gamma input and what ``allowed`` values are."""
    g = float(gamma)
    if not MIN_GAMMA <= g <= 1.0:
        raise ValueError(f"gamma: {allowed}, got {gamma}")
    return g


# γ "auto" (the node's default): 0.7 up to T = 10 steps, then 0.7^(10/T), so that the inversion's (1/γ)^T growth
# stays at its T = 10, γ 0.7 size (1/0.7^10 ≈ 35): 0.837 at T = 20, 0.931 at T = 50. Measured with
# scripts/bdia_gamma_steps.py (4 held-out images, scheduler auto, edit = next label at cfg 3, PSNR to Exact Invert's
# edit; EPS / flow reference model): fixed 0.7 gave 22.3 / 18.5 dB at T = 10, 22.1 / 18.5 at T = 20 and 17.9 / 17.1
# at T = 50 (the inverted latent 6.7e5x / 6.9e4x the noise level); auto gave 25.0 / 21.2 at T = 20 and 27.9 / 25.2
# at T = 50 (1.9x / 0.8x the noise level).
AUTO_GAMMA = -1.0                 # the gamma input's value that means "auto"
AUTO_GAMMA_BASE, AUTO_GAMMA_STEPS = 0.7, 10


def auto_gamma(steps: int) -> float:
    """γ for a BDIA inversion of ``steps`` steps under the "auto" rule: max(0.7, 0.7^(10/T))."""
    t = int(steps)
    if t < 1:
        raise ValueError(f"steps: must be at least 1, got {steps}")
    return max(AUTO_GAMMA_BASE, AUTO_GAMMA_BASE ** (AUTO_GAMMA_STEPS / t))


def check_gamma_setting(gamma: float) -> float:
    """The gamma input as given: AUTO_GAMMA (−1, "auto") or a γ in [MIN_GAMMA, 1]."""
    if float(gamma) == AUTO_GAMMA:
        return AUTO_GAMMA
    return check_gamma(gamma, "must be -1 (auto: 0.7 up to 10 steps, 0.7^(10/steps) above) or " + _GAMMA_RANGE)


def resolve_gamma(gamma: float, steps: int) -> float:
    """The γ a BDIA inversion of ``steps`` steps uses for the gamma input ``gamma`` (auto resolved)."""
    g = check_gamma_setting(gamma)
    return auto_gamma(steps) if g == AUTO_GAMMA else g


Scales = tuple[float, float, float]      # (c_{i+1}, c_i, c_{i−1}): the level scalings of the space BDIA runs in
UNSCALED: Scales = (1.0, 1.0, 1.0)


def _increment(z_i: Tensor, sigma_up: float, sigma_i: float, sigma_down: float, denoised: Tensor, gamma: float,
               c: Scales) -> Tensor:
    """u = Δ(t_i → t_{i−1} | z_i) − γ·Δ(t_i → t_{i+1} | z_i) in the scaled space Z = c·z (DDIM's VP latent when c is
    the model's input scaling; sigma space when c ≡ 1): Δ(t_i → t | z_i) = c_t·S(z_i; σ_i → σ_t) − c_i·z_i."""
    d = to_d(z_i, sigma_i, denoised)
    if c == UNSCALED:
        return ((sigma_down - sigma_i) - gamma * (sigma_up - sigma_i)) * d
    c_up, c_i, c_dn = c
    return ((c_dn - c_i) - gamma * (c_up - c_i)) * z_i + (c_dn * (sigma_down - sigma_i)
                                                          - gamma * c_up * (sigma_up - sigma_i)) * d


def bdia_down(z_up: Tensor, z_i: Tensor, sigma_up: float, sigma_i: float, sigma_down: float, denoised: Tensor,
              gamma: float, grid: Optional[float] = None, c: Scales = UNSCALED) -> Tensor:
    """z_{i−1} from the pair (z_{i+1} = ``z_up`` at σ_{i+1}, z_i at σ_i) and D(z_i, σ_i) (module doc, BDIA-DDIM),
    computed on Z = c·z. ``grid`` (γ = 1 only): the bit-exact fixed-point form on Z."""
    c_up, c_i, c_dn = c
    u = _increment(z_i, sigma_up, sigma_i, sigma_down, denoised, gamma, c)
    if gamma == 1.0:
        out = snap(z_up if c_up == 1.0 else c_up * z_up, grid) + snap(u, grid)
    else:
        out = gamma * c_up * z_up + (1.0 - gamma) * c_i * z_i + u
    return out if c_dn == 1.0 else out / c_dn


def bdia_up(z_down: Tensor, z_i: Tensor, sigma_down: float, sigma_i: float, sigma_up: float, denoised: Tensor,
            gamma: float, grid: Optional[float] = None, c: Scales = UNSCALED) -> Tensor:
    """z_{i+1} from (z_{i−1} = ``z_down``, z_i) and D(z_i, σ_i): the exact inverse of ``bdia_down`` (same ``grid``
    and scales ``c`` = (c_{i+1}, c_i, c_{i−1}))."""
    c_up, c_i, c_dn = c
    u = _increment(z_i, sigma_up, sigma_i, sigma_down, denoised, gamma, c)
    if gamma == 1.0:
        out = snap(z_down if c_dn == 1.0 else c_dn * z_down, grid) - snap(u, grid)
    else:
        out = (c_dn * z_down - (1.0 - gamma) * c_i * z_i - u) / gamma
    return out if c_up == 1.0 else out / c_up


class _Recorder:
    """Passes calls to a Denoiser and keeps (input, output, active) of each: the starter reuses the model call at the
    iterate it keeps instead of paying one more. Inputs are snapped to the grid first (so the kept z_1 is on it)."""

    def __init__(self, den: Denoiser, grid: Optional[float], c: float = 1.0):
        self.den, self.grid, self.c, self.calls = den, grid, c, []

    def __call__(self, x: Tensor, sigma: float, active: Optional[Tensor] = None) -> Tensor:
        x = snap(x, self.grid) if self.c == 1.0 else snap(self.c * x, self.grid) / self.c
        out = self.den(x, sigma, active)
        self.calls.append((x, out, None if active is None else active.clone()))
        return out

    def __getattr__(self, name):
        return getattr(self.den, name)


@dataclass
class BDIAInversionStep:
    """StepSolver (invert.py) for BDIA inversion. Stateful for one run: it keeps D(z_1, σ_1) from the starter for the
    first BDIA step. ``starter``: the fixed-point options of the first step (z_1 from the image). ``sigma_top``: σ_T
    of the schedule; with γ = 1 it sets the bit-exact grid (``self.grid`` after step 0; None = plain float32)."""

    gamma: float = 1.0
    starter: FixedPointOptions = DEFAULT_STARTER
    sigma_top: Optional[float] = None
    space: str = "vp"

    def __post_init__(self):
        self.gamma = check_gamma(self.gamma)
        if self.space not in SPACES:
            raise ValueError(f"space: one of {SPACES}, got {self.space!r}")
        self.starter = self.starter.validate()
        self._solve = make_fixed_point_step(self.starter)
        self._reuse: Optional[tuple[Tensor, Tensor]] = None      # (z_1, D(z_1, σ_1)) from the starter
        self.grid: Optional[float] = None

    def __call__(self, den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
                 ctx: StepContext) -> tuple[Tensor, StepStats]:
        if ctx.total < 2:
            raise ValueError("steps / sigmas: BDIA needs a schedule of at least 2 steps (its replay starts from the "
                             "pair (z_T, z_{T-1}); with 1 step that pair would hold the image itself)")
        if ctx.index == 0:
            return self._start(den, target, guess, sigma_lo, sigma_hi, ctx)
        z_i = target
        z_down = ctx.states[-2].to(device=z_i.device, dtype=torch.float32)
        sigma_down = ctx.levels[-3]
        reuse, self._reuse = self._reuse, None
        if ctx.index == 1 and reuse is not None and reuse[0].shape == z_i.shape and torch.equal(reuse[0], z_i):
            denoised = reuse[1]
        else:
            denoised = den(z_i, sigma_lo)
        c = level_scales(den, self.space, sigma_hi, sigma_lo, sigma_down)
        z_up = bdia_up(z_down, z_i, sigma_down, sigma_lo, sigma_hi, denoised, self.gamma, self.grid, c)
        # what the replay step will miss here: float round-off of the algebra (no model call; 0 on the grid)
        back = bdia_down(z_up, z_i, sigma_hi, sigma_lo, sigma_down, denoised, self.gamma, self.grid, c)
        ref = z_down if self.grid is None else snap(c[2] * z_down, self.grid) / c[2]
        res = residual_rms(back - ref)
        # the replay takes a state within ROUND_OFF of the stored one as it; beyond that it walks its own float
        # round-off, which every later step multiplies by about 1/gamma (EPS reference model, T=10: gamma 0.02 at
        # 8.9e-6 replays bit for bit, gamma 0.01 at 1.7e-5 came back 1e9 off the image, with no error)
        off = res / ref.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30)
        if not bool((off <= ROUND_OFF).all()):
            worst = float(off.max())
            raise ValueError(
                f"gamma: BDIA at gamma {self.gamma:g} divides the pair by gamma at every step; at step {ctx.index + 1} "
                f"(sigma {sigma_lo:.4g} -> {sigma_hi:.4g}) the pair has grown so far beyond the image that float32 "
                "cannot walk it back: "
                + (f"the replay's round-off would be {worst:.2g} of the state (it settles on the stored trajectory "
                   f"within {ROUND_OFF:g} only)" if math.isfinite(worst) else "it overflowed")
                + ", and the replay would not return the image. Use a larger gamma (-1 = auto) or fewer steps")
        note = "BDIA step: exact up to float round-off" if self.grid is None else "BDIA step: bit-exact on the grid"
        reach = float(z_up.abs().max()) * c[0]
        if self.grid is not None and reach > EXACT_INTEGERS * self.grid:
            note = (f"BDIA step: |z| reached {reach:.4g}, beyond the grid's exact range "
                    f"{EXACT_INTEGERS * self.grid:.4g}: those elements are rounded (float32 precision, not bit-exact)")
        return z_up, StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=1, residual=res.tolist(),
                               converged=True, note=note, not_judged=PAIR_REPLAY)

    def _start(self, den, target, guess, sigma_lo, sigma_hi, ctx):
        c_top = level_scales(den, self.space, self.sigma_top or 0.0, 0.0, 0.0)[0]
        self.grid = bdia_grid(ctx.x0, self.sigma_top, c_top) if self.gamma == 1.0 and self.sigma_top else None
        rec = _Recorder(den, self.grid, level_scales(den, self.space, sigma_hi, 0.0, 0.0)[0])
        _, st = self._solve(rec, target, guess, sigma_lo, sigma_hi, ctx)
        # keep, per item, the evaluated iterate with the lowest residual (its model call is reused next step)
        batch = target.shape[0]
        best = torch.full((batch,), float("inf"), device=target.device)
        z1, d1 = torch.zeros_like(target), torch.zeros_like(target)
        for z, out, active in rec.calls:
            rn = residual_rms(fixed_point_map(z, out, target, sigma_lo, sigma_hi) - z)
            if active is not None:
                rn = torch.where(active, rn, torch.full_like(rn, float("inf")))
            better = rn < best
            sel = better.view(-1, *([1] * (target.ndim - 1)))
            best = torch.where(better, rn, best)
            z1, d1 = torch.where(sel, z, z1), torch.where(sel, out, d1)
        self._reuse = (z1.clone(), d1)
        st.residual = best.tolist()
        st.converged = bool((best <= self.starter.tol).all())
        st.note = ("BDIA starter z_1 (fixed point, best evaluated iterate; its residual sets how close the pair is "
                   "to the ODE, not how exactly the replay lands)")
        # the residual is measured at z_1 itself here (the solve's f(z*) is not what is kept)
        st.residual_at, st.not_judged = RESIDUAL_AT_STORED, PAIR_REPLAY
        return z1, st


ReplayCallback = Callable[[int, int, Tensor, Tensor], None]


def level_scales(den: Denoiser, space: str, *sigmas: float) -> Scales:
    """c(σ) per level: the model's input scaling c_in (1/√(σ²+1) for EPS/V: DDIM's VP latent; 1 for flow) in the
    "vp" space, 1 in the "sigma" space."""
    if space == "sigma" or den.input_scale is None:
        return tuple(1.0 for _ in sigmas)
    return tuple(float(den.input_scale(s)) for s in sigmas)


def _eval(den: Denoiser, x: Tensor, sigma: float, k: int, total: int, sigma_next: float, what: str) -> Tensor:
    try:
        return den(x, sigma)
    except NonFiniteModelOutput as e:
        raise StepFailed(f"{what} step {k + 1}/{total} (sigma {sigma:.4g} -> {sigma_next:.4g}): {e}") from e


def bdia_replay(den: Denoiser, x_top: Tensor, pair: Optional[Tensor], sampling_sigmas: Tensor, gamma: float,
                callback: Optional[ReplayCallback] = None, *, grid: Optional[float] = None, space: str = "vp", offsets: Optional[Sequence[Optional[Tensor]]] = None,
                weights: Optional[Sequence[float]] = None, mask: Optional[Tensor] = None,
                states_down: Optional[Sequence[Tensor]] = None,
                recorded: Optional[Sequence[Tensor]] = None) -> Tensor:
    """BDIA sampling down the descending ``sampling_sigmas`` (indices k here run down: level k has σ_k, σ_0 = the top).

    ``pair``: z at level 1 (the record's z_{T−1}); the walk then costs T − 1 model calls and inverts
    ``BDIAInversionStep`` exactly (bit for bit with its ``grid``: z_T and the pair are snapped to it first, which
    undoes ulp-level changes such as the host's latent-format round trip). None: the first step is plain DDIM from ``x_top`` (the paper's sampler; a
    generation, not a reconstruction). ``offsets``/``weights`` (see bdia_source_offsets), ``mask`` with
    ``states_down``: as replay.replay — after every step z_{k+1} ← m·z_{k+1} + (1 − m)·z*_{k+1}. ``recorded`` (the
    stored trajectory, descending, with ``pair``): a state within ``ROUND_OFF`` of the recorded one is taken as it
    (see the module notes: half-precision networks).
    Float32 arithmetic; inputs not modified.
    """
    gamma = check_gamma(gamma) if pair is not None else float(gamma)
    s = [float(v) for v in sampling_sigmas.tolist()]
    total = len(s) - 1
    if pair is None or gamma != 1.0:
        grid = None
    x_prev = x_top.detach().float().clone()
    den.batch_size = x_prev.shape[0]
    finish = step_finisher(total, x_prev.device, callback, offsets=offsets, weights=weights, mask=mask,
                           states_down=states_down)

    if pair is not None:
        if tuple(pair.shape) != tuple(x_prev.shape):
            raise ValueError(f"pair: the BDIA pair state has shape {tuple(pair.shape)} but the latent "
                             f"{tuple(x_prev.shape)}")
        x = pair.detach().float().to(x_prev.device).clone()
        x = finish(0, x, x)
    else:
        denoised = _eval(den, x_prev, s[0], 0, total, s[1], "sampling")
        x = finish(0, x_prev + (s[1] - s[0]) * to_d(x_prev, s[0], denoised), denoised)
    recorded = recorded if pair is not None else None

    def settle(k: int, z: Tensor) -> Tensor:
        """z_{k+1}, or the recorded z*_{k+1} per item where they differ by float round-off only."""
        if recorded is None:
            return z
        ref = recorded[k + 1].float().to(z.device)
        close = (z - ref).flatten(1).norm(dim=1) <= ROUND_OFF * ref.flatten(1).norm(dim=1)
        return torch.where(close.view(-1, *([1] * (z.ndim - 1))), ref, z)

    for k in range(1, total):
        denoised = _eval(den, x, s[k], k, total, s[k + 1], "sampling")
        c = level_scales(den, space, s[k - 1], s[k], s[k + 1])
        z = settle(k, bdia_down(x_prev, x, s[k - 1], s[k], s[k + 1], denoised, gamma, grid, c))
        x_prev, x = x, finish(k, z, denoised)
    return x


def bdia_source_offsets(den_src: Denoiser, states_down: Sequence[Tensor], sampling_sigmas: Tensor, gamma: float,
                        weights: Sequence[float], callback: Optional[ReplayCallback] = None,
                        space: str = "vp") -> list[Optional[Tensor]]:
    """Source correction (DirectInversion) for the BDIA replay: o_k = z*_{k+1} − BDIA(z*_{k−1}, z*_k; D_src(z*_k, σ_k))
    for steps k ≥ 1 with weight ≠ 0 (None elsewhere and at k = 0, whose z_1 is the stored pair state)."""
    s = [float(v) for v in sampling_sigmas.tolist()]
    total = len(s) - 1
    out: list[Optional[Tensor]] = [None]
    if callback is not None:
        callback(1, total, states_down[0], states_down[0])
    for k in range(1, total):
        if weights[k] == 0:
            out.append(None)
        else:
            z_up, z_k = states_down[k - 1].float(), states_down[k].float()
            denoised = _eval(den_src, z_k, s[k], k, total, s[k + 1], "source correction")
            c = level_scales(den_src, space, s[k - 1], s[k], s[k + 1])
            out.append(states_down[k + 1].float().to(z_k.device)
                       - bdia_down(z_up.to(z_k.device), z_k, s[k - 1], s[k], s[k + 1], denoised, gamma, None, c))
        if callback is not None:
            callback(k + 1, total, states_down[k], states_down[k])
    return out
