"""Editing through the host: SAMPLER twins in SamplerCustomAdvanced chains, source correction, masks, partial
inversion, batches of prompts."""
from __future__ import annotations

import pytest
import torch

import host
from host import WorkflowError, run_workflow
from test_nodes_host import invert_and_replay, rms, with_defaults

EXACT = {"preset": "exact", "tolerance": 1e-4, "budget": 3, "memory": 3}


def add_custom_chain(prompt, sampler_node, sampler_inputs):
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "ddim_uniform", "steps": 8, "denoise": 1.0}}
    prompt["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 1.0}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["inv_sampler"] = with_defaults({"class_type": sampler_node, "inputs": dict(sampler_inputs)})
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
    if replay_inputs.get("correction_strength"):     # reconstruct: the source prompt is positive and source_positive
        prompt["replay"]["inputs"]["source_positive"] = ["positive", 0]
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


def test_noise_mask_on_the_latent_is_honoured(caplog):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    prompt["invert"]["inputs"]["latent"] = ["masked", 0]
    prompt["replay"]["inputs"]["cfg"] = 5.0                  # would drift without the mask
    prompt["stock"] = {"class_type": "KSamplerAdvanced", "inputs": {      # a stock sampler on the inverted LATENT
        "model": ["model", 0], "add_noise": "disable", "noise_seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "karras", "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["invert", 0],
        "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    prompt["invert"]["inputs"].update(steps=4, scheduler="karras")
    out = run_workflow(prompt)
    x0 = out["latent"][0]["samples"]
    assert rms(out["replay"][0]["samples"], x0) < 1e-5       # mask 0 everywhere: pinned to the trajectory
    assert not warnings_of(caplog, "cfg: the positive conditioning")   # ... so cfg 5 is no mismatch there
    # the mask lives in the record, not on the LATENT: a stock sampler used to inpaint with it, keeping the masked-out
    # area as the inverted noise (the whole image here: rms ~ sigma_max)
    assert "noise_mask" not in out["invert"][0]
    prompt["invert_plain"] = dict(prompt["invert"], inputs=dict(prompt["invert"]["inputs"], latent=["latent", 0]))
    prompt["stock_plain"] = dict(prompt["stock"], inputs=dict(prompt["stock"]["inputs"], latent_image=["invert_plain", 0]))
    out = run_workflow(prompt)
    assert torch.equal(out["stock"][0]["samples"], out["stock_plain"][0]["samples"])   # as if there were no mask


def test_a_noise_mask_in_an_invert_nodes_record_is_named_by_the_replay_sampler(caplog):
    """SetLatentNoiseMask before an Invert node, then SamplerCustomAdvanced + the Inverted Replay SAMPLER on its LATENT:
    the mask lives in the record, which the SAMPLER never sees, so the whole image was edited without a word (the
    area outside the mask 0.67 relative RMS from the image on tiny SD1, 0.23 on SD3 + BDIA, instead of 0)."""
    prompt = add_custom_chain(invert_and_replay(method="ExactInvert", extra=EXACT), "ExactInvertSampler", EXACT)
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    prompt["edit_prompt"] = {"class_type": "InversionTestConditioning",
                             "inputs": {"seed": 99, "batch": 1, "tokens": 4, "dim": 16}}
    prompt["edit_guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["model", 0], "positive": ["edit_prompt", 0], "negative": ["negative", 0], "cfg": 3.0}}
    prompt["node_replay"] = dict(prompt["custom_replay"], inputs=dict(
        prompt["custom_replay"]["inputs"], guider=["edit_guider", 0], latent_image=["invert", 0]))
    about = "inverted from a LATENT with a noise_mask"
    caplog.clear()
    run_workflow(prompt, ["node_replay"])
    assert not warnings_of(caplog, about)                           # no mask: nothing to say
    prompt["invert"]["inputs"]["latent"] = ["masked", 0]
    caplog.clear()
    out = run_workflow(prompt, ["node_replay", "replay", "latent"])
    assert len(warnings_of(caplog, about)) == 1, warnings_of(caplog)
    x0 = out["latent"][0]["samples"]         # (the mask is not applied: the edit moved the image; the node pins it)
    assert rms(out["node_replay"][0]["samples"], x0) > 100 * rms(out["replay"][0]["samples"], x0)


def test_a_noise_mask_on_the_sampler_twins_latent_is_named_at_inversion(caplog):
    """SamplerCustomAdvanced hands the latent's noise_mask to the inversion SAMPLER (which inverts the whole image)
    and keeps it on its output LATENT; the pack says so where it happens, not only when the replay refuses it."""
    prompt = add_custom_chain(invert_and_replay(), "DDIMInvertSampler", {})
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    prompt["custom"]["inputs"]["latent_image"] = ["masked", 0]
    with pytest.raises(WorkflowError, match="noise_mask"):          # the replay SAMPLER refuses it, as before
        run_workflow(prompt, outputs=["custom_replay"])
    assert len(warnings_of(caplog, "noise_mask does not limit the inversion")) == 1


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


# ---------------------------------------------------------------------------- issue 15: no silent wrong results
WARN_LOGGER = "comfyui-inversion"


def warnings_of(caplog, about: str = "") -> list:
    """The pack's logged warnings (those containing ``about``)."""
    return [r.getMessage() for r in caplog.records
            if r.name == WARN_LOGGER and r.levelname == "WARNING" and about in r.getMessage()]


def test_source_correction_needs_source_positive():
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["replay"]["inputs"].update(cfg=3.0, correction_strength=1.0)
    with pytest.raises(WorkflowError) as err:
        run_workflow(prompt)
    assert err.value.class_type == "InvertedLatentSampler"
    assert err.value.exception_message.startswith("source_positive: source correction (correction_strength > 0)")
    assert "connect it to both positive and source_positive" in err.value.exception_message


def test_correction_step_range_is_not_checked_at_strength_zero():
    prompt = invert_and_replay()
    prompt["replay"]["inputs"].update(correction_strength=0.0, correction_start_step=50, correction_end_step=3)
    plain = run_workflow(invert_and_replay())["replay"][0]["samples"]
    assert torch.equal(run_workflow(prompt)["replay"][0]["samples"], plain)


def _latent_op(op):
    if op == "flip":
        return {"class_type": "LatentFlip", "inputs": {"samples": ["invert", 0], "flip_method": "y-axis: horizontally"}}
    if op == "rotate":
        return {"class_type": "LatentRotate", "inputs": {"samples": ["invert", 0], "rotation": "180 degrees"}}
    return {"class_type": "LatentMultiply", "inputs": {"samples": ["invert", 0],
                                                       "multiplier": 1.0002 if op == "nudge" else 1.05}}


# nudge: 2e-4 is far above float32 storage rounding (1e-7) and cost an Exact replay 82 -> 53 dB; it was taken for the
# inverted noise (and the Inverted Replay SAMPLER silently swapped in the stored top)
OPS = [("flip", "flipped left-right"), ("rotate", "rotated by 180 degrees"), ("multiply", "multiplied by 1.05"),
       ("nudge", "multiplied by 1.0002")]


@pytest.mark.parametrize("op, words", OPS)
@pytest.mark.parametrize("use", ["correction", "mask"])
def test_latent_changed_after_inversion_is_an_error_with_correction_or_mask(op, words, use):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["op"] = _latent_op(op)
    prompt["replay"]["inputs"]["inverted_latent"] = ["op", 0]
    if use == "correction":
        prompt["replay"]["inputs"].update(cfg=3.0, correction_strength=1.0, source_positive=["positive", 0])
    else:
        prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}}
        prompt["replay"]["inputs"]["mask"] = ["mask", 0]
    with pytest.raises(WorkflowError) as err:
        run_workflow(prompt)
    msg = err.value.exception_message
    assert msg.startswith("inverted_latent: its samples are no longer the noise that was inverted"), msg
    assert words in msg and ("Source correction" if use == "correction" else "The mask") in msg, msg


@pytest.mark.parametrize("op, words", OPS)
def test_latent_changed_after_inversion_is_replayed_with_a_warning_without_them(op, words, caplog):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["op"] = _latent_op(op)
    prompt["replay"]["inputs"]["inverted_latent"] = ["op", 0]
    caplog.clear()
    out = run_workflow(prompt)
    assert torch.isfinite(out["replay"][0]["samples"]).all()
    found = [w for w in warnings_of(caplog) if "no longer the noise that was inverted" in w]
    assert len(found) == 1 and words in found[0], warnings_of(caplog)
    caplog.clear()
    run_workflow(invert_and_replay(method="ExactInvert", extra=EXACT))          # unchanged: not a word
    assert warnings_of(caplog, "inverted_latent") == []


def test_noise_mixed_in_is_a_warning(caplog):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["noise"] = {"class_type": "InversionTestLatent", "inputs": {"seed": 42, "batch": 1, "channels": 4,
                                                                       "size": 16}}
    prompt["small"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["noise", 0], "multiplier": 0.1}}
    prompt["mix"] = {"class_type": "LatentAdd", "inputs": {"samples1": ["invert", 0], "samples2": ["small", 0]}}
    prompt["replay"]["inputs"]["inverted_latent"] = ["mix", 0]
    caplog.clear()
    run_workflow(prompt)
    assert any("changed (relative RMS difference" in w for w in warnings_of(caplog)), warnings_of(caplog)


def test_replay_sampler_checks_latent_and_sigmas(caplog):
    chain = add_custom_chain(invert_and_replay(method="ExactInvert", extra=EXACT), "ExactInvertSampler", EXACT)
    caplog.clear()
    run_workflow(chain)
    assert warnings_of(caplog, "Replay") == []                        # the inverted noise on its own sigmas
    other = dict(chain)
    other["sched6"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "ddim_uniform", "steps": 6, "denoise": 1.0}}
    other["custom_replay"] = dict(chain["custom_replay"], inputs=dict(chain["custom_replay"]["inputs"],
                                                                       sigmas=["sched6", 0]))
    with pytest.raises(WorkflowError) as err:
        run_workflow(other)
    assert err.value.exception_message.startswith("sigmas: this latent was inverted on sigmas ["), err.value
    assert "(8 steps) but the replay got [" in err.value.exception_message
    plain = dict(chain)
    plain["custom_replay"] = dict(chain["custom_replay"], inputs=dict(chain["custom_replay"]["inputs"],
                                                                       latent_image=["latent", 0]))
    caplog.clear()
    run_workflow(plain)
    assert any(w.startswith("[comfyui-inversion] Inverted Replay SAMPLER: latent_image is not the noise (nor a run "
                            "of batch items of it) of any of the last 64 inversions this process remembers")
               for w in warnings_of(caplog)), \
        warnings_of(caplog)
    flipped = dict(chain)
    flipped["lflip"] = {"class_type": "LatentFlip", "inputs": {"samples": ["custom", 0],
                                                              "flip_method": "x-axis: vertically"}}
    flipped["custom_replay"] = dict(chain["custom_replay"], inputs=dict(chain["custom_replay"]["inputs"],
                                                                         latent_image=["lflip", 0]))
    caplog.clear()
    run_workflow(flipped)
    assert any("recent inversion's noise flipped top-bottom" in w for w in warnings_of(caplog)), warnings_of(caplog)
    nudged = dict(chain)        # 2e-4: once taken for the noise itself and silently swapped for the stored top
    nudged["nudge"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["custom", 0], "multiplier": 1.0002}}
    nudged["custom_replay"] = dict(chain["custom_replay"], inputs=dict(chain["custom_replay"]["inputs"],
                                                                        latent_image=["nudge", 0]))
    caplog.clear()
    out = run_workflow(nudged)
    assert any("recent inversion's noise multiplied by 1.0002" in w for w in warnings_of(caplog)), warnings_of(caplog)
    assert not torch.equal(out["custom_replay"][0]["samples"], run_workflow(chain)["custom_replay"][0]["samples"])


