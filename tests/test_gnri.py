"""GNRI: the core step solver on analytic denoisers, and the node through the real host executor."""
from __future__ import annotations

import gc

import pytest
import torch

from inversion_core import Denoiser, StepFailed, ddim_step, invert, replay
from inversion_core.solvers.gnri import GNRISolver, gmres, marginal_mean

from analytic import S, eps_denoiser, flow_denoiser, flow_schedule, image, karras, nonlinear_denoiser

import host



def strong_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """More non-linear than analytic.nonlinear_denoiser, so that Newton needs several iterations."""
    return x * (S * S / (S * S + sigma * sigma)) + 0.3 * torch.tanh(2 * x) * sigma / (1 + sigma)


def round_trip(raw, x0, sigmas, solver):
    rec = invert(Denoiser(raw), x0, sigmas, solver, method="gnri")
    return rec, replay(Denoiser(raw), rec.states[-1], sigmas)


# ------------------------------------------------------------------------------------------------ newton variant
@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_newton_converges_quadratically_to_1e_5(lam):
    solver = GNRISolver(lam=lam, tol=1e-6, max_iter=10)
    rec = invert(Denoiser(strong_denoiser), image(), karras(6), solver, method="gnri")
    assert all(st.converged for st in rec.steps) and max(max(st.residual) for st in rec.steps) <= 1e-6
    assert all(st.iterations <= 5 for st in rec.steps), [st.iterations for st in rec.steps]
    for step in solver.trace:
        for seq in step["residuals"]:
            # the first residual below 1e-5 within 4 Newton steps
            assert next(k for k, e in enumerate(seq) if e < 1e-5) <= 4, seq
            # quadratic once in the basin: e_{k+1} <= C·e_k² (C = 20 per latent unit; above the float32 floor)
            for a, b in zip(seq, seq[1:]):
                if a < 0.1 and b > 1e-5:
                    assert b <= 20 * a * a, (seq, a, b)
    assert solver.trace[0]["jvp"] == "forward"
    assert all("jvp: forward" in st.note for st in rec.steps if st.iterations)


@pytest.mark.parametrize("raw, schedule, kind", [(eps_denoiser, karras, "eps"), (flow_denoiser, flow_schedule, "flow"),
                                                 (nonlinear_denoiser, karras, "eps")], ids=["eps", "flow", "nonlinear"])
def test_newton_round_trip_is_exact_where_ddim_is_not(raw, schedule, kind):
    x0, sig = image(), schedule(8)
    _, back = round_trip(raw, x0, sig, GNRISolver(lam=0.1, tol=1e-6, marginal=kind))
    rec_ddim = invert(Denoiser(raw), x0, sig, ddim_step, method="ddim")
    ddim_err = (replay(Denoiser(raw), rec_ddim.states[-1], sig) - x0).abs().max().item()
    err = (back - x0).abs().max().item()
    assert err < 2e-5 and err < ddim_err / 100, (err, ddim_err)


def test_linear_denoiser_needs_one_newton_step_and_one_jvp():
    solver = GNRISolver(lam=0.0, tol=1e-5)
    den = Denoiser(eps_denoiser)
    rec = invert(den, image(), karras(5), solver, method="gnri")
    assert [st.iterations for st in rec.steps] == [1] * 5
    assert all(k == [1] for step in solver.trace for k in step["krylov"])
    # per step: residual at the start, one JVP (forward mode, counted as a forward pass), the new point's residual
    assert [st.forward_evals for st in rec.steps] == [3.0] * 5 and rec.backward_evals == 0


@pytest.mark.parametrize("mode", ["double backward", "finite difference"])
def test_jvp_modes_agree(mode):
    x0, sig = image(), karras(5)
    ref = invert(Denoiser(strong_denoiser), x0, sig, GNRISolver(lam=0.1, tol=1e-6), method="g").states[-1]
    solver = GNRISolver(lam=0.1, tol=1e-6, jvp=mode)
    den = Denoiser(strong_denoiser)
    rec = invert(den, x0, sig, solver, method="g")
    assert solver.jvp_mode == mode and all(st.converged for st in rec.steps)
    assert torch.allclose(rec.states[-1], ref, atol=1e-5)
    assert (rec.backward_evals > 0) == (mode == "double backward")


def test_gmres_solves_a_per_item_diagonal_system():
    g = torch.Generator().manual_seed(1)
    diag = 0.5 + torch.rand(3, 4, 5, 5, generator=g)
    rhs = torch.randn(3, 4, 5, 5, generator=g)
    x, used = gmres(lambda v, m: diag * v, rhs, torch.ones(3, dtype=torch.bool), torch.full((3,), 1e-6), 100)
    assert torch.allclose(diag * x, rhs, atol=1e-4) and (used > 1).all()


