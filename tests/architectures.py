"""The host's real model architectures at a tiny size with seeded random weights (test-only; issue 13 point 5).

Each family is built the way the host builds a checkpoint's diffusion model, with the host's own classes and no
checkpoint detection: ``comfy.supported_models.<Family>(unet_config)`` → ``.get_model({})`` (the host's
``model_base`` class: ``BaseModel`` / ``SDXL`` / ``SD3``, its ``model_sampling`` and latent format) → weights loaded
with ``load_model_weights`` → ``comfy.model_patcher.ModelPatcher``.

========  ==============================  ======================  ===========================================
family    host classes                    model_sampling          tiny layout
========  ==============================  ======================  ===========================================
sd1       supported_models.SD15           EPS, SD1 schedule       UNet 32/64 ch, 2 levels, conv proj, 8 heads
sd2v      supported_models.SD20 (v)       V_PREDICTION            UNet 32/64 ch, linear proj, 16-ch heads
sdxl      supported_models.SDXL           EPS, SDXL adm (y)       UNet 32/64 ch, no attention at level 0,
                                                                  label_emb on pooled + 6 size embeddings
sd3       supported_models.SD3 (MMDiT)    CONST flow, shift 3     MMDiT depth 2 (hidden 128, 2 heads), patch 2,
                                                                  16 latent channels, pos_embed, y_embedder
flux      supported_models.FluxSchnell    CONST flow, shift 1     1 double + 1 single block, hidden 64, 2 heads
          (upstream only)                                         (rotary 4/14/14), vector_in on pooled output
sd1inpaint / sdxlinpaint / fluxfill (upstream only): sd1 / sdxl / flux with the input channels of an inpainting
          checkpoint (9 / 9 / 96: the latent + the host's concat input; INPAINT_FAMILIES)
sd2unclip supported_models.SD21UnclipH    V_PREDICTION            sd2v + label_emb on the noise-augmented
          (model_base.SD21UNCLIP)                                 CLIP-vision image embedding (UNCLIP_EMBED)
========  ==============================  ======================  ===========================================

SD2.1 unCLIP (``sd2unclip``, both hosts) is guided by an image: unCLIPConditioning puts a CLIP-vision output
(``clip_vision_output``: the host's ``comfy.clip_vision.Output``, tensors as attributes) into the conditioning, and the
model feeds its noise-augmented ``image_embeds`` to the UNet's label embedding. ``clip_vision_output(seed)`` is such an
output for a seeded random "image" (what CLIPVisionEncode would give), so conditionings of two images can be told apart.

Upstream only as well (``FAMILY_SPECS``, ``scripts/check_upstream.sh``'s "families" checks): the other families
upstream ComfyUI 0.3.64 runs that build at a tiny size, each one block deep and 64 wide with 2 heads (32-wide),
built by the generic ``_init_generic`` below: ``wan21`` (WAN21_T2V, 5-D latents [B, 16, T, H, W], flow shift 8),
``wan22`` (WAN22_T2V 5B: 48 channels), ``qwen_image`` (QwenImage: the Wan VAE's 5-D latent of one frame, Flux
sampling shift 1.15), ``lumina2`` (NextDiT, flow shift 6), ``chroma`` (Flux sampling, T5 only: pooled output None),
``hidream`` (flow, the Llama-3 hidden states of ``llama_layers`` next to T5's), ``ltxv`` (128-channel 5-D latents,
patch 1), ``cosmos_predict2`` (COSMOS_RFLOW: a rectified flow in EDM's sigma space up to 80), ``hunyuan_video``
(flow, 5-D, guidance embedding) and ``auraflow`` (flow, SDXL's 4-channel latent).

SD2.x's v-prediction is normally detected from checkpoint weights; with no checkpoint, the family's config class
is the host's ``SD20`` with ``model_type`` answering V_PREDICTION. Flux is absent from the PyPI fork (no
``comfy/ldm/flux``): ``flux`` builds only on upstream ComfyUI (``scripts/check_upstream.sh``); on the fork it is a
clear error.

Weights (``init_state_dict``): the host's layers skip initialisation (``comfy.ops.disable_weight_init``: whatever is
in memory), so weights are drawn here, deterministically from ``seed``: the diffusion model is constructed once more
with the pack's ``_InitOps`` (``nodes/reference_model.py``: the host's ops with torch's default ``reset_parameters``)
under ``torch.manual_seed(seed)``; the UNets go through ``init_unet_state_dict``, which also redraws every layer the
UNet zero-initialises for training (final conv, each res block's last conv, each transformer's proj_out) — a model
whose output layer is zero predicts exactly zero, is the identity denoiser, and makes every inversion trivially
exact. MMDiT's only uninitialised tensor without an init is the ``pos_embed`` buffer: it gets the host's 2-D sin-cos
embedding (what SD3's learned one resembles). ``init_state_dict`` refuses a state dict with an all-zero or
non-finite weight; the tests also check the model's output depends on its input.

Conditioning (``make_conditioning``) is what the host's text encoders hand the sampler: ``[[cond [B, tokens, dim],
{"pooled_output": [B, pooled]}]]``; SDXL's entry also carries ``width``/``height``/``crop_w``/``crop_h``/
``target_width``/``target_height``, which ``model_base.SDXL.encode_adm`` turns into the ``y`` vector with the
pooled output. Latents (``make_latent``) are smooth random fields of unit variance in the model's space, stored the
way a VAE encode stores them (``latent_format.process_out``), one row per seed.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import torch

PACK_ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("sd1", "sd2v", "sdxl", "sd3")     # what the PyPI fork has
# inpainting checkpoints: the family's network with more input channels, the noisy latent + the host's concat input
# (SD1.5- / SDXL-inpainting: mask + masked image, 9 channels; both hosts mark a UNet config with in_channels > 4 as
# inpainting. Flux Fill, upstream only: masked image + the mask as 64 channels per latent pixel, 96): family -> (the
# family it extends, in_channels)
INPAINT_FAMILIES = {"sd1inpaint": ("sd1", 9), "sdxlinpaint": ("sdxl", 9), "fluxfill": ("flux", 96)}
CONTEXT_DIM = 32     # cross-attention token width (CLIP-L 768 / OpenCLIP-H 1024 / SDXL 2048 / SD3 4096 in real models)
POOLED_DIM = 32      # pooled text embedding (SDXL, SD3: 1280 / 2048 in real models)
UNCLIP_EMBED = 32    # CLIP-vision image embedding of the unCLIP family (1024 for SD2.1 unCLIP-H, 768 for -L)
_BLOCK = {"dim": 64, "num_heads": 2}
# family -> (upstream supported_models class, tiny unet_config, latent frames (None: a 4-D image latent), output
# layer prefix). Widths: 64 hidden, heads of 32, rotary axes summing to 32.
FAMILY_SPECS = {
    "wan21": ("WAN21_T2V", {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16,
                            "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": CONTEXT_DIM, "out_dim": 16,
                            "num_heads": 2, "num_layers": 1}, 2, "head.head."),
    "wan22": ("WAN22_T2V", {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 48,
                            "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": CONTEXT_DIM, "out_dim": 48,
                            "num_heads": 2, "num_layers": 1}, 2, "head.head."),
    "qwen_image": ("QwenImage", {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                                 "num_layers": 1, "attention_head_dim": 32, "num_attention_heads": 2,
                                 "joint_attention_dim": CONTEXT_DIM, "axes_dims_rope": (8, 12, 12)}, 1, "proj_out."),
    "lumina2": ("Lumina2", {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "n_layers": 1,
                            "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "multiple_of": 16, "qk_norm": True,
                            "cap_feat_dim": CONTEXT_DIM, "axes_dims": (8, 12, 12), "axes_lens": (1, 64, 64)},
                None, "final_layer.linear."),
    "chroma": ("Chroma", {"image_model": "chroma", "in_channels": 64, "out_channels": 64,
                          "context_in_dim": CONTEXT_DIM, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2,
                          "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 14, 14], "theta": 10000,
                          "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 64,
                          "n_layers": 1}, None, "final_layer.linear."),
    "hidream": ("HiDream", {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
                            "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 32,
                            "num_attention_heads": 2, "caption_channels": [CONTEXT_DIM, CONTEXT_DIM],
                            "text_emb_dim": POOLED_DIM, "num_routed_experts": 2, "num_activated_experts": 1,
                            "axes_dims_rope": [8, 12, 12], "max_resolution": [32, 32], "llama_layers": [0, 1, 1]},
                None, "final_layer.linear."),
    "ltxv": ("LTXV", {"image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64, "attention_head_dim": 32,
                      "num_attention_heads": 2, "caption_channels": CONTEXT_DIM, "num_layers": 1}, 2, "proj_out."),
    "cosmos_predict2": ("CosmosT2IPredict2", {"image_model": "cosmos_predict2", "max_img_h": 32, "max_img_w": 32,
                                              "max_frames": 8, "in_channels": 16, "out_channels": 16,
                                              "patch_spatial": 2, "patch_temporal": 1, "model_channels": 64,
                                              "num_blocks": 1, "num_heads": 2, "crossattn_emb_channels": CONTEXT_DIM,
                                              "pos_emb_cls": "rope3d", "use_adaln_lora": True, "adaln_lora_dim": 16},
                        1, "final_layer.linear."),
    "hunyuan_video": ("HunyuanVideo", {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16,
                                       "vec_in_dim": POOLED_DIM, "context_in_dim": CONTEXT_DIM, "hidden_size": 64,
                                       "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                                       "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2],
                                       "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False},
                      2, "final_layer.linear."),
    "auraflow": ("AuraFlow", {"cond_seq_dim": CONTEXT_DIM, "dim": 64, "n_layers": 2, "n_double_layers": 1,
                              "patch_size": 2, "in_channels": 4, "out_channels": 4, "n_heads": 2, "max_seq": 64},
                 None, "final_linear."),
}
UPSTREAM_FAMILIES = ("flux",) + tuple(FAMILY_SPECS)   # need upstream ComfyUI (comfy/ldm/flux, wan, ...)
LLAMA_LAYERS = 2     # hidream: the Llama-3 hidden states the conditioning carries (llama_layers index them)
SDXL_SIZE_EMBED = 6 * 256   # model_base.SDXL.encode_adm: 6 size/crop values, each a 256-wide Timestep embedding
LATENT_CHANNELS = {"sd1": 4, "sd2v": 4, "sdxl": 4, "sd3": 16, "flux": 16, "wan21": 16, "wan22": 48,
                   "qwen_image": 16, "lumina2": 16, "chroma": 16, "hidream": 16, "ltxv": 128,
                   "cosmos_predict2": 16, "hunyuan_video": 16, "auraflow": 4, "sd1inpaint": 4, "sdxlinpaint": 4,
                   "fluxfill": 16, "sd2unclip": 4}
MODEL_KIND = {"sd1": "EPS", "sd2v": "V_PREDICTION", "sdxl": "EPS", "sd3": "CONST", "flux": "CONST",
              **{f: "CONST" for f in FAMILY_SPECS}, "cosmos_predict2": "COSMOS_RFLOW",
              "sd1inpaint": "EPS", "sdxlinpaint": "EPS", "fluxfill": "CONST", "sd2unclip": "V_PREDICTION"}
# Schedulers other than the inversion nodes' default (auto: karras, or simple for flow; flux names simple for the
# upstream check). For the EPS UNets the classic DDIM grid (ddim_uniform, top sigma 5.1 at T=5): with karras at T=5
# the top two steps (sigma 1.27 -> 4.80 -> 14.6) cannot be inverted on these random networks. Measured on sd1: along the
# inversion trajectory the network's scaled input shrinks (std 0.24 / 0.13 at those steps; a random network's
# prediction does not grow the latent into noise the way a trained one's does), its input Jacobian grows as the
# inverse of that scale (GroupNorm: 6.7 / 10.5), and the Euler step's Lipschitz constant in x is 4.8 / 7.1: Exact
# with 100 evaluations per step still leaves residual 1.2 (12.3 dB, DDIM 10.7). On ddim_uniform the worst step's
# constant is 3.6 and Exact's `exact` preset converges (117.9 dB). V-prediction (sd2v) scales the network's output
# by c_in once more and inverts fine on karras; the flow model too.
SCHEDULER = {"sd1": "ddim_uniform", "sdxl": "ddim_uniform", "flux": "simple", "sd1inpaint": "ddim_uniform",
             "sdxlinpaint": "ddim_uniform", "fluxfill": "simple"}
# The network's final layer (weight and bias) is scaled by OUTPUT_GAIN so that its input Jacobian (d output /
# d scaled input, at a unit-variance input) has the spectral norm of a trained denoiser: measured on the pack's
# trained reference model (EPS UNet) 1.06-1.09 at sigma 0.57-5.1; on these random networks before scaling 2.24-2.33
# (sd1, sd2v), 1.93-1.98 (sdxl), 1.10-1.17 (sd3), 1.70 (flux, upstream); after 0.8-1.2 (``input_jacobian_norm``,
# asserted in the tests). Without it (gain 1) Exact's default gains +5 dB over DDIM on sd1 at T=5 instead of +11:
# the step's inverse is worse conditioned, which says nothing about the methods.
OUTPUT_LAYER = {"sd1": "out.2.", "sd2v": "out.2.", "sdxl": "out.2.", "sd3": "final_layer.linear.",
                "flux": "final_layer.linear.", **{f: spec[3] for f, spec in FAMILY_SPECS.items()},
                "sd1inpaint": "out.2.", "sdxlinpaint": "out.2.", "fluxfill": "final_layer.linear.",
                "sd2unclip": "out.2."}
# FAMILY_SPECS families: 0.5, not measured against a trained model (their checks compare methods with each other)
OUTPUT_GAIN = {"sd1": 0.45, "sd2v": 0.45, "sdxl": 0.5, "sd3": 1.0, "flux": 0.6, **{f: 0.5 for f in FAMILY_SPECS},
               "sd1inpaint": 0.45, "sdxlinpaint": 0.5, "fluxfill": 0.6, "sd2unclip": 0.45}
# image-guided families outside FAMILIES (the tests written for every text-to-image family do not apply): SD2.1 unCLIP
GUIDED_FAMILIES = ("sd2unclip",)
ALL_FAMILIES = FAMILIES + UPSTREAM_FAMILIES + tuple(INPAINT_FAMILIES) + GUIDED_FAMILIES


def _unet_base(**overrides) -> dict:
    """A UNet config in the host's detected-config format (model_detection.detect_unet_config), 2 levels."""
    cfg = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2],
        "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
        "context_dim": CONTEXT_DIM, "use_linear_in_transformer": False,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }
    cfg.update(overrides)
    return cfg


