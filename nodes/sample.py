"""The Inverted Latent Sampler node."""
from __future__ import annotations

from .bridge import run_replay
from .common import CATEGORY


class InvertedLatentSampler:
    DESCRIPTION = ("Regenerates from an inverted latent on exactly the schedule it was inverted on, adding no noise. "
                   "Same prompt at cfg 1 gives the image back; a new prompt edits it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The regenerated latent; decode it with VAEDecode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the latent was inverted with."}),
            "positive": ("CONDITIONING", {"tooltip": "The source prompt reconstructs; a new prompt edits."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg != 1."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Guidance scale. The inversion cfg reconstructs most faithfully; higher "
                                         "values strengthen an edit and drift from the source."}),
            "inverted_latent": ("LATENT", {"tooltip": "The LATENT output of an inversion node."}),
        }}

    def sample(self, model, positive, negative, cfg, inverted_latent):
        return (run_replay(model, positive, negative, cfg, inverted_latent),)


NODE_CLASS_MAPPINGS = {"InvertedLatentSampler": InvertedLatentSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"InvertedLatentSampler": "Inverted Latent Sampler"}
