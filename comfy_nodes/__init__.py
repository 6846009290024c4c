"""ComfyUI nodes of spo-studio: host glue over trainer/ (no sampling, scoring or conversion here).

Importing this package needs only torch; ComfyUI modules and the library are imported when a
node runs, so a missing optional piece shows up as a message on the node, not at start-up.
Plugin code imports the library as `spo_studio`, never as `trainer` (the rule and why: _library.py).
"""
from ._library import ensure_library

ensure_library()  # `spo_studio` = this checkout's trainer/, registered without touching sys.path
from .host import register_model_folders
from .lora_node import SPOLoraLoader
from .sampler_node import SPOSampler
from .scorer_nodes import LoadScorer
from .spm_nodes import LoadSPM, StepAwareScore

NODE_CLASS_MAPPINGS = {
    "SPOLoadSPM": LoadSPM,
    "SPOStepAwareScore": StepAwareScore,
    "SPOSampler": SPOSampler,
    "SPOLoraLoader": SPOLoraLoader,
    "SPOLoadScorer": LoadScorer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SPOLoadSPM": "Load SPM (step-aware preference model)",
    "SPOStepAwareScore": "StepAwareScore (best-of-k)",
    "SPOSampler": "SPOSampler",
    "SPOLoraLoader": "SPO LoRA Loader",
    "SPOLoadScorer": "Load Scorer (HPSv2, ImageReward, PickScore, aesthetic, CLIPScore)",
}

register_model_folders()