def unet_config(family: str) -> dict:
    """The tiny diffusion-model config of ``family`` (before the host class adds its ``unet_extra_config``)."""
    if family in INPAINT_FAMILIES:
        extends, channels = INPAINT_FAMILIES[family]
        return dict(unet_config(extends), in_channels=channels)
    if family == "sd1":
        return _unet_base()                                         # SD15: conv proj_in/out, num_heads 8
    if family == "sd2v":
        return _unet_base(use_linear_in_transformer=True)
    if family == "sd2unclip":
        # SD2.x's UNet plus the label embedding of unCLIP's adm vector: the augmented image embedding and the
        # embedding of its noise level, each UNCLIP_EMBED wide
        return _unet_base(use_linear_in_transformer=True, num_classes="sequential", adm_in_channels=2 * UNCLIP_EMBED)
    if family == "sdxl":
        # SDXL: no transformer at the first level, linear proj, adm conditioning through label_emb
        return _unet_base(use_linear_in_transformer=True, transformer_depth=[0, 1],
                          transformer_depth_output=[0, 0, 1, 1], num_classes="sequential",
                          adm_in_channels=POOLED_DIM + SDXL_SIZE_EMBED)
    if family == "sd3":
        hidden = 64 * 2                                             # MMDiT: hidden = 64 * depth, heads = depth
        return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
                "adm_in_channels": POOLED_DIM,
                "context_embedder_config": {"target": "torch.nn.Linear",
                                            "params": {"in_features": CONTEXT_DIM, "out_features": hidden}},
                "num_patches": 64, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None}
    if family in FAMILY_SPECS:
        return dict(FAMILY_SPECS[family][1])
    if family == "flux":
        # Flux.1-schnell layout (model_detection's keys): 1 double + 1 single stream block, hidden 64, 2 heads of 32
        # (rotary axes 4 + 14 + 14), no guidance embedding
        return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
                "vec_in_dim": POOLED_DIM, "context_in_dim": CONTEXT_DIM, "hidden_size": 64, "mlp_ratio": 4.0,
                "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 14, 14], "theta": 10000,
                "qkv_bias": True, "guidance_embed": False}
    raise ValueError(f"family: unknown architecture {family!r}; one of {ALL_FAMILIES}")


