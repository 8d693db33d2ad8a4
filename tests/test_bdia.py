"""BDIA (issue 16 point 2): the exactly invertible sampler pair — core algebra on analytic denoisers, the node and its
replay through the host's executor, and what must error instead of silently replaying with the plain step."""
from __future__ import annotations

import math
import sys

import pytest
import torch

import host
from analytic import eps_denoiser, flow_denoiser, flow_exact, flow_schedule, image, karras, nonlinear_denoiser
from host import WorkflowError, run_workflow
from test_architectures import defaults
from test_editing_host import add_custom_chain
from test_nodes_host import invert_and_replay

from inversion_core import Denoiser, invert
from inversion_core.replay import replay
from inversion_core.solvers.bdia import (AUTO_GAMMA, BDIAInversionStep, auto_gamma, bdia_down, bdia_grid,
                                         bdia_replay, bdia_source_offsets, bdia_up, check_gamma_setting,
                                         resolve_gamma, snap)
from inversion_core.solvers.fixed_point import FixedPointOptions
from inversion_core.steps import euler_step

CASES = [("eps", eps_denoiser, karras(10)), ("eps", eps_denoiser, karras(4)), ("flow", flow_denoiser, flow_schedule(10)),
         ("flow", flow_denoiser, flow_schedule(4)), ("nonlinear", nonlinear_denoiser, karras(10))]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def c_in(sigma: float) -> float:
    """The EPS/V input scaling 1/√(σ² + 1): BDIA's "vp" space is the latent scaled by it (DDIM's VP latent)."""
    return 1.0 / math.sqrt(sigma * sigma + 1.0)


def scaled(den_f, kind):
    return Denoiser(den_f, input_scale=None if kind == "flow" else c_in)


def bdia_invert(den_f, x0, sigmas, gamma=1.0, space="vp", kind="eps", **starter):
    step = BDIAInversionStep(gamma, FixedPointOptions(**{"tol": 1e-4, "max_evals": 2, "memory": 3, **starter}),
                             sigma_top=float(sigmas[0]), space=space)
    den = scaled(den_f, kind)
    rec = invert(den, x0, sigmas, step, method="bdia")
    return rec, step, den


# --------------------------------------------------------------------------------------------------------- core
@pytest.mark.parametrize("space", ["vp", "sigma"])
@pytest.mark.parametrize("kind, den_f, sigmas", CASES)
def test_round_trip_is_bit_exact_on_the_grid_at_one_evaluation_per_step(kind, den_f, sigmas, space):
    x0 = image()
    rec, step, den = bdia_invert(den_f, x0, sigmas, space=space, kind=kind)
    T = len(sigmas) - 1
    assert den.forward_evals == T                       # a 2-evaluation starter whose last call is reused: DDIM's cost
    assert [s.forward_evals for s in rec.steps] == [2.0, 0.0] + [1.0] * (T - 2)
    replay_den = scaled(den_f, kind)
    back = bdia_replay(replay_den, rec.states[-1], rec.states[-2], sigmas, 1.0, grid=step.grid, space=space)
    assert replay_den.forward_evals == T - 1            # none at the top: the pair is given
    assert torch.equal(back, snap(x0, step.grid))        # bit for bit: every state was reproduced exactly
    # the grid's rounding of the image is all that is lost; sigma space needs a 16x coarser grid (|z| up to 12·σ_T)
    assert rel(back, x0) < (1e-5 if space == "vp" or kind == "flow" else 1e-4), rel(back, x0)
    assert all(r == 0.0 for s in rec.steps[1:] for r in s.residual)
    assert torch.equal(x0, image())                      # input untouched


