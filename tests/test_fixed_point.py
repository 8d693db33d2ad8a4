"""The shared exact-inversion solver (fixed point + Anderson + warm start) on analytic denoisers."""
from __future__ import annotations

import pytest
import torch

from inversion_core import Denoiser, ddim_step, invert, replay
from inversion_core.solvers.fixed_point import FixedPointOptions, make_fixed_point_step

from analytic import eps_denoiser, flow_denoiser, nonlinear_denoiser, psnr
from analytic import image, karras


def round_trip_psnr(solver, steps=10, raw=nonlinear_denoiser, batch=2):
    x0, sig = image(batch), karras(steps)
    rec = invert(Denoiser(raw), x0, sig, solver, method="t")
    back = replay(Denoiser(raw), rec.states[-1], sig)
    return psnr(back, x0), rec


def test_exact_preset_reaches_float_precision():
    p, rec = round_trip_psnr(make_fixed_point_step(FixedPointOptions(tol=1e-6, max_evals=40, memory=5)))
    assert p > 100, p
    assert not rec.unconverged_steps
    assert max(max(s.residual) for s in rec.steps) <= 1e-6


def test_anderson_beats_plain_fixed_point_per_evaluation():
    """Same budget of evaluations: mixing must leave a smaller residual than plain iteration, step by step."""
    for budget in (3, 5):
        _, anderson = round_trip_psnr(make_fixed_point_step(FixedPointOptions(tol=1e-12, max_evals=budget,
                                                                              memory=3, warm_start=False)))
        _, plain = round_trip_psnr(make_fixed_point_step(FixedPointOptions(tol=1e-12, max_evals=budget,
                                                                           memory=0, warm_start=False)))
        a = torch.tensor([max(s.residual) for s in anderson.steps])
        b = torch.tensor([max(s.residual) for s in plain.steps])
        assert (a <= b * 1.0001).all() and a.sum() < 0.5 * b.sum(), (budget, a, b)


def test_more_evaluations_give_better_round_trips_than_ddim():
    ddim, _ = round_trip_psnr(ddim_step)
    fast, _ = round_trip_psnr(make_fixed_point_step(FixedPointOptions(max_evals=2)))
    balanced, _ = round_trip_psnr(make_fixed_point_step(FixedPointOptions(max_evals=3)))
    assert ddim + 10 < fast < balanced, (ddim, fast, balanced)


def test_one_evaluation_without_warm_start_is_ddim():
    x0, sig = image(), karras(8)
    a = invert(Denoiser(nonlinear_denoiser), x0, sig, ddim_step, method="d").states[-1]
    solver = make_fixed_point_step(FixedPointOptions(max_evals=1, warm_start=False))
    b = invert(Denoiser(nonlinear_denoiser), x0, sig, solver, method="f").states[-1]
    assert torch.allclose(a, b, atol=1e-6)


def test_items_that_converge_stop_paying():
    """Item 0 is already an exact fixed point after a few iterations; item 1 is harder: only item 1 keeps paying."""
    x0 = torch.cat([torch.zeros(1, 4, 8, 8), image(1) * 3])
    den = Denoiser(nonlinear_denoiser)
    solver = make_fixed_point_step(FixedPointOptions(tol=1e-5, max_evals=30, memory=3))
    rec = invert(den, x0, karras(6), solver, method="f")
    full = sum(s.iterations for s in rec.steps)
    assert rec.forward_evals < full - 1, (rec.forward_evals, full)      # fractional: item 0 dropped out


def test_never_returns_worse_than_the_best_iterate():
    """On a map that is not a contraction, mixing may overshoot: the step still returns its best iterate."""
    from inversion_core.invert import StepContext

    def rough(x, sigma):
        return eps_denoiser(x, sigma) + 0.9 * torch.sin(4 * x) * sigma / (1 + sigma)

    x0 = image()
    ctx = StepContext(index=0, total=1, x0=x0, states=[x0], levels=[0.0, 3.0])
    residuals = []
    for budget in (1, 2, 4, 8, 16):
        solver = make_fixed_point_step(FixedPointOptions(tol=1e-12, max_evals=budget, memory=3))
        z, st = solver(Denoiser(rough), x0, x0, 0.0, 3.0, ctx)
        assert torch.isfinite(z).all()
        residuals.append(max(st.residual))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(residuals, residuals[1:])), residuals


@pytest.mark.parametrize("kwargs, name", [({"tol": 0}, "tolerance"), ({"tol": -1}, "tolerance"),
                                          ({"max_evals": 0}, "budget"), ({"memory": -1}, "memory")])
def test_bad_options_name_the_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_fixed_point_step(FixedPointOptions(**kwargs))