def config_class(family: str) -> type:
    """The host's ``supported_models`` class of ``family``, narrowed only where the tiny size or the missing
    checkpoint requires it (attention head width; SD2's v-prediction)."""
    from comfy import model_base, supported_models

    if family in INPAINT_FAMILIES:
        return config_class(INPAINT_FAMILIES[family][0])
    if family == "sd1":
        return supported_models.SD15                                # num_heads 8, any width
    if family == "sd2v":
        class TinySD20V(supported_models.SD20):
            unet_extra_config = dict(supported_models.SD20.unet_extra_config, num_head_channels=16)

            def model_type(self, state_dict, prefix=""):
                return model_base.ModelType.V_PREDICTION          # detected from weights in a real checkpoint

        return TinySD20V
    if family == "sd2unclip":
        class TinySD21Unclip(supported_models.SD21UnclipH):
            unet_extra_config = dict(supported_models.SD21UnclipH.unet_extra_config, num_head_channels=16)
            noise_aug_config = dict(supported_models.SD21UnclipH.noise_aug_config, timestep_dim=UNCLIP_EMBED)

            def model_type(self, state_dict, prefix=""):
                return model_base.ModelType.V_PREDICTION          # SD2.1 unCLIP is a 768-v model

        return TinySD21Unclip
    if family == "sdxl":
        class TinySDXL(supported_models.SDXL):
            unet_extra_config = dict(supported_models.SDXL.unet_extra_config, num_head_channels=16)

        return TinySDXL
    if family == "sd3":
        return supported_models.SD3
    if family == "flux":
        if not hasattr(supported_models, "FluxSchnell"):
            raise ValueError("family: flux needs upstream ComfyUI (this host has no comfy/ldm/flux: the PyPI fork)")
        return supported_models.FluxSchnell
    if family in FAMILY_SPECS:
        cls = getattr(supported_models, FAMILY_SPECS[family][0], None)
        if cls is None:
            raise ValueError(f"family: {family} needs upstream ComfyUI (this host has no supported_models."
                             f"{FAMILY_SPECS[family][0]}: the PyPI fork)")
        return cls
    raise ValueError(f"family: unknown architecture {family!r}; one of {ALL_FAMILIES}")


