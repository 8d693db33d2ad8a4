"""The pack's nodes inside the real ComfyUI engine: whole workflows through the host's executor (issue: foundation)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import host
from host import WorkflowError, WorkflowInterrupted, WorkflowValidationError, run_workflow, tiny_inputs

KINDS = ["eps", "v_prediction", "flow"]


def invert_and_replay(kind="eps", method="DDIMInvert", steps=8, batch=1, extra=None, cfg=1.0, scheduler=None):
    prompt = tiny_inputs(kind, batch=batch)
    prompt["invert"] = {"class_type": method, "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "latent": ["latent", 0],
        "steps": steps, "scheduler": scheduler or ("simple" if kind == "flow" else "ddim_uniform"), "cfg": cfg,
        "denoise": 1.0,
        **(extra or {})}}
    with_defaults(prompt["invert"])
    prompt["replay"] = {"class_type": "InvertedLatentSampler", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": cfg,
        "inverted_latent": ["invert", 0], "correction_strength": 0.0, "correction_start_step": 0,
        "correction_end_step": -1}}
    return prompt


def with_defaults(node: dict) -> dict:
    """Fill the required widget inputs a test did not set with the node's declared defaults (so that a new input,
    added with a default, does not break every hand-written prompt)."""
    for name, spec in host.node_class(node["class_type"]).INPUT_TYPES()["required"].items():
        if name in node["inputs"] or not isinstance(spec, (list, tuple)) or len(spec) < 2:
            continue
        opts = spec[1] if isinstance(spec[1], dict) else {}
        if "default" in opts:
            node["inputs"][name] = opts["default"]
        elif isinstance(spec[0], (list, tuple)) and spec[0]:
            node["inputs"][name] = spec[0][0]
    return node


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("kind", KINDS)
def test_ddim_invert_then_replay_reconstructs_and_exact_does_better(kind):
    out = run_workflow(invert_and_replay(kind))
    x0 = out["latent"][0]["samples"]
    inv, sigmas = out["invert"]
    rec = out["replay"][0]["samples"]
    assert rec.shape == x0.shape and torch.isfinite(rec).all()
    ddim_err = rms(rec, x0)         # a random tiny network is a poor denoiser: DDIM's error is large here
    entry = inv["inversion"]
    assert entry["method"] == "ddim" and entry["stats"]["forward_evals"] == 8
    assert torch.equal(entry["sigmas"], sigmas) and sigmas[0] > sigmas[-1] == 0
    assert len(entry["states"]) == 9 and entry["model_kind"] in ("EPS", "V_PREDICTION", "CONST")
    # samples is the top of the stored trajectory (this latent format has scale 1)
    assert torch.allclose(inv["samples"], entry["states"][-1], atol=1e-6)

    exact = run_workflow(invert_and_replay(kind, "ExactInvert", extra={
        "preset": "exact", "tolerance": 1e-4, "budget": 3, "memory": 3}))
    exact_err = rms(exact["replay"][0]["samples"], x0)
    assert exact_err < ddim_err / 10 and exact_err < 0.01 * x0.std().item(), (exact_err, ddim_err)


def test_batch_of_two_inverts_each_item():
    out = run_workflow(invert_and_replay(batch=2))
    x0 = out["latent"][0]["samples"]
    rec = out["replay"][0]["samples"]
    single = run_workflow(invert_and_replay(batch=1))["replay"][0]["samples"]
    assert rec.shape[0] == 2 and rms(rec[1:], x0[1:]) < 3 * x0.std().item()
    # item 0 of the batch is the same computation as a batch of one
    assert torch.allclose(rec[:1], single, atol=1e-4)


def test_same_inputs_same_outputs_and_inputs_untouched():
    a = run_workflow(invert_and_replay())
    b = run_workflow(invert_and_replay())
    assert torch.equal(a["invert"][0]["samples"], b["invert"][0]["samples"])
    assert torch.equal(a["replay"][0]["samples"], b["replay"][0]["samples"])
    fresh = host.tiny_latent(seed=3)["samples"]        # what the latent node produced, recomputed
    assert torch.equal(a["latent"][0]["samples"], fresh)
    assert set(a["latent"][0]) == {"samples"}          # the input LATENT gained no keys


def test_progress_is_reported_per_step():
    out = run_workflow(invert_and_replay(steps=5))
    inv = out.progress_for("invert")
    assert inv == [(i, 5) for i in range(1, 6)]
    assert out.progress_for("replay") == inv


def test_interrupt_stops_inversion_within_a_step():
    with pytest.raises(WorkflowInterrupted):
        run_workflow(invert_and_replay(steps=50), on_event=host.interrupt_on_progress(2, node="invert"))
    out = run_workflow(invert_and_replay(steps=4))          # the engine is usable again
    assert "replay" in out


def test_cfg_changes_the_inversion():
    a = run_workflow(invert_and_replay(cfg=1.0))["invert"][0]["samples"]
    b = run_workflow(invert_and_replay(cfg=3.0))["invert"][0]["samples"]
    assert rms(a, b) > 1e-3


def test_custom_sigmas_input_is_used():
    prompt = invert_and_replay()
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "karras", "steps": 5, "denoise": 1.0}}
    prompt["invert"]["inputs"]["sigmas"] = ["sched", 0]
    out = run_workflow(prompt)
    assert torch.allclose(out["invert"][1], out["sched"][0].float())
    assert len(out["invert"][0]["inversion"]["states"]) == 6


def test_flipped_sigmas_are_accepted():
    prompt = invert_and_replay()
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "normal", "steps": 5, "denoise": 1.0}}
    prompt["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    prompt["invert"]["inputs"]["sigmas"] = ["flip", 0]
    out = run_workflow(prompt)
    assert torch.allclose(out["invert"][1], out["sched"][0].float())


# ------------------------------------------------------------------------------------------------ bad input
def expect_error(prompt, *fragments, validation_ok=False):
    with pytest.raises(WorkflowError) as err:
        run_workflow(prompt)
    text = str(err.value)
    for f in fragments:
        assert f in text, text
    return err.value


def test_latent_channels_not_matching_the_model():
    prompt = invert_and_replay()
    prompt["latent"]["inputs"]["channels"] = 3
    expect_error(prompt, "latent", "3 channels", "4-channel")


def test_steps_below_one():
    prompt = invert_and_replay(steps=0)
    expect_error(prompt, "steps")
    node = host.node_class("DDIMInvert")()
    with pytest.raises(ValueError, match="steps"):
        node.invert(host.tiny_model(), host.tiny_conditioning(), host.tiny_conditioning(), host.tiny_latent(),
                    0, "normal", 1.0)


@pytest.mark.parametrize("bad, msg", [([3.0, 1.0, 2.0, 0.0], "monotonic"), ([1.0], "at least 2")])
def test_bad_sigmas_input(bad, msg):
    node = host.node_class("DDIMInvert")()
    with pytest.raises(ValueError, match=msg):
        node.invert(host.tiny_model(), host.tiny_conditioning(), host.tiny_conditioning(), host.tiny_latent(),
                    4, "normal", 1.0, sigmas=torch.tensor(bad))


def test_sampler_without_inversion_record_says_what_to_connect():
    prompt = invert_and_replay()
    prompt["replay"]["inputs"]["inverted_latent"] = ["latent", 0]
    expect_error(prompt, "inverted_latent", "Connect the LATENT output of an inversion node")


def test_conditioning_batch_mismatch():
    prompt = invert_and_replay(batch=3)
    prompt["positive"]["inputs"]["batch"] = 2
    expect_error(prompt, "positive", "batch is 2", "latent batch is 3")


def test_nan_from_the_model_names_step_and_sigma():
    model = host.tiny_model().clone()
    model.set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"])
                                          * float("nan"))
    node = host.node_class("DDIMInvert")()
    with pytest.raises(Exception, match=r"step 1/4 .*sigma.*NaN"):
        node.invert(model, host.tiny_conditioning(), host.tiny_conditioning(), host.tiny_latent(), 4, "normal", 1.0)


@pytest.mark.parametrize("node, inputs, fragment", [
    ("LatentUpscaleBy", {"upscale_method": "nearest-exact", "scale_by": 2.0}, "changed the latent"),
    # another batch of the same items: the error names the route that replays them (the SAMPLER finds each item)
    ("RepeatLatentBatch", {"amount": 2}, "use SamplerCustomAdvanced with the Inverted Replay SAMPLER"),
    ("LatentFromBatch", {"batch_index": 0, "length": 1}, None),
])
def test_host_latent_nodes_accept_the_inverted_latent(node, inputs, fragment):
    prompt = invert_and_replay()
    key = "samples"
    prompt["op"] = {"class_type": node, "inputs": {key: ["invert", 0], **inputs}}
    prompt["replay"]["inputs"]["inverted_latent"] = ["op", 0]
    if fragment is None:
        out = run_workflow(prompt)
        assert torch.isfinite(out["replay"][0]["samples"]).all()
    else:
        err = expect_error(prompt)
        assert fragment in str(err) or "carries no inversion schedule" in str(err), str(err)
        assert "Traceback" not in str(err).split("\n")[0]


def test_easyinv_and_exact_bad_parameters_name_the_input():
    prompt = invert_and_replay(method="EasyInvInvert", extra={
        "preset": "custom", "eta": 0.5, "window_start": 0.3, "window_end": 0.2, "variant": "paper"})
    expect_error(prompt, "window")
    prompt = invert_and_replay(method="ExactInvert", extra={
        "preset": "custom", "tolerance": 0.0, "budget": 3, "memory": 3})
    expect_error(prompt, "tolerance")


def test_easyinv_auto_preset_runs_with_ddim_cost():
    out = run_workflow(invert_and_replay(method="EasyInvInvert", steps=20, extra={
        "preset": "auto", "eta": 0.5, "window_start": 0.05, "window_end": 0.25, "variant": "paper"}))
    entry = out["invert"][0]["inversion"]
    assert entry["params"]["eta"] == 0.5 and entry["params"]["window"] == [0.05, 0.25]
    assert entry["stats"]["forward_evals"] == 20
    ddim = run_workflow(invert_and_replay(steps=20))
    assert rms(out["invert"][0]["samples"], ddim["invert"][0]["samples"]) > 1e-4    # the blend acted
    assert torch.isfinite(out["replay"][0]["samples"]).all()
    assert not [w for w in entry["warnings"] if "EasyInv" in w]


def test_easyinv_whose_window_holds_no_step_warns(caplog):
    caplog.clear()
    out = run_workflow(invert_and_replay(method="EasyInvInvert", steps=4, extra={"preset": "auto"}))
    said = out["invert"][0]["inversion"]["warnings"]
    assert any(w.startswith("EasyInv's window 0.05-0.25 holds no step of this 4-step schedule") for w in said), said
    assert any("nothing was blended" in r.getMessage() for r in caplog.records)


def test_a_warning_reaches_the_page_naming_its_node():
    """A warning logged only to the server console is silent for a user of the page: it is also sent to the client
    that queued the prompt (web/inversion_page.js shows it as a toast), once per node and message."""
    EVENT = sys.modules[host.pack_module().__name__ + ".nodes.page"].EVENT
    session = host.Session()
    prompt = invert_and_replay(method="EasyInvInvert", steps=4, extra={"preset": "auto"})
    out = session.run(prompt)
    said = out["invert"][0]["inversion"]["warnings"]
    sent = [(data, sid) for event, data, sid in session.server.addressed if event == EVENT]
    window = [data for data, _ in sent if "EasyInv's window 0.05-0.25 holds no step" in data["message"]]
    assert len(window) == 1, sent
    assert window[0]["node"] == "invert" and window[0]["prompt_id"] == session.server.last_prompt_id
    assert all(sid == session.server.client_id for _, sid in sent)
    assert any(said_one in window[0]["message"] or window[0]["message"] in said_one for said_one in said)
    # a node cached in the next run does not warn again; a changed input re-runs it and warns again
    assert not [e for e, _ in session.run(prompt).events if e == EVENT]
    prompt["invert"]["inputs"]["steps"] = 3
    again = [d for e, d in session.run(prompt).events if e == EVENT]
    assert any("EasyInv's window 0.05-0.25 holds no step of this 3-step" in d["message"] for d in again)


# ---------------------------------------------------------------------------- issue 15: reach sigma_max, progress
INVERT_NODES = {
    "DDIMInvert": {},
    "EasyInvInvert": {"preset": "auto"},
    "ExactInvert": {"preset": "balanced"},
    "GNRIInvert": {"max_iterations": 2},
    "PreciseInvInvert": {"max_iterations": 3},
}


def default_inversion(method, kind="eps", steps=1, **extra):
    """An inversion node with only ``steps`` (and ``extra``) set: every other input at its declared default."""
    prompt = tiny_inputs(kind)
    prompt["invert"] = with_defaults({"class_type": method, "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "latent": ["latent", 0],
        "steps": steps, **extra}})
    return prompt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_ddim_invert_with_only_steps_set_reaches_the_models_sigma_max(kind, steps, caplog):
    caplog.clear()
    out = run_workflow(default_inversion("DDIMInvert", kind, steps))
    sigma_max = float(out["model"][0].get_model_object("model_sampling").sigma_max)
    sigmas = out["invert"][1]
    assert len(sigmas) == steps + 1
    assert float(sigmas[0]) == pytest.approx(sigma_max, rel=1e-5), (float(sigmas[0]), sigma_max)
    entry = out["invert"][0]["inversion"]
    assert entry["stats"]["reach"] == pytest.approx(1.0, rel=1e-5) and entry["warnings"] == []
    assert not [r for r in caplog.records if r.name == "comfyui-inversion"]


@pytest.mark.parametrize("method", sorted(INVERT_NODES))
def test_every_inversion_node_reaches_sigma_max_by_default(method):
    out = run_workflow(default_inversion(method, "eps", 1, **INVERT_NODES[method]))
    sigma_max = float(out["model"][0].get_model_object("model_sampling").sigma_max)
    assert float(out["invert"][1][0]) == pytest.approx(sigma_max, rel=1e-5)


def test_a_schedule_that_stops_short_is_warned_and_recorded(caplog):
    caplog.clear()
    out = run_workflow(default_inversion("DDIMInvert", "eps", 1, scheduler="ddim_uniform"))
    entry = out["invert"][0]["inversion"]
    sigma_max = entry["stats"]["model_sigma_max"]
    assert entry["stats"]["top_sigma"] == pytest.approx(0.0413, abs=5e-4)
    assert entry["stats"]["reach"] == pytest.approx(entry["stats"]["top_sigma"] / sigma_max)
    want = (f"the inversion stops at sigma 0.04131, 0.3% of the model's sigma_max {sigma_max:.4g} (the image is 100% "
            f"of the latent there, {100 / (1 + sigma_max ** 2) ** 0.5:.0f}% at sigma_max): the inverted latent is still "
            "largely the image, so edits change little")
    assert entry["warnings"] and entry["warnings"][0].startswith(want), entry["warnings"]
    logged = [r.getMessage() for r in caplog.records if r.name == "comfyui-inversion" and r.levelname == "WARNING"]
    assert logged == [f"[comfyui-inversion] ddim inversion: {entry['warnings'][0]}"], logged
    # a SIGMAS input that stops short: the same
    prompt = split_sigmas_inversion(half=1)
    caplog.clear()
    out = run_workflow(prompt)
    assert out["invert"][0]["inversion"]["stats"]["reach"] < 0.2
    assert any("the inversion stops at sigma" in r.getMessage() for r in caplog.records)
    # denoise < 1 is a partial inversion on purpose: recorded, not warned
    caplog.clear()
    out = run_workflow(default_inversion("DDIMInvert", "eps", 4, denoise=0.5))
    entry = out["invert"][0]["inversion"]
    assert entry["warnings"][0].startswith("partial inversion (denoise < 1): the inversion stops at sigma")
    assert not [r for r in caplog.records if r.name == "comfyui-inversion"]


def split_sigmas_inversion(half: int) -> dict:
    """DDIM Invert on one half (0 = high, 1 = low) of an 8-step karras schedule split at step 4 (SplitSigmas)."""
    prompt = default_inversion("DDIMInvert", "eps", 4)
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "karras", "steps": 8, "denoise": 1.0}}
    prompt["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 4}}
    prompt["invert"]["inputs"]["sigmas"] = ["split", half]
    return prompt


def test_a_schedule_that_does_not_end_at_zero_is_warned_and_recorded(caplog):
    """The high half of SplitSigmas ends above 0: the image latent becomes the noisy latent at that level and the
    replay never denoises it. Said in the record and the log (a lower level is allowed: it may be meant)."""
    prompt = split_sigmas_inversion(half=0)
    caplog.clear()
    out = run_workflow(prompt)
    bottom = float(out["split"][0][-1])
    said = [w for w in out["invert"][0]["inversion"]["warnings"] if "not 0" in w]
    assert bottom > 0 and said and said[0].startswith(f"the schedule ends at sigma {bottom:.4g}, not 0"), said
    assert any("not 0: the input latent was taken as the noisy latent" in r.getMessage() for r in caplog.records)
    entry = run_workflow(default_inversion("DDIMInvert", "eps", 4))["invert"][0]["inversion"]
    assert not [w for w in entry["warnings"] if "not 0" in w]


@pytest.fixture
def progress_every_evaluation():
    bridge = sys.modules[f"{host.PACK_DIR_NAME}.nodes.bridge"]
    old = bridge.PROGRESS_INTERVAL
    bridge.PROGRESS_INTERVAL = 0.0
    yield
    bridge.PROGRESS_INTERVAL = old


@pytest.mark.parametrize("method, extra, evals_per_step", [
    ("ExactInvert", {"preset": "balanced"}, 3),
    ("GNRIInvert", {"max_iterations": 2}, None),
    ("PreciseInvInvert", {"max_iterations": 4}, None),
])
def test_progress_moves_inside_a_step(method, extra, evals_per_step, progress_every_evaluation):
    """The bar moves per model evaluation (Denoiser.on_eval -> host progress), not only when a step ends."""
    out = run_workflow(default_inversion(method, "eps", 3, scheduler="karras", **extra))
    values = [v for v, m in out.progress_for("invert")]
    assert all(m == 3 for _, m in out.progress_for("invert"))
    # the gradient methods may restart once on this host (grad_mode's saved-tensor retry): the bar then starts over
    drops = [i for i in range(1, len(values)) if values[i] < values[i - 1]]
    run = values[drops[-1]:] if drops else values
    assert len(drops) <= (0 if evals_per_step else 1), values
    assert run == sorted(run) and run[-1] == 3                         # monotonic, ends at the last step
    assert [v for v in run if v == int(v)] == [1, 2, 3]
    for step in range(3):                                              # fractional updates inside every step
        assert [v for v in run if step < v < step + 1], (step, values)
    fwd = out["invert"][0]["inversion"]["stats"]["forward_evals"]
    fractional = [v for v in values if v != int(v)]                   # one update per model evaluation (the
    assert len(fractional) == fwd, (len(fractional), fwd, values)     # record counts an aborted attempt's too)
    if evals_per_step:
        assert fwd == 3 * evals_per_step


def test_progress_inside_a_step_is_throttled_by_default():
    out = run_workflow(default_inversion("ExactInvert", "eps", 3, scheduler="karras", preset="balanced"))
    assert [v for v, _ in out.progress_for("invert")] == [1, 2, 3]    # fast steps: no extra messages


@pytest.mark.parametrize("name, value, words", [("tolerance", 0.0, "tolerance"), ("budget", 0, "budget")])
def test_exact_custom_widgets_reject_values_that_would_fail(name, value, words):
    prompt = invert_and_replay(method="ExactInvert", extra={
        "preset": "custom", "tolerance": 1e-4, "budget": 3, "memory": 3, name: value})
    with pytest.raises(WorkflowValidationError) as err:               # refused before anything runs
        run_workflow(prompt)
    assert words in str(err.value) and "invert" in str(err.value)


def test_missing_schedule_message_lists_every_inversion_node():
    prompt = invert_and_replay()
    prompt["replay"]["inputs"]["inverted_latent"] = ["latent", 0]
    err = expect_error(prompt, "inverted_latent: this LATENT carries no inversion schedule")
    listed = err.exception_message.split("inversion node (")[1].split(")")[0]
    for name in host.pack_node_names():
        if name.endswith("Invert"):
            assert name[:-len("Invert")] in listed.split(" / ")[:-1] + [listed.split(" / ")[-1][:-len(" Invert")]], \
                (name, listed)
    # a SAMPLER twin's latent (SamplerCustomAdvanced) carries no record either: the message names its replay
    assert "replay it there with the Inverted Replay SAMPLER" in err.exception_message


def test_ddim_uniform_schedule_is_basic_schedulers_own():
    """ddim_uniform's quirk (calculate_sigmas gives one step more when the 1000 levels leave a remainder: 8 at
    T = 7, which KSampler runs): the node inverts on exactly BasicScheduler's T steps."""
    for steps in (3, 6, 7):
        prompt = default_inversion("DDIMInvert", "eps", steps, scheduler="ddim_uniform")
        prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
            "model": ["model", 0], "scheduler": "ddim_uniform", "steps": steps, "denoise": 1.0}}
        out = run_workflow(prompt)
        assert out["invert"][1].shape == out["sched"][0].shape == (steps + 1,)
        assert torch.allclose(out["invert"][1], out["sched"][0].float())