def test_all_zero_mask_from_an_rgb_png_is_warned(caplog, tmp_path):
    """LoadImage's MASK of a PNG without alpha is all 0: the masked edit would silently be a reconstruction."""
    import numpy as np
    from PIL import Image

    from comfy.cmd import folder_paths

    name = "issue15_rgb_no_alpha.png"
    path = tmp_path / name
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"), "RGB").save(path)
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": str(path.name)}}
    prompt["edit_prompt"] = {"class_type": "InversionTestConditioning",
                             "inputs": {"seed": 99, "batch": 1, "tokens": 4, "dim": 16}}
    prompt["replay"]["inputs"].update(positive=["edit_prompt", 0], cfg=3.0, mask=["img", 1])
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        caplog.clear()
        out = run_workflow(prompt)
    finally:
        folder_paths.set_input_directory(old)
    assert float(out["img"][1].max()) == 0.0                        # the host's mask really is all 0
    assert any("mask: the mask is 0 everywhere, so nothing is edited" in w for w in warnings_of(caplog)), \
        warnings_of(caplog)


def test_replay_with_a_model_on_another_noise_schedule_is_warned(caplog):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["zsnr"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["model", 0], "sampling": "eps",
                                                                        "zsnr": True}}
    prompt["replay"]["inputs"]["model"] = ["zsnr", 0]
    caplog.clear()
    run_workflow(prompt)
    found = warnings_of(caplog, "model: its noise schedule tops out at sigma")
    assert len(found) == 1 and "the model this latent was inverted with at 14.61" in found[0], warnings_of(caplog)