def _reference_model_module():
    """The pack's ``nodes/reference_model.py`` (no relative imports; loaded by path as the training script does)."""
    name = "inversion_reference_model"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "nodes" / "reference_model.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


def _check_weights(sd: dict, family: str) -> dict:
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{family}: weight {k} is not finite (uninitialised memory?)")
        if k.endswith("weight") and v.ndim >= 2 and not v.any():
            raise ValueError(f"{family}: weight {k} is all zero")
    return sd


def init_state_dict(family: str, config: dict, seed: int = 0) -> dict:
    """Seeded random weights (keys without prefix) for the diffusion model of ``family`` built from ``config``
    (the host class's full ``unet_config``)."""
    sd = _init_state_dict(family, config, seed)
    gain = OUTPUT_GAIN[family]
    scaled = [k for k in sd if k.startswith(OUTPUT_LAYER[family])]
    if not scaled:
        raise ValueError(f"{family}: no output layer {OUTPUT_LAYER[family]!r} among the weights")
    for k in scaled:
        sd[k] = sd[k] * gain
    return _check_weights(sd, family)


def _init_generic(net_class: type, cfg: dict, seed: int) -> dict:
    """Seeded weights for any host network: its torch layers (Linear, Conv, norms, Embedding) get torch's default
    init (the host's ops skip it), every other parameter (the host's own RMSNorm scales, learned embeddings and
    modulation tables, made with torch.empty) 1 for a 1-D weight / scale, else N(0, 0.02²); a buffer left non-finite
    is zeroed."""
    ref = _reference_model_module()
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm,
              torch.nn.LayerNorm, torch.nn.Embedding, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm))
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        net = net_class(**cfg, dtype=torch.float32, operations=ref._InitOps.get())
        done = set()
        for mod in net.modules():
            base = next((c for c in layers if isinstance(mod, c)), None)
            if base is not None and any(p is not None for p in mod.parameters(recurse=False)):
                base.reset_parameters(mod)
                done |= {id(p) for p in mod.parameters(recurse=False)}
        for name, p in net.named_parameters():
            if id(p) in done:
                continue
            if p.ndim == 1 and name.rsplit(".", 1)[-1] in ("weight", "scale", "gamma"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape) * 0.02)
        sd = {}
        for k, v in net.state_dict().items():
            v = v.detach().clone()
            sd[k] = v if torch.isfinite(v).all() else torch.zeros_like(v)
        return sd