def test_batch_items_stop_independently_and_match_solo_solves():
    x0 = image(3)
    x0[1] = 0.0                                    # a zero image is its own exact inverse: residual 0 at the start
    x0[2] *= 4                                     # a larger image needs more Newton steps
    batches = []

    def raw(x, sigma):
        batches.append(x.shape[0])
        return strong_denoiser(x, sigma)

    solver = GNRISolver(lam=0.1, tol=1e-5)         # (the 4x item's float32 floor at sigma 14.6 is ~3e-6)
    rec = invert(Denoiser(raw), x0, karras(4), solver, method="gnri")
    assert min(batches) < 3                        # converged / exact items were left out of later evaluations
    assert all(st.converged for st in rec.steps)
    assert all(step["iterations"][1] == 0 for step in solver.trace)
    assert any(step["iterations"][2] > step["iterations"][0] for step in solver.trace)
    for i in (0, 2):
        solo = invert(Denoiser(strong_denoiser), x0[i:i + 1], karras(4), GNRISolver(lam=0.1, tol=1e-5), method="g")
        assert torch.allclose(solo.states[-1][0], rec.states[-1][i], atol=1e-5)
    assert torch.equal(rec.states[-1][1], torch.zeros_like(x0[1]))


def test_nothing_requiring_grad_survives_a_step():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)     # a denoiser with parameters, as a network has

    def raw(x, sigma):
        return eps_denoiser(x, sigma) + 0.05 * torch.tanh(conv(x)) * sigma / (1 + sigma)

    def graph_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)

    before = graph_tensors()          # whatever earlier tests of the session left alive
    leaks = []

    def callback(step, total, x):
        leaks.append(graph_tensors() - before)

    rec = invert(Denoiser(raw), image(), karras(4), GNRISolver(lam=0.1, tol=1e-5), method="g", callback=callback)
    assert leaks == [0] * 4 and not rec.states[-1].requires_grad and conv.weight.grad is None


# ------------------------------------------------------------------------------------------------ reference code
def test_reference_code_variant_is_the_official_sign_step():
    x0, sig = image(), karras(3)
    lam = 0.1
    solver = GNRISolver(lam=lam, variant="reference code")
    den = Denoiser(eps_denoiser)
    rec = invert(den, x0, sig, solver, method="gnri")
    assert den.calls == 6 and rec.backward_evals == 0 and [st.iterations for st in rec.steps] == [2, 2, 2]
    # written out independently: 2 iterations, keep f(z_k) of the lowest mean residual e_k
    s = sig.flip(0).tolist()
    x = x0.clone()
    for lo, hi in zip(s[:-1], s[1:]):
        z, best, best_score = x.clone(), None, None
        for _ in range(2):
            fz = x + (hi - lo) * (z - eps_denoiser(z, hi)) / hi
            e = (fz - z).abs() + lam * 0.5 * ((fz - x0) / hi) ** 2
            score = e.flatten(1).mean(1)
            if best is None:
                best, best_score = fz.clone(), score.clone()
            else:
                take = score < best_score
                best[take], best_score[take] = fz[take], score[take]
            z = z - score.view(-1, 1, 1, 1) * torch.sign(z - fz)
        x = best
    assert torch.allclose(rec.states[-1], x, atol=1e-5)


def test_guidance_uses_the_flow_marginal_mean():
    x0, sig = image(), flow_schedule(3)

    def one_step(marginal):   # a single guided Newton step: the guidance has not vanished yet
        solver = GNRISolver(lam=1.0, max_iter=1, marginal=marginal)
        return invert(Denoiser(flow_denoiser), x0, sig, solver, method="g").states[-1]

    assert not torch.allclose(one_step("flow"), one_step("eps"))
    assert torch.allclose(one_step("flow"), one_step(lambda x, s: (1 - s) * x))
    assert torch.equal(marginal_mean("CONST")(x0, 0.25), 0.75 * x0)
    assert marginal_mean("V_PREDICTION")(x0, 0.25) is x0


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, name", [({"lam": -0.1}, "lambda"), ({"tol": 0.0}, "tolerance"),
                                          ({"tol": -1e-5}, "tolerance"), ({"max_iter": 0}, "max_iterations"),
                                          ({"variant": "nope"}, "variant"), ({"marginal": "nope"}, "marginal")])
def test_bad_parameters_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GNRISolver(**kwargs)