def test_another_sigma_range_that_feeds_the_network_the_same_timesteps_is_quiet(caplog):
    """ModelSamplingContinuousEDM maps sigma to the timestep 0.25 ln(sigma) whatever its range: sigma_max 80 on the
    replay model and 14.6 on the inversion's replays the stored schedule bit for bit, yet it was warned "the stored
    schedule then means other noise levels". A zsnr table (other timesteps at the same sigmas) stays warned, above."""
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    for name, top in (("edm", 14.6146), ("edm80", 80.0)):
        prompt[name] = {"class_type": "ModelSamplingContinuousEDM", "inputs": {
            "model": ["model", 0], "sampling": "eps", "sigma_max": top, "sigma_min": 0.0292}}
    prompt["invert"]["inputs"]["model"] = ["edm", 0]
    prompt["replay"]["inputs"]["model"] = ["edm", 0]
    prompt["replay80"] = dict(prompt["replay"], inputs=dict(prompt["replay"]["inputs"], model=["edm80", 0]))
    caplog.clear()
    out = run_workflow(prompt, ["replay", "replay80"])
    assert torch.equal(out["replay"][0]["samples"], out["replay80"][0]["samples"])
    assert not warnings_of(caplog, "model:"), warnings_of(caplog)

@pytest.mark.parametrize("sampling", ["x0", "lcm"])
def test_replay_or_edit_with_another_model_sampling_is_an_error(sampling):
    """The host's X0 and LCM sampling subclass EPS, so the model kind alone let them through: replaying an EPS
    inversion with x0 sampling gave 8.8 dB on the reference model, lcm 49 instead of 59, without a word."""
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["patched"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["model", 0],
                                                                           "sampling": sampling, "zsnr": False}}
    prompt["replay"]["inputs"]["model"] = ["patched", 0]
    with pytest.raises(WorkflowError, match="inverted with model sampling"):
        run_workflow(prompt)
    chain = add_custom_chain(invert_and_replay(method="ExactInvert", extra=EXACT), "ExactInvertSampler", EXACT)
    chain["patched"] = prompt["patched"]
    chain["replay_guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["patched", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 1.0}}
    chain["custom_replay"]["inputs"]["guider"] = ["replay_guider", 0]
    with pytest.raises(WorkflowError, match="inverted with model sampling"):
        run_workflow(chain, ["custom_replay"])
    engine = invert_and_replay(method="ExactInvert", extra=EXACT)
    engine["engine"] = with_defaults({"class_type": "InversionEditEngine", "inputs": {
        "model": ["patched", 0], "inverted_latent": ["invert", 0], "source_conditioning": ["positive", 0]}})
    engine["patched"] = prompt["patched"]
    with pytest.raises(WorkflowError, match="inverted with model sampling"):
        run_workflow(engine, ["engine"])


def test_the_same_model_sampling_patched_again_replays_as_before():
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["patched"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["model", 0], "sampling": "eps",
                                                                           "zsnr": False}}
    prompt["replay_patched"] = dict(prompt["replay"], inputs=dict(prompt["replay"]["inputs"], model=["patched", 0]))
    out = run_workflow(prompt)
    assert torch.equal(out["replay_patched"][0]["samples"], out["replay"][0]["samples"])