def test_per_item_region_masks_stay_with_their_items():
    """A batch whose conditioning carries one region mask per image (ConditioningSetMask with a batch of masks):
    once one image converges the solver evaluates the others alone, and the host slices a per-item mask to the
    leading rows of a smaller batch — so the pack must evaluate the whole batch there. Each item must equal its own
    single run (it used to be solved against item 0's mask while its report said it converged)."""
    import torch

    model = host.tiny_model("eps")
    x0 = host.tiny_latent(seed=5, batch=2)["samples"]
    cond, other = host.tiny_conditioning(seed=1), host.tiny_conditioning(seed=7)
    masks = torch.zeros(2, 16, 16)
    masks[0] = 1.0
    masks[1, :, :5] = 1.0
    set_mask = host.node_class("ConditioningSetMask")()
    negative = host.tiny_conditioning(seed=2)
    node = host.node_class("ExactInvert")()
    params = {"preset": "exact", "tolerance": 1e-6, "budget": 12, "memory": 3}

    def invert(batch_rows):
        positive = set_mask.append(cond, masks[batch_rows], "default", 1.0)[0] + other
        latent = {"samples": x0[batch_rows]}
        with torch.inference_mode():
            return node.invert(model, positive, negative, latent, 6, "ddim_uniform", 1.0, 1.0, None, **params)[0]

    both = invert(slice(0, 2))
    single = [invert(slice(i, i + 1)) for i in range(2)]
    # the items stop after different numbers of evaluations, so the solver does ask for a sub-batch
    assert single[0]["inversion"]["stats"]["forward_evals"] != single[1]["inversion"]["stats"]["forward_evals"]
    for i in range(2):
        assert rms(both["samples"][i:i + 1], single[i]["samples"]) < 1e-4 * single[i]["samples"].std().item(), i


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_latent_replays_from_the_float32_inversion(dtype):
    """A LATENT in fp16 / bf16 rounds the inverted noise it carries; the replay of unchanged samples starts from the
    record's float32 top instead (it used to start from the rounded copy: BDIA 120 -> 73 dB in fp16, 56 in bf16),
    and so does the Inverted Replay SAMPLER, which finds the inversion by its (rounded) top."""
    model, cond = host.tiny_model("eps"), host.tiny_conditioning()
    x0 = host.tiny_latent(seed=5)["samples"]
    half = {"samples": x0.to(dtype)}
    node, sampler = host.node_class("BDIAInvert")(), host.node_class("InvertedLatentSampler")()
    params = {k: v for k, v in with_defaults({"class_type": "BDIAInvert", "inputs": {}})["inputs"].items()
              if k not in ("steps", "scheduler", "cfg", "denoise")}
    with torch.inference_mode():
        inv = node.invert(model, cond, cond, half, 8, "karras", 1.0, 1.0, None, **params)[0]
        out = sampler.sample(model, cond, cond, 1.0, inv)[0]["samples"]
    assert inv["samples"].dtype == dtype and out.dtype == dtype
    # exact up to the output's own rounding to the input's dtype
    rounding = rms(x0.to(dtype).float(), x0)
    assert rms(out.float(), half["samples"].float()) <= 0.5 * rounding, (rms(out.float(), half["samples"].float()),
                                                                         rounding)
    bridge = sys.modules[f"{host.PACK_DIR_NAME}.nodes.bridge"]
    entry = inv["inversion"]
    assert entry["top_float32"].dtype == torch.float32
    found = bridge.check_replay_input(entry["states"][-1].to(dtype), entry["sigmas"])
    assert found is not None and found.dtype == torch.float32 and torch.equal(found, entry["states"][-1])
    node = host.node_class
    with torch.inference_mode():                     # the SAMPLER path, from the half-precision LATENT alone
        chained = node("SamplerCustomAdvanced")().sample(
            node("DisableNoise")().get_noise()[0], node("CFGGuider")().get_guider(model, cond, cond, 1.0)[0],
            node("InvertedReplaySampler")().get_sampler()[0], entry["sigmas"], inv)[0]["samples"]
    assert rms(chained.float(), half["samples"].float()) <= 0.5 * rounding


