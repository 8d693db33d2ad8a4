"""Test-only ComfyUI custom nodes: tiny real models, conditioning and latents (never shipped to users).

The test harness (``tests/host.py``) puts this folder into the engine's ``custom_nodes/`` next to the pack, so these
nodes load through the host exactly like a user's custom node package.

* ``InversionTestTinyModel`` -> MODEL: the host's own SD UNet (``comfy.ldm...openaimodel.UNetModel``) wrapped by
  ``comfy.model_base.BaseModel`` and ``comfy.model_patcher.ModelPatcher``; model_type EPS, V_PREDICTION or FLOW (the
  SD3 path: ``ModelSamplingDiscreteFlow`` + ``CONST`` with shift 3.0). Every weight, the output conv included, is drawn
  from the seed: a zero output layer would make every inversion trivially exact and hide bugs. ``video``: a latent
  format of 3 dimensions and the UNet run per frame with a cross-frame term (``FrameUNet``), on 5-D latents.
* ``InversionTestConditioning`` -> CONDITIONING ``[[tensor[batch, tokens, dim], {"pooled_output": None}]]``.
* ``InversionTestLatent`` -> LATENT ``{"samples": randn[batch, channels, size, size]}`` (a stand-in for a VAE-encoded
  image); ``frames`` > 0: a video latent ``[batch, channels, frames, size, size]``.

* ``InversionTestArchModel`` / ``InversionTestArchConditioning`` / ``InversionTestArchLatent``: the host's real
  architectures (SD1.x, SD2.x-v, SDXL, SD3 MMDiT) at a tiny size with seeded random weights, their conditioning
  (pooled output, SDXL's size entries) and latents, one batch item per seed (``tests/architectures.py``).
  ``InversionTestArchClipVisionOutput``: a CLIP-vision output of a seeded random image (unCLIPConditioning on
  ``sd2unclip``); ``InversionTestArchHookLora``: upstream's HOOKS of a seeded random LoRA (upstream only).

``build_tiny_model(kind, seed, channels)`` is the same model as a plain Python call (``host.tiny_model`` wraps it).
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

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


def _latent_format(channels: int, video: bool = False):
    class TinyLatentFormat(latent_formats.LatentFormat):
        scale_factor = 1.0
        latent_channels = channels
        latent_dimensions = 3 if video else 2      # what upstream's video formats (Wan, LTXV ...) declare
        latent_rgb_factors = None
        taesd_decoder_name = None

    return TinyLatentFormat


class FrameUNet(torch.nn.Module):
    """A tiny video network on [B, C, T, H, W]: the image UNet on every frame (frames folded into the batch, the
    timestep and context repeated per frame) plus a cross-frame term (each frame's output moves by 0.2x the frames'
    mean), so frames depend on each other as in a video model. Test-only: set on the test's own BaseModel instance."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    @property
    def dtype(self):
        return self.net.dtype

    def forward(self, x, timesteps=None, context=None, **kwargs):
        if x.ndim != 5:
            raise ValueError(f"FrameUNet: expected [B, C, T, H, W], got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        frames = x.movedim(2, 1).reshape(b * t, c, h, w)
        ctx = context.repeat_interleave(t, 0) if context is not None else None
        out = self.net(frames, timesteps.repeat_interleave(t), context=ctx, **kwargs)
        out = out.reshape(b, t, c, h, w).movedim(1, 2)
        return out + 0.2 * out.mean(dim=2, keepdim=True)


def _config_class(kind: str, channels: int, video: bool = False):
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
        latent_format = _latent_format(channels, video)
        supported_inference_dtypes = [torch.float32]

        def model_type(self, state_dict=None, prefix=""):
            return model_type

    TinyConfig.__name__ = f"TinyConfig_{kind}{'_video' if video else ''}"
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


def build_tiny_model(kind: str = "eps", seed: int = 0, channels: int = 4,
                     video: bool = False) -> model_patcher.ModelPatcher:
    """A tiny SD-UNet diffusion model as the host builds checkpoints: BASE config -> BaseModel -> ModelPatcher.
    ``video``: on 5-D latents [B, C, T, H, W] (a latent format of 3 dimensions, the UNet per frame: FrameUNet)."""
    config_class = _config_class(kind, int(channels), bool(video))
    config = config_class(config_class.unet_config)
    load_device = model_management.get_torch_device()
    offload_device = model_management.unet_offload_device()
    model = config.get_model({}, device=offload_device)
    model.eval()
    _init_weights(model, seed)
    if video:
        model.diffusion_model = FrameUNet(model.diffusion_model)
    return model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def make_conditioning(seed: int = 0, batch: int = 1, tokens: int = 4, dim: int = CONTEXT_DIM):
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return [[torch.randn((int(batch), int(tokens), int(dim)), generator=gen), {"pooled_output": None}]]


def make_latent(seed: int = 0, batch: int = 1, channels: int = 4, size: int = 16, frames: int = 0):
    """[batch, channels, size, size]; with ``frames`` > 0 a video latent [batch, channels, frames, size, size]."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (int(batch), int(channels)) + ((int(frames),) if int(frames) > 0 else ()) + (int(size), int(size))
    return {"samples": torch.randn(shape, generator=gen)}


_SEED = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff})


class InversionTestTinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (list(KINDS),),
            "seed": _SEED,
            "channels": ("INT", {"default": 4, "min": 1, "max": 16}),
        }, "optional": {"video": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, kind, seed, channels=4, video=False):
        return (build_tiny_model(kind, seed, channels, video),)


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
        }, "optional": {"frames": ("INT", {"default": 0, "min": 0, "max": 16})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, seed, batch=1, channels=4, size=16, frames=0):
        return (make_latent(seed, batch, channels, size, frames),)


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


# ------------------------------------------------------------------------------------------- real architectures
_ARCHITECTURES_PATH = Path(__file__).resolve().parent.parent / "architectures.py"
def _arch_families() -> list:
    """The fork's families, those only upstream ComfyUI has (flux, wan21, qwen_image ...: an error on the fork), then
    the inpainting variants (fluxfill: upstream only)."""
    return list(architectures().ALL_FAMILIES)


def architectures():
    """``tests/architectures.py`` (the builders), loaded once by file path: this package is imported by the host
    under its folder name, in the fork harness and in an upstream server, where ``tests/`` is not importable."""
    name = "inversion_test_architectures"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, _ARCHITECTURES_PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return mod


_SEEDS_TIP = "Comma-separated seeds, one batch item per seed (e.g. '3' or '3,4')."


class InversionTestArchModel:
    """A host architecture (tests/architectures.py) at a tiny size, seeded random weights, built like a checkpoint."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (_arch_families(), {"tooltip": "sd1 (EPS), sd2v (V_PREDICTION), sdxl (EPS + adm), "
                                                     "sd3 (MMDiT, CONST flow), flux (schnell) and the other "
                                                     "upstream-only families of tests/architectures.py."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip": "Weight seed."}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, family, seed):
        return (architectures().build_model(family, seed),)


class InversionTestArchConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (_arch_families(), {"tooltip": "Whose text-encoder output to imitate."}),
            "seeds": ("STRING", {"default": "1", "tooltip": _SEEDS_TIP}),
            "tokens": ("INT", {"default": 4, "min": 1, "max": 77, "tooltip": "Tokens per prompt."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, family, seeds, tokens=4):
        return (architectures().make_conditioning(family, seeds, tokens),)


class InversionTestArchLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (_arch_families(), {"tooltip": "Whose latent format (channels, scaling)."}),
            "seeds": ("STRING", {"default": "3", "tooltip": _SEEDS_TIP}),
            "size": ("INT", {"default": 16, "min": 8, "max": 128, "step": 8, "tooltip": "Latent height and width."}),
        }, "optional": {
            "frames": ("INT", {"default": -1, "min": -1, "max": 16, "tooltip": (
                "Video families: -1 = the family's frames, 0 = a 4-D image latent.")}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, family, seeds, size=16, frames=-1):
        return (architectures().make_latent(family, seeds, size, frames),)


class InversionTestArchVAE:
    """A VAE for a family's latents (tests/architectures.py tiny_vae: 2x pooling, exact up to it)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (_arch_families(), {"tooltip": "Whose latent channels."})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, family):
        return (architectures().tiny_vae(family),)


class InversionTestArchClipVisionOutput:
    """What CLIPVisionEncode gives for a seeded random image, for unCLIPConditioning on the sd2unclip family
    (tests/architectures.py clip_vision_output); another seed is another image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 11, "min": 0, "max": 0xffffffffffffffff,
                                              "tooltip": "Image seed."})}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, seed):
        return (architectures().clip_vision_output(seed),)


