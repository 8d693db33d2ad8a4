"""A tiny reference diffusion model shipped with the pack, and the node that loads it.

The model is the host's own SD UNet (``comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel``), tiny, trained by
``scripts/train_reference_model.py`` on 32x32 RGB crops of images that ship inside scikit-image. It works in **pixel
space** (latent = 2 * image - 1, three channels, so "VAE" encode/decode is exact), predicts epsilon and uses the SD1.x
noise schedule, so the host's SD1 sampling (``ModelSamplingDiscrete`` + ``EPS``) applies unchanged. It is wrapped
exactly as the host wraps a checkpoint: a ``supported_models_base.BASE`` config, ``model_base.BaseModel``,
``model_patcher.ModelPatcher``.

Conditioning is cross-attention on a small prompt vocabulary (``vocabulary()``; the empty prompt is the unconditional
branch). The prompt embedding table ships in the same safetensors file as the UNet.

Plain functions (no node classes needed):

* ``load_reference_model() -> (model_patcher, clip, vae)`` (cached in-process; each call returns a fresh clone of the
  ModelPatcher sharing the same weights)
* ``reference_model_path()``, ``reference_metadata()``, ``vocabulary()``
* ``heldout_images() -> [(name, prompt, tensor[1, 32, 32, 3])]``: images never used in training
* ``build_model_patcher(unet_config, state_dict, model_type, ...)``: any tiny host model of this UNet family
  (EPS / V_PREDICTION / FLOW), with given or seeded random weights.

The module imports only torch at import time (comfy lazily) and has no relative imports, so the training script can
load it by file path.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Optional, Union

import torch

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "models" / "reference"
WEIGHTS_NAME = "reference_model.safetensors"
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
    from comfy import supported_models_base

    class InversionTinyModelConfig(supported_models_base.BASE):
        """A host model config (like ``supported_models.SD15``) for the tiny UNets of this pack."""

        unet_extra_config = {}  # the full config comes in (num_heads etc. included)
        latent_format = _latent_format(latent_channels, latent_scale)
        supported_inference_dtypes = list(inference_dtypes)

        def model_type(self, state_dict, prefix=""):
            return model_type

        def inpaint_model(self):
            return False

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


def init_unet_state_dict(unet_config: dict, seed: int = 0, zero_output_layers: bool = False) -> dict:
    """Random weights (torch's default init) for a UNet of ``unet_config``, drawn from ``seed``; keys without prefix.

    The host UNet zero-initialises its output layers (final conv, each res block's last conv, each transformer's
    proj_out) for training; such a model predicts exactly zero, i.e. it is the identity denoiser, which makes every
    inversion trivially exact. By default those layers are drawn from the seed too (``zero_output_layers=True``
    keeps the training initialisation).
    """
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = {k: v for k, v in unet_config.items() if k not in ("dtype", "device", "operations")}
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(**cfg, dtype=torch.float32, operations=_InitOps.get())
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
                        strict: bool = True, load_device=None, offload_device=None):
    """Build a host model the way the host builds a checkpoint's UNet (``comfy.sd.load_unet_state_dict``).

    ``unet_config``: UNetModel kwargs (e.g. ``reference_unet_config()``). ``state_dict``: its weights (keys under
    ``prefix``; fp16 is fine), or None for seeded random weights (``init_unet_state_dict(unet_config, seed)``: every
    layer random, output layers included).
    ``model_type``: ``comfy.model_base.ModelType`` or "eps" / "v_prediction" / "flow" (flow uses the host's
    ``ModelSamplingDiscreteFlow`` + ``CONST``; give ``sampling_settings={"shift": ...}``). ``sampling_settings``
    default: the SD1.x schedule. ``dtype``: the UNet's weight dtype (float32 by default; None lets the host choose,
    as for a real checkpoint). Weights are created outside inference mode (a model loaded inside the executor is then
    still usable for autograd), with ``requires_grad`` False unless asked. Returns a ``comfy.model_patcher.ModelPatcher``.
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

    with torch.inference_mode(False):
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


def reference_model_path() -> Path:
    return REFERENCE_DIR / WEIGHTS_NAME


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def reference_metadata(path: Union[str, Path, None] = None) -> dict:
    """The safetensors metadata of the reference model, JSON fields decoded."""
    path = Path(path) if path is not None else reference_model_path()
    meta = _read_metadata(path)
    out = dict(meta)
    for key in ("vocabulary", "unet_config", "sampling_settings", "training"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


_cache: dict = {}
_cache_lock = threading.Lock()


def _load(path: Path):
    from safetensors.torch import load_file

    meta = reference_metadata(path)
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a {FORMAT_TAG} file (format={meta.get('format')!r})")
    with torch.inference_mode(False):
        tensors = load_file(str(path), device="cpu")
        embeddings = tensors.pop(EMBEDDINGS_KEY).float()
        patcher = build_model_patcher(meta["unet_config"], tensors, meta.get("model_type", "eps"),
                                      prefix=UNET_PREFIX, sampling_settings=meta["sampling_settings"],
                                      latent_channels=LATENT_CHANNELS)
    return patcher, ReferenceCLIP(meta["vocabulary"], embeddings), ReferenceVAE()


def load_reference_model(path: Union[str, Path, None] = None):
    """``(model_patcher, clip, vae)`` of the reference model (cached; the ModelPatcher is a fresh clone per call)."""
    path = Path(path).resolve() if path is not None else reference_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"reference model weights not found at {path}; run scripts/train_reference_model.py")
    key = (str(path), path.stat().st_mtime_ns)
    with _cache_lock:
        if key not in _cache:
            _cache.clear()
            _cache[key] = _load(path)
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
    DESCRIPTION = ("Loads the pack's tiny reference diffusion model (a 32x32 pixel-space SD-style UNet, epsilon "
                   "prediction, SD1 noise schedule) with its prompt table and pixel-space VAE. Use it with the "
                   "standard CLIPTextEncode / VAEEncode / VAEDecode nodes to try inversion without a real checkpoint. "
                   "Prompts: cat, astronaut, coffee, rocket, galaxy, bricks, grass, gravel, or empty.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The reference diffusion model (32x32 RGB pixel space, epsilon prediction, SD1.x schedule).",
        "Its text encoder: a fixed prompt vocabulary (an unknown prompt is an error that lists it; the empty prompt "
        "is the unconditional branch).",
        "Its VAE: pixel space, latent = 2 * image - 1 (exact both ways). Feed it 32x32 images.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return load_reference_model()


NODE_CLASS_MAPPINGS = {"InversionReferenceModelLoader": InversionReferenceModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"InversionReferenceModelLoader": "Load Inversion Reference Model"}
