"""GNRI — Guided Newton-Raphson Inversion (Samuel et al., "Lightning-fast image inversion and editing", 2024).

Per step (σ_lo = σ_i → σ_hi = σ_{i+1}) GNRI solves the implicit inversion equation z = f(z) of steps.py,

    f(z) = x_lo + h·d(z, σ_hi),   h = σ_hi − σ_lo,   r(z) = z − f(z)   (r = S(z; σ_hi → σ_lo) − x_lo),

by Newton-Raphson on the paper's objective  F(z) = ‖r(z)‖₁ + λ·G(z), with a guidance term G that keeps z close to
the forward marginal q(z_t | z_0) = N(μ_t, σ_t²·I) around the image latent z_0 (``ctx.x0``):

    μ_t = marginal_mean(z_0, σ_hi):  z_0 for EPS / V-prediction sigma space (x = x0 + σε),
                                     (1 − σ_hi)·z_0 for CONST flow sigma space (x = (1 − σ)x0 + σε);
    G(z) = ‖z − μ_t‖² / (2σ_hi²)     (summed over the item's D coordinates),

i.e. the negative log-density of that marginal up to a constant. This is the official code's choice
(½((z − z_0)/σ)² per element, its ``alpha`` = our λ); the paper writes ‖z − μ_t‖/β_t, and β_t ↔ σ² in sigma space.

Three variants (the node's default is the third, ``GNRIAnderson``; README explains the choice with measurements).

``variant="newton"``: a true Newton step on the *vector* residual, with the model's Jacobian — the paper's update.
    The paper's update is per coordinate  z_i ← z_i − (1/D)·F(z)/(∂F/∂z_i + η).  Its linearisation asks for a step δ
    with ∇F·δ = −F (the first-order prediction of F reaches 0). With ∂‖r‖₁/∂z = J_rᵀ·sign(r), the vector Newton
    step δ = −J_r⁻¹ r satisfies exactly that condition for the ‖r‖₁ part (sign(r)ᵀJ_r δ = −‖r‖₁), and it is the one
    step that zeroes *every* coordinate of the linearised residual instead of only its ℓ1 norm. Taken literally the
    per-coordinate update is a sign step of size mean|r| (J_r ≈ I) and does not converge (measured: 4–13 dB with λ 0 and 0.1); the
    vector step converges quadratically. Here

        J_r = I − ∂f/∂z = (σ_lo/σ_hi)·I + (h/σ_hi)·J_D,       J_D = ∂D(z, σ_hi)/∂z  (through the model, autograd)

    and each Newton step solves, per batch item, the guided linear system

        (J_r + c_k·I)·δ = −(r(z_k) + c_k·(z_k − μ)),   c_k = λ·ρ_k²,   ρ_k = RMS(r(z_k)) / σ_hi,

    i.e. Newton on R(z) = r(z) + c_k·σ_hi²·∇G(z) — the residual plus λ·∇G, with the guidance weight scaled by the
    squared relative residual. Far from the root (ρ ≈ 0.1–1, the first iteration) the guidance pulls the step
    towards the marginal mean and damps the Newton system; at the root it vanishes, so the limit is the *exact*
    inversion and convergence stays quadratic (the perturbation is O(λ·‖r‖²)). A fixed weight (c = λ) would instead
    converge to the root of r + λ(z − μ), a replay error of about λ·σ·|ε| per step — with λ = 0.1 worse than DDIM.
    The linear system is solved matrix-free by GMRES (at most ``krylov_dim`` Jacobian-vector products per Newton
    step, relative tolerance min(0.1, RMS(r_k)), an Eisenstat-Walker-style forcing term). Jacobian-vector products
    (``jvp``): finite differences of the model (one forward pass each, no gradients — the node's choice: on the
    reference model forward-mode autograd gave the same PSNR at 2.1× the time, and it is not implemented for SDPA
    attention), forward-mode autograd, or reverse-over-reverse autograd; "auto" tries forward, then double
    backward, then finite differences (the StepStats note says which ran).
    Safeguards: an item whose residual grew retries its Newton direction at half the step (no new Krylov solve);
    the returned point is the iterate with the lowest *measured* residual. Stops per item on RMS(r) ≤ tol (that
    item is no longer evaluated: ``active``) or after ``max_iter`` Newton steps. Cost per Newton step: 1 forward
    evaluation + the GMRES JVPs (1 for a linear denoiser; 2–8 on the test UNet); plus 1 initial evaluation.
    Forward-mode JVPs are counted as forward evaluations (one forward pass carrying a tangent each).

``variant="reference code"``: what dvirsamuel/NewtonRaphsonInversion ships (SDXL-Turbo pipeline). The model step is
    detached, so the derivative of the per-element objective e = |f(z) − z| + λ·½((f(z) − μ)/σ_hi)² w.r.t. z is
    sign(z − f(z)), and the update  z ← z − (1/D)·Σe / sign(z − f(z))  is the sign step

        z_{k+1} = z_k − mean(e_k)·sign(z_k − f(z_k))      (per item; D = the item's element count, not 64·64·4)

    (a coordinate with z = f(z) exactly does not move, where the original divides by zero). It runs a fixed number of
    iterations (2 in the official code; ``max_iter`` here, default 2), no tolerance, and returns f(z_k) of the
    iterate with the lowest mean(e_k). 1 model evaluation per iteration, no gradients. The reported residual is
    RMS(z_k − f(z_k)) of the chosen iterate (the returned f(z_k) is one fixed-point application further).

Start (both variants): ``start="previous"`` z⁰ = the DDIM evaluation point (x_lo at the network input it had, the
paper's z_t⁰ = z_{t−1}); ``"ddim"`` z⁰ = f(that point), the plain DDIM result (one extra evaluation; since the
Newton variant keeps the lowest-residual iterate, a step then never ends worse than DDIM's — the node's choice);
``"extrapolate"`` z⁰ = x_lo + h_i·(x_lo − x_{i−1})/h_{i−1} (free; the DDIM point on the first step).

``GNRIAnderson`` (the node's "quasi-newton", its default): GNRI's guided Newton–Raphson with the model's Jacobian
replaced by the multisecant (Anderson ≡ Broyden type-II) estimate that the pack's fixed-point solver builds from its
own iterates — no derivative of the model, 2–3 evaluations per step, which is GNRI's promise ("1–2 iterations per
step", ~2 evaluations). It departs from the paper in the Jacobian only; the guidance term is the same.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..denoiser import Denoiser, NonFiniteModelOutput
from ..invert import StepContext
from ..record import RESIDUAL_BEFORE_MAP, StepStats
from ..steps import fixed_point_map, residual_rms
from .fixed_point import warm_start_guess

MarginalMean = Callable[[Tensor, float], Tensor]
VARIANTS = ("newton", "reference code")
STARTS = ("previous", "ddim", "extrapolate")
JVP_MODES = ("auto", "forward", "double backward", "finite difference")
GUIDANCE_MAX = 0.5   # GNRIAnderson: the guided correction is at most this fraction of the unguided step

_EPS_KINDS = ("eps", "EPS", "v", "V_PREDICTION", "v_prediction", "EDM", "edm", "COSMOS_RFLOW")
_FLOW_KINDS = ("flow", "FLOW", "CONST", "const")


def marginal_mean(kind: Union[str, MarginalMean]) -> MarginalMean:
    """μ(x0, σ), the mean of the forward marginal in the model's sigma space, for a model kind (or a callable).

    "eps" / "EPS" / "V_PREDICTION" / "EDM" / "COSMOS_RFLOW" (the host's noise_scaling is x0 + σε there too): x = x0 + σε
    → μ = x0.  "flow" / "CONST": x = (1−σ)x0 + σε → μ = (1−σ)x0.
    """
    if callable(kind):
        return kind
    if kind in _EPS_KINDS:
        return lambda x0, sigma: x0
    if kind in _FLOW_KINDS:
        return lambda x0, sigma: (1.0 - float(sigma)) * x0
    raise ValueError(f"model: it samples as {kind!r}, a model kind whose forward marginal (x = α(σ)·x0 + σ·ε) the "
                     "pack does not know, and GNRI's guidance and PreciseInv's regulariser need it (known: "
                     "EPS / V_PREDICTION / EDM / COSMOS_RFLOW, flow / CONST). Use Exact, DDIM or BDIA Invert with this model")


def _rows(v: Tensor, like: Tensor) -> Tensor:
    """A per-item [B] vector shaped to broadcast against [B, ...]."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1)).to(like.dtype)


def _batched_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a.flatten(1).double() * b.flatten(1).double()).sum(1)