def test_stall_stop_ends_a_step_the_model_cannot_solve_and_says_so():
    """A denoiser blind to channel 0 (D(x)[0] = 0) cannot reproduce x_0's channel 0 at the last replay step: the
    residual of step 0 has a floor. With ``stall`` the item stops after ``stall`` + 1 evaluations and the step's note
    names it; without it the whole budget is spent for nothing; an item the model can match is unaffected."""
    from inversion_core.invert import StepContext

    def blind(x, sigma):
        out = eps_denoiser(x, sigma).clone()
        out[:, 0] = 0.0
        return out

    x0 = image(2).clone()
    x0[1, 0] = 0.0                                       # item 1 lies in the model's range: it converges
    ctx = StepContext(index=0, total=1, x0=x0, states=[x0], levels=[0.0, 0.5])
    runs = {}
    for stall in (0, 3):
        solver = make_fixed_point_step(FixedPointOptions(tol=1e-6, max_evals=40, memory=3, stall=stall))
        runs[stall] = solver(Denoiser(blind), x0, x0, 0.0, 0.5, ctx)
    (_, st0), (_, st3) = runs[0], runs[3]
    assert st0.iterations == 40 and st3.iterations <= 8, (st0.iterations, st3.iterations)
    # the floor: the 35+ extra evaluations bought < 1 % (what the model cannot produce stays)
    assert st0.residual[0] > 0.99 * st3.residual[0] > 0.05, (st0.residual, st3.residual)
    assert st3.residual[1] <= 1e-6 and "stalled: item(s) [0]" in st3.note and st0.note == ""
    with pytest.raises(ValueError, match="stall"):
        FixedPointOptions(stall=-1).validate()


def test_damping_is_one_except_on_large_flow_steps():
    """steps.relaxation: EPS / V / EDM never damped; flow damped only on the first step, and only where
    |λ_img| = h/(1−σ_hi) > λ_noise = h/σ_hi."""
    from inversion_core.steps import relaxation

    for kind in ("EPS", "V_PREDICTION", "EDM", ""):
        for lo, hi in ((0.0, 0.03), (0.0, 1.6), (3.2, 14.6), (0.4, 0.9)):
            assert relaxation(lo, hi, kind) == 1.0
    assert relaxation(0.0, 0.155, "CONST") == 1.0        # 10-step flow schedule's first step: no overshoot
    assert relaxation(0.868, 1.0, "CONST") == 1.0        # the top level: D ignores z, no image direction
    a = 0.62 / 0.38                                      # 2-step flow schedule: λ_img = −1.63 < −1 (plain diverges)
    assert relaxation(0.0, 0.62, "CONST") == pytest.approx(2 / (2 + a - 1))
    assert relaxation(0.623, 0.832, "CONST") == 1.0       # |λ_img| 1.24 > λ_noise 0.25, but not the first step


def test_damping_converges_where_the_plain_iteration_diverges_on_a_flow_model():
    """A flow model whose data are large against the noise (s = 5): at the first step σ 0 → 0.62 the ideal denoiser's
    gain is D' = 2.38 > 2, so the plain map z ← z + (x0 − D(z)) multiplies the error by 1 − D' = −1.38 per
    evaluation and diverges; damped (ω = 0.755) it contracts by −0.80. Plain iteration (memory 0) isolates the effect.
    EPS models are not affected (ω = 1)."""
    from inversion_core.invert import StepContext

    def flow_big(x, sigma):
        return flow_denoiser(x, sigma, s=5.0)

    x0 = image(2) * 10.0
    ctx = StepContext(index=0, total=2, x0=x0, states=[x0], levels=[0.0, 0.62], model_kind="CONST")
    res = {}
    for relax in (False, True):
        for memory, budget in ((0, 12), (3, 3)):
            solver = make_fixed_point_step(FixedPointOptions(tol=1e-12, max_evals=budget, memory=memory, relax=relax))
            res[relax, memory] = max(solver(Denoiser(flow_big), x0, x0, 0.0, 0.62, ctx)[1].residual)
    first = max(solve_once(flow_big, x0, ctx))
    assert res[False, 0] >= 0.99 * first                   # plain: the best iterate is still the first one
    assert res[True, 0] < 0.15 * first, (res, first)       # damped: 0.80^11 ≈ 0.08 of it (measured 0.095)
    assert res[True, 3] < 1e-3 * first, (res, first)       # Anderson on the damped map solves the linear model
    # the secant safeguard: undamped, the first Anderson step overshoots (the residual grows); the item keeps that
    # pair and the secant across it lands on the solution of this linear model (it used to re-evaluate the point
    # that had overshot and end with the first residual)
    assert res[False, 3] < 1e-3 * first, (res, first)
    eps_ctx = StepContext(index=0, total=2, x0=x0, states=[x0], levels=[0.0, 0.62], model_kind="EPS")
    a = make_fixed_point_step(FixedPointOptions(relax=True))(Denoiser(eps_denoiser), x0, x0, 0.0, 0.62, eps_ctx)[0]
    b = make_fixed_point_step(FixedPointOptions(relax=False))(Denoiser(eps_denoiser), x0, x0, 0.0, 0.62, eps_ctx)[0]
    assert torch.equal(a, b)


def solve_once(raw, x0, ctx):
    """The residual of the first iterate (DDIM's), from one evaluation."""
    return make_fixed_point_step(FixedPointOptions(tol=1e-12, max_evals=1, memory=0))(
        Denoiser(raw), x0, x0, 0.0, 0.62, ctx)[1].residual