def test_the_web_script_is_registered_and_listens_for_the_warning_event():
    """The host serves the pack's web folder (WEB_DIRECTORY) and its script listens for the event page.py sends."""
    page = sys.modules[host.pack_module().__name__ + ".nodes.page"]
    dirs = host.engine().nodes.EXTENSION_WEB_DIRS
    ours = [d for name, d in dirs.items() if name.startswith(host.PACK_DIR_NAME)]
    assert len(ours) == 1, dirs
    script = (Path(ours[0]) / "inversion_page.js").read_text()
    assert f'"{page.EVENT}"' in script and "api.addEventListener(EVENT" in script


def test_warnings_on_the_page_come_once_per_node_and_at_most_a_few_per_prompt():
    from comfy.execution_context import ExecutionContext, new_execution_context

    page = sys.modules[host.pack_module().__name__ + ".nodes.page"]
    server = host.RecordingServer()
    server.last_prompt_id, server.last_node_id = "prompt-1", "7"
    with new_execution_context(ExecutionContext(server)):
        for i in range(page.MAX_TOASTS + 4):
            page.show_in_ui(f"warning {i}")
        page.show_in_ui("warning 0")                         # again from the same node: not repeated
        server.last_prompt_id = "prompt-2"                     # the next prompt starts afresh
        page.show_in_ui("warning 0")
    messages = [(d["prompt_id"], d["message"]) for e, d in server.events if e == page.EVENT]
    first = [m for p, m in messages if p == "prompt-1"]
    assert first[:page.MAX_TOASTS] == [f"warning {i}" for i in range(page.MAX_TOASTS)]
    assert len(first) == page.MAX_TOASTS + 1 and "see the ComfyUI console" in first[-1]
    assert [m for p, m in messages if p == "prompt-2"] == ["warning 0"]
    assert {d["node"] for e, d in server.events if e == page.EVENT} == {"7"}