def _batched_norm(a: Tensor) -> Tensor:
    return a.flatten(1).double().pow(2).sum(1).sqrt()


def gmres(op: Callable[[Tensor, Tensor], Tensor], rhs: Tensor, active: Tensor, rtol: Tensor, max_dim: int
          ) -> tuple[Tensor, Tensor]:
    """Solve op(δ) = rhs per batch item by (unrestarted) GMRES from δ = 0.

    ``op(v, mask)`` applies the per-item linear operator to the rows ``mask`` of v (other rows may be anything).
    ``rtol`` [B] is the relative residual tolerance per item. Returns (δ, Krylov dimension used per item).
    An item stops when its least-squares residual estimate reaches rtol·‖rhs‖ (or on breakdown, where the Krylov
    space is invariant and the solution exact).
    """
    B = rhs.shape[0]
    beta = _batched_norm(rhs)
    live = active & (beta > 0)
    used = torch.zeros(B, dtype=torch.long, device=rhs.device)
    delta = torch.zeros_like(rhs)
    if not bool(live.any()):
        return delta, used
    V = [rhs / _rows(torch.where(beta > 0, beta, torch.ones_like(beta)), rhs)]
    # the Krylov vectors live beside the latent, the small Hessenberg least-squares problems
    H = torch.zeros(B, max_dim + 1, max_dim, dtype=torch.float64)   # on the CPU: CUDA's lstsq needs full rank
    done_y: dict[int, Tensor] = {}
    for j in range(max_dim):
        w = op(V[j], live)
        for i in range(j + 1):                               # modified Gram-Schmidt, per item
            hij = _batched_dot(w, V[i])
            H[:, i, j] = hij
            w = w - _rows(hij, w) * V[i]
        hn = _batched_norm(w)
        H[:, j + 1, j] = hn
        tiny = hn <= 1e-12 * beta.clamp_min(1e-30)
        V.append(w / _rows(torch.where(tiny, torch.ones_like(hn), hn), w))
        # least squares  min ‖β e1 − H[:j+2, :j+1] y‖  per item
        Hj = H[:, : j + 2, : j + 1]
        e1 = torch.zeros(B, j + 2, 1, dtype=torch.float64)   # on the CPU, like H
        e1[:, 0, 0] = beta
        y = torch.linalg.lstsq(Hj, e1).solution               # [B, j+1, 1]
        res = (e1 - Hj @ y).flatten(1).norm(dim=1).to(beta.device)
        finished = live & ((res <= rtol.double() * beta) | tiny | (j == max_dim - 1))
        for b in finished.nonzero().flatten().tolist():
            done_y[b] = y[b, :, 0]
            used[b] = j + 1
        live = live & ~finished
        if not bool(live.any()):
            break
    for b, yb in done_y.items():
        acc = torch.zeros_like(rhs[b])
        for i in range(yb.shape[0]):
            acc = acc + float(yb[i]) * V[i][b]
        delta[b] = acc
    return delta, used


