"""ComfyUI Inversion: turn an image latent back into the noise a diffusion model regenerates it from.

ComfyUI imports this file when the folder sits in ``custom_nodes/``; it only registers the node classes.
"""
import logging

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

logging.getLogger(__name__).info("comfyui-inversion %s: %d nodes", __version__, len(NODE_CLASS_MAPPINGS))
