"""The real-engine harness itself: the pack and the test nodes load through the host, workflows run in its executor."""
import os
import sys
import time

import pytest
import torch

KINDS = ["eps", "v_prediction", "flow"]


def ksampler_workflow(kind, steps=4, seed=0, batch=1):
    prompt = __import__("host").tiny_inputs(kind, seed=seed, batch=batch)
    prompt["sample"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["model", 0], "add_noise": "disable", "noise_seed": 0, "steps": steps, "cfg": 2.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["positive", 0], "negative": ["negative", 0],
        "latent_image": ["latent", 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    return prompt


def test_pack_loaded_through_custom_nodes(host, engine):
    link = engine.base_dir / "custom_nodes" / host.PACK_DIR_NAME
    assert link.resolve() == host.PACK_ROOT
    assert engine.import_failures == [], engine.import_log
    module = host.pack_module()
    assert module.__name__ == "comfyui-inversion"
    assert module.__file__ == str(link / "__init__.py")
    assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
    for name, cls in module.NODE_CLASS_MAPPINGS.items():  # whatever the pack exports now is in the host's registry
        assert host.node_class(name) is cls
    assert set(host.pack_node_names()) == set(module.NODE_CLASS_MAPPINGS)
    # vanilla-module mapping the pack relies on was done by the host's loader
    assert "folder_paths" in sys.modules and "nodes" in sys.modules


def test_node_class_from_host_registry(host):
    from comfy.nodes import base_nodes

    assert host.node_class("KSampler") is base_nodes.KSampler
    assert host.node_class("KSamplerAdvanced") is base_nodes.KSamplerAdvanced
    assert host.node_class("InversionTestTinyModel").__module__ == host.TESTING_DIR_NAME
    with pytest.raises(KeyError, match="not registered"):
        host.node_class("NoSuchNode")


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_models_run_through_host_ksampler(run_workflow, kind):
    start = time.perf_counter()
    out = run_workflow(ksampler_workflow(kind))
    elapsed = time.perf_counter() - start
    assert set(out.executed) == {"model", "positive", "negative", "latent", "sample"}
    x0 = out["latent"][0]["samples"]
    x = out["sample"][0]["samples"]
    assert x.shape == x0.shape == (1, 4, 16, 16)
    assert torch.isfinite(x).all()
    change = (x - x0).abs().mean().item()
    assert change > 1e-3, f"{kind}: sampling left the latent unchanged"
    assert x.abs().mean().item() < 1e3
    assert out["latent"][0]["samples"] is x0  # an upstream node's LATENT is readable and was not mutated
    model = out["model"][0]
    assert model.model.model_type.name == {"eps": "EPS", "v_prediction": "V_PREDICTION", "flow": "FLOW"}[kind]
    assert elapsed < 60


def test_model_sampling_matches_kind(tiny_model):
    from comfy import model_sampling

    eps = tiny_model("eps", 0).get_model_object("model_sampling")
    v = tiny_model("v_prediction", 0).get_model_object("model_sampling")
    flow = tiny_model("flow", 0).get_model_object("model_sampling")
    assert isinstance(eps, model_sampling.EPS) and not isinstance(eps, model_sampling.V_PREDICTION)
    assert isinstance(v, model_sampling.V_PREDICTION)
    assert isinstance(flow, model_sampling.CONST) and isinstance(flow, model_sampling.ModelSamplingDiscreteFlow)
    assert flow.shift == 3.0
    assert float(flow.sigma_max) == pytest.approx(1.0)


def test_tiny_model_is_seeded_and_not_trivial(host, tiny_model):
    import comfy.model_management

    a, b, c = tiny_model("eps", 1), tiny_model("eps", 1), tiny_model("eps", 2)
    wa = a.model.diffusion_model.out[-1].weight
    assert torch.equal(wa, b.model.diffusion_model.out[-1].weight)
    assert not torch.equal(wa, c.model.diffusion_model.out[-1].weight)
    assert wa.abs().sum() > 0
    for p in a.model.parameters():
        assert torch.isfinite(p).all()
    # the raw network output depends on its input and on the timestep
    cond = host.tiny_conditioning(0)[0][0]
    x = host.tiny_latent(0)["samples"]
    net = a.model.diffusion_model
    with torch.no_grad():
        o1 = net(x, torch.tensor([500.0]), context=cond)
        o2 = net(x, torch.tensor([50.0]), context=cond)
        o3 = net(x * 0.5, torch.tensor([500.0]), context=cond)
    assert torch.isfinite(o1).all() and 0.01 < o1.std().item() < 100
    assert (o1 - o2).abs().mean() > 1e-3 and (o1 - o3).abs().mean() > 1e-3
    # the suite pins the engine to the CPU unless INVERSION_TEST_GPU=1 asks for the GPU (tests/host.py)
    want = "cuda" if os.environ.get("INVERSION_TEST_GPU", "") == "1" else "cpu"
    assert comfy.model_management.get_torch_device().type == want


def test_tiny_model_inference_mode_option(tiny_model):
    m = tiny_model("flow", 0, inference_mode=True)
    assert next(m.model.parameters()).is_inference()
    assert not next(tiny_model("flow", 0).model.parameters()).is_inference()


def test_node_error_surfaces_with_message_and_node_id(host, run_workflow):
    prompt = host.tiny_inputs()
    prompt["fail"] = {"class_type": "InversionTestRaise",
                      "inputs": {"message": "steps must be at least 2", "latent": ["latent", 0]}}
    with pytest.raises(host.WorkflowError) as info:
        run_workflow(prompt)
    err = info.value
    assert not isinstance(err, (host.WorkflowInterrupted, host.WorkflowValidationError))
    assert "steps must be at least 2" in str(err) and "fail" in str(err)
    assert err.node_id == "fail" and err.class_type == "InversionTestRaise"
    assert err.exception_type == "ValueError" and err.exception_message == "steps must be at least 2"
    assert "latent" in err.result  # what ran before the failure stays readable


def test_validation_error_names_node_and_input(host, run_workflow):
    prompt = ksampler_workflow("eps")
    prompt["sample"]["inputs"]["steps"] = 0
    with pytest.raises(host.WorkflowValidationError) as info:
        run_workflow(prompt)
    assert "steps" in str(info.value) and "sample" in str(info.value)
    prompt = ksampler_workflow("eps")
    prompt["sample"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(host.WorkflowValidationError, match="no_such_sampler"):
        run_workflow(prompt)
    with pytest.raises(host.WorkflowValidationError, match="does not exist"):
        run_workflow({"1": {"class_type": "NoSuchNode", "inputs": {}}})


def test_progress_is_captured_per_step(run_workflow):
    out = run_workflow(ksampler_workflow("eps", steps=3))
    assert out.progress_for("sample") == [(1, 3), (2, 3), (3, 3)]
    assert all(p["node"] == "sample" for p in out.progress)


def test_progress_bar_of_a_custom_node_is_captured(host, run_workflow):
    prompt = {"latent": host.tiny_inputs()["latent"],
              "progress": {"class_type": "InversionTestProgress", "inputs": {"latent": ["latent", 0], "steps": 4}}}
    out = run_workflow(prompt)
    assert out.progress_for("progress") == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(host.WorkflowInterrupted) as info:
        run_workflow(prompt, on_event=host.interrupt_on_progress(1))
    assert info.value.node_id == "progress" and info.value.result.progress_for("progress") == [(1, 4)]


def test_interrupt_from_progress_callback(host, run_workflow):
    with pytest.raises(host.WorkflowInterrupted) as info:
        run_workflow(ksampler_workflow("eps", steps=6), on_event=host.interrupt_on_progress(2, node="sample"))
    err = info.value
    assert err.node_id == "sample" and err.class_type == "KSamplerAdvanced"
    # the flag is consumed when raised: a later progress update raised it, so at most 2 steps finished
    assert err.result.progress_for("sample") == [(1, 6), (2, 6)]
    from comfy import interruption

    assert not interruption.processing_interrupted()
    run_workflow(ksampler_workflow("eps", steps=2))  # the next run is unaffected


def test_interrupt_from_another_thread(host, run_workflow):
    started = []

    def on_event(event, data):
        if event == "progress" and not started:
            started.append(time.perf_counter())
            host.interrupt_after(0.0).join()  # another thread sets the flag while the sampler runs

    with pytest.raises(host.WorkflowInterrupted):
        run_workflow(ksampler_workflow("eps", steps=6), on_event=on_event)


def test_fresh_executor_reexecutes_and_session_caches(host, run_workflow, session):
    prompt = ksampler_workflow("v_prediction", steps=2)
    first, second = run_workflow(prompt), run_workflow(prompt)
    assert set(first.executed) == set(second.executed) == set(prompt)
    assert torch.equal(first["sample"][0]["samples"], second["sample"][0]["samples"])  # deterministic

    a = session.run(prompt)
    b = session.run(prompt)  # same executor, same inputs: the host's cache answers
    assert b.executed == [] and set(b.cached) == set(prompt)
    assert b["sample"][0] is a["sample"][0]
    prompt["sample"]["inputs"]["cfg"] = 3.0
    c = session.run(prompt)  # only the changed node re-runs
    assert c.executed == ["sample"]
    session.clear()
    assert set(session.run(prompt).executed) == set(prompt)


def test_explicit_outputs_and_int_ids(run_workflow):
    out = run_workflow({1: {"class_type": "InversionTestLatent", "inputs": {"seed": 3, "batch": 2, "channels": 4, "size": 8}},
                        2: {"class_type": "LatentFromBatch", "inputs": {"samples": [1, 0], "batch_index": 1, "length": 1}}},
                       outputs=[1])
    assert list(out) == ["1"] and out["1"][0]["samples"].shape == (2, 4, 8, 8)
