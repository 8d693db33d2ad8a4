"""Test-only ComfyUI custom nodes: tiny real models, conditioning and latents (never shipped to users).

The test harness (``tests/host.py``) puts this folder into the engine's ``custom_nodes/`` next to the pack, so these
nodes load through the host exactly like a user's custom node package.

* ``InversionTestTinyModel`` -> MODEL: the host's own SD UNet (``comfy.ldm...openaimodel.UNetModel``) wrapped by
  ``comfy.model_base.BaseModel`` and ``comfy.model_patcher.ModelPatcher``; model_type EPS, V_PREDICTION or FLOW (the
  SD3 path: ``ModelSamplingDiscreteFlow`` + ``CONST`` with shift 3.0). Every weight, the output conv included, is drawn
  from the seed: a zero output layer would make every inversion trivially exact and hide bugs.
* ``InversionTestConditioning`` -> CONDITIONING ``[[tensor[batch, tokens, dim], {"pooled_output": None}]]``.
* ``InversionTestLatent`` -> LATENT ``{"samples": randn[batch, channels, size, size]}`` (a stand-in for a VAE-encoded
  image).

``build_tiny_model(kind, seed, channels)`` is the same model as a plain Python call (``host.tiny_model`` wraps it).
"""
from __future__ import annotations

import math

import torch

from comfy import latent_formats, model_base, model_management, model_patcher, supported_models_base

KINDS = ("eps", "v_prediction", "flow")
MODEL_CHANNELS = 32  # the host UNet's GroupNorm has 32 groups: 32 is the smallest width it accepts
CONTEXT_DIM = 16
_MODEL_TYPES = {
    "eps": model_base.ModelType.EPS,
    "v_prediction": model_base.ModelType.V_PREDICTION,
    "flow": model_base.ModelType.FLOW,
}


def _latent_format(channels: int):
    class TinyLatentFormat(latent_formats.LatentFormat):
        scale_factor = 1.0
        latent_channels = channels
        latent_rgb_factors = None
        taesd_decoder_name = None

    return TinyLatentFormat


def _config_class(kind: str, channels: int):
    if kind not in _MODEL_TYPES:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {KINDS}")
    model_type = _MODEL_TYPES[kind]

    class TinyConfig(supported_models_base.BASE):
        unet_config = {
            "in_channels": channels,
            "out_channels": channels,
            "model_channels": MODEL_CHANNELS,
            "num_res_blocks": [1, 1],
            "channel_mult": [1, 2],
            "transformer_depth": [1, 1],
            "transformer_depth_middle": 1,
            "transformer_depth_output": [1, 1, 1, 1],
            "use_spatial_transformer": True,
            "legacy": False,
            "context_dim": CONTEXT_DIM,
            "use_linear_in_transformer": True,
            "adm_in_channels": None,
            "use_temporal_attention": False,
            "use_temporal_resblock": False,
            "image_size": 16,
            "use_checkpoint": False,
            "dtype": torch.float32,
        }
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}
        sampling_settings = {"shift": 3.0} if kind == "flow" else {}
        latent_format = _latent_format(channels)
        supported_inference_dtypes = [torch.float32]

        def model_type(self, state_dict=None, prefix=""):
            return model_type

    TinyConfig.__name__ = f"TinyConfig_{kind}"
    return TinyConfig


@torch.no_grad()
def _init_weights(module: torch.nn.Module, seed: int) -> None:
    """Seeded, non-zero init of every parameter (the host builds layers uninitialised via ops.disable_weight_init)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                base = 1.0 if name == "weight" else 0.0
                p.copy_(base + 0.05 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    # The output conv of a real SD UNet is zero-initialised; here it gets small random weights so that the model's
    # prediction depends on its input and the timestep (zero would make every inversion trivially exact).
    out_conv = module.diffusion_model.out[-1]
    out_conv.weight.copy_(0.5 * torch.randn(out_conv.weight.shape, generator=gen) / math.sqrt(out_conv.weight[0].numel()))


def build_tiny_model(kind: str = "eps", seed: int = 0, channels: int = 4) -> model_patcher.ModelPatcher:
    """A tiny SD-UNet diffusion model as the host builds checkpoints: BASE config -> BaseModel -> ModelPatcher."""
    config_class = _config_class(kind, int(channels))
    config = config_class(config_class.unet_config)
    load_device = model_management.get_torch_device()
    offload_device = model_management.unet_offload_device()
    model = config.get_model({}, device=offload_device)
    model.eval()
    _init_weights(model, seed)
    return model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def make_conditioning(seed: int = 0, batch: int = 1, tokens: int = 4, dim: int = CONTEXT_DIM):
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return [[torch.randn((int(batch), int(tokens), int(dim)), generator=gen), {"pooled_output": None}]]


def make_latent(seed: int = 0, batch: int = 1, channels: int = 4, size: int = 16):
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return {"samples": torch.randn((int(batch), int(channels), int(size), int(size)), generator=gen)}


_SEED = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff})


class InversionTestTinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (list(KINDS),),
            "seed": _SEED,
            "channels": ("INT", {"default": 4, "min": 1, "max": 16}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, kind, seed, channels=4):
        return (build_tiny_model(kind, seed, channels),)


class InversionTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": _SEED,
            "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            "tokens": ("INT", {"default": 4, "min": 1, "max": 77}),
            "dim": ("INT", {"default": CONTEXT_DIM, "min": 1, "max": 4096}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, seed, batch=1, tokens=4, dim=CONTEXT_DIM):
        return (make_conditioning(seed, batch, tokens, dim),)


class InversionTestLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": _SEED,
            "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            "channels": ("INT", {"default": 4, "min": 1, "max": 16}),
            "size": ("INT", {"default": 16, "min": 8, "max": 128, "step": 8}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, seed, batch=1, channels=4, size=16):
        return (make_latent(seed, batch, channels, size),)


class InversionTestRaise:
    """Raises ``message`` when run: lets the harness check that node errors surface with their text and node id."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"message": ("STRING", {"default": "boom"})},
                "optional": {"latent": ("LATENT",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing/inversion"

    def run(self, message, latent=None):
        raise ValueError(message)


class InversionTestProgress:
    """Reports ``steps`` progress updates the way a pack node does (``comfy.utils.ProgressBar``), checking the host's
    interrupt flag before each; passes its LATENT through."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",), "steps": ("INT", {"default": 3, "min": 1, "max": 1000})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing/inversion"

    def run(self, latent, steps):
        import comfy.utils

        pbar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(i + 1, steps)
        return (latent,)


NODE_CLASS_MAPPINGS = {
    "InversionTestProgress": InversionTestProgress,
    "InversionTestTinyModel": InversionTestTinyModel,
    "InversionTestConditioning": InversionTestConditioning,
    "InversionTestLatent": InversionTestLatent,
    "InversionTestRaise": InversionTestRaise,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: name.replace("InversionTest", "Inversion test: ") for name in NODE_CLASS_MAPPINGS}