def test_sigmas_above_the_models_sigma_max_are_an_error_on_flow_and_a_warning_otherwise(caplog):
    """KarrasScheduler's defaults (sigma_max 14.6) are SD1's: on a flow model (sigma <= 1) the inversion ran far
    outside the model (reference model: 24.7 / 13.4 dB against 44.9 / 45.6, no warning); on EPS σ_max 80 it ran
    with no warning either."""
    flow = add_custom_chain(invert_and_replay(kind="flow", method="ExactInvert", extra=EXACT), "ExactInvertSampler",
                            EXACT)
    flow["sched"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 8, "sigma_max": 14.614642,
                                                                  "sigma_min": 0.0291675, "rho": 7.0}}
    with pytest.raises(WorkflowError, match="above this model's sigma_max 1"):
        run_workflow(flow, ["custom"])
    eps = add_custom_chain(invert_and_replay(method="ExactInvert", extra=EXACT), "ExactInvertSampler", EXACT)
    eps["sched"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 8, "sigma_max": 80.0,
                                                                 "sigma_min": 0.0291675, "rho": 7.0}}
    caplog.clear()
    run_workflow(eps, ["custom"])
    assert len(warnings_of(caplog, "starts at sigma 80, above this model's sigma_max 14.61")) == 1, \
        warnings_of(caplog)