@pytest.mark.parametrize("gamma", [1.0, 0.8, 0.5])
def test_round_trip_without_the_grid_is_exact_to_float_precision(gamma):
    x0, sigmas = image(), karras(10)
    step = BDIAInversionStep(gamma, FixedPointOptions(tol=1e-4, max_evals=2))       # no sigma_top: plain float32
    rec = invert(Denoiser(nonlinear_denoiser), x0, sigmas, step, method="bdia")
    assert step.grid is None
    back = bdia_replay(Denoiser(nonlinear_denoiser), rec.states[-1], rec.states[-2], sigmas, gamma)
    assert rel(back, x0) < 2e-5, rel(back, x0)


def test_step_formula_is_the_papers_and_its_inverse_is_exact():
    g = torch.Generator().manual_seed(1)
    z_up, z_i, den = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    s_up, s_i, s_dn = 3.0, 1.5, 0.5
    d = (z_i - den) / s_i
    # z_{i-1} = γ z_{i+1} + (1−γ) z_i − γ Δ(t_i → t_{i+1} | z_i) + Δ(t_i → t_{i−1} | z_i)
    for gamma in (1.0, 0.7, 0.3):
        paper = gamma * z_up + (1 - gamma) * z_i - gamma * (s_up - s_i) * d + (s_dn - s_i) * d
        down = bdia_down(z_up, z_i, s_up, s_i, s_dn, den, gamma)
        assert torch.allclose(down, paper, atol=1e-5)
        assert torch.allclose(bdia_up(down, z_i, s_dn, s_i, s_up, den, gamma), z_up, atol=1e-4)
    # γ → 0 is plain DDIM (the Euler step of steps.py); γ = 1 the leapfrog over two intervals
    assert torch.allclose(bdia_down(z_up, z_i, s_up, s_i, s_dn, den, 0.0), euler_step(z_i, s_i, s_dn, den), atol=1e-6)
    assert torch.allclose(bdia_down(z_up, z_i, s_up, s_i, s_dn, den, 1.0), z_up + (s_dn - s_up) * d, atol=1e-5)
    # the paper's VP form: the same formula on Z = c·z with DDIM's VP step Δ(t_i → t | z_i) = c_t·S(z_i → σ_t) − Z_i
    c = (c_in(s_up), c_in(s_i), c_in(s_dn))
    for gamma in (1.0, 0.6):
        zi = c[1] * z_i
        vp = (gamma * c[0] * z_up + (1 - gamma) * zi - gamma * (c[0] * euler_step(z_i, s_i, s_up, den) - zi)
              + c[2] * euler_step(z_i, s_i, s_dn, den) - zi) / c[2]
        down = bdia_down(z_up, z_i, s_up, s_i, s_dn, den, gamma, c=c)
        assert torch.allclose(down, vp, atol=1e-5)
        assert torch.allclose(bdia_up(down, z_i, s_dn, s_i, s_up, den, gamma, c=c), z_up, atol=1e-4)
    q = bdia_grid(z_up, s_up)
    assert torch.equal(bdia_down(bdia_up(snap(z_up, q), z_i, s_up, s_i, s_dn, den, 1.0, q), z_i, s_dn, s_i, s_up,
                                 den, 1.0, q), snap(z_up, q))


def test_the_starter_budget_costs_what_it_says_and_a_longer_solve_gets_closer():
    x0, sigmas = image(), karras(8)
    costs, residuals = [], []
    for budget in (1, 2, 3, 6):
        rec, _, den = bdia_invert(nonlinear_denoiser, x0, sigmas, max_evals=budget, tol=1e-9)
        costs.append(den.forward_evals)
        residuals.append(max(rec.steps[0].residual))
    assert costs == [8 + k - 2 for k in (1, 2, 3, 6)]
    assert residuals[0] > residuals[1] > residuals[3], residuals


