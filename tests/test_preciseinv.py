"""PreciseInv: the core step solver on analytic denoisers, grad mode on a host model, the node in the host executor."""
from __future__ import annotations

import gc
import time

import pytest
import torch

from inversion_core import Denoiser, StepFailed, ddim_step, invert, replay
from inversion_core.solvers.preciseinv import PRESETS, PreciseInvSolver

from analytic import eps_denoiser, flow_denoiser, nonlinear_denoiser
from analytic import flow_schedule, image, karras
from test_gnri import _prompt

import sys

import host


def loss_of(raw, x_hi, x_lo, lo, hi):
    """mean((S(x_hi; hi → lo) − x_lo)²) per item, written out independently."""
    step = x_hi + (lo - hi) * (x_hi - raw(x_hi, hi)) / hi
    return (step - x_lo).pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("raw, schedule, kind", [(eps_denoiser, karras, "eps"), (flow_denoiser, flow_schedule, "flow"),
                                                 (nonlinear_denoiser, karras, "eps")], ids=["eps", "flow", "nonlinear"])
@pytest.mark.parametrize("eta", [PRESETS["fast"], PRESETS["precise"]], ids=["fast", "precise"])
@pytest.mark.parametrize("optimizer", ["gd", "lbfgs"])
def test_every_step_reaches_the_threshold(raw, schedule, kind, eta, optimizer):
    x0, sig = image(), schedule(8)
    solver = PreciseInvSolver(threshold=eta, marginal=kind, optimizer=optimizer)
    rec = invert(Denoiser(raw), x0, sig, solver, method="preciseinv")
    assert rec.unconverged_steps == [] and all(st.iterations <= 30 for st in rec.steps)
    levels = sig.flip(0).tolist()
    for i, st in enumerate(rec.steps):   # the reported residual is the true loss of the returned latent
        true = loss_of(raw, rec.states[i + 1], rec.states[i], levels[i], levels[i + 1])
        assert (true < eta).all() and torch.allclose(true.sqrt(), torch.tensor(st.residual), rtol=1e-3, atol=1e-7)
    if eta == PRESETS["precise"]:
        ddim = invert(Denoiser(raw), x0, sig, ddim_step, method="ddim")
        err = (replay(Denoiser(raw), rec.states[-1], sig) - x0).abs().max()
        ddim_err = (replay(Denoiser(raw), ddim.states[-1], sig) - x0).abs().max()
        assert err < ddim_err / 10, (err, ddim_err)


def test_initialised_from_one_ddim_step_and_counts_passes():
    x0, sig = image(), karras(4)
    den = Denoiser(eps_denoiser)
    solver = PreciseInvSolver(threshold=1e-5)
    rec = invert(den, x0, sig, solver, method="p")
    ddim = invert(Denoiser(eps_denoiser), x0, sig, ddim_step, method="d")
    # step 1 (from the image): the trace's first loss is the DDIM step's loss
    first = solver.trace[0]["losses"][0][0]
    assert first == pytest.approx(float(loss_of(eps_denoiser, ddim.states[1], x0, 0.0, float(sig[-2]))[0]), rel=1e-4)
    for st, tr in zip(rec.steps, solver.trace):
        evals = sum(len(seq) for seq in tr["losses"]) / x0.shape[0]   # loss evaluations, in full-batch units
        assert st.forward_evals == pytest.approx(1 + evals)          # + the DDIM initialisation
        assert st.backward_evals <= evals - 1 + 1e-9 and (st.backward_evals > 0) == (st.iterations > 0)
    assert rec.backward_evals > 0


def test_batch_items_stop_independently():
    x0 = image(3)
    x0[1] *= 0.01                                  # nearly zero: DDIM's initial guess is already below eta
    x0[2] *= 4
    batches = []

    def raw(x, sigma):
        batches.append(x.shape[0])
        return nonlinear_denoiser(x, sigma)

    solver = PreciseInvSolver(threshold=1e-6)
    rec = invert(Denoiser(raw), x0, karras(4), solver, method="p")
    assert rec.unconverged_steps == [] and min(batches) < 3
    assert any(tr["updates"][1] < tr["updates"][2] for tr in solver.trace)
    solo = invert(Denoiser(nonlinear_denoiser), x0[2:], karras(4), PreciseInvSolver(threshold=1e-6), method="p")
    assert torch.allclose(solo.states[-1][0], rec.states[-1][2], atol=1e-4)


@pytest.mark.parametrize("kwargs, name", [({"threshold": 0.0}, "threshold"), ({"threshold": -1e-3}, "threshold"),
                                          ({"max_iter": 0}, "max_iterations"), ({"step_size": 0.0}, "step_size"),
                                          ({"step_size": -1.0}, "step_size"), ({"optimizer": "sgd"}, "optimizer")])
