"""The pack's tiny reference diffusion models, and the node that loads them.

Two models, both the host's own classes at a tiny size, trained by ``scripts/train_reference_model.py`` (``--model``)
on the same 32x32 RGB crops of images that ship inside scikit-image, with the same prompt vocabulary and held-out
images. Both work in **pixel space** (latent = 2 * image - 1, three channels, so "VAE" encode/decode is exact):

* ``sd-unet-eps`` (``models/reference/``): the host's SD UNet (``openaimodel.UNetModel`` in ``model_base.BaseModel``),
  epsilon prediction, SD1.x noise schedule (``ModelSamplingDiscrete`` + ``EPS``).
* ``sd3-mmdit-flow`` (``models/reference_flow/``): the host's SD3 MMDiT (``mmdit.OpenAISignatureMMDITWrapper`` in
  ``model_base.SD3``), rectified flow (``ModelSamplingDiscreteFlow`` + ``CONST``, shift ``FLOW_SHIFT``), conditioned
  like SD3 on prompt tokens (context) and a pooled vector (``y`` from the CONDITIONING's ``pooled_output``).

Each is wrapped exactly as the host wraps a checkpoint: a ``supported_models_base.BASE`` / ``supported_models.SD3``
config, its ``model_base`` class, ``model_patcher.ModelPatcher``; loaded in the caller's mode, so that inside the
executor the weights are inference tensors as a real checkpoint's are.

Conditioning is a small prompt vocabulary (``vocabulary()``; the empty prompt is the unconditional branch) looked up in
a learned embedding table that ships in the same safetensors file; its pooled vector is the mean over the tokens.

Plain functions (no node classes needed):

* ``reference_model_names()``: ``["sd-unet-eps", "sd3-mmdit-flow"]`` (the loader node's choices, default first)
* ``load_reference_model(name="sd-unet-eps") -> (model_patcher, clip, vae)`` (cached in-process per file and mode;
  each call returns a fresh clone of the ModelPatcher sharing the same weights)
* ``reference_model_path(name)``, ``reference_model_dir(name)``, ``reference_metadata(name)``, ``vocabulary()``
* ``heldout_images() -> [(name, prompt, tensor[1, 32, 32, 3])]``: images never used in training (either model)
* ``build_model_patcher(unet_config, state_dict, model_type, ...)``: any tiny host model of these families (UNet:
  EPS / V_PREDICTION / FLOW; MMDiT), with given or seeded random weights.

The module imports only torch at import time (comfy lazily) and has no relative imports, so the training script can
load it by file path.
"""
from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Optional, Union

import torch

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
REFERENCE_DIR = MODELS_DIR / "reference"
WEIGHTS_NAME = "reference_model.safetensors"
FLOW_REFERENCE_DIR = MODELS_DIR / "reference_flow"
FLOW_WEIGHTS_NAME = "reference_flow_model.safetensors"

# name -> (folder, weights file, one line for the node's tooltip)
REFERENCE_MODELS = {
    "sd-unet-eps": (REFERENCE_DIR, WEIGHTS_NAME,
                    "the host's SD UNet (1.4 M parameters), epsilon prediction, SD1.x noise schedule "
                    "(ModelSamplingDiscrete, sigma 0.029 .. 14.6)"),
    "sd3-mmdit-flow": (FLOW_REFERENCE_DIR, FLOW_WEIGHTS_NAME,
                       "the host's SD3 MMDiT (depth 2, width 128, patch 2), rectified flow (CONST, "
                       "ModelSamplingDiscreteFlow, shift 1.65, sigma 0 .. 1), prompt tokens + pooled vector"),
}
DEFAULT_MODEL = "sd-unet-eps"
HELDOUT_DIR_NAME = "heldout"
HELDOUT_INDEX_NAME = "heldout.json"
FORMAT_TAG = "comfyui-inversion-reference-v1"

UNET_PREFIX = "model.diffusion_model."            # the host's checkpoint layout
EMBEDDINGS_KEY = "cond_stage_model.prompt_embeddings"  # [len(vocabulary), tokens, context_dim]
IMAGE_SIZE = 32
LATENT_CHANNELS = 3
# SD1.x: scaled-linear betas 0.00085 -> 0.012 over 1000 steps. ComfyUI's make_beta_schedule calls the sqrt-spaced
# ("scaled linear") schedule "linear", and this is also ModelSamplingDiscrete's default.
SD1_SAMPLING_SETTINGS = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}

