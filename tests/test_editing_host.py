"""Editing through the host: SAMPLER twins in SamplerCustomAdvanced chains, source correction, masks, partial
inversion, batches of prompts."""
from __future__ import annotations

import pytest
import torch

import host
from host import WorkflowError, run_workflow
from test_nodes_host import invert_and_replay, rms

EXACT = {"preset": "exact", "tolerance": 1e-4, "budget": 3, "memory": 3}


def add_custom_chain(prompt, sampler_node, sampler_inputs):
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "ddim_uniform", "steps": 8, "denoise": 1.0}}
    prompt["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 1.0}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["inv_sampler"] = {"class_type": sampler_node, "inputs": sampler_inputs}
    prompt["custom"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["inv_sampler", 0], "sigmas": ["flip", 0],
        "latent_image": ["latent", 0]}}
    prompt["replay_sampler"] = {"class_type": "InvertedReplaySampler", "inputs": {}}
    prompt["custom_replay"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["replay_sampler", 0], "sigmas": ["sched", 0],
        "latent_image": ["custom", 0]}}
    return prompt


@pytest.mark.parametrize("node, method, extra", [("DDIMInvertSampler", "DDIMInvert", {}),
                                                 ("ExactInvertSampler", "ExactInvert", EXACT)])
def test_sampler_custom_advanced_matches_the_dedicated_node(node, method, extra):
    out = run_workflow(add_custom_chain(invert_and_replay(method=method, extra=extra), node, extra))
    dedicated = out["invert"][0]["samples"]
    chained = out["custom"][0]["samples"]
    assert torch.allclose(chained, dedicated, atol=1e-5, rtol=0), (chained - dedicated).abs().max()
    assert torch.allclose(out["custom_replay"][0]["samples"], out["replay"][0]["samples"], atol=1e-5, rtol=0)


def test_easyinv_sampler_twin_resolves_its_preset_from_the_model():
    extra = {"preset": "auto", "eta": 0.5, "window_start": 0.05, "window_end": 0.25, "variant": "paper"}
    prompt = add_custom_chain(invert_and_replay(method="EasyInvInvert", steps=20, extra=extra), "EasyInvInvertSampler",
                              extra)
    prompt["sched"]["inputs"]["steps"] = 20
    out = run_workflow(prompt)
    assert torch.allclose(out["custom"][0]["samples"], out["invert"][0]["samples"], atol=1e-5, rtol=0)


def _recon_error(**replay_inputs):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["replay"]["inputs"].update(replay_inputs)
    out = run_workflow(prompt)
    return rms(out["replay"][0]["samples"], out["latent"][0]["samples"]), out


def test_source_correction_reconstructs_at_high_cfg_as_at_cfg_one():
    base, _ = _recon_error()
    drift, _ = _recon_error(cfg=7.5)
    corrected, out = _recon_error(cfg=7.5, correction_strength=1.0)
    assert drift > 50 * base, (drift, base)
    assert corrected <= base * 1.5 + 1e-5, (corrected, base)
    half, _ = _recon_error(cfg=7.5, correction_strength=0.5)
    assert corrected < half < drift
    limited, _ = _recon_error(cfg=7.5, correction_strength=1.0, correction_start_step=0, correction_end_step=4)
    assert corrected < limited < drift
    assert len(out.progress_for("replay")) == 16          # offsets pass + replay pass