class _JVP:
    """Jacobian-vector products of the denoiser, v ↦ ∂D(z, σ)/∂z · v, per batch item (rows ``mask``).

    Modes: "forward" (forward-mode AD, one forward pass carrying a tangent per product, counted as a forward
    evaluation by the Denoiser); "double backward" (reverse-over-reverse: one forward with graph per point, then two
    backward passes for the first product and one per further product, counted with ``den.count_backward``);
    "finite difference" ((D(z + εv) − D(z))/ε, one forward per product); "auto" tries them in that order once and
    keeps the first that works.
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.used: Optional[str] = None if mode == "auto" else mode
        self.fallback_reason = ""
        self._point = None

    def reset(self) -> None:
        self._point = None

    def __call__(self, den: Denoiser, z: Tensor, v: Tensor, sigma: float, mask: Tensor, d_at_z: Tensor) -> Tensor:
        if self.used is not None:
            return self._run(self.used, den, z, v, sigma, mask, d_at_z)
        errors = []
        for mode in ("forward", "double backward"):
            try:
                out = self._run(mode, den, z, v, sigma, mask, d_at_z)
            except (RuntimeError, NotImplementedError) as e:  # an op without the needed derivative formula
                self.reset()
                errors.append(f"{mode}: {str(e).splitlines()[0][:200]}")
                continue
            self.used = mode
            self.fallback_reason = "; ".join(errors)
            return out
        self.used = "finite difference"
        self.fallback_reason = "; ".join(errors)
        return self._run(self.used, den, z, v, sigma, mask, d_at_z)

    def _run(self, mode, den, z, v, sigma, mask, d_at_z):
        if mode == "forward":
            import torch.autograd.forward_ad as fwAD

            with torch.no_grad(), fwAD.dual_level():          # forward AD works without a backward graph
                out = den(fwAD.make_dual(z, v.to(z.dtype)), sigma, active=mask)
                tangent = fwAD.unpack_dual(out).tangent
            return torch.zeros_like(z) if tangent is None else tangent.float()
        if mode == "double backward":
            items = int(mask.sum()) if den.subset_ok else int(mask.numel())
            if self._point is None or self._point[0] is not z:
                with torch.enable_grad():
                    zz = z.detach().requires_grad_(True)
                    out = den(zz, sigma, active=mask)
                    u = torch.zeros_like(out, requires_grad=True)
                    (g,) = torch.autograd.grad(out, zz, u, create_graph=True)   # J_Dᵀu, linear in u
                den.count_backward(items)
                self._point = (z, g, u)
            _, g, u = self._point
            with torch.enable_grad():
                (jv,) = torch.autograd.grad(g, u, v.to(g.dtype), retain_graph=True)
            den.count_backward(items)
            return jv.detach().float()
        if mode == "finite difference":
            vn = _batched_norm(v).clamp_min(1e-30)
            zn = _batched_norm(z)
            # the textbook step √(machine ε)·(1 + ‖z‖)/‖v‖ (per item), with ε of the precision the network computes
            # in: the host rounds its input to that dtype, and a float32-sized step is below an fp16 / bf16 input's
            # rounding, so most of it vanishes (measured: the product off by 113 % (fp16) / 988 % (bf16), and
            # Newton no better than its DDIM start)
            eps = (torch.finfo(den.compute_dtype).eps ** 0.5) * (1 + zn) / vn
            with torch.no_grad():
                d2 = den(z + _rows(eps, z) * v, sigma, active=mask)
            return (d2 - d_at_z) / _rows(eps, z)
        raise ValueError(f"jvp: unknown mode {mode!r}; one of {JVP_MODES}")


class GNRISolver:
    """A StepSolver (see invert.StepSolver) for GNRI; parameters as in the module docstring.

    ``trace`` collects, per solved step, the per-item residual sequences RMS(r(z_k)) (index 0 = the start point), the
    GMRES dimensions and the JVP mode — the evidence for the convergence claims.
    """

    def __init__(self, lam: float = 0.1, tol: float = 1e-5, max_iter: Optional[int] = None, variant: str = "newton",
                 marginal: Union[str, MarginalMean] = "eps", start: str = "previous", krylov_dim: int = 8,
                 jvp: str = "auto"):
        if not (isinstance(lam, (int, float)) and lam == lam and lam >= 0):
            raise ValueError(f"lambda: the guidance weight must be >= 0, got {lam}")
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tolerance: must be > 0, got {tol}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: must be one of {VARIANTS}, got {variant!r}")
        if max_iter is None:
            max_iter = 10 if variant == "newton" else 2
        if int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iterations: must be an integer >= 1, got {max_iter}")
        if start not in STARTS:
            raise ValueError(f"start: must be one of {STARTS}, got {start!r}")
        if int(krylov_dim) < 1:
            raise ValueError(f"krylov_dim: must be >= 1, got {krylov_dim}")
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp: must be one of {JVP_MODES}, got {jvp!r}")
        self.lam, self.tol, self.max_iter = float(lam), float(tol), int(max_iter)
        self.variant, self.start, self.krylov_dim = variant, start, int(krylov_dim)
        self.marginal = marginal_mean(marginal)
        self._jvp = _JVP(jvp)
        self.trace: list[dict] = []

    # ------------------------------------------------------------------------------------------------ helpers
    def set_marginal(self, kind: Union[str, MarginalMean]) -> None:
        self.marginal = marginal_mean(kind)

    @property
    def jvp_mode(self) -> Optional[str]:
        return self._jvp.used

    def _start(self, den, target, guess, sigma_lo, sigma_hi, ctx) -> Tensor:
        z = guess.detach().float().clone()
        if self.start == "ddim":
            z = fixed_point_map(z, den(z, sigma_hi), target, sigma_lo, sigma_hi)
        elif self.start == "extrapolate" and ctx is not None:
            warm = warm_start_guess(ctx)          # the fixed-point solver's free warm start, shared
            if warm is not None:
                z = warm.to(device=z.device, dtype=z.dtype)
        return z

    def _mu(self, ctx: StepContext, like: Tensor, sigma_hi: float) -> Tensor:
        return self.marginal(ctx.x0.to(device=like.device, dtype=like.dtype), sigma_hi)

    # ------------------------------------------------------------------------------------------------ solve
    def __call__(self, den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
                 ctx: StepContext) -> tuple[Tensor, StepStats]:
        target = target.detach().float()
        with torch.no_grad():
            z0 = self._start(den, target, guess, sigma_lo, sigma_hi, ctx)
            mu = self._mu(ctx, z0, sigma_hi)
        if self.variant == "newton":
            return self._newton(den, target, z0, mu, sigma_lo, sigma_hi, ctx)
        return self._reference(den, target, z0, mu, sigma_lo, sigma_hi, ctx)

    def _newton(self, den, target, z, mu, sigma_lo, sigma_hi, ctx):
        B = z.shape[0]
        h = sigma_hi - sigma_lo
        a, b = sigma_lo / sigma_hi, h / sigma_hi
        with torch.no_grad():
            d = den(z, sigma_hi)
            r = z - fixed_point_map(z, d, target, sigma_lo, sigma_hi)
        rms = residual_rms(r)
        best_z, best_rms = z.clone(), rms.clone()
        history = [[float(v)] for v in rms]
        krylov: list[list[int]] = [[] for _ in range(B)]
        iters = torch.zeros(B, dtype=torch.long, device=z.device)
        step_scale = torch.ones(B, device=z.device)
        direction = torch.zeros_like(z)
        need_dir = torch.ones(B, dtype=torch.bool, device=z.device)
        diverged = torch.zeros(B, dtype=torch.bool, device=z.device)
        self._jvp.reset()
        while True:
            active = (rms > self.tol) & (iters < self.max_iter) & ~diverged
            if not bool(active.any()):
                break
            fresh = active & need_dir
            if bool(fresh.any()):
                c = self.lam * (rms / sigma_hi) ** 2                      # [B] guidance weight, vanishes at the root
                rhs = -(r + _rows(c, r) * (z - mu))
                rhs = torch.where(_rows(fresh, rhs).bool(), rhs, torch.zeros_like(rhs))
                self._jvp.reset()

                def op(v: Tensor, mask: Tensor) -> Tensor:
                    jd = self._jvp(den, z, v, sigma_hi, mask, d).detach()
                    if not torch.isfinite(jd[mask]).all():
                        raise NonFiniteModelOutput(f"GNRI: the model's Jacobian-vector product is NaN/inf at "
                                                   f"sigma={sigma_hi:.6g} (Newton iteration {int(iters.max()) + 1})")
                    return a * v + b * jd + _rows(c, v) * v

                rtol = torch.clamp(rms, max=0.1, min=1e-6)
                dz, used = gmres(op, rhs, fresh, rtol, self.krylov_dim)
                self._jvp.reset()
                direction = torch.where(_rows(fresh, z).bool(), dz, direction)
                for i in fresh.nonzero().flatten().tolist():
                    krylov[i].append(int(used[i]))
                step_scale = torch.where(fresh, torch.ones_like(step_scale), step_scale)
            z_new = torch.where(_rows(active, z).bool(), z + _rows(step_scale, z) * direction, z)
            if not torch.isfinite(z_new).all():
                raise NonFiniteModelOutput(f"GNRI: the Newton iterate became NaN/inf at iteration "
                                           f"{int(iters.max()) + 1}")
            with torch.no_grad():
                d_new = den(z_new, sigma_hi, active=active)
                r_new = z_new - fixed_point_map(z_new, d_new, target, sigma_lo, sigma_hi)
            rms_new = residual_rms(r_new)
            iters = iters + active.long()
            improved = active & (rms_new < rms)
            worse = active & ~improved
            for i in active.nonzero().flatten().tolist():
                history[i].append(float(rms_new[i]))
            # accept improvements; an item whose residual grew keeps its point and halves the step along the same
            # direction next time (after 4 halvings without success the item stops: "stalled" in the note)
            keep = _rows(improved, z).bool()
            z = torch.where(keep, z_new, z)
            d = torch.where(keep, d_new, d)
            r = torch.where(keep, r_new, r)
            rms = torch.where(improved, rms_new, rms)
            need_dir = improved | ~active
            step_scale = torch.where(worse, step_scale * 0.5, step_scale)
            diverged = diverged | (worse & (step_scale < 0.1))
            better = rms < best_rms
            best_z = torch.where(_rows(better, z).bool(), z, best_z)
            best_rms = torch.minimum(best_rms, rms)
        converged = bool((best_rms <= self.tol).all())
        note = f"jvp: {self._jvp.used or 'none'}"
        if self._jvp.fallback_reason:
            note += f" (autograd unavailable: {self._jvp.fallback_reason})"
        if bool(diverged.any()):
            note += f"; items {diverged.nonzero().flatten().tolist()} stalled (residual grew after 4 halvings)"
        self.trace.append({"index": ctx.index if ctx is not None else None, "sigma_lo": sigma_lo,
                           "sigma_hi": sigma_hi, "residuals": history, "krylov": krylov, "jvp": self._jvp.used,
                           "iterations": iters.tolist()})
        ddim = [h[0] for h in history] if self.start == "ddim" else None    # the start point is DDIM's result
        return best_z.detach(), StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=int(iters.max()),
                                          residual=[float(v) for v in best_rms], converged=converged, note=note,
                                          ddim_residual=ddim)

    def _reference(self, den, target, z, mu, sigma_lo, sigma_hi, ctx):
        B = z.shape[0]
        best_score = torch.full((B,), float("inf"), dtype=torch.float64, device=z.device)
        best_x = z.clone()
        best_rms = torch.full((B,), float("inf"), device=z.device)
        history: list[list[float]] = [[] for _ in range(B)]
        with torch.no_grad():
            for _ in range(self.max_iter):
                fz = fixed_point_map(z, den(z, sigma_hi), target, sigma_lo, sigma_hi)   # detached model step
                e = (fz - z).abs() + self.lam * 0.5 * ((fz - mu) / sigma_hi) ** 2
                score = e.flatten(1).double().mean(1)
                rms = residual_rms(z - fz)
                for i in range(B):
                    history[i].append(float(rms[i]))
                better = score < best_score
                best_x = torch.where(_rows(better, z).bool(), fz, best_x)
                best_rms = torch.where(better, rms, best_rms)
                best_score = torch.where(better, score, best_score)
                z = z - _rows(score.float(), z) * torch.sign(z - fz)
                if not torch.isfinite(z).all():
                    raise NonFiniteModelOutput("GNRI (reference code): the iterate became NaN/inf")
        self.trace.append({"index": ctx.index if ctx is not None else None, "sigma_lo": sigma_lo,
                           "sigma_hi": sigma_hi, "residuals": history, "krylov": [], "jvp": None,
                           "iterations": [self.max_iter] * B})
        return best_x.detach(), StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=self.max_iter,
                                 residual=[float(v) for v in best_rms],
                                 converged=bool((best_rms <= self.tol).all()),
                                 note="reference-code sign step; residual measured at the chosen iterate z_k, the "
                                      "returned point is f(z_k)",
                                 residual_at=RESIDUAL_BEFORE_MAP,
                                 # its sign step leaves z_k far from f(z_k): the stored f(z_k) missed by 1.1 % / 11 %
                                 # of the step where z_k's residual read 79 % / 73 % (a tiny model, T=4), so judging
                                 # it flagged steps the replay does not drift on
                                 not_judged="the residual is measured at the sign step's iterate z_k, and the stored "
                                            "f(z_k) lands far closer")


class GNRIAnderson:
    """GNRI's guidance on the pack's shared solver (solvers/fixed_point.py): no gradients, no extra memory.

    The fixed-point map gets GNRI's guided correction  −c·(z − μ_t),  c = λ·ρ²,  ρ = RMS(r)/σ_hi  (the paper variant's
    damping, here as a pull towards the forward marginal that fades as the residual does), and Anderson mixing with
    the free warm start does the rest. Stopping and the reported residual use the unguided residual, so the result
    solves the same equation as the other variants. The correction is capped at ``GUIDANCE_MAX`` (½) of the unguided
    step's RMS: uncapped, a large λ makes the guided map's fixed points include false ones where the pull balances
    the residual (RMS(r) ≈ σ²/(λ·RMS(z − μ))); under the cap only r = 0 is a fixed point (measured: λ = 10 at T=4 on
    the EPS reference model, replay RMS 7.0 → 0.027, DDIM 0.21; λ ≤ 1 unchanged).
    """

    def __init__(self, lam: float = 0.1, tol: float = 1e-4, max_evals: int = 3, memory: int = 3,
                 marginal: Union[str, MarginalMean] = "eps"):
        from .fixed_point import FixedPointOptions, make_fixed_point_step

        if not (isinstance(lam, (int, float)) and lam == lam and lam >= 0):
            raise ValueError(f"lambda: the guidance weight must be >= 0, got {lam}")
        self.lam = float(lam)
        self.marginal = marginal_mean(marginal)
        self._solve = make_fixed_point_step(FixedPointOptions(tol=tol, max_evals=max_evals, memory=memory),
                                            correction=self._guidance)

    def set_marginal(self, kind: Union[str, MarginalMean]) -> None:
        self.marginal = marginal_mean(kind)

    def _guidance(self, z: Tensor, r: Tensor, ctx: StepContext, sigma_hi: float) -> Tensor:
        mu = self.marginal(ctx.x0.to(device=z.device, dtype=z.dtype), sigma_hi)
        c = self.lam * (residual_rms(r) / sigma_hi) ** 2
        pull = _rows(c, z) * (z - mu)
        # capped below the unguided step, so that no false fixed point balances the residual (see the class doc)
        size = residual_rms(pull).clamp_min(1e-30)
        return -pull * _rows((GUIDANCE_MAX * residual_rms(r) / size).clamp(max=1.0), z)

    def __call__(self, den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
                 ctx: StepContext) -> tuple[Tensor, StepStats]:
        return self._solve(den, target, guess, sigma_lo, sigma_hi, ctx)
