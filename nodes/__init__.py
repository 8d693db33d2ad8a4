"""ComfyUI node declarations. Each module exports NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS; they are merged here."""
from . import invert, methods_grad, report, reference_images, reference_model, sample

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (invert, methods_grad, sample, report, reference_model, reference_images):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
from . import edit as _edit  # noqa: E402  (issue 14: Inversion Edit Engine)
NODE_CLASS_MAPPINGS.update(_edit.NODE_CLASS_MAPPINGS); NODE_DISPLAY_NAME_MAPPINGS.update(_edit.NODE_DISPLAY_NAME_MAPPINGS)
from . import bdia as _bdia; NODE_CLASS_MAPPINGS.update(_bdia.NODE_CLASS_MAPPINGS); NODE_DISPLAY_NAME_MAPPINGS.update(_bdia.NODE_DISPLAY_NAME_MAPPINGS)  # noqa: E402,E702  (issue 16: BDIA)
