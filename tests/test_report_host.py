"""The Inversion Report node: metrics against hand-computed values, the table and the plot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import host
from host import run_workflow
from test_nodes_host import invert_and_replay, with_defaults


def images(seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 32, 32, 3, generator=g)
    b = (a + noise * torch.randn(a.shape, generator=g)).clamp(0, 1)
    return a, b


def test_psnr_and_ssim_are_measured_per_item():
    a, b = images()
    node = host.node_class("InversionReport")()
    out = node.report(a, b)
    table, plot = out["result"]
    want = [10 * math.log10(1 / (a[i] - b[i]).pow(2).mean().item()) for i in range(2)]
    for i, w in enumerate(want):
        assert f"| {i} | {w:.2f} |" in table
    same = node.report(a, a.clone())["result"][0]
    assert "| 0 | inf | 1.0000 |" in same
    assert plot.shape == (1, 256, 512, 3) and 0 <= plot.min() and plot.max() <= 1
    assert out["ui"]["text"] == [table]


def test_the_report_shows_its_plot_on_the_node():
    """The shipped graphs leave the report's outputs unconnected: its plot is saved where the host's PreviewImage
    saves (the temp folder) and returned as the node's ui images, which the page shows on the node."""
    from comfy.cmd import folder_paths
    from PIL import Image

    out = host.node_class("InversionReport")().report(*images())
    plot = out["result"][1]
    (shown,) = out["ui"]["images"]
    assert shown["type"] == "temp" and shown["subfolder"] == ""
    saved = torch.from_numpy(np.asarray(Image.open(Path(folder_paths.get_temp_directory()) / shown["filename"])))
    assert saved.shape == (256, 512, 3)
    assert torch.equal(saved, (plot[0] * 255).round().to(torch.uint8))