def test_nan_in_a_newton_iterate_names_the_step():
    def raw(x, sigma):   # finite values, infinite derivative at 0: the Newton system becomes NaN/inf
        return eps_denoiser(x, sigma) + 0.1 * torch.sqrt(x.abs())

    x0 = image()
    x0[:, :, 0, 0] = 0.0
    with pytest.raises(StepFailed, match=r"inversion step 1/3 .*NaN/inf"):
        invert(Denoiser(raw), x0, karras(3), GNRISolver(lam=0.0, tol=1e-6), method="g")


def test_nan_from_the_model_names_the_step():
    def raw(x, sigma):
        return eps_denoiser(x, sigma) * (float("nan") if sigma > 1 else 1.0)

    with pytest.raises(StepFailed, match=r"inversion step 3/4"):
        invert(Denoiser(raw), image(), karras(4), GNRISolver(), method="g")


# ------------------------------------------------------------------------------------------------ real host
def _prompt(method: str, extra: dict, kind: str = "eps", steps: int = 3, size: int = 8) -> dict:
    prompt = host.tiny_inputs(kind, size=size)
    inputs = {"model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0],
              "latent": ["latent", 0], "steps": steps, "scheduler": "ddim_uniform", "cfg": 1.0, **extra}
    cls = host.node_class(method)
    for name, spec in cls.INPUT_TYPES()["required"].items():   # shared inputs added later keep their defaults
        if name not in inputs and isinstance(spec[-1], dict) and "default" in spec[-1]:
            inputs[name] = spec[-1]["default"]
    prompt["invert"] = {"class_type": method, "inputs": inputs}
    return prompt


@pytest.mark.parametrize("name", ["GNRIInvert", "PreciseInvInvert"])
def test_every_node_input_has_a_tooltip(name):
    cls = host.node_class(name)
    inputs = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for key, spec in inputs.get(group, {}).items():
            assert isinstance(spec[-1], dict) and spec[-1].get("tooltip"), (name, key)
    assert cls.DESCRIPTION and len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)


def test_gnri_newton_node_runs_in_the_host_executor_without_gradients_within_its_budget():
    out = host.run_workflow(_prompt("GNRIInvert", {"lambda": 0.1, "tolerance": 1e-5, "budget": 11,
                                                   "variant": "newton"}, kind="v_prediction"))
    inverted, sigmas = out["invert"]
    entry = inverted["inversion"]
    assert entry["method"] == "gnri" and entry["params"]["variant"] == "newton"
    assert entry["params"]["newton_steps"] == 3 and "grad_mode" not in entry["params"]   # no weight copy
    steps = entry["step_stats"]
    assert all(s["note"].startswith("jvp: finite difference") for s in steps)
    assert all(s["forward_evals"] <= 11 for s in steps), [s["forward_evals"] for s in steps]
    # started from the DDIM result, and the best iterate is kept: never worse than DDIM, here far better
    for s in steps:
        assert all(r <= d for r, d in zip(s["residual"], s["ddim_residual"])), s
    assert max(max(s["residual"]) for s in steps) < 1e-3, [s["residual"] for s in steps]
    assert len(entry["states"]) == 4 and torch.equal(entry["sigmas"], sigmas)


@pytest.mark.parametrize("variant, budget, evals", [("quasi-newton", 0, 3), ("newton", 0, 8), ("quasi-newton", 5, 5)])
def test_gnri_budget_zero_means_the_variants_default(variant, budget, evals):
    out = host.run_workflow(_prompt("GNRIInvert", {"budget": budget, "variant": variant, "tolerance": 1e-9}))
    entry = out["invert"][0]["inversion"]
    assert entry["params"]["budget"] == evals
    assert max(s["forward_evals"] for s in entry["step_stats"]) == pytest.approx(evals)


def test_gnri_newton_budget_too_small_is_an_error_naming_the_input():
    with pytest.raises(host.WorkflowError, match="budget"):
        host.run_workflow(_prompt("GNRIInvert", {"budget": 4, "variant": "newton"}))


def test_newton_with_a_loose_tolerance_returns_the_ddim_result_not_something_worse():
    """tolerance 1.0 stops at once: the start (DDIM's result) is returned and its residual reported as DDIM's."""
    x0, sig = image(), karras(5)
    loose = invert(Denoiser(strong_denoiser), x0, sig, GNRISolver(tol=1.0, max_iter=3, start="ddim"), method="g")
    ddim = invert(Denoiser(strong_denoiser), x0, sig, ddim_step, method="d")
    assert all(st.residual == st.ddim_residual for st in loose.steps)
    assert torch.allclose(loose.states[1], ddim.states[1])