def test_bad_parameters_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PreciseInvSolver(**kwargs)


def test_a_rising_loss_is_never_kept():
    x0, sig = image(), karras(4)
    solver = PreciseInvSolver(threshold=1e-6, step_size=1e4, max_iter=100)   # the first tries overshoot
    rec = invert(Denoiser(nonlinear_denoiser), x0, sig, solver, method="p")
    assert rec.unconverged_steps == []
    assert any("rejected [0, 0]" not in st.note for st in rec.steps)
    assert any(max(seq) > seq[0] for tr in solver.trace for seq in tr["losses"])     # some tries did overshoot
    for tr, st in zip(solver.trace, rec.steps):          # ... and each step kept its lowest loss, not its last
        for seq, res in zip(tr["losses"], st.residual):
            assert res ** 2 == pytest.approx(min(seq), rel=1e-6)


def test_nan_gradient_falls_back_to_the_best_iterate_and_reports_the_step():
    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            out = g.clone()
            out[1] = float("nan")                # item 1's gradient is NaN, item 0's is fine
            return out

    def raw(x, sigma):
        return nonlinear_denoiser(NanGrad.apply(x) if x.requires_grad and x.shape[0] == 2 else x, sigma)

    solver = PreciseInvSolver(threshold=1e-8)
    rec = invert(Denoiser(raw), image(), karras(3), solver, method="p")
    assert rec.unconverged_steps, "a diverged item must mark its step not converged"
    st = rec.steps[rec.unconverged_steps[0]]
    assert "item 1" in st.note and "NaN" in st.note and torch.isfinite(rec.states[-1]).all()
    assert all(torch.isfinite(torch.tensor(s.residual)).all() for s in rec.steps)


@pytest.mark.parametrize("optimizer", ["gd", "lbfgs"])
def test_every_image_stuck_ends_the_step_without_an_empty_model_call(optimizer):
    """A model whose gradient points the wrong way (value x/2, derivative −1): on a step from σ = 0 every trial raises
    the loss,
    every image's step size halves until it is declared stuck. That used to call the model with an empty batch
    (found under the host's PerpNeg: "cannot reshape tensor of 0 elements")."""
    def raw(x, sigma):
        return 1.5 * x.detach() - x

    calls = []

    def counted(x, sigma):
        calls.append(x.shape[0])
        return raw(x, sigma)

    solver = PreciseInvSolver(threshold=1e-12, max_iter=200, optimizer=optimizer)
    rec = invert(Denoiser(counted), image(), karras(1), solver, method="p")
    assert min(calls) > 0 and rec.unconverged_steps
    assert any("no descent" in st.note for st in rec.steps)


def test_nan_from_the_model_names_the_step():
    def raw(x, sigma):
        return eps_denoiser(x, sigma) * (float("nan") if sigma > 1 else 1.0)

    with pytest.raises(StepFailed, match=r"inversion step 3/4"):
        invert(Denoiser(raw), image(), karras(4), PreciseInvSolver(), method="p")


def test_memory_is_flat_nothing_from_a_step_graph_survives():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)     # parameters that require grad, as an unfrozen network's do

    def raw(x, sigma):
        return eps_denoiser(x, sigma) + 0.05 * torch.tanh(conv(x)) * sigma / (1 + sigma)

    def graph_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, torch.Tensor) and (o.grad_fn is not None or
                                                       (o.requires_grad and not isinstance(o, torch.nn.Parameter))))

    before = graph_tensors()          # whatever earlier tests of the session left alive
    alive = []
    rec = invert(Denoiser(raw), image(), karras(5), PreciseInvSolver(threshold=1e-6), method="p",
                 callback=lambda step, total, x: alive.append(graph_tensors() - before))
    assert alive == [0] * 5 and rec.backward_evals > 0
    assert conv.weight.grad is None               # gradients are taken w.r.t. the noise only


def test_lbfgs_needs_fewer_gradient_steps_than_gradient_descent():
    """The loss's Hessian ~ J_r^T J_r is ill-conditioned on large steps: gd creeps, L-BFGS does not. Measured on the
    nonlinear analytic denoiser: 4 steps to 1e-8, 42 backward passes (gd) against 12.5; 2 steps to 1e-5, gd misses
    in 100 updates, L-BFGS converges in 71."""
    x0 = image()
    gd = invert(Denoiser(nonlinear_denoiser), x0, karras(4), PreciseInvSolver(threshold=1e-8, max_iter=100),
                method="p")
    lb = invert(Denoiser(nonlinear_denoiser), x0, karras(4),
                PreciseInvSolver(threshold=1e-8, max_iter=100, optimizer="lbfgs"), method="p")
    assert gd.unconverged_steps == [] and lb.unconverged_steps == []
    assert lb.backward_evals <= gd.backward_evals / 2, (lb.backward_evals, gd.backward_evals)
    two = [invert(Denoiser(nonlinear_denoiser), x0, karras(2),
                  PreciseInvSolver(threshold=1e-5, max_iter=100, optimizer=o), method="p") for o in ("gd", "lbfgs")]
    assert two[0].unconverged_steps == [1] and two[1].unconverged_steps == []
    for rec in (lb, two[1]):          # what L-BFGS returns replays onto the image as closely as its loss says
        back = replay(Denoiser(nonlinear_denoiser), rec.states[-1], karras(len(rec.steps)))
        assert (back - x0).pow(2).mean().sqrt() < 1e-2


