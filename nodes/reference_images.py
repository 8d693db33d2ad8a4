"""Load Inversion Reference Image: the held-out images bundled with the reference model, straight from the pack.

The example workflows use it instead of LoadImage, so they run the moment they are dropped onto a fresh ComfyUI:
nothing has to be copied into ComfyUI/input/ and the pack never writes into the user's folders. The images are
32x32 crops the reference model never saw in training (models/reference/heldout/, listed in heldout.json with the
prompt of their vocabulary word).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .common import CATEGORY

HELDOUT_DIR = Path(__file__).resolve().parent.parent / "models" / "reference" / "heldout"
INDEX_NAME = "heldout.json"


def reference_images() -> dict:
    """``{file name: prompt}`` of the bundled held-out images, in index order ({} if the folder is missing)."""
    index = HELDOUT_DIR / INDEX_NAME
    if not index.is_file():
        return {}
    items = json.loads(index.read_text(encoding="utf-8"))["images"]
    return {item["file"]: item["prompt"] for item in items if (HELDOUT_DIR / item["file"]).is_file()}


def load_reference_image(name: str) -> torch.Tensor:
    """IMAGE [1, H, W, 3] in 0..1 of one bundled held-out image."""
    from PIL import Image

    images = reference_images()
    if name not in images:
        raise ValueError(f"image: {name!r} is not a bundled reference image; one of {sorted(images)}")
    with Image.open(HELDOUT_DIR / name) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).unsqueeze(0)


class LoadInversionReferenceImage:
    DESCRIPTION = ("One of the held-out 32x32 images bundled with the pack's reference model (never seen in "
                   "training), read from the pack itself: nothing to copy into ComfyUI/input/. Its prompt is the "
                   "reference model's word for it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("IMAGE", "prompt")
    OUTPUT_TOOLTIPS = ("The image, 32x32 RGB (what the reference model works on).",
                       "Its prompt in the reference model's vocabulary (cat, astronaut, coffee, ...).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = list(reference_images()) or ["(reference images missing)"]
        return {"required": {"image": (names, {"default": names[0], "tooltip": (
            "A bundled held-out image (custom_nodes/comfyui-inversion/models/reference/heldout/); the file name "
            "says what it shows.")})}}

    def load(self, image):
        return (load_reference_image(image), reference_images()[image])


NODE_CLASS_MAPPINGS = {"LoadInversionReferenceImage": LoadInversionReferenceImage}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadInversionReferenceImage": "Load Inversion Reference Image"}