def test_a_half_precision_network_replays_exactly_on_the_recorded_trajectory():
    """A bf16 network (here: its input rounded to bf16) turns the float32 round-off by which the replay's inverse step
    misses the recorded state (γ < 1: no grid) into ~1e-3 at the next evaluation, and the walk down carries it on.
    Given the record's trajectory, the replay settles on each recorded state it meets up to round-off; a replay
    that goes elsewhere (another prompt: another denoiser) is left alone."""
    def half(x, sigma):
        return nonlinear_denoiser(x.bfloat16().float(), sigma)

    def edited(x, sigma):
        return 1.01 * half(x, sigma)

    x0, sigmas = image(), karras(10)
    rec = invert(Denoiser(half), x0, sigmas, BDIAInversionStep(0.7, FixedPointOptions(tol=1e-4, max_evals=2)),
                 method="bdia")
    down = list(reversed(rec.states))
    loose = bdia_replay(Denoiser(half), down[0], down[1], sigmas, 0.7)
    assert rel(loose, x0) > 1e-4, rel(loose, x0)                       # what a half-precision model did
    settled = bdia_replay(Denoiser(half), down[0], down[1], sigmas, 0.7, recorded=down)
    assert torch.equal(settled, x0)
    edit = bdia_replay(Denoiser(edited), down[0], down[1], sigmas, 0.7, recorded=down)
    assert torch.equal(edit, bdia_replay(Denoiser(edited), down[0], down[1], sigmas, 0.7))
    assert rel(edit, x0) > 1e-3


def test_gamma_below_one_round_trips_but_the_noise_carries_the_parasitic_mode():
    """Inversion divides by γ: the starter's error grows by 1/γ per step in the inverted latent (the round trip stays
    exact). On the analytic flow model, whose exact inverse is known, γ = 1 stays close to it and γ = 0.5 does not."""
    x0, sigmas = image(), flow_schedule(10)
    exact_top = flow_exact(x0, 1.0)
    err = {}
    for gamma in (1.0, 0.5):
        rec, step, _ = bdia_invert(flow_denoiser, x0, sigmas, gamma=gamma, kind="flow")
        back = bdia_replay(Denoiser(flow_denoiser), rec.states[-1], rec.states[-2], sigmas, gamma, grid=step.grid)
        assert rel(back, x0) < 1e-5
        err[gamma] = rel(rec.states[-1], exact_top)
    assert err[1.0] < 0.1 and err[0.5] > 3 * err[1.0], err


def test_one_step_is_an_error_naming_steps():
    with pytest.raises(ValueError, match="steps"):
        bdia_invert(eps_denoiser, image(), karras(1))
    with pytest.raises(ValueError, match="gamma"):
        BDIAInversionStep(0.0)


def test_source_correction_and_mask_compose_with_the_bdia_replay():
    x0, sigmas = image(), karras(6)
    rec, step, _ = bdia_invert(nonlinear_denoiser, x0, sigmas)
    states_down = list(reversed(rec.states))
    weights = [1.0] * 6
    # the source prompt at another cfg is another denoiser: offsets computed with it on the stored trajectory pull
    # every step back onto that trajectory, so the corrected replay lands on the image (DirectInversion's promise)
    edit = lambda x, s: eps_denoiser(x, s) * 0.9  # noqa: E731
    offsets = bdia_source_offsets(Denoiser(edit), states_down, sigmas, 1.0, weights)
    assert offsets[0] is None and all(o is not None for o in offsets[1:])
    corrected = bdia_replay(Denoiser(edit), rec.states[-1], rec.states[-2], sigmas, 1.0, offsets=offsets,
                            weights=weights)
    plain = bdia_replay(Denoiser(edit), rec.states[-1], rec.states[-2], sigmas, 1.0)
    assert rel(corrected, x0) < 1e-5 < rel(plain, x0)
    # a mask pins its 0 region to the stored trajectory exactly, the 1 region is edited
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    masked = bdia_replay(Denoiser(edit), rec.states[-1], rec.states[-2], sigmas, 1.0, mask=mask,
                         states_down=states_down)
    assert torch.equal(masked[..., 4:], x0[..., 4:])
    assert rel(masked[..., :4], x0[..., :4]) > 1e-3