class InversionTestArchHookLora:
    """Upstream's HOOKS of a seeded random LoRA on a family's tiny model (tests/architectures.py hook_lora), for
    Cond Set Props / Set Model Hooks on Cond; what Create Hook LoRA gives from a LoRA file. Upstream only."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (_arch_families(), {"tooltip": "Whose model the LoRA patches."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip": "The model's weight seed."}),
            "lora_seed": ("INT", {"default": 10, "min": 0, "max": 0xffffffffffffffff,
                                  "tooltip": "Another seed is another LoRA file."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01,
                                         "tooltip": "The hook's strength on the model."}),
        }}

    RETURN_TYPES = ("HOOKS",)
    FUNCTION = "build"
    CATEGORY = "testing/inversion"

    def build(self, family, seed, lora_seed, strength_model):
        return (architectures().hook_lora(family, seed, lora_seed, strength_model),)


class InversionTestUnscaledEuler:
    """The host's stock ``euler`` SAMPLER (``comfy.k_diffusion.sampling.sample_euler`` in a ``KSAMPLER``) minus
    KSAMPLER's ``noise_scaling`` / ``inverse_noise_scaling`` around it: the stock-unsampling baseline for flow models.

    For EPS / V-prediction with the noise off both wrappers are the identity, so this is stock euler exactly (the
    tests check it). For CONST (flow) models, stock unsampling up to sigma 1 divides by 1 - sigma = 0 on the way up
    and multiplies the latent by 1 - sigma = 0 on the way down: the stock chain returns NaN, so this is the stock
    Euler update without that scaling.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "testing/inversion"

    def get_sampler(self):
        import comfy.k_diffusion.sampling
        import comfy.samplers

        class UnscaledKSampler(comfy.samplers.KSAMPLER):
            def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                       disable_pbar=False):
                extra_args["denoise_mask"] = denoise_mask
                model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
                model_k.latent_image = latent_image
                model_k.noise = noise
                x = latent_image + noise * sigmas[0] if latent_image is not None else noise * sigmas[0]
                total = len(sigmas) - 1
                k_callback = None if callback is None else (
                    lambda d: callback(d["i"], d["denoised"], d["x"], total))
                return self.sampler_function(model_k, x, sigmas, extra_args=extra_args, callback=k_callback,
                                             disable=disable_pbar, **self.extra_options)

        return (UnscaledKSampler(comfy.k_diffusion.sampling.sample_euler),)


NODE_CLASS_MAPPINGS = {
    "InversionTestProgress": InversionTestProgress,
    "InversionTestTinyModel": InversionTestTinyModel,
    "InversionTestConditioning": InversionTestConditioning,
    "InversionTestLatent": InversionTestLatent,
    "InversionTestRaise": InversionTestRaise,
    "InversionTestArchModel": InversionTestArchModel,
    "InversionTestArchConditioning": InversionTestArchConditioning,
    "InversionTestArchLatent": InversionTestArchLatent,
    "InversionTestUnscaledEuler": InversionTestUnscaledEuler,
    "InversionTestArchVAE": InversionTestArchVAE,
    "InversionTestArchClipVisionOutput": InversionTestArchClipVisionOutput,
    "InversionTestArchHookLora": InversionTestArchHookLora,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: name.replace("InversionTest", "Inversion test: ") for name in NODE_CLASS_MAPPINGS}