@pytest.mark.parametrize("method, node, extra", [("BDIAInvert", "BDIAInvertSampler", {}),
                                                 ("ExactInvert", "ExactInvertSampler", EXACT)])
def test_inverted_replay_sampler_finds_an_item_picked_from_a_batch(method, node, extra):
    """LatentFromBatch between a SAMPLER-twin inversion and the Inverted Replay SAMPLER: the registry matched whole
    batches only, so a picked BDIA item was replayed with the plain step (9.9 dB instead of 124 on the reference
    model) and a pick replayed on other sigmas was not caught."""
    prompt = add_custom_chain(invert_and_replay(method=method, batch=3, extra=extra), node, extra)
    prompt["pick"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["custom", 0], "batch_index": 1,
                                                                  "length": 2}}
    prompt["pick_replay"] = dict(prompt["custom_replay"],
                                 inputs=dict(prompt["custom_replay"]["inputs"], latent_image=["pick", 0]))
    out = run_workflow(prompt, ["pick_replay", "custom_replay", "latent"])
    whole, picked = out["custom_replay"][0]["samples"], out["pick_replay"][0]["samples"]
    assert torch.allclose(picked, whole[1:3], atol=1e-6, rtol=0), (picked - whole[1:3]).abs().max()
    if method == "BDIAInvert":       # the pair state was sliced alike: still exact
        x0 = out["latent"][0]["samples"][1:3]
        assert (picked - x0).pow(2).mean().sqrt() < 1e-5 * x0.pow(2).mean().sqrt()
    prompt["half"] = {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "ddim_uniform",
                                                                 "steps": 4, "denoise": 1.0}}
    prompt["pick_replay"]["inputs"]["sigmas"] = ["half", 0]
    with pytest.raises(WorkflowError, match=r"batch items 1\.\.2 of 3\) was inverted on sigmas"):
        run_workflow(prompt, ["pick_replay"])


@pytest.mark.parametrize("method, node, extra", [("BDIAInvert", "BDIAInvertSampler", {}),
                                                 ("DDIMInvert", "DDIMInvertSampler", {})])
def test_sampler_twins_refuse_a_prompt_batch_that_is_not_the_latents(method, node, extra):
    """One prompt per item, then LatentFromBatch picks item 1 for the Inverted Replay SAMPLER with the batch's guider:
    the host paired the item with prompt 0 (no error, no warning; tiny SD1 + BDIA: 0.11 relative error instead of an
    exact replay). The Invert nodes refuse such a prompt batch; their SAMPLER twins now do too, on both sides."""
    prompt = add_custom_chain(invert_and_replay(method=method, batch=2, extra=extra), node, extra)
    prompt["positive"]["inputs"]["batch"] = 2                      # one prompt per item
    prompt["pick"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["custom", 0], "batch_index": 1,
                                                                  "length": 1}}
    prompt["pick_replay"] = dict(prompt["custom_replay"],
                                 inputs=dict(prompt["custom_replay"]["inputs"], latent_image=["pick", 0]))
    out = run_workflow(prompt, ["custom_replay"])                  # the whole batch with its prompts: fine
    assert out["custom_replay"][0]["samples"].shape[0] == 2
    with pytest.raises(WorkflowError, match=r"positive: the guider's conditioning batch is 2 but the Inverted "
                                            r"Replay SAMPLER got a latent batch of 1"):
        run_workflow(prompt, ["pick_replay"])
    prompt["one"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["latent", 0], "batch_index": 1,
                                                                 "length": 1}}
    prompt["custom"]["inputs"]["latent_image"] = ["one", 0]        # one image inverted with two prompts
    with pytest.raises(WorkflowError, match=r"positive: the guider's conditioning batch is 2 but the .* inversion "
                                            r"SAMPLER got a latent batch of 1"):
        run_workflow(prompt, ["custom"])