# The flow model's time shift (the host's ModelSamplingDiscreteFlow: sigma(t) = shift t / (1 + (shift - 1) t)).
# Chosen for 32x32 pixel space: with shift 1.65 the flow model sees the noise levels of the first model. Matching
# log-SNR (flow SNR = ((1 - s) / s)^2 against SD1's alphas_cumprod / (1 - alphas_cumprod)) over t = 0.1 .. 0.9, the
# rms gap is 0.25 nats at 1.65 against 0.56 at shift 1 and 0.64 at SD3's 3.0 (which is tuned for 1024 px / 4096
# tokens; 32x32 is on the other side of SD3's base resolution). It is also Flux's resolution rule at 256 image tokens
# (shift = exp(0.5)), the token count of this model (16 x 16 patches).
FLOW_SHIFT = 1.65

CATEGORY = "sampling/inversion"

_MODEL_TYPE_NAMES = {
    "eps": "EPS",
    "v_prediction": "V_PREDICTION",
    "v": "V_PREDICTION",
    "flow": "FLOW",
    "const": "FLOW",
}


def reference_unet_config(model_channels: int = 32, context_dim: int = 64, head_channels: int = 32) -> dict:
    """The UNet config of the reference model family, in the host's detected-config format (model_detection).

    Three levels (32, 16, 8 px; channel_mult 1, 2, 2), one res block each, spatial transformers (self + cross
    attention, depth 1) at 8x8 and in the middle block.
    """
    return {
        "image_size": IMAGE_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "model_channels": model_channels,
        "num_res_blocks": [1, 1, 1],
        "channel_mult": [1, 2, 2],
        "transformer_depth": [0, 0, 1],
        "transformer_depth_middle": 1,
        "transformer_depth_output": [0, 0, 0, 0, 1, 1],
        "use_spatial_transformer": True,
        "legacy": False,
        "context_dim": context_dim,
        "num_heads": -1,
        "num_head_channels": head_channels,
        "use_linear_in_transformer": True,
        "adm_in_channels": None,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
        "use_checkpoint": False,
    }


def reference_mmdit_config(depth: int = 2, patch_size: int = 2, context_dim: int = 64) -> dict:
    """The MMDiT config of the flow reference model, exactly as the host's ``model_detection.detect_unet_config``
    reads it back from the weights (so the shipped file is also a host-detectable SD3-style state dict).

    The host's MMDiT ties width to depth (hidden = 64 * depth, one 64-channel head per block). Positions are the fixed
    sin-cos grid (no ``pos_embed`` buffer); ``y`` (``adm_in_channels``) is a pooled prompt vector of ``context_dim``.
    """
    return {
        "in_channels": LATENT_CHANNELS,
        "patch_size": patch_size,
        "out_channels": LATENT_CHANNELS,
        "depth": depth,
        "input_size": None,
        "adm_in_channels": context_dim,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": context_dim, "out_features": 64 * depth}},
        "pos_embed_scaling_factor": None,
    }


def _architecture(unet_config: dict) -> str:
    return "mmdit" if "depth" in unet_config and "patch_size" in unet_config else "unet"


# --------------------------------------------------------------------------------------------------------------------
# building host models


def _model_type(model_type):
    from comfy.model_base import ModelType

    if isinstance(model_type, ModelType):
        return model_type
    if isinstance(model_type, str):
        key = model_type.strip().lower()
        if key in _MODEL_TYPE_NAMES:
            return ModelType[_MODEL_TYPE_NAMES[key]]
        if model_type.strip().upper() in ModelType.__members__:
            return ModelType[model_type.strip().upper()]
    raise ValueError(f"unknown model_type {model_type!r}; expected a comfy.model_base.ModelType or one of "
                     f"{sorted(_MODEL_TYPE_NAMES)}")