def test_report_shows_cost_and_residuals_of_an_inversion():
    out = run_workflow(invert_and_replay(method="ExactInvert", extra={
        "preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}))
    inv = out["invert"][0]
    a, b = (x[:1] for x in images(1))            # one image, as the inversion (the report checks it)
    table, plot = host.node_class("InversionReport")().report(a, b, inv)["result"]
    assert "method: exact" in table and "forward" in table and "per-step residual" in table
    assert "not measured" not in table
    assert (plot < 0.9).any()                                      # bars were drawn
    ddim = run_workflow(invert_and_replay())["invert"][0]
    with pytest.raises(ValueError, match="inverted_latent: the inversion is of 1 image"):
        host.node_class("InversionReport")().report(*images(1), ddim)    # 2 images: another inversion's record
    assert "not measured by this method" in host.node_class("InversionReport")().report(a, b, ddim)["result"][0]


def test_mismatched_images_name_the_input():
    a, _ = images()
    try:
        host.node_class("InversionReport")().report(a, a[:1])
    except ValueError as e:
        assert "reconstructed" in str(e)
    else:
        raise AssertionError("no error")


# ------------------------------------------------------------------------ issue 15: the report does not cry wolf
def reference_prompt(method, extra, cfg=1.0, steps=10, scheduler="karras", image="00_cat.png"):
    """Invert a bundled held-out image of the reference model, replay it, report (through the executor)."""
    prompt = {
        "load": with_defaults({"class_type": "InversionReferenceModelLoader", "inputs": {}}),
        "img": {"class_type": "LoadInversionReferenceImage", "inputs": {"image": image}},
        "src": {"class_type": "CLIPTextEncode", "inputs": {"text": "cat", "clip": ["load", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["load", 2]}},
        "invert": with_defaults({"class_type": method, "inputs": {
            "model": ["load", 0], "positive": ["src", 0], "negative": ["neg", 0], "latent": ["enc", 0],
            "steps": steps, "scheduler": scheduler, "cfg": cfg, "denoise": 1.0, **extra}}),
        "replay": {"class_type": "InvertedLatentSampler", "inputs": {
            "model": ["load", 0], "positive": ["src", 0], "negative": ["neg", 0], "cfg": cfg,
            "inverted_latent": ["invert", 0], "correction_strength": 0.0, "correction_start_step": 0,
            "correction_end_step": -1}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["replay", 0], "vae": ["load", 2]}},
        "report": {"class_type": "InversionReport", "inputs": {
            "original": ["img", 0], "reconstructed": ["dec", 0], "inverted_latent": ["invert", 0]}},
    }
    return prompt


BALANCED = {"preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}


def psnr_of(out) -> float:
    return 10 * math.log10(1 / (out["dec"][0] - out["img"][0]).pow(2).mean().item())


@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_budgeted_exact_reports_its_budget_not_missed_tolerance(preset):
    out = run_workflow(reference_prompt("ExactInvert", dict(BALANCED, preset=preset)))
    table = out["report"][0]
    p = psnr_of(out)
    assert p > 40, p                                                  # a good reconstruction ...
    assert "missed their tolerance" not in table                      # ... is not reported as failing
    assert f"promise: at most {3 if preset == 'balanced' else 2} model evaluations per step (preset {preset})" \
        in table, table
    assert "bad steps: none" in table and "BAD STEPS" not in table, table
    assert "100.0% of the model's sigma_max" in table


def test_real_failure_is_singled_out():
    """cfg 30 at inversion and replay: the solve cannot follow (measured 10.9 dB on 8 images); the report says so."""
    out = run_workflow(reference_prompt("ExactInvert", BALANCED, cfg=30.0))
    table = out["report"][0]
    assert psnr_of(out) < 20, psnr_of(out)
    line = next(l for l in table.splitlines() if l.startswith("BAD STEPS"))
    assert "of DDIM's first residual" in line, line
    plot = out["report"][1]
    assert (plot[0, :, :, 0] > 0.7).logical_and(plot[0, :, :, 2] < 0.3).any()       # red bars drawn


@pytest.mark.parametrize("method", ["ExactInvert", "GNRIInvert"])
def test_one_huge_first_step_is_singled_out_at_inversion_and_in_the_report(method, caplog):
    """One step (sigma 0 -> sigma_max) at the budgeted defaults: 9.5 dB, and neither the inversion nor the report
    said anything (the residual, 2.0, is 14 % of that step's size: the step-size rule passed it). The first step's
    residual is what the replay's last step misses the image by; against the image latent's RMS it is 672 %."""
    from test_editing_host import warnings_of

    extra = BALANCED if method == "ExactInvert" else {}
    caplog.clear()
    out = run_workflow(reference_prompt(method, extra, steps=1))
    table = out["report"][0]
    assert psnr_of(out) < 15, psnr_of(out)
    line = next(l for l in table.splitlines() if l.startswith("BAD STEPS"))
    assert "step 1: residual" in line and "of the image latent's RMS" in line, line
    said = warnings_of(caplog, "inversion: the first step (sigma 0 -> 14.61) was left with a residual")
    assert len(said) == 1, warnings_of(caplog)
    caplog.clear()                        # the same node at four steps: 36 dB, nothing said
    out = run_workflow(reference_prompt(method, extra, steps=4))
    assert psnr_of(out) > 30 and "bad steps: none" in out["report"][0], out["report"][0]
    assert warnings_of(caplog, "the first step (sigma 0") == []


@pytest.mark.parametrize("method", ["ExactInvert", "GNRIInvert"])
def test_a_huge_step_above_a_tiny_lowest_one_is_singled_out_too(method, caplog):
    """karras at two steps: sigma 0 -> 0.029 -> 14.61. The first step is solved (residual 0.8 % of the image), the
    second is left with a residual of ~3x the image latent's RMS, which the replay lands at sigma 0.029 and carries
    down to the image: 10.8 dB in pixels (2.4 on the latent), and neither the inversion nor the report said anything (the first-step rule looked at
    step 1 only, the step-size rule passed step 2: 7 % of that huge step). Three karras steps (the residual carried
    down 28 %) stay under the limit: not flagged."""
    from test_editing_host import warnings_of

    extra = BALANCED if method == "ExactInvert" else {}
    caplog.clear()
    out = run_workflow(reference_prompt(method, extra, steps=2))
    assert psnr_of(out) < 15, psnr_of(out)
    line = next(l for l in out["report"][0].splitlines() if l.startswith("BAD STEPS"))
    assert "step 2: residual" in line and "step 1:" not in line and "as the replay carries it down" in line, line
    said = warnings_of(caplog, "inversion: step 2 (sigma 0.02917 -> 14.61) was left with a residual of up to")
    assert len(said) == 1, warnings_of(caplog)
    caplog.clear()
    out = run_workflow(reference_prompt(method, extra, steps=3))
    assert psnr_of(out) > 20 and "bad steps: none" in out["report"][0], (psnr_of(out), out["report"][0])
    assert warnings_of(caplog, "was left with a residual") == []

def test_a_one_evaluation_step_is_the_ddim_step_and_not_judged():
    """Budget 1 stores the DDIM step itself; its recorded residual is that of the DDIM guess (100 % of the step's
    size by construction), so judging it would flag every step of what is plain DDIM (which is not judged). The
    same image at budget 2 is judged as usual."""
    one = dict(BALANCED, preset="custom", budget=1)
    table = run_workflow(reference_prompt("ExactInvert", one, steps=10))["report"][0]
    assert "BAD STEPS" not in table, table
    assert "measured at the best evaluated point" in table
    table = run_workflow(reference_prompt("ExactInvert", dict(one, budget=2), cfg=30.0))["report"][0]
    assert "BAD STEPS" in table, table


def test_tolerance_presets_still_list_missed_steps():
    tight = dict(BALANCED, preset="custom", tolerance=1e-9, budget=2)
    table = run_workflow(reference_prompt("ExactInvert", tight, steps=4))["report"][0]
    assert "promise: RMS residual <= 1e-09 per step (up to 2 evaluations)" in table
    assert "steps that missed their tolerance: 1, 2, 3, 4" in table, table


def test_stalled_first_step_on_the_flow_model_is_named():
    """On the flow reference model's first step (sigma 0 -> 0.155 at T=10) the fixed-point iteration plateaus
    (~2e-3 after 150 evaluations, README). With the stall stop the step ends early and the report names it."""
    prompt = reference_prompt("ExactInvert", dict(BALANCED, preset="custom", tolerance=1e-6, budget=40, stall=6),
                              scheduler="simple")
    prompt["load"]["inputs"]["model"] = "sd3-mmdit-flow"
    out = run_workflow(prompt)
    table = out["report"][0]
    line = next(l for l in table.splitlines() if l.startswith("STALLED steps"))
    assert "): step 1: stalled: item(s) [0]" in line and "; step " not in line, line
    first = out["invert"][0]["inversion"]["step_stats"][0]
    assert first["iterations"] < 40 and first["converged"] is False, first["iterations"]
    assert psnr_of(out) > 45, psnr_of(out)                            # stopped at the plateau, not before it


def test_short_schedule_and_changed_latent_are_reported():
    prompt = reference_prompt("DDIMInvert", {}, steps=4, scheduler="ddim_uniform")
    prompt["flip"] = {"class_type": "LatentFlip", "inputs": {"samples": ["invert", 0],
                                                             "flip_method": "y-axis: horizontally"}}
    prompt["report"]["inputs"]["inverted_latent"] = ["flip", 0]
    table = run_workflow(prompt)["report"][0]
    assert "WARNING: the inversion stops at sigma 4.117, 28.2% of the model's sigma_max 14.61" in table, table
    assert ("WARNING: inverted_latent's samples are no longer the noise this record describes (flipped left-right)"
            in table), table


def test_report_of_another_inversion_is_an_error():
    prompt = reference_prompt("DDIMInvert", {}, steps=4)
    prompt["two"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img", 0], "image2": ["img", 0]}}
    prompt["report"]["inputs"].update(original=["two", 0], reconstructed=["two", 0])
    with pytest.raises(host.WorkflowError) as err:
        run_workflow(prompt)
    assert err.value.exception_message == ("inverted_latent: the inversion is of 1 image(s) but original has 2: the "
                                           "record belongs to another inversion")


def test_gnri_reports_its_budget():
    out = run_workflow(reference_prompt("GNRIInvert", {}))               # the node's defaults
    table = out["report"][0]
    assert "promise: at most 3 model evaluations per step (variant quasi-newton)" in table, table
    assert "missed their tolerance" not in table and "bad steps: none" in table, table


def test_bdia_starter_is_not_judged_and_its_exact_replay_is_not_flagged():
    """BDIA's pair replay lands on the image whatever its starter step's residual: on this image the starter ends
    at ~60 % of DDIM's first residual, which the 50 % rule used to flag as BAD STEPS under an exact replay."""
    out = run_workflow(reference_prompt("BDIAInvert", {}, image="05_bricks.png"))
    table = out["report"][0]
    assert (out["dec"][0] - out["img"][0]).abs().max().item() < 1e-5        # exact (the VAE's own round trip)
    assert "BAD STEPS" not in table and "bad steps: not judged" in table, table
    assert "per-step residual" in table and "residual not measured" not in table


def test_gnri_reference_code_is_not_judged_on_a_residual_its_stored_latent_does_not_have():
    """The reference code's residual is measured at the sign step's iterate z_k, but it stores f(z_k), which lands
    far closer (a tiny model at T=4: 1.1 % / 11 % of the step against 79 % / 73 % read at z_k)."""
    table = run_workflow(reference_prompt("GNRIInvert", {"variant": "reference code"}, steps=4))["report"][0]
    assert "BAD STEPS" not in table and "bad steps: not judged (the residual is measured at the sign step" in table
    assert "one map step before the stored latent" in table


def test_the_residual_label_says_where_it_was_measured():
    """GNRI newton keeps its best evaluated iterate: its residual is the stored latent's own."""
    table = run_workflow(reference_prompt("GNRIInvert", {"variant": "newton"}, steps=4))["report"][0]
    assert "measured at the stored latent)" in table and "one map step before" not in table, table


def test_where_a_residual_was_measured_and_whether_it_is_judged_come_from_the_solver_not_the_method_name():
    """A method the report has never heard of is labelled and judged by what its steps say (StepStats.residual_at,
    StepStats.not_judged), so a new solver cannot be mislabelled by a list of names in the report."""
    import copy

    inv = run_workflow(invert_and_replay(method="ExactInvert", extra={
        "preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}))["invert"][0]
    a, b = (x[:1] for x in images(1))
    report = host.node_class("InversionReport")().report
    renamed = copy.deepcopy(inv)
    renamed["inversion"]["method"] = "a future method"
    assert "one map step before the stored latent" in report(a, b, renamed)["result"][0]
    for s in renamed["inversion"]["step_stats"]:
        s["residual_at"] = "stored"
    table = report(a, b, renamed)["result"][0]
    assert "measured at the stored latent)" in table and "one map step before" not in table, table
    renamed["inversion"]["step_stats"][1]["not_judged"] = "its replay does not follow this residual"
    table = report(a, b, renamed)["result"][0]
    assert "bad steps: not judged (its replay does not follow this residual)" in table, table


def test_an_rgba_original_is_compared_on_its_colour_channels():
    """VAEEncode encodes an RGBA IMAGE's colour channels; its replay decodes to RGB. The report refused the pair
    (shape (…, 3) differs from (…, 4)); it compares the colour channels."""
    a, b = images()
    rgba = torch.cat([a, torch.ones_like(a[..., :1])], -1)
    table = host.node_class("InversionReport")().report(rgba, b)["result"][0]
    assert table == host.node_class("InversionReport")().report(a, b)["result"][0]