def test_model_evaluations_of_inversion_and_replay_run_without_tf32_and_restore_the_flags():
    """On a GPU cuDNN runs float32 convolutions in TF32 unless told otherwise, which cost an fp32 UNet ~1e-3 per
    evaluation (H200: Exact 86 / 79 dB instead of 88 / 84, a BDIA batch replayed item by item 4e-3 off). Every model
    evaluation of the pack's inversion and replay runs with both TF32 flags off; the caller's flags come back."""
    pack = host.pack_module()
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    seen = []

    def recording(apply_model, args):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = host.tiny_model("eps").clone()
    model.set_model_unet_function_wrapper(recording)
    cond, latent = host.tiny_conditioning(), host.tiny_latent()
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True    # what a GPU user may have
    try:
        sampler = host.node_class("ExactInvert")().sampler(model, "custom", 1e-4, 4, 3)
        schedule = bridge.schedule_from_inputs(model, 3, "karras", None)
        inv = bridge.run_inversion(model, cond, cond, 1.0, latent, schedule, sampler)
        inverting = len(seen)
        bridge.run_replay(model, cond, cond, 1.0, inv)
        after = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert inverting >= 3 and len(seen) >= inverting + 3, (inverting, len(seen))
    assert set(seen) == {(False, False)}, seen
    assert after == (True, True)