def test_adam_option_also_converges():
    rec = invert(Denoiser(eps_denoiser), image(), karras(4),
                 PreciseInvSolver(threshold=1e-4, optimizer="adam", step_size=0.1, max_iter=200), method="p")
    assert rec.unconverged_steps == []


# ------------------------------------------------------------------------------------------------ grad mode / host
def test_grad_mode_swaps_inference_weights_and_restores_them_even_on_error():
    from types import SimpleNamespace

    gm = __import__(host.PACK_DIR_NAME + ".nodes.grad_mode", fromlist=["grad_mode"])
    patcher = host.tiny_model("eps", inference_mode=True)
    model = patcher.model
    before = {n: p for n, p in model.named_parameters()}
    assert all(p.is_inference() for p in before.values())
    weight_bytes = sum(p.numel() * p.element_size() for p in before.values())
    wrap = SimpleNamespace(inner_model=model, loaded_models=[patcher])
    cond = host.tiny_conditioning()[0][0]
    with torch.inference_mode():
        x = torch.randn(1, 4, 8, 8)
        with pytest.raises(KeyError):
            with gm.grad_mode(wrap) as report:
                assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
                params = dict(model.named_parameters())
                assert all(not p.is_inference() and not p.requires_grad for p in params.values())
                assert report.extra_bytes >= weight_bytes and report.cloned_tensors >= len(params)
                xx = x.clone().requires_grad_(True)
                out = model.apply_model(xx, torch.full((1,), 2.0), c_crossattn=cond)
                assert out.requires_grad
                raise KeyError("boom")
        assert torch.is_inference_mode_enabled()
    after = dict(model.named_parameters())
    assert all(after[n] is p for n, p in before.items())


def test_protected_backward_gives_the_true_gradient_through_the_host_unet():
    """The fork's UNet updates a saved activation in place; the protection hooks must give the exact gradient."""
    import torch.autograd.forward_ad as fwAD
    from types import SimpleNamespace

    from torch.nn.attention import SDPBackend, sdpa_kernel

    gm = __import__(host.PACK_DIR_NAME + ".nodes.grad_mode", fromlist=["grad_mode"])
    patcher = host.tiny_model("eps", inference_mode=True)
    model = patcher.model
    cond = host.tiny_conditioning()[0][0]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((1,), 2.0)
    with torch.inference_mode():
        with gm.grad_mode(SimpleNamespace(inner_model=model), protect_saved=True) as report:
            xx = x.clone().requires_grad_(True)
            (vjp,) = torch.autograd.grad(model.apply_model(xx, t, c_crossattn=cond), xx, v)
        assert report.saved_copies > 0
        # the math kernel: some PyTorch builds (2.11) have no forward-mode derivative for the CPU's flash attention
        with gm.grad_mode(SimpleNamespace(inner_model=model)), sdpa_kernel([SDPBackend.MATH]):
            with fwAD.dual_level():
                jvp = fwAD.unpack_dual(model.apply_model(fwAD.make_dual(x.clone(), v), t, c_crossattn=cond)).tangent
                # <v, J v> two ways: reverse mode (protected) and forward mode (needs no protection)
            assert torch.allclose((vjp * v).sum(), (jvp * v).sum(), rtol=1e-4)


def test_preciseinv_node_runs_in_the_host_executor():
    out = host.run_workflow(_prompt("PreciseInvInvert", {"threshold_preset": "precise (1e-5)",
                                                         "custom_threshold": 1e-4, "max_iterations": 30,
                                                         "step_size": 1.0, "initialiser": "ddim"}, kind="flow"))
    inverted, sigmas = out["invert"]
    entry = inverted["inversion"]
    assert entry["method"] == "preciseinv" and entry["params"]["threshold"] == 1e-5
    assert entry["params"]["optimizer"] == "lbfgs"      # a prompt without the (optional) input runs the default
    assert entry["params"]["grad_mode"]["cloned_tensors"] > 0
    assert entry["stats"]["backward_evals"] > 0 and entry["stats"]["unconverged_steps"] == []
    assert all(max(s["residual"]) ** 2 < 1e-5 for s in entry["step_stats"])
    assert all(p.is_inference() for p in out["model"][0].model.parameters())
    assert torch.isfinite(inverted["samples"]).all() and torch.equal(entry["sigmas"], sigmas)