def _latent_format(channels: int, scale_factor: float = 1.0):
    from comfy import latent_formats

    # identity "RGB factors": the host's Latent2RGB previewer then shows (latent + 1) / 2, i.e. the image itself for
    # the 3-channel pixel-space model
    factors = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)] if channels == 3 else None

    class PixelSpaceLatentFormat(latent_formats.LatentFormat):
        latent_channels = channels
        latent_rgb_factors = factors
        taesd_decoder_name = None

        def __init__(self):
            self.scale_factor = scale_factor
            self.latent_channels = channels
            self.latent_rgb_factors = factors

    PixelSpaceLatentFormat.scale_factor = scale_factor
    return PixelSpaceLatentFormat


def _config_class(unet_config: dict, model_type, latent_channels: int, sampling_settings: dict,
                  latent_scale: float, inference_dtypes):
    from comfy import model_base, supported_models, supported_models_base

    class InversionTinyModelConfig(supported_models_base.BASE):
        """A host model config (like ``supported_models.SD15``) for the tiny UNets of this pack."""

        unet_extra_config = {}  # the full config comes in (num_heads etc. included)
        latent_format = _latent_format(latent_channels, latent_scale)
        supported_inference_dtypes = list(inference_dtypes)

        def model_type(self, state_dict, prefix=""):
            return model_type

        def inpaint_model(self):
            return False

    class InversionTinyMMDiTConfig(supported_models.SD3):
        """The host's SD3 config (``model_base.SD3``: MMDiT, pooled ``y`` from ``pooled_output``) in pixel space."""

        unet_extra_config = {}
        latent_format = _latent_format(latent_channels, latent_scale)
        supported_inference_dtypes = list(inference_dtypes)

        def model_type(self, state_dict, prefix=""):
            return model_type

        def get_model(self, state_dict, prefix="", device=None):
            return model_base.SD3(self, model_type=model_type, device=device)

    if _architecture(unet_config) == "mmdit":
        InversionTinyModelConfig = InversionTinyMMDiTConfig  # noqa: N806
    InversionTinyModelConfig.unet_config = dict(unet_config)
    InversionTinyModelConfig.sampling_settings = dict(sampling_settings)
    return InversionTinyModelConfig


class _InitOps:
    """Host ops (``comfy.ops.disable_weight_init``) whose layers initialise their weights (torch defaults).

    The host skips initialisation because it always loads weights afterwards; a model built without a state dict
    (training, tests) needs real initial weights. Created lazily (comfy is imported on first use).
    """

    _ops = None

    @classmethod
    def get(cls):
        if cls._ops is None:
            import comfy.ops

            base = comfy.ops.disable_weight_init

            class InitOps(base):
                class Linear(base.Linear):
                    def reset_parameters(self):
                        return torch.nn.Linear.reset_parameters(self)

                class Conv2d(base.Conv2d):
                    def reset_parameters(self):
                        return torch.nn.Conv2d.reset_parameters(self)

                class Conv3d(base.Conv3d):
                    def reset_parameters(self):
                        return torch.nn.Conv3d.reset_parameters(self)

                class GroupNorm(base.GroupNorm):
                    def reset_parameters(self):
                        return torch.nn.GroupNorm.reset_parameters(self)

                class LayerNorm(base.LayerNorm):
                    def reset_parameters(self):
                        return torch.nn.LayerNorm.reset_parameters(self)

            cls._ops = InitOps
        return cls._ops


def _network_class(unet_config: dict):
    if _architecture(unet_config) == "mmdit":
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        return OpenAISignatureMMDITWrapper
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel


def init_unet_state_dict(unet_config: dict, seed: int = 0, zero_output_layers: bool = False) -> dict:
    """Random weights (torch's default init) for a UNet of ``unet_config``, drawn from ``seed``; keys without prefix.
    An MMDiT config (``reference_mmdit_config()``) gets an MMDiT; the host's MMDiT has no zero-initialised layers.

    The host UNet zero-initialises its output layers (final conv, each res block's last conv, each transformer's
    proj_out) for training; such a model predicts exactly zero, i.e. it is the identity denoiser, which makes every
    inversion trivially exact. By default those layers are drawn from the seed too (``zero_output_layers=True``
    keeps the training initialisation).
    """
    cfg = {k: v for k, v in unet_config.items() if k not in ("dtype", "device", "operations")}
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _network_class(cfg)(**cfg, dtype=torch.float32, operations=_InitOps.get())
        if not zero_output_layers:
            for module in unet.modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and weight is not None \
                        and not weight.detach().any():
                    module.reset_parameters()
        return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def build_model_patcher(unet_config: dict, state_dict: Optional[dict] = None, model_type="eps", *,
                        prefix: str = "", sampling_settings: Optional[dict] = None,
                        latent_channels: Optional[int] = None, latent_scale: float = 1.0,
                        dtype: Optional[torch.dtype] = torch.float32, seed: int = 0, requires_grad: bool = False,
                        strict: bool = True, load_device=None, offload_device=None, as_host_loader: bool = False):
    """Build a host model the way the host builds a checkpoint's UNet (``comfy.sd.load_unet_state_dict``).

    ``unet_config``: UNetModel kwargs (e.g. ``reference_unet_config()``), or an MMDiT config
    (``reference_mmdit_config()``: the host's SD3 ``model_base.SD3``). ``state_dict``: its weights (keys under
    ``prefix``; fp16 is fine), or None for seeded random weights (``init_unet_state_dict(unet_config, seed)``: every
    layer random, output layers included).
    ``model_type``: ``comfy.model_base.ModelType`` or "eps" / "v_prediction" / "flow" (flow uses the host's
    ``ModelSamplingDiscreteFlow`` + ``CONST``; give ``sampling_settings={"shift": ...}``). ``sampling_settings``
    default: the SD1.x schedule. ``dtype``: the UNet's weight dtype (float32 by default; None lets the host choose,
    as for a real checkpoint). ``requires_grad`` False unless asked. Returns a ``comfy.model_patcher.ModelPatcher``.
    ``as_host_loader``: False (default) creates the weights outside inference mode (usable for autograd wherever the
    model is built); True builds them in the caller's mode, as the host's checkpoint loaders do — inside the executor
    (``torch.inference_mode()``) they are then inference tensors, like a real checkpoint's.
    """
    from comfy import model_management, model_patcher, utils

    mtype = _model_type(model_type)
    unet_config = {k: v for k, v in unet_config.items() if k not in ("dtype", "device", "operations")}
    if latent_channels is None:
        latent_channels = int(unet_config["in_channels"])
    if sampling_settings is None:
        sampling_settings = dict(SD1_SAMPLING_SETTINGS) if mtype.name != "FLOW" else {"shift": 1.0}
    if state_dict is None:
        state_dict = init_unet_state_dict(unet_config, seed)
        prefix = ""
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sd:
        raise ValueError(f"no weights under prefix {prefix!r}")

    if dtype is None:
        inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    else:
        inference_dtypes = [dtype]
    config = _config_class(unet_config, mtype, latent_channels, sampling_settings, latent_scale, inference_dtypes)(
        unet_config)

    with contextlib.nullcontext() if as_host_loader else torch.inference_mode(False):
        # mirrors comfy.sd.load_unet_state_dict
        parameters = utils.calculate_parameters(sd)
        load_device = load_device if load_device is not None else model_management.get_torch_device()
        offload_device = offload_device if offload_device is not None else model_management.unet_offload_device()
        if dtype is None:
            unet_dtype = model_management.unet_dtype(model_params=parameters,
                                                     supported_dtypes=config.supported_inference_dtypes)
        else:
            unet_dtype = dtype
        manual_cast_dtype = model_management.unet_manual_cast(unet_dtype, load_device,
                                                              config.supported_inference_dtypes)
        config.set_inference_dtype(unet_dtype, manual_cast_dtype)
        model = config.get_model(sd, "")
        model = model.to(offload_device)
        if strict:
            expected = set(model.diffusion_model.state_dict().keys())
            missing = sorted(expected - set(sd))
            unexpected = sorted(set(sd) - expected)
            if missing or unexpected:
                raise ValueError(f"state dict does not match the UNet config: missing {missing[:5]} "
                                 f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
        model.load_model_weights(dict(sd), "")
        model.requires_grad_(requires_grad)
        model.eval()
    return model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


# --------------------------------------------------------------------------------------------------------------------
# CLIP and VAE stand-ins (duck-typed for the host's CLIPTextEncode / VAEEncode / VAEDecode, fork and upstream)


def normalize_prompt(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


class ReferenceCLIP:
    """The reference model's "text encoder": a lookup table, prompt -> [tokens, context_dim] embedding.

    Implements what the host's CLIPTextEncode calls: ``tokenize(text)``, ``encode_from_tokens(tokens,
    return_pooled=...)`` (the fork) and ``encode_from_tokens_scheduled(tokens)`` (newer upstream). Prompts are matched
    case- and whitespace-insensitively; anything outside the vocabulary raises ValueError listing it.
    """

    def __init__(self, vocab: list, embeddings: torch.Tensor):
        if embeddings.shape[0] != len(vocab):
            raise ValueError(f"{len(vocab)} prompts but {embeddings.shape[0]} embeddings")
        self.vocabulary = list(vocab)
        self.embeddings = embeddings
        self._index = {normalize_prompt(p): i for i, p in enumerate(self.vocabulary)}
        self.layer_idx = None

    # the host's CLIP API ---------------------------------------------------------------------------------------
    def clone(self):
        return ReferenceCLIP(self.vocabulary, self.embeddings)

    def clip_layer(self, layer_idx):
        self.layer_idx = layer_idx  # no layers to skip: accepted and ignored (CLIPSetLastLayer)

    def tokenize(self, text, return_word_ids=False, **kwargs):
        key = normalize_prompt(text)
        if key not in self._index:
            words = ", ".join(repr(p) for p in self.vocabulary)
            raise ValueError(f"the inversion reference model does not know the prompt {text!r}; its vocabulary is: "
                             f"{words} ('' is the unconditional prompt)")
        return {"reference": [[(self._index[key], 1.0)]]}

    def _lookup(self, tokens):
        try:
            index = int(tokens["reference"][0][0][0])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError("tokens were not made by this model's tokenize()") from None
        cond = self.embeddings[index].unsqueeze(0).float().clone()  # [1, tokens, context_dim]
        return cond, cond.mean(dim=1)  # pooled: [1, context_dim]

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False, **kwargs):
        cond, pooled = self._lookup(tokens)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        if return_pooled:
            return cond, pooled
        return cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True, **kwargs):
        cond, pooled = self._lookup(tokens)
        extra = {"pooled_output": pooled}
        extra.update(add_dict or {})
        return [[cond, extra]]

    def encode(self, text):
        return self.encode_from_tokens(self.tokenize(text))

    def get_sd(self):
        return {EMBEDDINGS_KEY: self.embeddings}

    def load_model(self):
        return None

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return []