def test_masked_edit_keeps_the_outside_and_edits_the_inside():
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["edit_prompt"] = {"class_type": "InversionTestConditioning",
                             "inputs": {"seed": 99, "batch": 1, "tokens": 4, "dim": 16}}
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    recon_err = rms(out["replay"][0]["samples"], x0)
    sampler = host.node_class("InvertedLatentSampler")()
    model, neg, inv = out["model"][0], out["negative"][0], out["invert"][0]
    edit_prompt = out["edit_prompt"][0]
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0                                    # edit the right half (pixel-space mask, resized)
    with torch.inference_mode():
        edited = sampler.sample(model, edit_prompt, neg, 3.0, inv, mask=mask)[0]["samples"]
        unmasked = sampler.sample(model, edit_prompt, neg, 3.0, inv)[0]["samples"]
    left, right = (slice(None), slice(None), slice(None), slice(0, 8)), (Ellipsis, slice(8, 16))
    assert rms(edited[left], x0[left]) <= recon_err + 1e-6
    assert rms(edited[right], x0[right]) > 10 * max(recon_err, 1e-4)
    assert rms(edited[right], x0[right]) > 0.3 * rms(unmasked[right], x0[right])   # the inside is edited as much
    feather = torch.linspace(0, 1, 64).repeat(64, 1)[None]                      # soft mask, left 0 → right 1
    with torch.inference_mode():
        soft = sampler.sample(model, edit_prompt, neg, 3.0, inv, mask=feather)[0]["samples"]
    col_err = (soft - x0).pow(2).mean(dim=(0, 1, 2)).sqrt()
    assert col_err[0] < col_err[-1] and torch.isfinite(soft).all()


def test_noise_mask_on_the_latent_is_honoured():
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    prompt["invert"]["inputs"]["latent"] = ["masked", 0]
    prompt["replay"]["inputs"]["cfg"] = 5.0                  # would drift without the mask
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    assert rms(out["replay"][0]["samples"], x0) < 1e-5       # mask 0 everywhere: pinned to the trajectory


def test_partial_inversion_starts_lower_and_replays_from_there():
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["invert"]["inputs"]["denoise"] = 0.5
    out = run_workflow(prompt)
    full = run_workflow(invert_and_replay(method="ExactInvert", extra=EXACT))
    sig, sig_full = out["invert"][1], full["invert"][1]
    assert len(sig) == len(sig_full) and sig[0] < 0.5 * sig_full[0]
    assert rms(out["replay"][0]["samples"], out["latent"][0]["samples"]) < 1e-3


def test_batch_of_prompts_edits_each_image():
    prompt = invert_and_replay(batch=2)
    prompt["two"] = {"class_type": "InversionTestConditioning", "inputs": {"seed": 7, "batch": 2, "tokens": 4,
                                                                             "dim": 16}}
    prompt["replay"]["inputs"]["positive"] = ["two", 0]
    prompt["replay"]["inputs"]["cfg"] = 2.0
    out = run_workflow(prompt)
    assert out["replay"][0]["samples"].shape[0] == 2
    prompt["two"]["inputs"]["batch"] = 3
    with pytest.raises(WorkflowError, match="positive"):
        run_workflow(prompt)


@pytest.mark.parametrize("inputs, fragment", [
    ({"correction_strength": 1.0, "correction_start_step": 8}, "correction_start_step"),
    ({"correction_strength": 1.0, "correction_start_step": 2, "correction_end_step": 2}, "correction_end_step"),
    ({"correction_strength": 1.0, "correction_end_step": 99}, "correction_end_step"),
])
def test_bad_correction_ranges_name_the_input(inputs, fragment):
    prompt = invert_and_replay()
    prompt["replay"]["inputs"].update(inputs)
    with pytest.raises(WorkflowError, match=fragment):
        run_workflow(prompt)


def test_bad_strength_mask_and_missing_trajectory():
    out = run_workflow(invert_and_replay())
    sampler = host.node_class("InvertedLatentSampler")()
    model, pos, neg, inv = out["model"][0], out["positive"][0], out["negative"][0], out["invert"][0]
    with torch.inference_mode():
        with pytest.raises(ValueError, match="correction_strength"):
            sampler.sample(model, pos, neg, 1.0, inv, correction_strength=1.5)
        with pytest.raises(ValueError, match="mask batch is 3"):
            sampler.sample(model, pos, neg, 1.0, inv, mask=torch.ones(3, 16, 16))
        stripped = dict(inv, inversion={k: v for k, v in inv["inversion"].items() if k != "states"})
        with pytest.raises(ValueError, match="stored trajectory"):
            sampler.sample(model, pos, neg, 1.0, stripped, correction_strength=1.0)
    assert "states" in inv["inversion"]                       # the cached output was not modified