def test_the_backward_passes_of_a_gradient_inversion_run_without_tf32_too():
    """PreciseInv (and GNRI newton) differentiate through the model after its forward call returned: those backward
    passes ran with the caller's TF32 on a GPU while the forward ran without. The whole solve runs without it."""
    bridge = sys.modules[host.pack_module().__name__ + ".nodes.bridge"]
    forward, backward = [], []

    def flags():
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    def recording(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        forward.append(flags())
        if out.requires_grad:
            out.register_hook(lambda grad: backward.append(flags()))
        return out

    model = host.tiny_model("eps").clone()
    model.set_model_unet_function_wrapper(recording)
    cond, latent = host.tiny_conditioning(), host.tiny_latent()
    before = flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        sampler = host.node_class("PreciseInvInvert")().sampler(model, "custom", 1e-12, 3, 1.0, initialiser="ddim")
        schedule = bridge.schedule_from_inputs(model, 3, "karras", None)
        bridge.run_inversion(model, cond, cond, 1.0, latent, schedule, sampler)
        after = flags()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert len(backward) >= 3, (len(forward), len(backward))
    assert set(forward) == set(backward) == {(False, False)}, (set(forward), set(backward))
    assert after == (True, True)


def test_tf32_set_through_pytorchs_newer_api_is_turned_off_and_back_on_through_it():
    """Once a program sets cuBLAS's TF32 through torch.backends.cuda.matmul.fp32_precision (PyTorch 2.9+), reading the
    legacy allow_tf32 raises ("mix of the legacy and new APIs"): the pack's switch must not make every model
    evaluation fail then, and gives the setting back through the API that set it."""
    bridge = sys.modules[host.pack_module().__name__ + ".nodes.bridge"]
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        with pytest.raises(RuntimeError):
            matmul.allow_tf32                                          # noqa: B018 -- what the host would meet
        with bridge.full_float32():
            inside = matmul.fp32_precision
        after = matmul.fp32_precision
    finally:
        matmul.fp32_precision = before                                # 'none' again: legacy reads work
    assert (inside, after) == ("ieee", "tf32")
    assert matmul.allow_tf32 is False


MISSED = "steps stopped above the"


def _invert_with(node: str, *args, steps: int = 3, **kwargs):
    bridge = sys.modules[host.pack_module().__name__ + ".nodes.bridge"]
    model = host.tiny_model("eps")
    cond, latent = host.tiny_conditioning(), host.tiny_latent()
    sampler = host.node_class(node)().sampler(model, *args, **kwargs)
    schedule = bridge.schedule_from_inputs(model, steps, "karras", None)
    return bridge.run_inversion(model, cond, cond, 1.0, latent, schedule, sampler)["inversion"]


def test_a_tolerance_the_solver_did_not_reach_is_said_and_named(caplog):
    """Exact Invert's exact / custom presets promise a residual and PreciseInv a loss: a step left above it gives a
    replay less exact than asked (the flow reference model's first step at T=10: 59 dB with the exact preset), which
    was only visible in an Inversion Report. It is warned, naming the steps and what helps."""
    from test_editing_host import warnings_of

    entry = _invert_with("ExactInvert", "custom", 1e-12, 2, 3)     # a tolerance no float32 solve reaches
    said = warnings_of(caplog, MISSED)
    assert len(entry["stats"]["unconverged_steps"]) == 3
    assert len(said) == 1 and "3 of 3 steps stopped above the RMS residual 1.0e-12 within 2 evaluations" in said[0]
    assert "step 1 (sigma 0 -> " in said[0] and "exponential, karras" in said[0] and "BDIA" in said[0], said
    assert any(MISSED in w for w in entry["warnings"])                     # in the record, for the report
    assert "stall" not in said[0]
    caplog.clear()
    _invert_with("ExactInvert", "custom", 1e-12, 20, 3, stall=2)          # stops once the residual stops falling
    said = warnings_of(caplog, MISSED)
    assert len(said) == 1 and "(stopped by the stall input)" in said[0], said
    caplog.clear()
    _invert_with("PreciseInvInvert", "custom", 1e-30, 1, 1.0, initialiser="ddim")
    said = warnings_of(caplog, MISSED)
    assert len(said) == 1 and "loss threshold 1e-30" in said[0] and "within 1 iterations" in said[0], said


def test_budgeted_presets_and_reached_tolerances_say_nothing(caplog):
    """The fast / balanced presets promise evaluations, not a residual; a reached tolerance is what was asked."""
    from test_editing_host import warnings_of

    entry = _invert_with("ExactInvert", "balanced", 1e-4, 3, 3)
    assert entry["stats"]["unconverged_steps"]                          # the budget ran out: what balanced promises
    entry = _invert_with("ExactInvert", "custom", 1e-3, 40, 3, steps=12)    # the tiny model's top steps need T=12
    assert not entry["stats"]["unconverged_steps"]
    assert warnings_of(caplog, MISSED) == []