class ReferenceVAE:
    """The reference model's "VAE": pixel space, latent = 2 * image - 1 (exact both ways).

    Implements what the host's VAEEncode / VAEDecode (and their tiled variants) call, fork and upstream.
    """

    downscale_ratio = 1
    upscale_ratio = 1
    latent_channels = LATENT_CHANNELS
    latent_dim = 2
    output_channels = 3
    crop_input = False
    extra_1d_channel = None
    disable_offload = True

    def __init__(self):
        self.device = torch.device("cpu")
        self.output_device = torch.device("cpu")
        self.vae_dtype = torch.float32
        self.working_dtypes = [torch.float32]
        self.memory_used_encode = lambda shape, dtype: 0
        self.memory_used_decode = lambda shape, dtype: 0

    def throw_exception_if_invalid(self):
        return None

    def spacial_compression_encode(self):
        return 1

    def spacial_compression_decode(self):
        return 1

    def temporal_compression_encode(self):
        return None

    def temporal_compression_decode(self):
        return None

    def vae_encode_crop_pixels(self, pixels):
        return pixels

    def process_input(self, image):
        return image * 2.0 - 1.0

    def process_output(self, image):
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def encode(self, pixel_samples):
        """IMAGE [B, H, W, C] in 0..1 -> LATENT samples [B, 3, H, W] = 2x - 1 (extra channels, e.g. alpha, dropped)."""
        if pixel_samples.ndim != 4:
            raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(pixel_samples.shape)}")
        x = pixel_samples[..., :3].to(self.output_device, torch.float32)
        return self.process_input(x).movedim(-1, 1).contiguous()

    def decode(self, samples_in):
        """LATENT samples [B, 3, H, W] -> IMAGE [B, H, W, 3] = (x + 1) / 2 clamped to 0..1."""
        if samples_in.ndim != 4 or samples_in.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"the inversion reference VAE decodes 3-channel pixel-space latents [B, 3, H, W]; got "
                             f"shape {tuple(samples_in.shape)} (make latents with VAEEncode of this VAE, not "
                             f"EmptyLatentImage)")
        return self.process_output(samples_in.to(self.output_device, torch.float32)).movedim(1, -1).contiguous()

    def encode_tiled(self, pixel_samples, *args, **kwargs):
        return self.encode(pixel_samples)

    def decode_tiled(self, samples, *args, **kwargs):
        return self.decode(samples)

    def get_sd(self):
        return {}