def _init_state_dict(family: str, config: dict, seed: int = 0) -> dict:
    ref = _reference_model_module()
    cfg = {k: v for k, v in config.items() if k not in ("dtype", "device", "operations")}
    if family in FAMILY_SPECS:
        # the network class the host's model_base builds for this config (constructed once more with _InitOps)
        model = config_class(family)(dict(unet_config(family))).get_model({}, device=torch.device("cpu"))
        return _init_generic(type(model.diffusion_model), cfg, seed)
    if family in ("flux", "fluxfill"):
        from comfy.ldm.flux.model import Flux

        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = Flux(**cfg, dtype=torch.float32, operations=ref._InitOps.get())
            with torch.no_grad():
                for mod in net.modules():            # Flux's own RMSNorm (q/k norms): torch.empty, no init
                    if type(mod).__name__ == "RMSNorm" and isinstance(getattr(mod, "scale", None), torch.Tensor):
                        mod.scale.fill_(1.0)
            return {k: v.detach().clone() for k, v in net.state_dict().items()}
    if family != "sd3":
        return _check_weights(ref.init_unet_state_dict(cfg, seed), family)

    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper, get_2d_sincos_pos_embed_torch

    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = OpenAISignatureMMDITWrapper(**cfg, dtype=torch.float32, operations=ref._InitOps.get())
        with torch.no_grad():
            side = int(cfg["pos_embed_max_size"])
            net.pos_embed.copy_(get_2d_sincos_pos_embed_torch(net.hidden_size, side, side).unsqueeze(0))
        sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return _check_weights(sd, family)


