"""The Inverted Latent Sampler node."""
from __future__ import annotations

from .bridge import run_replay
from .common import CATEGORY


class InvertedLatentSampler:
    DESCRIPTION = ("Regenerates from an inverted latent on exactly the schedule it was inverted on, adding no noise. "
                   "Same prompt at cfg 1 gives the image back; a new prompt edits it. Source correction keeps the "
                   "source faithful at high cfg; a mask limits the edit to a region.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The regenerated latent; decode it with VAEDecode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the latent was inverted with."}),
                "positive": ("CONDITIONING", {"tooltip": "The source prompt reconstructs; a new prompt edits."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg != 1."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance scale. The inversion cfg reconstructs most faithfully; higher "
                                             "values strengthen an edit (use source correction to stay faithful)."}),
                "inverted_latent": ("LATENT", {"tooltip": (
                    "The LATENT output of an inversion node, connected directly. Its samples are checked against the "
                    "noise the record holds: changed samples (flip, rotate, multiply, noise mixed in) are an error "
                    "with source correction or a mask (they replay the stored trajectory) and a warning otherwise.")}),
                "correction_strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": (
                    "Source correction (DirectInversion): per-step offsets computed on the stored trajectory with "
                    "the SOURCE prompt (source_positive, required when this is above 0) at this cfg, added to every "
                    "corrected step. 1 = the source prompt reconstructs exactly at any cfg: to reconstruct at high "
                    "cfg, connect the source prompt to both positive and source_positive. With a new prompt in "
                    "positive the offsets cancel the source's guidance drift; how that trades edit strength against "
                    "faithfulness depends on the model (README shows it measured). Costs one extra model evaluation "
                    "per corrected step. 0 = off (the step range below is then ignored).")}),
                "correction_start_step": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": (
                    "First replay step (0 = noisiest) that is corrected; checked against the schedule only when "
                    "correction_strength > 0.")}),
                "correction_end_step": ("INT", {"default": -1, "min": -1, "max": 10000, "tooltip": (
                    "Replay step where correction stops (exclusive); -1 = through the last step. Checked only when "
                    "correction_strength > 0.")}),
            },
            "optional": {
                "source_positive": ("CONDITIONING", {"tooltip": (
                    "The prompt the image was inverted with (the inversion node's positive). Required when "
                    "correction_strength > 0: the offsets must come from the source prompt, never from the edit "
                    "prompt (that would cancel the edit). To reconstruct, connect the source prompt to both "
                    "positive and source_positive.")}),
                "mask": ("MASK", {"tooltip": (
                    "Edit only where the mask is 1; elsewhere every step is pinned to the stored trajectory, so the "
                    "rest of the image comes back as exactly as the inversion allows. Resized to the latent "
                    "bilinearly; soft masks blend. Without it, the latent's own noise_mask is used if present. An "
                    "all-0 mask (e.g. LoadImage's MASK of an image without alpha) edits nothing: warned in the log.")}),
            },
        }

    def sample(self, model, positive, negative, cfg, inverted_latent, correction_strength=0.0,
               correction_start_step=0, correction_end_step=-1, source_positive=None, mask=None):
        return (run_replay(model, positive, negative, cfg, inverted_latent, source_positive=source_positive,
                           correction_strength=correction_strength, correction_start_step=correction_start_step,
                           correction_end_step=correction_end_step, mask=mask),)


NODE_CLASS_MAPPINGS = {"InvertedLatentSampler": InvertedLatentSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"InvertedLatentSampler": "Inverted Latent Sampler"}
