"""The shipped reference models (``nodes/reference_model.py`` + ``models/reference/``, ``models/reference_flow/``):
weights, node, CLIP/VAE stand-ins, loading like a checkpoint, and evidence that they denoise images they never saw.

Floors below were measured on the shipped weights (``training_report.json`` of each) and given a margin.
"""
import json
import math
from pathlib import Path

import pytest
import torch

LOADER = "InversionReferenceModelLoader"
EPS, FLOW = "sd-unet-eps", "sd3-mmdit-flow"
VOCAB = ["", "cat", "astronaut", "coffee", "rocket", "galaxy", "bricks", "grass", "gravel"]

# measured on the shipped weights with exactly these draws: eps MSE t=300 0.0269, t=800 0.0039; cond - uncond
# denoised 0.033; DDIM T=10 round trip 24.5 dB, inverted noise std 0.98
HELDOUT_MSE_T300_MAX = 0.04
HELDOUT_MSE_T800_MAX = 0.01
# a model that predicts zero noise scores 1.0; a random one more
UNTRAINED_MSE_MIN = 0.5
ROUND_TRIP_T10_MIN_DB = 22.0


@pytest.fixture(scope="module")
def refmod(host):
    return host.pack_module().nodes.reference_model


@pytest.fixture(scope="module")
def loaded(refmod):
    return refmod.load_reference_model()


@pytest.fixture(scope="module")
def heldout(refmod, loaded):
    _, _, vae = loaded
    items = refmod.heldout_images()
    x0 = torch.cat([vae.encode(img) for _, _, img in items])
    return items, x0


def _cond(clip, prompts):
    return torch.cat([clip.encode_from_tokens(clip.tokenize(p)) for p in prompts])


def _eps_mse(model, x0, cond, t, draws=4, seed=0):
    ms = model.model_sampling
    sigma = ms.sigmas[t]
    g = torch.Generator().manual_seed(seed)
    errs = []
    with torch.no_grad():
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=g)
            x = x0 + sigma * eps
            d = model.apply_model(x, sigma.expand(x.shape[0]), c_crossattn=cond)
            errs.append(((x - d) / sigma - eps).pow(2).mean().item())
    return sum(errs) / len(errs)


# ---------------------------------------------------------------------------------------------------------- files