def test_without_the_pair_the_replay_starts_with_one_plain_step():
    x0, sigmas = image(), karras(6)
    rec, step, _ = bdia_invert(eps_denoiser, x0, sigmas)
    den = Denoiser(eps_denoiser)
    gen = bdia_replay(den, rec.states[-1], None, sigmas, 1.0)
    assert den.forward_evals == 6                          # a generation: the top step is evaluated too
    assert rel(gen, x0) > 1e-3                             # ... and it is not the reconstruction


# ------------------------------------------------------------------------------------------------ through the host
def _bdia_prompt(kind="eps", steps=6, batch=1, extra=None):
    scheduler = "simple" if kind == "flow" else "karras"
    return invert_and_replay(kind=kind, method="BDIAInvert", steps=steps, batch=batch, extra=extra,
                             scheduler=scheduler)


@pytest.mark.parametrize("kind", ["eps", "v_prediction", "flow"])
def test_node_inverts_at_ddims_cost_and_the_inverted_latent_sampler_replays_it_exactly(kind):
    out = run_workflow(_bdia_prompt(kind, batch=2))
    x0 = out["latent"][0]["samples"]
    inv, sigmas = out["invert"]
    entry = inv["inversion"]
    # the default (auto) at T = 6: 0.7, clean edits, exact
    assert entry["method"] == "bdia" and entry["params"]["gamma"] == 0.7 and entry["params"]["gamma_auto"]
    assert entry["stats"]["forward_evals"] == 6 and len(entry["states"]) == 7
    assert torch.equal(inv["samples"], entry["states"][-1].to(inv["samples"].dtype))
    rec = out["replay"][0]["samples"]
    assert torch.equal(rec, x0), rel(rec, x0)      # bit for bit: the replay settles on the recorded states
    # the stock DDIM replay of the same samples (what a plain sampler does) is far from the image
    ddim = run_workflow(invert_and_replay(kind=kind, steps=6, batch=2,
                                          scheduler="simple" if kind == "flow" else "karras"))
    assert rel(ddim["replay"][0]["samples"], x0) > 100 * rel(rec, x0)


def test_sampler_twin_in_sampler_custom_advanced_is_replayed_with_bdia_by_the_inverted_replay_sampler():
    prompt = add_custom_chain(_bdia_prompt(steps=8), "BDIAInvertSampler", {})
    prompt["invert"]["inputs"]["scheduler"] = "ddim_uniform"
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    assert torch.equal(out["custom"][0]["samples"], out["invert"][0]["samples"])
    for replayed in (out["custom_replay"][0]["samples"], out["replay"][0]["samples"]):
        assert torch.equal(replayed, x0), rel(replayed, x0)      # the SAMPLER path settles on the trajectory too


def test_plain_euler_from_samples_alone_is_a_generation_not_a_reconstruction():
    """What the README documents: SamplerCustom + euler on BDIA's samples (no pair state) does not give the image."""
    prompt = _bdia_prompt(steps=6)
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "karras", "steps": 6, "denoise": 1.0}}
    prompt["euler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["stock"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["model", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["positive", 0],
        "negative": ["negative", 0], "sampler": ["euler", 0], "sigmas": ["sched", 0], "latent_image": ["invert", 0]}}
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    assert rel(out["replay"][0]["samples"], x0) < 1e-5
    assert rel(out["stock"][0]["samples"], x0) > 1e-3


def test_a_bdia_record_is_never_replayed_with_the_plain_step():
    out = run_workflow(_bdia_prompt(steps=4), outputs=["invert", "latent"])
    inv = out["invert"][0]
    model, cond = host.tiny_model(), host.tiny_conditioning()
    sampler = host.node_class("InvertedLatentSampler")()
    broken = dict(inv, inversion={k: v for k, v in inv["inversion"].items() if k != "params"})
    with pytest.raises(ValueError, match="inverted_latent.*BDIA"):
        sampler.sample(model, cond, cond, 1.0, broken)
    no_states = dict(inv, inversion=dict(inv["inversion"], states=[]))
    with pytest.raises(ValueError, match="inverted_latent.*BDIA"):
        sampler.sample(model, cond, cond, 1.0, no_states)