def test_noise_handed_to_an_inversion_sampler_is_named_as_unused(caplog):
    """SamplerCustom with add_noise on: inversion and its replay add no noise, and said nothing about it."""
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "ddim_uniform", "steps": 8, "denoise": 1.0}}
    prompt["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    prompt["inv_sampler"] = with_defaults({"class_type": "ExactInvertSampler", "inputs": dict(EXACT)})
    for add_noise in (False, True):
        prompt[f"custom_{add_noise}"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["model", 0], "add_noise": add_noise, "noise_seed": 7, "cfg": 1.0, "positive": ["positive", 0],
            "negative": ["negative", 0], "sampler": ["inv_sampler", 0], "sigmas": ["flip", 0],
            "latent_image": ["latent", 0]}}
    caplog.clear()
    out = run_workflow(prompt, ["custom_False", "custom_True"])
    assert torch.equal(out["custom_False"][0]["samples"], out["custom_True"][0]["samples"])
    assert len(warnings_of(caplog, "the NOISE input (add_noise on / RandomNoise) is not used")) == 1, \
        warnings_of(caplog)


def test_a_cfg_hook_that_sees_the_whole_batch_is_never_given_a_sub_batch():
    """The host's PerpNeg projects with a sum over the whole batch: evaluating only the images that have not converged
    solved another equation (exact preset, cfg 3, 2 images: 35.2 / 55.8 dB while every step reported convergence;
    84.2 / 83.7 with the whole batch). With such a hook (or a guider that overrides predict_noise) every evaluation
    takes the whole batch; without one, converged images still stop paying."""
    import sys as _sys
    pack = host.pack_module()
    bridge = _sys.modules[pack.__name__ + ".nodes.bridge"]
    base = host.tiny_model("eps")
    cond, latent = host.tiny_conditioning(), host.tiny_latent(batch=3)
    latent = {"samples": latent["samples"] * torch.tensor([1.0, 0.01, 4.0]).view(3, 1, 1, 1)}   # 1 converges first
    perpneg = host.node_class("PerpNeg")().patch(base, host.tiny_conditioning(seed=5), 1.0)[0]
    sizes = {}
    for name, model in (("plain", base), ("perpneg", perpneg)):
        calls = sizes.setdefault(name, [])

        def counting(apply_model, args, calls=calls):
            calls.append(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])

        model = model.clone()
        model.set_model_unet_function_wrapper(counting)
        sampler = host.node_class("ExactInvert")().sampler(model, "custom", 1e-4, 6, 3)
        schedule = bridge.schedule_from_inputs(model, 3, "karras", None)
        bridge.run_inversion(model, cond, cond, 3.0, latent, schedule, sampler)
    assert any(n % 3 for n in sizes["plain"]), sizes["plain"]          # sub-batches once an image converged
    assert all(n % 3 == 0 for n in sizes["perpneg"]), sizes["perpneg"]  # (cond, uncond, empty) x all 3 images
    guider = host.node_class("PerpNegGuider")().get_guider(base, cond, cond, host.tiny_conditioning(seed=5), 3.0,
                                                           1.0)[0]
    plain = _sys.modules["comfy.samplers"].CFGGuider(base)
    plain.conds = guider.conds = {}   # as the host's outer_sample sets them (a fresh guider has none to judge)
    assert not bridge._items_independent(guider) and bridge._items_independent(plain)


def test_a_replay_model_with_other_patches_than_the_inversion_model_is_warned(caplog):
    """Patching only the replay branch (FreeU, PAG: 17-34 dB instead of 88 on the reference model) gave no
    word. It may be meant for an edit, so it is a warning; the same patched model on both sides is not warned."""
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["rescaled"] = {"class_type": "RescaleCFG", "inputs": {"model": ["model", 0], "multiplier": 0.7}}
    prompt["replay"]["inputs"]["model"] = ["rescaled", 0]
    caplog.clear()
    run_workflow(prompt)
    said = warnings_of(caplog, "its patches differ from those of the model this latent was inverted with")
    assert len(said) == 1 and "(cfg functions" in said[0], warnings_of(caplog)
    prompt["invert"]["inputs"]["model"] = ["rescaled", 0]
    caplog.clear()
    run_workflow(prompt)
    assert warnings_of(caplog, "its patches differ") == [], warnings_of(caplog)


def test_differential_diffusion_with_a_masked_replay_is_named_as_unused(caplog):
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["diff"] = {"class_type": "DifferentialDiffusion", "inputs": {"model": ["model", 0]}}
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 16, "height": 16}}
    prompt["replay"]["inputs"].update(model=["diff", 0], mask=["mask", 0])
    caplog.clear()
    run_workflow(prompt)
    assert len(warnings_of(caplog, "denoise_mask_function (Differential Diffusion) is not used")) == 1, \
        warnings_of(caplog)