def build_model(family: str, seed: int = 0):
    """A tiny random-weight model of ``family`` as a ``ModelPatcher`` (float32, on the host's device).

    Call it where the host would load a checkpoint: inside the executor (inference mode) the weights end up as
    inference tensors, as the standard loaders leave them.
    """
    from comfy import model_management, model_patcher

    config = config_class(family)(unet_config(family))
    config.set_inference_dtype(torch.float32, None)
    sd = init_state_dict(family, config.unet_config, seed)
    load_device = model_management.get_torch_device()
    offload_device = model_management.unet_offload_device()
    model = config.get_model({}, device=offload_device)
    expected = set(model.diffusion_model.state_dict())
    if expected != set(sd):
        raise ValueError(f"{family}: weights do not match the model: missing {sorted(expected - set(sd))[:5]}, "
                         f"unexpected {sorted(set(sd) - expected)[:5]}")
    model.load_model_weights(dict(sd), "")
    model.eval()
    return model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def parse_seeds(seeds) -> list[int]:
    """``"3"`` / ``"3, 4"`` / ``[3, 4]`` → ``[3, 4]``: one batch item per seed."""
    if isinstance(seeds, (int, float)):
        return [int(seeds)]
    if isinstance(seeds, str):
        parts = [p for p in seeds.replace(";", ",").split(",") if p.strip()]
        try:
            out = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"seeds: expected comma-separated integers, got {seeds!r}") from None
    else:
        out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds: give at least one seed")
    return out


def make_conditioning(family: str, seeds="1", tokens: int = 4, width: int = 128, height: int = 128) -> list:
    """CONDITIONING as the family's text encoder would give it; row i of the batch is drawn from ``seeds[i]``."""
    if family not in ALL_FAMILIES:
        raise ValueError(f"family: unknown architecture {family!r}; one of {ALL_FAMILIES}")
    conds, pooled = [], []
    for s in parse_seeds(seeds):
        gen = torch.Generator(device="cpu").manual_seed(int(s))
        conds.append(torch.randn((int(tokens), CONTEXT_DIM), generator=gen))
        pooled.append(torch.randn((POOLED_DIM,), generator=gen))
    extra = {"pooled_output": torch.stack(pooled)}
    if family == "chroma":       # T5 only: the text encode node's pooled output is None
        extra["pooled_output"] = None
    if family == "hidream":      # next to T5's tokens, the Llama-3 hidden states of several layers
        extra["conditioning_llama3"] = torch.stack([
            torch.randn((LLAMA_LAYERS, int(tokens), CONTEXT_DIM), generator=torch.Generator().manual_seed(int(s) + 1000))
            for s in parse_seeds(seeds)])
    if family in ("lumina2", "ltxv"):   # their text encoders hand the sampler the token mask too
        extra["attention_mask"] = torch.ones((len(conds), int(tokens)), dtype=torch.long)
    if family in ("sdxl", "sdxlinpaint"):   # what CLIPTextEncodeSDXL adds; model_base.SDXL.encode_adm reads them
        extra.update({"width": int(width), "height": int(height), "crop_w": 0, "crop_h": 0,
                      "target_width": int(width), "target_height": int(height)})
    return [[torch.stack(conds), extra]]


def clip_vision_output(seed: int = 11, batch: int = 1, tokens: int = 5):
    """What CLIPVisionEncode hands unCLIPConditioning for a seeded random image: the host's ``comfy.clip_vision.Output``
    with its ``image_embeds`` [batch, UNCLIP_EMBED] (what the unCLIP model reads) and hidden states (what other
    image-guided models read: Wan image-to-video's penultimate one). Another seed is another image."""
    from comfy.clip_vision import Output

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = Output()
    out["last_hidden_state"] = torch.randn((int(batch), int(tokens), UNCLIP_EMBED), generator=gen)
    out["penultimate_hidden_states"] = torch.randn((int(batch), int(tokens), UNCLIP_EMBED), generator=gen)
    out["image_embeds"] = torch.randn((int(batch), UNCLIP_EMBED), generator=gen)
    return out


def hook_lora(family: str, seed: int = 0, lora_seed: int = 10, strength: float = 1.0):
    """Upstream's HOOKS (``comfy.hooks``: what Create Hook LoRA gives) for ``family``'s tiny model of weight seed
    ``seed``: a LoRA in the full-difference format (``<key>.diff``, which the host's LoRA loader reads) holding seeded
    random differences on every weight of the diffusion model, 30% of each weight's spread (what a LoRA file amounts
    to), at ``strength``. Another ``lora_seed`` is another LoRA file. Upstream only: the PyPI fork has no hooks."""
    try:
        import comfy.hooks
    except ImportError:
        raise ValueError("hooks: this host has no comfy.hooks (the PyPI fork); hooks need upstream ComfyUI") from None
    config = config_class(family)(unet_config(family))
    config.set_inference_dtype(torch.float32, None)
    sd = init_state_dict(family, config.unet_config, seed)
    gen = torch.Generator().manual_seed(int(lora_seed))
    lora = {}
    for k, v in sd.items():
        name = k[:-len(".weight")] if k.endswith(".weight") else k     # the loader's key for a weight / other tensor
        lora[f"diffusion_model.{name}.diff"] = 0.3 * v.float().std().nan_to_num() * torch.randn(v.shape, generator=gen)
    return comfy.hooks.create_hook_lora(lora=lora, strength_model=float(strength), strength_clip=float(strength))


