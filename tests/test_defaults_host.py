"""What a user who drops a node in gets: the defaults per model kind, through the real executor."""
from __future__ import annotations

import pytest
import torch

import host


def _graph(kind: str, node: str = "DDIMInvert", steps: int = 4, **widgets) -> dict:
    prompt = host.tiny_inputs(kind, size=8)
    spec = host.node_class(node).INPUT_TYPES()["required"]
    inputs = {k: v[1]["default"] for k, v in spec.items() if len(v) > 1 and "default" in v[1]}
    inputs.update(model=["model", 0], positive=["positive", 0], negative=["negative", 0], latent=["latent", 0],
                  steps=steps, **widgets)
    prompt["invert"] = {"class_type": node, "inputs": inputs}
    return prompt


@pytest.mark.parametrize("kind, steps, expected", [
    ("eps", 4, "karras"), ("v_prediction", 4, "karras"), ("flow", 4, "simple"), ("eps", 3, "karras"),
    # karras at 2 steps is [sigma_max, sigma_min, 0]: auto takes sgm_uniform there (measured in README)
    ("eps", 2, "sgm_uniform"), ("v_prediction", 2, "sgm_uniform"), ("flow", 2, "simple")])
def test_auto_scheduler_is_the_measured_best_for_the_model_kind(kind, steps, expected):
    prompt = _graph(kind, steps=steps)
    assert prompt["invert"]["inputs"]["scheduler"] == "auto"
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": expected,
                                                                  "steps": steps, "denoise": 1.0}}
    out = host.run_workflow(prompt)
    _, sigmas = out["invert"]
    reference = out["sched"][0].clone()
    reference[-1] = 0.0
    assert torch.allclose(sigmas, reference)
    ms = out["model"][0].get_model_object("model_sampling")
    assert float(sigmas[0]) == pytest.approx(float(ms.sigma_max), rel=1e-5)       # reaches pure noise


@pytest.mark.parametrize("kind", ["eps", "v_prediction", "flow"])
def test_default_ddim_invert_is_comfyui_stock_unsampling(kind):
    """DDIM Invert's default convention is FlipSigmas + euler, computed by the host's own nodes in the same graph."""
    prompt = _graph(kind, scheduler="simple")
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "simple",
                                                                  "steps": 4, "denoise": 1.0}}
    prompt["flip"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}
    prompt["euler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["stock"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["model", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["positive", 0],
        "negative": ["negative", 0], "sampler": ["euler", 0], "sigmas": ["flip", 0], "latent_image": ["latent", 0]}}
    if kind == "flow":      # the host's flow schedule tops at sigma 1, where its sampler divides by 1 - sigma
        prompt["sched"]["inputs"]["denoise"] = prompt["invert"]["inputs"]["denoise"] = 0.5
    out = host.run_workflow(prompt)
    ours = out["invert"][0]["samples"]
    stock = out["stock"][0]["samples"]
    assert out["invert"][0]["inversion"]["params"]["convention"] == "current level"
    tol = 1e-5
    if kind == "flow":
        # the host's sampler wraps a flow model's run in noise_scaling (x·(1 − 1e-4) at FlipSigmas' first level,
        # noise off) and inverse_noise_scaling (÷ (1 − σ_top)); the pack works on the latent itself
        stock = stock * (1.0 - float(out["invert"][1][0]))
        tol = 1e-3
    assert torch.allclose(ours, stock, rtol=tol, atol=tol), (ours - stock).abs().max()


def test_input_matched_convention_differs_and_names_itself():
    out = host.run_workflow(_graph("eps", convention="input-matched"))
    entry = out["invert"][0]["inversion"]
    assert entry["params"]["convention"] == "input-matched"
    default = host.run_workflow(_graph("eps"))["invert"][0]["samples"]
    assert not torch.allclose(out["invert"][0]["samples"], default)