def test_exact_initialiser_starts_closer_and_needs_fewer_gradient_steps():
    """The shared fixed-point solver as PreciseInv's initialiser (issue: one solver, shared)."""
    x0, sig = image(), karras(6)
    ddim_init = invert(Denoiser(nonlinear_denoiser), x0, sig, PreciseInvSolver(threshold=1e-6), method="p")
    exact_init = invert(Denoiser(nonlinear_denoiser), x0, sig, PreciseInvSolver(threshold=1e-6, init="exact"),
                        method="p")
    assert not ddim_init.unconverged_steps and not exact_init.unconverged_steps
    assert exact_init.backward_evals < ddim_init.backward_evals
    for rec in (ddim_init, exact_init):      # both reach the threshold: both replay to the image as closely
        back = replay(Denoiser(nonlinear_denoiser), rec.states[-1], sig)
        assert (back - x0).pow(2).mean().sqrt() < 2e-3
    with pytest.raises(ValueError, match="initialiser"):
        PreciseInvSolver(init="zeros")


def test_every_model_evaluation_is_counted_including_an_aborted_attempt():
    """The fork's BasicTransformerBlock adds in place: the first backward fails and the solve is retried with
    saved-activation copies. The aborted attempt's evaluations are in the record, and the derivative path is named."""
    pack = host.pack_module()
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    model, cond, latent = host.tiny_model("eps", inference_mode=True), host.tiny_conditioning(), host.tiny_latent(size=8)
    calls, spent = [], []                       # (spent: the start time of each call)

    def counting(apply_model, args):            # the host's own wrapper hook: sees every call of the network
        calls.append(args["input"].shape[0])
        spent.append(time.perf_counter())
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = model.clone()
    model.set_model_unet_function_wrapper(counting)
    node = pack.NODE_CLASS_MAPPINGS["PreciseInvInvert"]()
    with torch.inference_mode():
        sampler = node.sampler(model, "precise (1e-5)", 1e-4, 10, 1.0, "ddim")
        schedule = bridge.schedule_from_inputs(model, 3, "karras", None)
        out = bridge.run_inversion(model, cond, cond, 1.0, latent, schedule, sampler)
    entry = out["inversion"]
    assert "aborted" in entry["params"]["derivatives"] and "saved activations copied" in entry["params"]["derivatives"]
    assert "aborted by the host's in-place update" in entry["step_stats"][0]["note"]
    assert entry["stats"]["forward_evals"] == pytest.approx(len(calls))       # batch 1: one call = one evaluation
    span = spent[-1] - spent[0]                                     # first call (attempt 1) to last (attempt 2)
    assert entry["stats"]["seconds"] >= 0.95 * span                 # and its time: both attempts (the gap is ms)
    # the same model again: it is known to need the copies, so nothing is aborted (and nothing wasted) this time
    calls.clear()
    with torch.inference_mode():
        again = bridge.run_inversion(model, cond, cond, 1.0, latent, schedule,
                                     node.sampler(model, "precise (1e-5)", 1e-4, 10, 1.0, "ddim"))["inversion"]
    assert "aborted" not in again["params"]["derivatives"]
    assert "saved activations copied" in again["params"]["derivatives"]
    assert again["stats"]["forward_evals"] == pytest.approx(len(calls))
    assert again["stats"]["forward_evals"] < entry["stats"]["forward_evals"]


def test_a_patch_that_detaches_the_model_output_is_an_error_not_a_wrong_gradient():
    """A wrapper running the network under torch.no_grad(): the loss still reaches ε through x, so autograd used to
    return a gradient with the model's Jacobian taken as 0, and the run 'succeeded' 5.5x worse (residual 3.08 against
    0.555 at step 3), labelled 'reverse-mode autograd through the model'."""
    pack = host.pack_module()
    model, cond, latent = host.tiny_model("eps", inference_mode=True), host.tiny_conditioning(), host.tiny_latent(size=8)

    def detaching(apply_model, args):
        with torch.no_grad():
            return apply_model(args["input"], args["timestep"], **args["c"])

    model = model.clone()
    model.set_model_unet_function_wrapper(detaching)
    node = pack.NODE_CLASS_MAPPINGS["PreciseInvInvert"]()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="carries no gradient.*Exact Invert"):
        node.invert(model, cond, cond, latent, 3, "karras", 1.0, 1.0, None, threshold_preset="precise (1e-5)",
                    custom_threshold=1e-4, max_iterations=30, step_size=1.0, initialiser="ddim")