# ------------------------------------------------------------------------------------------------ anderson variant
def test_anderson_variant_shares_the_exact_solver_and_stays_exact():
    """GNRI's guidance on the shared fixed-point solver: the guidance fades with the residual, so a tight tolerance
    reaches the same exact inversion as the unguided solver, and λ = 0 is exactly that solver."""
    from inversion_core.solvers.fixed_point import FixedPointOptions, make_fixed_point_step
    from inversion_core.solvers.gnri import GNRIAnderson

    x0, sig = image(), karras(8)
    guided = invert(Denoiser(nonlinear_denoiser), x0, sig, GNRIAnderson(lam=1.0, tol=1e-6, max_evals=40),
                    method="g")
    plain = invert(Denoiser(nonlinear_denoiser), x0, sig,
                   make_fixed_point_step(FixedPointOptions(tol=1e-6, max_evals=40)), method="f")
    assert not guided.unconverged_steps
    assert (guided.states[-1] - plain.states[-1]).abs().max() < 1e-4
    zero = invert(Denoiser(nonlinear_denoiser), x0, sig, GNRIAnderson(lam=0.0, tol=1e-4, max_evals=3), method="g")
    ref = invert(Denoiser(nonlinear_denoiser), x0, sig,
                 make_fixed_point_step(FixedPointOptions(tol=1e-4, max_evals=3)), method="f")
    assert torch.equal(zero.states[-1], ref.states[-1])
    with pytest.raises(ValueError, match="lambda"):
        GNRIAnderson(lam=-1)


@pytest.mark.parametrize("lam", (10.0, 100.0))
def test_a_large_guidance_weight_cannot_stall_the_anderson_variant_short_of_the_solution(lam):
    """Uncapped, the pull λ·ρ²·(z − μ) can balance the residual at a false fixed point; capped at half the unguided
    step, the guided solve still reaches the unguided solver's exact inversion."""
    from inversion_core.solvers.fixed_point import FixedPointOptions, make_fixed_point_step
    from inversion_core.solvers.gnri import GNRIAnderson

    x0, sig = image(), karras(8)
    guided = invert(Denoiser(nonlinear_denoiser), x0, sig, GNRIAnderson(lam=lam, tol=1e-6, max_evals=40),
                    method="g")
    plain = invert(Denoiser(nonlinear_denoiser), x0, sig,
                   make_fixed_point_step(FixedPointOptions(tol=1e-6, max_evals=40)), method="f")
    assert not guided.unconverged_steps
    assert (guided.states[-1] - plain.states[-1]).abs().max() < 1e-4


def _newton_on_half_weights(dtype):
    model = host.tiny_model("eps")
    model.model.diffusion_model.to(dtype)
    model.model.diffusion_model.dtype = dtype                  # what the host's get_dtype() reads
    cond, latent = host.tiny_conditioning(), host.tiny_latent(seed=3, size=8)
    node = host.node_class("GNRIInvert")()
    params = {"lambda": 0.1, "tolerance": 1e-5, "budget": 20, "variant": "newton"}
    with torch.inference_mode():
        out = node.invert(model, cond, cond, latent, 4, "karras", 1.0, 1.0, None, **params)
    return out[0]["inversion"]["step_stats"]


def test_newton_finite_differences_are_sized_for_a_half_precision_network():
    """The finite-difference step is sized by the precision the network computes in. A float32-sized step is below a
    bf16 input's rounding: the Jacobian product was off by ~10x and Newton ended steps 3-4 within 1 % of its DDIM
    start (0.679 / 3.30 against 0.686 / 3.32; 0.102 / 1.24 in fp32). Sized for bf16: 0.104 / 1.37."""
    ref = _newton_on_half_weights(torch.float32)
    half = _newton_on_half_weights(torch.bfloat16)
    for i in (2, 3):
        r, d, r32 = max(half[i]["residual"]), max(half[i]["ddim_residual"]), max(ref[i]["residual"])
        assert r < 0.5 * d and r < 1.5 * r32, (i, r, d, r32)


def test_an_unknown_model_kind_is_an_error_naming_the_model_and_what_works():
    x0 = torch.ones(1, 2, 2, 2)
    assert torch.equal(marginal_mean("EPS")(x0, 3.0), x0)
    assert torch.allclose(marginal_mean("CONST")(x0, 0.25), 0.75 * x0)
    # Cosmos Predict2's rectified flow runs in EDM's sigma space (the host's noise_scaling: x0 + σε), upstream only
    assert torch.equal(marginal_mean("COSMOS_RFLOW")(x0, 3.0), x0)
    # a host model_sampling the bridge cannot name reads as its dynamic class's name
    with pytest.raises(ValueError, match=r"model: it samples as 'ModelSampling'.*Use Exact, DDIM or BDIA Invert"):
        marginal_mean("ModelSampling")