def tiny_controlnet(patcher, seed: int = 0):
    """A ControlNet of a tiny UNet's layout (``patcher``'s) with seeded random weights (the host's cldm.ControlNet),
    and the generator that drew them, for the caller's hint images."""
    import comfy.controlnet
    import comfy.model_management
    from comfy.cldm import cldm

    config = dict(patcher.model.model_config.unet_config)
    config.pop("out_channels", None)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode(False), torch.no_grad():
        net = cldm.ControlNet(hint_channels=3, **config)
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    control = comfy.controlnet.ControlNet(net, load_device=comfy.model_management.get_torch_device(),
                                          manual_cast_dtype=None)
    return control, gen


def make_latent(family: str, seeds="3", size: int = 16, frames: int = -1) -> dict:
    """A LATENT of smooth unit-variance random "images" in the model's space, stored as a VAE encode stores it.
    Video families (FAMILY_SPECS) get [B, C, frames, size, size], each frame drawn like an image; ``frames``: -1 =
    the family's, 0 = a 4-D image latent (what EmptySD3LatentImage gives a Qwen-Image workflow)."""
    if family not in ALL_FAMILIES:
        raise ValueError(f"family: unknown architecture {family!r}; one of {ALL_FAMILIES}")
    fmt = config_class(family).latent_format()
    channels = LATENT_CHANNELS[family]
    frames = (FAMILY_SPECS[family][2] if family in FAMILY_SPECS else None) if int(frames) < 0 else int(frames) or None
    items = []
    for s in parse_seeds(seeds):
        gen = torch.Generator(device="cpu").manual_seed(int(s))
        coarse = torch.randn((frames or 1, channels, 4, 4), generator=gen)
        z = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        z = z + 0.5 * torch.randn(z.shape, generator=gen)
        z = (z - z.mean()) / z.std()
        items.append(z.movedim(0, 1) if frames else z[0])      # [C, T, H, W] or [C, H, W]
    z = torch.stack(items)
    if z.ndim == 4 and getattr(fmt, "latent_dimensions", 2) == 3:
        # a 5-D format's per-channel statistics broadcast over [B, C, T, H, W] (a 4-D latent would gain an axis)
        return {"samples": fmt.process_out(z.unsqueeze(2)).squeeze(2)}
    return {"samples": fmt.process_out(z)}


def _network(patcher, family: str, sigma_fraction: float):
    """(f, sigma): the raw network (eps / v / flow velocity) as a function of its scaled input at the sigma
    ``sigma_fraction`` of the way down the schedule, conditioned like the sampler conditions it."""
    from comfy import model_management

    model = patcher.model
    ms = model.model_sampling
    sigma = torch.tensor([float(ms.percent_to_sigma(sigma_fraction))])
    cond = make_conditioning(family, "1")
    context = cond[0][0]
    y = model.encode_adm(**cond[0][1], device=model_management.get_torch_device()) if model.adm_channels else None
    t = ms.timestep(sigma).float()

    def f(xc):
        return model.diffusion_model(xc, t, context=context, y=y).float()

    return f, sigma


def model_prediction_stats(patcher, family: str, sigma_fraction: float = 0.5, seed: int = 0) -> dict:
    """The raw network output on a noisy unit-variance latent at a mid-schedule sigma: its std, and how much it
    changes when the clean latent changes (a zero output layer gives 0 and 0)."""
    f, sigma = _network(patcher, family, sigma_fraction)
    ms = patcher.model.model_sampling
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, LATENT_CHANNELS[family], 16, 16)
    noise = torch.randn(shape, generator=gen)
    out = []
    with torch.no_grad():
        for _ in range(2):
            x = ms.noise_scaling(sigma, noise, torch.randn(shape, generator=gen))
            out.append(f(ms.calculate_input(sigma, x)))
    return {"sigma": float(sigma), "std": out[0].std().item(), "input_sensitivity": (out[0] - out[1]).std().item()}