def test_mask_and_source_correction_through_the_host():
    prompt = _bdia_prompt(steps=6)
    prompt["edit_prompt"] = {"class_type": "InversionTestConditioning",
                             "inputs": {"seed": 99, "batch": 1, "tokens": 4, "dim": 16}}
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    prompt["masked"] = {"class_type": "InvertedLatentSampler", "inputs": dict(
        prompt["replay"]["inputs"], positive=["edit_prompt", 0], mask=["mask", 0])}
    prompt["corrected"] = {"class_type": "InvertedLatentSampler", "inputs": dict(
        prompt["replay"]["inputs"], cfg=3.0, correction_strength=1.0, source_positive=["positive", 0])}
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    assert rel(out["masked"][0]["samples"], x0) < 1e-5          # all-0 mask: pinned everywhere
    assert rel(out["corrected"][0]["samples"], x0) < 1e-4       # source prompt at cfg 3 + correction 1


@pytest.mark.parametrize("branch", ["batched", "cached"])
def test_edit_engine_with_a_bdia_record_reconstructs_with_the_source_prompt(branch):
    """The engine pins its source branch to the stored trajectory at the levels the BDIA replay evaluates (σ_1 …
    σ_{T−1}; none at the top), so with the source prompt every injection is a no-op."""
    prompt = _bdia_prompt(steps=6, batch=2, extra={"gamma": 1.0})     # γ = 1: the bit-exact grid
    prompt["engine"] = {"class_type": "InversionEditEngine", "inputs": {
        "model": ["model", 0], "inverted_latent": ["invert", 0], "source_conditioning": ["positive", 0],
        "mode": "pnp", "strength": 1.0, "window_start": 0.0, "window_end": 1.0, "layers": "all",
        "residual_features": False, "reweight": 1.0, "tokens": "", "source_branch": branch}}
    prompt["edited"] = {"class_type": "InvertedLatentSampler", "inputs": dict(
        prompt["replay"]["inputs"], model=["engine", 0])}
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    edited, plain = out["edited"][0]["samples"], out["replay"][0]["samples"]
    assert rel(plain, x0) < 1e-5
    if branch == "cached":      # same batch as the plain replay, identical features injected: the same bits
        assert torch.equal(edited, plain)
    else:   # source and edit in one batch of 4: the model's bits differ from a batch of 2, and BDIA's replay (γ = 1,
        # undamped) carries that rounding to the end (measured 1.3e-5 RMS here; DDIM-type replays stay below 1e-5)
        assert (edited - plain).pow(2).mean().sqrt().item() <= 5e-5
        assert rel(edited, x0) < 1e-4


def test_an_engine_window_holding_only_step_0_of_a_bdia_replay_says_it_does_nothing(caplog):
    """A BDIA replay's first latent is the stored pair state: step 0 is never evaluated, so a window holding only
    step 0 (pnp 0-0.15 of 6 steps) injects nothing and the edit is the plain replay; it says so. 0-0.35 holds steps
    1 and 2 and changes the edit."""
    from test_editing_host import warnings_of

    prompt = _bdia_prompt(steps=6, batch=1, extra={"gamma": 1.0})
    prompt["edit_prompt"] = {"class_type": "InversionTestConditioning",
                             "inputs": {"seed": 99, "batch": 1, "tokens": 4, "dim": 16}}
    prompt["replay"]["inputs"]["positive"] = ["edit_prompt", 0]
    prompt["engine"] = {"class_type": "InversionEditEngine", "inputs": {
        "model": ["model", 0], "inverted_latent": ["invert", 0], "source_conditioning": ["positive", 0],
        "mode": "pnp", "strength": 1.0, "window_start": 0.0, "window_end": 0.15, "layers": "all",
        "residual_features": False, "reweight": 1.0, "tokens": "", "source_branch": "batched"}}
    prompt["edited"] = {"class_type": "InvertedLatentSampler", "inputs": dict(
        prompt["replay"]["inputs"], model=["engine", 0])}
    out = run_workflow(prompt)
    assert torch.equal(out["edited"][0]["samples"], out["replay"][0]["samples"])
    assert len(warnings_of(caplog, "holds only step 0")) == 1
    caplog.clear()
    prompt["engine"]["inputs"]["window_end"] = 0.35
    out = run_workflow(prompt)
    assert not torch.equal(out["edited"][0]["samples"], out["replay"][0]["samples"])
    assert not warnings_of(caplog, "holds only step 0")