# --------------------------------------------------------------------------------------------------------------------
# the shipped model


def reference_model_names() -> list:
    """The reference models this pack ships (the loader node's ``model`` choices), default first."""
    return list(REFERENCE_MODELS)


def _check_name(name: str) -> str:
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; choose one of {reference_model_names()}")
    return name


def reference_model_dir(name: str = DEFAULT_MODEL) -> Path:
    return REFERENCE_MODELS[_check_name(name)][0]


def weights_name(name: str = DEFAULT_MODEL) -> str:
    return REFERENCE_MODELS[_check_name(name)][1]


def reference_model_path(name: str = DEFAULT_MODEL) -> Path:
    folder, file, _ = REFERENCE_MODELS[_check_name(name)]
    return folder / file


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _resolve(name_or_path) -> tuple:
    """``(name or None, path)`` of a reference model name, or of a weights file (the pre-``name`` API took a path)."""
    if name_or_path is None:
        return DEFAULT_MODEL, reference_model_path(DEFAULT_MODEL)
    if isinstance(name_or_path, str) and name_or_path in REFERENCE_MODELS:
        return name_or_path, reference_model_path(name_or_path)
    if isinstance(name_or_path, Path) or (isinstance(name_or_path, str) and name_or_path.endswith(".safetensors")):
        return None, Path(name_or_path).resolve()
    raise ValueError(f"unknown reference model {name_or_path!r}; choose one of {reference_model_names()} (or give the "
                     f"path of a .safetensors file)")