def test_weights_file_is_small_fp16_safetensors_with_metadata(refmod):
    from safetensors.torch import load_file

    path = refmod.reference_model_path()
    assert path.name.endswith(".safetensors") and path.is_file()
    assert path.stat().st_size <= 4 * 1024 * 1024
    meta = refmod.reference_metadata()
    assert meta["format"] == refmod.FORMAT_TAG
    assert meta["vocabulary"] == VOCAB == refmod.vocabulary()
    assert meta["model_type"] == "eps"
    assert meta["sampling_settings"] == {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
    assert int(meta["training_steps"]) > 0 and "seed" in meta
    assert meta["unet_config"]["in_channels"] == meta["unet_config"]["out_channels"] == 3
    tensors = load_file(str(path))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert tensors[refmod.EMBEDDINGS_KEY].shape[:1] == (len(VOCAB),)
    assert all(k.startswith(refmod.UNET_PREFIX) for k in tensors if k != refmod.EMBEDDINGS_KEY)


def test_heldout_images(refmod):
    items = refmod.heldout_images()
    assert 4 <= len(items) <= 8
    for name, prompt, img in items:
        assert prompt in VOCAB and prompt
        assert img.shape == (1, 32, 32, 3) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
    report = json.loads((refmod.REFERENCE_DIR / "training_report.json").read_text())
    assert report["heldout"]["images"] == len(items)


# ---------------------------------------------------------------------------------------------------------- model

def test_model_is_host_sd1_eps_model(loaded):
    from comfy import model_base, model_patcher, model_sampling

    patcher, _, _ = loaded
    assert isinstance(patcher, model_patcher.ModelPatcher)
    model = patcher.model
    assert isinstance(model, model_base.BaseModel) and model.model_type == model_base.ModelType.EPS
    ms = patcher.get_model_object("model_sampling")
    assert isinstance(ms, model_sampling.ModelSamplingDiscrete) and isinstance(ms, model_sampling.EPS)
    # SD1.x scaled-linear schedule: the host's SD15 sigma range
    assert float(ms.sigma_max) == pytest.approx(14.6146, abs=1e-3)
    assert float(ms.sigma_min) == pytest.approx(0.0292, abs=1e-3)
    assert model.latent_format.latent_channels == 3 and model.latent_format.scale_factor == 1.0
    assert not any(p.is_inference() or p.requires_grad for p in model.parameters())


def test_heldout_noise_prediction_beats_floor(loaded, heldout):
    patcher, clip, _ = loaded
    items, x0 = heldout
    cond = _cond(clip, [p for _, p, _ in items])
    mse = _eps_mse(patcher.model, x0, cond, 300)
    assert mse < HELDOUT_MSE_T300_MAX, mse
    # and it is not a near-zero predictor at high noise either
    assert _eps_mse(patcher.model, x0, cond, 800, draws=2) < HELDOUT_MSE_T800_MAX


def test_untrained_model_fails_the_same_floor(refmod, heldout, loaded):
    """The floor is meaningful: a seeded random model of the same UNet does not pass it."""
    _, clip, _ = loaded
    items, x0 = heldout
    meta = refmod.reference_metadata()
    rand = refmod.build_model_patcher(meta["unet_config"], None, "eps", seed=3)
    mse = _eps_mse(rand.model, x0, _cond(clip, [p for _, p, _ in items]), 300, draws=1)
    assert mse > UNTRAINED_MSE_MIN


def test_cfg_changes_the_prediction(loaded, heldout):
    patcher, clip, _ = loaded
    items, x0 = heldout
    model = patcher.model
    sigma = model.model_sampling.sigmas[600]
    x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    s = sigma.expand(x.shape[0])
    with torch.no_grad():
        d_cond = model.apply_model(x, s, c_crossattn=_cond(clip, [p for _, p, _ in items]))
        d_unc = model.apply_model(x, s, c_crossattn=_cond(clip, [""] * len(items)))
    guided = d_unc + 3.0 * (d_cond - d_unc)
    assert (d_cond - d_unc).abs().mean() > 0.015
    assert (guided - d_cond).abs().mean() > 0.03


def test_ddim_round_trip_on_heldout(loaded, heldout):
    import comfy.samplers

    patcher, clip, vae = loaded
    items, x0 = heldout
    model = patcher.model
    cond = _cond(clip, [p for _, p, _ in items])
    sigmas = comfy.samplers.calculate_sigmas(model.model_sampling, "ddim_uniform", 10).float()

    def d(x, sig):
        return model.apply_model(x, torch.full((x.shape[0],), sig), c_crossattn=cond)

    with torch.no_grad():
        x = x0.clone()
        up = sigmas.flip(0).tolist()
        for s, n in zip(up[:-1], up[1:]):
            x = x + (n - s) * (x - d(x, n)) / n
        noise_std = (x / up[-1]).std().item()
        down = sigmas.tolist()
        for s, n in zip(down[:-1], down[1:]):
            x = x + (n - s) * (x - d(x, s)) / s
    mse = (vae.decode(x) - vae.decode(x0)).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    assert psnr > ROUND_TRIP_T10_MIN_DB
    # the inverted latent looks like noise (a model that predicts zero noise leaves it at ~0.3, with ~35 dB)
    assert 0.6 < noise_std < 1.4


# ---------------------------------------------------------------------------------------------------------- CLIP/VAE

def test_clip_encodes_vocabulary_and_rejects_unknown_prompts(loaded):
    _, clip, _ = loaded
    tokens = clip.tokenize("  Cat ")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.ndim == 3 and cond.shape[0] == 1 and pooled.shape == (1, cond.shape[2])
    assert torch.equal(cond, clip.encode_from_tokens(clip.tokenize("cat")))
    assert not torch.equal(cond, clip.encode_from_tokens(clip.tokenize("")))
    sched = clip.encode_from_tokens_scheduled(tokens)
    assert len(sched) == 1 and torch.equal(sched[0][0], cond) and torch.equal(sched[0][1]["pooled_output"], pooled)
    with pytest.raises(ValueError) as err:
        clip.tokenize("a photo of a dog")
    for word in VOCAB[1:]:
        assert repr(word) in str(err.value)


def test_vae_is_exact_pixel_space(loaded):
    _, _, vae = loaded
    img = torch.randint(0, 256, (2, 32, 24, 4), generator=torch.Generator().manual_seed(0)).float() / 255.0
    lat = vae.encode(img)
    assert lat.shape == (2, 3, 32, 24)
    assert torch.allclose(lat, img[..., :3].movedim(-1, 1) * 2 - 1, atol=1e-7, rtol=0)
    back = vae.decode(lat)
    assert back.shape == (2, 32, 24, 3)
    assert torch.allclose(back, img[..., :3], atol=1e-7, rtol=0)
    assert vae.decode(torch.full((1, 3, 2, 2), 5.0)).max() == 1.0  # clamped
    assert vae.downscale_ratio == vae.upscale_ratio == 1 and vae.latent_channels == 3
    assert vae.spacial_compression_encode() == vae.spacial_compression_decode() == 1
    with pytest.raises(ValueError, match="3-channel"):
        vae.decode(torch.zeros(1, 4, 8, 8))


# ---------------------------------------------------------------------------------------------------------- builder

@pytest.mark.parametrize("kind,sampling", [("eps", "EPS"), ("v_prediction", "V_PREDICTION"), ("flow", "CONST")])
def test_build_model_patcher_other_model_types(refmod, kind, sampling):
    from comfy import model_sampling

    cfg = refmod.reference_unet_config()
    a = refmod.build_model_patcher(cfg, None, kind, seed=5)
    b = refmod.build_model_patcher(cfg, a.model.diffusion_model.state_dict(), kind)
    assert isinstance(a.model.model_sampling, getattr(model_sampling, sampling))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 0.5])
    ctx = torch.randn(2, 4, cfg["context_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        da = a.model.apply_model(x, sigma, c_crossattn=ctx)
        db = b.model.apply_model(x, sigma, c_crossattn=ctx)
    assert torch.isfinite(da).all() and torch.equal(da, db)
    assert (da - x).abs().mean() > 1e-3  # random (not zero) output layer
    with pytest.raises(ValueError, match="missing"):
        refmod.build_model_patcher(cfg, {"input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3)}, kind)


@pytest.mark.parametrize("name", [EPS, FLOW])
def test_loaded_like_a_checkpoint_inference_tensors_inside_inference_mode(refmod, name):
    """Issue 15: as the host's checkpoint loaders, the weights follow the caller's mode — inference tensors inside the
    executor (what the gradient methods' weight clone/restore path is for), normal tensors outside; cached per mode."""
    with torch.inference_mode():
        inside, _, _ = refmod.load_reference_model(name)
    outside, _, _ = refmod.load_reference_model(name)
    assert all(p.is_inference() for p in inside.model.parameters())
    assert not any(p.is_inference() or p.requires_grad for p in outside.model.parameters())
    a = dict(inside.model.diffusion_model.named_parameters())
    for k, v in outside.model.diffusion_model.named_parameters():
        assert torch.equal(v, a[k])
    with torch.inference_mode():
        again, _, _ = refmod.load_reference_model(name)
    assert again is not inside and again.model is inside.model  # a fresh ModelPatcher, the same cached weights


# ---------------------------------------------------------------------------------------------------------- node

def test_loader_node_declaration(host, refmod):
    cls = host.node_class(LOADER)
    assert cls is refmod.InversionReferenceModelLoader
    assert cls.CATEGORY == "sampling/inversion"
    assert cls.RETURN_TYPES == ("MODEL", "CLIP", "VAE")
    assert len(cls.OUTPUT_TOOLTIPS) == 3 and all(cls.OUTPUT_TOOLTIPS)
    spec = cls.INPUT_TYPES()
    assert list(spec) == ["required"] and list(spec["required"]) == ["model"]
    choices, opts = spec["required"]["model"]
    assert choices == [EPS, FLOW] == refmod.reference_model_names()
    assert opts["default"] == EPS and EPS in opts["tooltip"] and FLOW in opts["tooltip"]
    assert EPS in cls.DESCRIPTION and FLOW in cls.DESCRIPTION
    assert refmod.NODE_DISPLAY_NAME_MAPPINGS[LOADER] == "Load Inversion Reference Model"


def test_unknown_or_untrained_model_is_a_clear_error(refmod, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="sd3-mmdit-flow"):
        refmod.load_reference_model("sd3-dit")
    with pytest.raises(ValueError, match="model"):
        refmod.InversionReferenceModelLoader().load("flux")
    entry = refmod.REFERENCE_MODELS[FLOW]
    monkeypatch.setitem(refmod.REFERENCE_MODELS, FLOW, (tmp_path, entry[1], entry[2]))
    with pytest.raises(FileNotFoundError, match="no weights yet.*--model sd3-mmdit-flow"):
        refmod.load_reference_model(FLOW)
    # the pre-``name`` API: a weights path as the first argument still works
    patcher, _, _ = refmod.load_reference_model(refmod.reference_model_path(EPS))
    assert patcher.model.model_type.name == "EPS"


def _workflow(text="cat", model=EPS, sampler="ddim", scheduler="ddim_uniform"):
    return {
        "load": {"class_type": LOADER, "inputs": {"model": model}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["load", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                       "color": 0x336699}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["load", 2]}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["load", 0], "seed": 3, "steps": 6, "cfg": 3.0, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["enc", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["load", 2]}},
    }


@pytest.mark.parametrize("model, sampler, scheduler", [(EPS, "ddim", "ddim_uniform"), (FLOW, "euler", "simple")])
def test_host_workflow_with_standard_nodes(refmod, run_workflow, model, sampler, scheduler):
    out = run_workflow(_workflow(model=model, sampler=sampler, scheduler=scheduler))
    assert all(p.is_inference() for p in out["load"][0].model.parameters())  # loaded as a checkpoint is
    lat = out["enc"][0]["samples"]
    assert lat.shape == (1, 3, 32, 32)
    assert torch.allclose(lat[0, :, 0, 0], torch.tensor([0x33, 0x66, 0x99]) / 255.0 * 2 - 1, atol=1e-6)
    img = out["dec"][0]
    assert img.shape == (1, 32, 32, 3) and 0.0 <= img.min() and img.max() <= 1.0
    assert img.std() > 0.02  # a sampled image, not the flat input


def test_host_workflow_unknown_prompt_lists_vocabulary(host, run_workflow):
    with pytest.raises(host.WorkflowError) as err:
        run_workflow(_workflow("a dog"))
    assert "vocabulary" in str(err.value) and "'astronaut'" in str(err.value)


# ---------------------------------------------------------------------------------------------------------- flow model
# sd3-mmdit-flow: the host's SD3 MMDiT (model_base.SD3), CONST / ModelSamplingDiscreteFlow. Measured on the shipped
# weights with exactly these draws (held-out cat + astronaut, 2 noise draws per sigma): velocity MSE 0.180 / 0.138 /
# 0.144 at sigma 0.25 / 0.5 / 0.75; the same MMDiT with seeded random weights 1.45 / 1.49 / 1.54; predicting v = 0
# 1.27. Pack DDIM Invert (node defaults but steps 10, scheduler normal) + Inverted Latent Sampler: 21.9 dB.
FLOW_SIGMAS = (0.25, 0.5, 0.75)
FLOW_V_MSE_MAX = {0.25: 0.25, 0.5: 0.2, 0.75: 0.2}
FLOW_UNTRAINED_V_MSE_MIN = 1.0
FLOW_DDIM_T10_MIN_DB = 20.0
SCHEDULER = "normal"


@pytest.fixture(scope="module")
def flow(refmod):
    return refmod.load_reference_model(FLOW)


@pytest.fixture(scope="module")
def flow_heldout(refmod, flow):
    _, clip, vae = flow
    items = refmod.heldout_images()[:2]
    x0 = torch.cat([vae.encode(img) for _, _, img in items])
    return items, x0, _cond(clip, [p for _, p, _ in items])


def _v_mse(model, x0, cond, sigma, draws=2, seed=0):
    """Flow-matching loss: MSE of v = eps - x0 against the host's CONST output, v = (x - D(x, sigma)) / sigma."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    with torch.no_grad():
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=g)
            x = (1 - sigma) * x0 + sigma * eps
            d = model.apply_model(x, torch.full((x.shape[0],), sigma), c_crossattn=cond, y=cond.mean(dim=1))
            errs.append(((x - d) / sigma - (eps - x0)).pow(2).mean().item())
    return sum(errs) / len(errs)


def test_flow_weights_file_is_small_fp16_safetensors_with_metadata(refmod):
    from comfy.model_detection import detect_unet_config
    from safetensors.torch import load_file

    path = refmod.reference_model_path(FLOW)
    assert path.parent == refmod.FLOW_REFERENCE_DIR and path.is_file()
    assert path.stat().st_size <= 4 * 1024 * 1024
    meta = refmod.reference_metadata(FLOW)
    assert meta["format"] == refmod.FORMAT_TAG and meta["model_type"] == "flow" and meta["architecture"] == "mmdit"
    assert meta["vocabulary"] == VOCAB
    assert meta["sampling_settings"] == {"shift": refmod.FLOW_SHIFT}
    assert meta["unet_config"] == refmod.reference_mmdit_config()
    tensors = load_file(str(path))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert tensors[refmod.EMBEDDINGS_KEY].shape == (len(VOCAB), 4, 64)
    # a host-detectable SD3-style state dict: the host reads back exactly the shipped config
    assert detect_unet_config(tensors, refmod.UNET_PREFIX) == meta["unet_config"]
    report = json.loads((refmod.FLOW_REFERENCE_DIR / "training_report.json").read_text())
    assert report["model"]["file_bytes"] == path.stat().st_size
    assert (refmod.FLOW_REFERENCE_DIR / "samples.png").is_file()


def test_flow_model_is_host_sd3_mmdit_with_const_sampling(refmod, flow):
    from comfy import model_base, model_sampling
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    patcher, _, _ = flow
    model = patcher.model
    assert isinstance(model, model_base.SD3) and model.model_type == model_base.ModelType.FLOW
    assert isinstance(model.diffusion_model, MMDiT) and len(model.diffusion_model.joint_blocks) == 2
    ms = patcher.get_model_object("model_sampling")
    assert isinstance(ms, model_sampling.ModelSamplingDiscreteFlow) and isinstance(ms, model_sampling.CONST)
    assert ms.shift == refmod.FLOW_SHIFT and float(ms.sigma_max) == 1.0
    assert model.latent_format.latent_channels == 3 and model.is_adm()  # pooled y from the CONDITIONING


def test_flow_heldout_loss_beats_untrained_model(refmod, flow, flow_heldout):
    patcher, _, _ = flow
    _, x0, cond = flow_heldout
    meta = refmod.reference_metadata(FLOW)
    rand = refmod.build_model_patcher(meta["unet_config"], None, "flow", seed=3,
                                      sampling_settings=meta["sampling_settings"])
    zero_velocity = (torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)) - x0).pow(2).mean().item()
    for sigma in FLOW_SIGMAS:
        trained = _v_mse(patcher.model, x0, cond, sigma)
        untrained = _v_mse(rand.model, x0, cond, sigma, draws=1)
        print(f"sigma {sigma}: trained {trained:.4f} untrained {untrained:.4f} zero velocity {zero_velocity:.4f}")
        assert trained < FLOW_V_MSE_MAX[sigma], (sigma, trained)
        assert untrained > FLOW_UNTRAINED_V_MSE_MIN, (sigma, untrained)
        assert trained < zero_velocity / 5, (sigma, trained, zero_velocity)   # measured ratio 7-9


def _defaults(class_type, **given):
    """A node's required widget inputs at their defaults, overridden by ``given``."""
    import host

    out = {}
    for name, spec in host.node_class(class_type).INPUT_TYPES()["required"].items():
        kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
        if isinstance(kind, (list, tuple)):
            out[name] = opts.get("default", kind[0])
        elif "default" in opts:
            out[name] = opts["default"]
    out.update(given)
    return out


def test_flow_ddim_round_trip_through_the_pack_nodes_in_the_executor(refmod, run_workflow):
    """Held-out images -> DDIM Invert -> Inverted Latent Sampler on the flow model, inside the real executor."""
    import shutil

    from comfy.cmd import folder_paths

    items = refmod.heldout_images()[:2]
    src = refmod.REFERENCE_DIR / refmod.HELDOUT_DIR_NAME
    for name, _, _ in items:
        shutil.copy(src / f"{name}.png", Path(folder_paths.get_input_directory()) / f"{name}.png")
    prompt = {
        "load": {"class_type": LOADER, "inputs": {"model": FLOW}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "img0": {"class_type": "LoadImage", "inputs": {"image": f"{items[0][0]}.png"}},
        "img1": {"class_type": "LoadImage", "inputs": {"image": f"{items[1][0]}.png"}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["img0", 0], "image2": ["img1", 0]}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["batch", 0], "vae": ["load", 2]}},
        "inv": {"class_type": "DDIMInvert", "inputs": {
            **_defaults("DDIMInvert", steps=10, scheduler=SCHEDULER), "model": ["load", 0], "positive": ["empty", 0],
            "negative": ["empty", 0], "latent": ["enc", 0]}},
        "replay": {"class_type": "InvertedLatentSampler", "inputs": {
            **_defaults("InvertedLatentSampler"), "model": ["load", 0], "positive": ["empty", 0],
            "negative": ["empty", 0], "inverted_latent": ["inv", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["replay", 0], "vae": ["load", 2]}},
    }
    out = run_workflow(prompt)
    images = torch.cat([img for _, _, img in items])
    assert torch.allclose(out["batch"][0], images, atol=1e-6)
    assert all(p.is_inference() for p in out["load"][0].model.parameters())
    inverted = out["inv"][0]
    noise = inverted["samples"]
    mse = (out["dec"][0] - images).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    print(f"flow DDIM T=10 round trip {psnr:.2f} dB, inverted std {noise.std().item():.3f}, "
          f"top sigma {float(inverted['inversion']['sigmas'].max()):.4f}")
    assert torch.isfinite(noise).all()
    assert psnr > FLOW_DDIM_T10_MIN_DB


@pytest.mark.parametrize("name", [EPS, FLOW])
def test_gradient_method_takes_the_checkpoint_weight_path_in_the_executor(refmod, run_workflow, name):
    """Issue 15: loaded by the node inside the executor, the reference weights are inference tensors, so PreciseInv
    must clone them to differentiate and put the originals back — the path real checkpoints take."""
    prompt = {
        "load": {"class_type": LOADER, "inputs": {"model": name}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                       "color": 0x336699}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["load", 2]}},
        "inv": {"class_type": "PreciseInvInvert", "inputs": {
            **_defaults("PreciseInvInvert", steps=2, max_iterations=3), "model": ["load", 0],
            "positive": ["empty", 0], "negative": ["empty", 0], "latent": ["enc", 0]}},
    }
    out = run_workflow(prompt)
    model = out["load"][0].model
    params = list(model.diffusion_model.parameters())
    assert params and all(p.is_inference() for p in params)          # what the executor's loader gave
    entry = out["inv"][0]["inversion"]
    assert entry["stats"]["backward_evals"] > 0
    assert entry["params"]["grad_mode"]["cloned_tensors"] >= len(params), entry["params"]["grad_mode"]
    assert all(p.is_inference() for p in model.diffusion_model.parameters())   # the originals are back


@pytest.mark.parametrize("name", [EPS, FLOW])
def test_training_script_runs_and_its_training_forward_is_the_hosts(name):
    """scripts/train_reference_model.py --bench: builds the model, checks that its training-only forward (SDPA
    attention, out-of-place UNet blocks) computes the host's function on random weights, trains 2 steps."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "train_reference_model.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(script), "--model", name, "--bench", "2", "--batch", "4"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bench: 2 steps" in run.stdout