def test_auto_gamma_keeps_the_growth_of_ten_steps_at_0_7():
    """auto: 0.7 up to 10 steps, 0.7^(10/T) above, so (1/γ)^T stays at (1/0.7)^10 (README: measured)."""
    assert [auto_gamma(t) for t in (1, 2, 4, 10)] == [0.7] * 4
    assert auto_gamma(20) == pytest.approx(0.8367, abs=1e-4) and auto_gamma(50) == pytest.approx(0.9312, abs=1e-4)
    for t in (11, 20, 33, 50, 200):
        assert auto_gamma(t) ** -t == pytest.approx(0.7 ** -10, rel=1e-9)
        assert resolve_gamma(AUTO_GAMMA, t) == auto_gamma(t)
    assert resolve_gamma(0.9, 50) == 0.9 and resolve_gamma(1.0, 4) == 1.0     # an explicit gamma is kept
    assert check_gamma_setting(-1) == AUTO_GAMMA and check_gamma_setting(0.01) == 0.01
    for bad in (-0.5, 0.0, 0.005, 1.01, -2.0):
        with pytest.raises(ValueError, match=r"gamma: must be -1 \(auto"):
            check_gamma_setting(bad)


@pytest.mark.parametrize("steps", [14, 20])
def test_auto_gamma_is_resolved_per_run_and_recorded(steps):
    out = run_workflow(_bdia_prompt(steps=steps))
    x0 = out["latent"][0]["samples"]
    entry = out["invert"][0]["inversion"]
    assert entry["params"]["gamma"] == auto_gamma(steps) and entry["params"]["gamma_auto"] is True
    assert torch.equal(out["replay"][0]["samples"], x0)     # the replay uses the recorded (resolved) gamma
    # the replay reads the gamma from the record: a record claiming another gamma replays elsewhere
    inv = out["invert"][0]
    wrong = dict(inv, inversion=dict(entry, params=dict(entry["params"], gamma=0.7)))
    back = host.node_class("InvertedLatentSampler")().sample(host.tiny_model(), *[host.tiny_conditioning()] * 2, 1.0,
                                                             wrong)[0]["samples"]
    assert rel(back, x0) > 1e-4


def test_an_explicit_gamma_is_honoured_at_any_step_count():
    out = run_workflow(_bdia_prompt(steps=20, extra={"gamma": 0.9}))
    entry = out["invert"][0]["inversion"]
    assert entry["params"]["gamma"] == 0.9 and entry["params"]["gamma_auto"] is False
    assert torch.equal(out["replay"][0]["samples"], out["latent"][0]["samples"])


def test_sampler_twin_resolves_auto_from_its_sigmas():
    prompt = add_custom_chain(_bdia_prompt(steps=16), "BDIAInvertSampler", {})
    prompt["sched"]["inputs"]["steps"] = 16
    prompt["invert"]["inputs"]["scheduler"] = "ddim_uniform"
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    assert out["invert"][0]["inversion"]["params"]["gamma"] == auto_gamma(16)
    assert torch.equal(out["custom"][0]["samples"], out["invert"][0]["samples"])   # the same gamma as the node
    assert torch.equal(out["custom_replay"][0]["samples"], x0)