def input_jacobian_norm(patcher, family: str, sigma_fraction: float = 0.5, iterations: int = 10, seed: int = 0):
    """Spectral norm of d network / d scaled input at a unit-variance input (power iteration on J^T J; forward-mode
    JVP, reverse-mode VJP with saved activations copied: the fork's transformer block updates one in place)."""
    f, _sigma = _network(patcher, family, sigma_fraction)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, LATENT_CHANNELS[family], 16, 16)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # the math kernel: some PyTorch builds (2.11) have no forward-mode derivative for the CPU's flash attention
    with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        params = {id(p): p.detach().clone() for p in patcher.model.parameters()}   # weights may be inference tensors
        originals = []
        for mod in patcher.model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    originals.append((mod, name, p))
                    mod._parameters[name] = torch.nn.Parameter(params[id(p)], requires_grad=False)
        try:
            xc = torch.randn(shape, generator=gen)
            v = torch.randn(shape, generator=gen)
            v = v / v.norm()
            for _ in range(iterations):
                _, jv = torch.func.jvp(f, (xc,), (v,))
                xg = xc.clone().requires_grad_(True)
                with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                    out = f(xg)
                w = torch.autograd.grad(out, xg, jv)[0]
                v = w / w.norm()
            _, jv = torch.func.jvp(f, (xc,), (v,))
            return jv.norm().item()
        finally:
            for mod, name, p in originals:
                mod._parameters[name] = p


VAE_DOWNSCALE = 2    # a 32x32 IMAGE is a 16x16 latent
VAE_SCALE = 0.18215  # SD1's latent scale factor: the stored latent is the model-space one / 0.18215, as a VAE stores it


def tiny_vae(family: str = "sd1"):
    """A VAE stand-in for ``family``'s latents, duck-typed for the host's VAEEncode / VAEDecode / VAEEncodeForInpaint
    / InpaintModelConditioning (the pack's ReferenceVAE with another encoding): 2x2 average pooling of the pixels in
    -1..1; their three channels and their mean, repeated to the family's latent channels. Decode reads the first three
    (exact up to the pooling: nearest upsampling). It lets the inpainting nodes run for real on the tiny models."""
    base = _reference_model_module().ReferenceVAE
    channels = LATENT_CHANNELS[family]

    class TinyLatentVAE(base):
        downscale_ratio = upscale_ratio = VAE_DOWNSCALE
        latent_channels = channels

        def spacial_compression_encode(self):
            return VAE_DOWNSCALE

        def spacial_compression_decode(self):
            return VAE_DOWNSCALE

        def encode(self, pixel_samples):
            p = self.process_input(pixel_samples[..., :3].to(torch.float32)).movedim(-1, 1)
            p = torch.nn.functional.avg_pool2d(p, VAE_DOWNSCALE)
            four = torch.cat([p, p.mean(dim=1, keepdim=True)], dim=1)
            return four.repeat(1, -(-channels // 4), 1, 1)[:, :channels] / VAE_SCALE

        def decode(self, samples_in):
            p = samples_in[:, :3].to(torch.float32) * VAE_SCALE
            p = torch.nn.functional.interpolate(p, scale_factor=VAE_DOWNSCALE, mode="nearest")
            return self.process_output(p).movedim(1, -1).contiguous()

    return TinyLatentVAE()


def model_nodes(family: str) -> dict:
    """API-format prompt nodes (test-only node types, tests/testing_nodes): ``family``'s tiny model (seed 0) and its
    source and negative prompts (seeds 1 and 2, 4 tokens), which the upstream checks build their graphs on."""
    arch = {"family": family}
    return {
        "model": {"class_type": "InversionTestArchModel", "inputs": {**arch, "seed": 0}},
        "positive": {"class_type": "InversionTestArchConditioning", "inputs": {**arch, "seeds": "1", "tokens": 4}},
        "negative": {"class_type": "InversionTestArchConditioning", "inputs": {**arch, "seeds": "2", "tokens": 4}},
    }


def image_graph(family: str) -> dict:
    """API-format prompt nodes (test-only node types, tests/testing_nodes) for the inpainting checks of both hosts:
    ``family``'s tiny model, prompts (source 1, negative 2, edit 5), an IMAGE (the test latent of seed 3 decoded by
    the VAE stand-in) and its VAEEncode, and a MASK of the IMAGE's right half."""
    arch = {"family": family}
    return {
        **model_nodes(family),
        "edit": {"class_type": "InversionTestArchConditioning", "inputs": {**arch, "seeds": "5", "tokens": 4}},
        "source": {"class_type": "InversionTestArchLatent", "inputs": {**arch, "seeds": "3", "size": 16}},
        "vae": {"class_type": "InversionTestArchVAE", "inputs": arch},
        "image": {"class_type": "VAEDecode", "inputs": {"samples": ["source", 0], "vae": ["vae", 0]}},
        "latent": {"class_type": "VAEEncode", "inputs": {"pixels": ["image", 0], "vae": ["vae", 0]}},
        "mask_zero": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 32, "height": 32}},
        "mask_one": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 32}},
        "mask": {"class_type": "MaskComposite", "inputs": {
            "destination": ["mask_zero", 0], "source": ["mask_one", 0], "x": 16, "y": 0, "operation": "add"}},
    }
