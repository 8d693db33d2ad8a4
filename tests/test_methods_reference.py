"""Method claims on every bundled reference model's held-out images (real host guider, real trained models).

Each method runs with its node's default inputs (what a user who drops the node in gets). Floors are the benchmark's
measured figures (README, Results) less honest margins; the margins over DDIM are the issue-13 targets, asserted
where they were met and reported as measured in README where they were not.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import host

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


def _models():
    rm = sys.modules[host.pack_module().__name__ + ".nodes.reference_model"]
    return rm.reference_model_names() if hasattr(rm, "reference_model_names") else ["sd-unet-eps"]


@pytest.fixture(scope="module", params=_models())
def ref(request):
    import benchmark

    pack = host.pack_module()
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    if not rm.reference_model_path(request.param).is_file():
        pytest.fail(f"reference model {request.param} is not shipped: {rm.reference_model_path(request.param)}")
    model, clip, vae, rm = benchmark.reference(torch.float32, name=request.param)
    images = torch.cat([img for _, _, img in rm.heldout_images()[:2]])
    return benchmark, pack, model, clip, vae, images, {}, request.param


def cell(ref, label, steps):
    benchmark, pack, model, clip, vae, images, cache, _ = ref
    if (label, steps) not in cache:
        _, node, params = next(m for m in benchmark.METHODS if m[0] == label)
        cache[label, steps] = benchmark.run_cell(pack, label, node, params, model, clip, vae, images, steps, "cpu")
    return cache[label, steps]


@pytest.mark.parametrize("steps", [10, 4])
def test_ddim_default_is_at_least_as_good_as_comfyui_stock_unsampling(ref, steps):
    stock, ddim = cell(ref, "stock FlipSigmas+euler", steps), cell(ref, "DDIM", steps)
    if ref[7] == "sd3-mmdit-flow" and stock["psnr"] != stock["psnr"]:
        # a flow model's schedule tops at sigma 1, where the host's sampler divides the result by 1 - sigma: stock
        # unsampling returns inf there (README); the pack's DDIM must still work
        assert ddim["psnr"] > 10, ddim
        return
    assert ddim["psnr"] >= stock["psnr"] - 0.3, (ddim["psnr"], stock["psnr"])
    assert ddim["fwd"] == steps


# The targets are +25 / +18 dB; measured on 8 images (README): EPS +31.3 / +15.9, flow +21.3 / +17.4 — so
# the asserted floors are those measurements less a margin, not the targets (three of the four are missed).
EXACT_FLOORS = {"sd-unet-eps": {10: 25.0, 4: 14.0}, "sd3-mmdit-flow": {10: 19.0, 4: 15.0}}


@pytest.mark.parametrize("steps", [10, 4])
def test_exact_balanced_beats_ddim_within_three_evaluations_per_step(ref, steps):
    margin = EXACT_FLOORS[ref[7]][steps]
    ddim, r = cell(ref, "DDIM", steps), cell(ref, "Exact balanced", steps)
    assert r["psnr"] >= ddim["psnr"] + margin, (r["psnr"], ddim["psnr"])
    assert r["fwd"] <= 3 * ddim["fwd"]


@pytest.mark.parametrize("steps, margin", [(10, 15.0), (4, 10.0)])
def test_gnri_default_is_fast_and_far_better_than_ddim(ref, steps, margin):
    ddim, r = cell(ref, "DDIM", steps), cell(ref, "GNRI quasi-newton", steps)
    assert r["psnr"] >= ddim["psnr"] + margin, (r["psnr"], ddim["psnr"])
    assert r["fwd"] <= 3 * ddim["fwd"] and r["bwd"] == 0


@pytest.mark.parametrize("steps, floor", [(10, 45.0), (4, 40.0)])
def test_preciseinv_precise_reaches_its_floor_far_above_ddim(ref, steps, floor):
    precise = cell(ref, "PreciseInv precise", steps)
    ddim = cell(ref, "DDIM", steps)
    assert precise["psnr"] >= floor, precise
    assert precise["psnr"] > ddim["psnr"] + 15


def test_preciseinv_default_lbfgs_beats_the_papers_gradient_descent(ref):
    """The node's default optimiser (L-BFGS, the pack's choice) against the paper's gradient descent at the same
    threshold and 50-update cap. Measured on 8 images (README): T=4 EPS 57.9 vs 48.9 dB, flow 46.4 vs 40.1."""
    lbfgs, gd = cell(ref, "PreciseInv precise", 4), cell(ref, "PreciseInv precise, gd", 4)
    assert lbfgs["psnr"] >= gd["psnr"] + 3.0, (lbfgs["psnr"], gd["psnr"])
    assert lbfgs["fwd"] + lbfgs["bwd"] <= 1.1 * (gd["fwd"] + gd["bwd"]), (lbfgs, gd)


def test_easyinv_costs_what_ddim_costs(ref):
    for steps in (10, 4):
        ddim, easy = cell(ref, "DDIM", steps), cell(ref, "EasyInv", steps)
        assert easy["fwd"] == ddim["fwd"]


def test_auto_scheduler_at_two_steps_beats_karras(ref):
    """At T=2 karras spends its only middle level on sigma_min; "auto" takes sgm_uniform there on EPS / V models.
    Measured on 8 images (README): DDIM 5.9 -> 12.5 dB, Exact balanced 11.9 -> 22.0 dB on the EPS model."""
    if ref[7] == "sd3-mmdit-flow":
        pytest.skip("flow models: auto is simple at every T (karras is not used)")
    benchmark, pack, model, clip, vae, images, _, _ = ref
    common = sys.modules[pack.__name__ + ".nodes.common"]
    psnr = {}
    for sched in ("karras", common.DEFAULT_SCHEDULER):
        old, common.DEFAULT_SCHEDULER = common.DEFAULT_SCHEDULER, sched    # what the benchmark's cells use
        try:
            psnr[sched] = {label: benchmark.run_cell(pack, label, node, params, model, clip, vae, images, 2, "cpu")
                           ["psnr"] for label, node, params in benchmark.METHODS if label in ("DDIM", "Exact balanced")}
        finally:
            common.DEFAULT_SCHEDULER = old
    auto, karras = psnr[common.DEFAULT_SCHEDULER], psnr["karras"]
    assert auto["DDIM"] > karras["DDIM"] + 3 and auto["Exact balanced"] > karras["Exact balanced"] + 5, psnr


def test_flow_two_step_schedule_damping(ref):
    """At T=2 a flow model's first step (σ 0 → 0.62) is so large that the plain fixed-point iteration overshoots on the
    image's content (steps.relaxation). Measured on 8 images (README): DDIM 15.3 dB, Exact balanced 27.5 (damping off
    22.0; 18.1 before the solver's secant safeguard), GNRI default 27.3 — the issue's +10 dB at T=2 met on the flow
    model. On the 2 images here: 13.7, 26.2 (off 22.3), 26.1. EPS / V models are never damped."""
    if ref[7] != "sd3-mmdit-flow":
        pytest.skip("damping applies to flow (CONST) models only; the EPS model runs the plain iteration")
    ddim, off = cell(ref, "DDIM", 2), cell(ref, "Exact balanced, damping off", 2)
    exact, gnri = cell(ref, "Exact balanced", 2), cell(ref, "GNRI quasi-newton", 2)
    assert exact["psnr"] >= off["psnr"] + 2.0, (exact["psnr"], off["psnr"])
    assert gnri["psnr"] >= ddim["psnr"] + 10.0 and exact["psnr"] >= ddim["psnr"] + 10.0, (ddim, exact, gnri)
    assert exact["fwd"] == off["fwd"] <= 3 * ddim["fwd"] and gnri["fwd"] <= 3 * ddim["fwd"]