@pytest.mark.parametrize("node", ["BDIAInvert", "BDIAInvertSampler"])
def test_a_bad_gamma_is_an_error_naming_the_input(node):
    cls = host.node_class(node)
    for bad in (-0.5, 0.0, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            cls().sampler(None, gamma=bad) if node == "BDIAInvert" else cls().get_sampler(gamma=bad)
    with pytest.raises(WorkflowError, match="gamma"):
        run_workflow(_bdia_prompt(steps=4, extra={"gamma": -0.5}))
    spec = cls.INPUT_TYPES()["required"]["gamma"][1]
    assert spec["default"] == AUTO_GAMMA and spec["min"] == -1.0 and "auto" in spec["tooltip"]


def test_every_input_has_a_tooltip_and_the_replay_is_documented():
    for name in ("BDIAInvert", "BDIAInvertSampler"):
        cls = host.node_class(name)
        for group in cls.INPUT_TYPES().values():
            for key, spec in group.items():
                assert isinstance(spec[-1], dict) and spec[-1].get("tooltip"), (name, key)
        assert "not a reconstruction" in cls.DESCRIPTION


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_gamma_one_replays_bit_exactly_on_its_grid(kind):
    out = run_workflow(_bdia_prompt(kind, extra={"gamma": 1.0}))
    entry = out["invert"][0]["inversion"]
    assert entry["params"]["gamma"] == 1.0 and entry["params"]["grid"] > 0
    x0 = out["latent"][0]["samples"]
    grid = entry["params"]["grid"]
    # the only loss is the image's rounding to the grid
    assert (out["replay"][0]["samples"] - x0).abs().max() <= grid


def test_a_cached_bdia_inversion_whose_pair_state_was_dropped_is_an_error_not_a_plain_replay(monkeypatch):
    """ComfyUI reuses a cached inversion without running it again, so the registry the Inverted Replay SAMPLER reads
    can drop it while the graph still holds it. Replaying a dropped BDIA top with the plain step gave RMS 17.7 from
    the image with only a console line; it is an error now. (Here the registry keeps 1 BDIA trajectory.)"""
    bridge = sys.modules[host.pack_module().__name__ + ".nodes.bridge"]
    monkeypatch.setattr(bridge.INVERTED, "bdia_size", 1)
    session = host.Session()
    prompt = add_custom_chain(_bdia_prompt(steps=4), "BDIAInvertSampler", {})
    prompt["guider_rep"] = dict(prompt["guider"], inputs=dict(prompt["guider"]["inputs"]))
    prompt["custom_replay"]["inputs"]["guider"] = ["guider_rep", 0]
    out = session.run(prompt, outputs=["custom_replay"])
    assert torch.equal(out["custom_replay"][0]["samples"], out["latent"][0]["samples"])
    other = add_custom_chain(_bdia_prompt(steps=4), "BDIAInvertSampler", {})
    other["latent"]["inputs"]["seed"] += 1                        # another image's BDIA inversion drops the first
    other = {f"b_{k}": dict(v, inputs={n: [f"b_{x[0]}", x[1]] if isinstance(x, list) else x
                                       for n, x in v["inputs"].items()}) for k, v in other.items()}
    session.run({**prompt, **other}, outputs=["b_custom"])       # (another branch of the same graph)
    prompt["guider_rep"]["inputs"]["cfg"] = 1.0 + 1e-6            # the replay runs again, the inversion is cached
    with pytest.raises(host.WorkflowError, match="no longer holds the pair state"):
        session.run(prompt, outputs=["custom_replay"])


def test_a_bdia_top_keeps_its_checks_while_its_pair_state_is_held(monkeypatch, caplog):
    """The list of all inversions may drop a BDIA top before the BDIA trajectories do: its replay was then exact but
    warned that the pair state could not be found, with the sigma and model checks skipped."""
    import collections
    from test_editing_host import warnings_of

    bridge = sys.modules[host.pack_module().__name__ + ".nodes.bridge"]
    monkeypatch.setattr(bridge.INVERTED, "items", collections.deque(maxlen=1))
    session = host.Session()
    prompt = add_custom_chain(_bdia_prompt(steps=4), "BDIAInvertSampler", {})
    prompt["guider_rep"] = dict(prompt["guider"], inputs=dict(prompt["guider"]["inputs"]))
    prompt["custom_replay"]["inputs"]["guider"] = ["guider_rep", 0]
    session.run(prompt, outputs=["custom"])
    other = add_custom_chain(_bdia_prompt(steps=4), "DDIMInvertSampler", {})
    other["latent"]["inputs"]["seed"] += 1                        # a plain inversion takes the only place
    other = {f"b_{k}": dict(v, inputs={n: [f"b_{x[0]}", x[1]] if isinstance(x, list) else x
                                       for n, x in v["inputs"].items()}) for k, v in other.items()}
    session.run({**prompt, **other}, outputs=["b_custom"])
    caplog.clear()
    out = session.run(prompt, outputs=["custom_replay"])
    assert torch.equal(out["custom_replay"][0]["samples"], out["latent"][0]["samples"])
    assert not warnings_of(caplog, "is not the noise"), warnings_of(caplog)
    prompt["sched_rep"] = dict(prompt["sched"], inputs=dict(prompt["sched"]["inputs"], steps=5))
    prompt["custom_replay"]["inputs"]["sigmas"] = ["sched_rep", 0]
    with pytest.raises(host.WorkflowError, match="sigmas: this latent was inverted on sigmas"):
        session.run(prompt, outputs=["custom_replay"])



def test_a_gamma_whose_pair_float32_cannot_walk_back_is_an_error_not_a_drifting_replay():
    """Each inversion step divides the pair by γ; at γ 0.01 over 10 steps on the EPS reference model the float32
    round-off of the step's algebra (1.7e-5 of the state) passes the replay's ROUND_OFF, and the replay walked off the
    stored trajectory: 1e9 off the image, with only a noise-scale warning. The inversion measures that round-off at
    every step (no model call) and stops with an error naming gamma; γ 0.02 (8.9e-6) still replays bit for bit."""
    pack = host.pack_module()
    bdia = sys.modules[pack.__name__ + ".inversion_core.solvers.bdia"]
    model, clip, vae = host.node_class("InversionReferenceModelLoader")().load("sd-unet-eps")
    image = host.node_class("LoadInversionReferenceImage")().load("00_cat.png")[0]
    with torch.inference_mode():
        latent = {"samples": vae.encode(image)}
        empty = host.node_class("CLIPTextEncode")().encode(clip, "")[0]
    node, sampler = host.node_class("BDIAInvert")(), host.node_class("InvertedLatentSampler")()
    params = {k: v for k, v in defaults("BDIAInvert").items() if k not in ("steps", "scheduler", "cfg", "denoise")}

    def invert(gamma):
        with torch.inference_mode():
            return node.invert(model, empty, empty, latent, 10, "auto", 1.0, 1.0, None, **{**params, "gamma": gamma})[0]

    def off_the_image(inverted):
        with torch.inference_mode():
            back = sampler.sample(model, empty, empty, 1.0, inverted)[0]["samples"]
        return (back - latent["samples"]).abs().max().item()

    assert off_the_image(invert(0.02)) == 0.0
    with pytest.raises(ValueError, match=r"gamma: BDIA at gamma 0\.01 .* float32 cannot walk it back"):
        invert(0.01)
    limit = bdia.ROUND_OFF                 # what the error prevents: the same inversion, unchecked, and its replay
    bdia.ROUND_OFF = float("inf")
    try:
        unchecked = invert(0.01)
    finally:
        bdia.ROUND_OFF = limit
    assert off_the_image(unchecked) > 1.0