def reference_metadata(name_or_path: Union[str, Path, None] = None) -> dict:
    """The safetensors metadata of a reference model (a name from ``reference_model_names()`` or a weights path;
    default: the first model), JSON fields decoded."""
    _, path = _resolve(name_or_path)
    meta = _read_metadata(path)
    out = dict(meta)
    for key in ("vocabulary", "unet_config", "sampling_settings", "training"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


_cache: dict = {}
_cache_lock = threading.Lock()


def _load(path: Path):
    """Load a reference model file like the host's checkpoint loader (``comfy.sd.load_checkpoint_guess_config``):
    in the caller's mode, so that inside the executor (``torch.inference_mode()``) the weights are inference tensors,
    exactly what a real checkpoint gives the pack's gradient methods."""
    from safetensors.torch import load_file

    meta = reference_metadata(path)
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a {FORMAT_TAG} file (format={meta.get('format')!r})")
    tensors = load_file(str(path), device="cpu")
    embeddings = tensors.pop(EMBEDDINGS_KEY).float()
    patcher = build_model_patcher(meta["unet_config"], tensors, meta.get("model_type", "eps"),
                                  prefix=UNET_PREFIX, sampling_settings=meta["sampling_settings"],
                                  latent_channels=LATENT_CHANNELS, as_host_loader=True)
    return patcher, ReferenceCLIP(meta["vocabulary"], embeddings), ReferenceVAE()


def load_reference_model(name: Union[str, Path, None] = DEFAULT_MODEL, *, path: Union[str, Path, None] = None):
    """``(model_patcher, clip, vae)`` of a reference model: ``name`` from ``reference_model_names()`` ("sd-unet-eps",
    the default, or "sd3-mmdit-flow"), or ``path`` of a weights file (a path as the first argument works too).

    Loaded as the host loads a checkpoint: called inside ``torch.inference_mode()`` (as the loader node runs in the
    executor) the weights are inference tensors, outside it normal tensors (``requires_grad`` False). Cached per file
    and per mode; the ModelPatcher is a fresh clone per call, sharing the weights.
    """
    name, resolved = _resolve(path if path is not None else name)
    if not resolved.is_file():
        if name is not None:
            raise FileNotFoundError(f"the reference model {name!r} has no weights yet ({resolved} is missing); train "
                                    f"them with: python scripts/train_reference_model.py --model {name}")
        raise FileNotFoundError(f"reference model weights not found at {resolved}")
    key = (str(resolved), resolved.stat().st_mtime_ns, torch.is_inference_mode_enabled())
    with _cache_lock:
        if key not in _cache:
            for old in [k for k in _cache if k[0] == key[0] and k[1] != key[1]]:
                del _cache[old]  # the file changed
            _cache[key] = _load(resolved)
        patcher, clip, vae = _cache[key]
    return patcher.clone(), clip.clone(), vae


def vocabulary() -> list:
    """The prompts the reference model knows ("" = unconditional)."""
    return list(reference_metadata()["vocabulary"])


def heldout_images(directory: Union[str, Path, None] = None) -> list:
    """``[(name, prompt, tensor[1, 32, 32, 3] in 0..1)]``: 32x32 crops from image regions never used in training."""
    import numpy as np
    from PIL import Image

    directory = Path(directory) if directory is not None else REFERENCE_DIR / HELDOUT_DIR_NAME
    index = json.loads((directory / HELDOUT_INDEX_NAME).read_text())
    out = []
    for item in index["images"]:
        with Image.open(directory / item["file"]) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append((Path(item["file"]).stem, item["prompt"], torch.from_numpy(arr.copy()).unsqueeze(0)))
    return out


# --------------------------------------------------------------------------------------------------------------------
# node


class InversionReferenceModelLoader:
    DESCRIPTION = ("Loads one of the pack's two tiny reference diffusion models (32x32 RGB pixel space, trained on the "
                   "same images and prompts) with its prompt table and pixel-space VAE: 'sd-unet-eps' (the host's SD "
                   "UNet, epsilon prediction, SD1 noise schedule) or 'sd3-mmdit-flow' (the host's SD3 MMDiT, "
                   "rectified flow, shifted flow schedule). Use them with the standard CLIPTextEncode / VAEEncode / "
                   "VAEDecode nodes to try inversion without a real checkpoint. Prompts: cat, astronaut, coffee, "
                   "rocket, galaxy, bricks, grass, gravel, or empty. Loaded like a real checkpoint (inference "
                   "tensors inside the executor).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The reference diffusion model (32x32 RGB pixel space): an epsilon-prediction UNet (SD1.x schedule) or a "
        "flow-matching MMDiT (CONST, sigma 0..1), per the 'model' input.",
        "Its text encoder: a fixed prompt vocabulary (an unknown prompt is an error that lists it; the empty prompt "
        "is the unconditional branch). Gives the token embeddings and a pooled vector (the flow model uses both).",
        "Its VAE: pixel space, latent = 2 * image - 1 (exact both ways). Feed it 32x32 images.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        lines = "; ".join(f"'{name}': {REFERENCE_MODELS[name][2]}" for name in reference_model_names())
        return {"required": {"model": (reference_model_names(), {
            "default": DEFAULT_MODEL,
            "tooltip": "Which reference model to load. " + lines + ". Both share the prompts, the held-out images "
                       "and the VAE, so the same graph runs on either.",
        })}}

    def load(self, model: str = DEFAULT_MODEL):
        if model not in REFERENCE_MODELS:
            raise ValueError(f"model: unknown reference model {model!r}; choose one of {reference_model_names()}")
        return load_reference_model(model)


NODE_CLASS_MAPPINGS = {"InversionReferenceModelLoader": InversionReferenceModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"InversionReferenceModelLoader": "Load Inversion Reference Model"}
