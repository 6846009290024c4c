"""The step-aware preference model (SPM): a PickScore-style CLIP that judges noisy steps.

    from trainer.spm import load_spm, score_latents
    spm = load_spm("sd-v1-5_step-aware_preference_model.bin", device="cuda", dtype=torch.float16)
    scores = spm.score(images, prompts, timesteps)          # images [B,3,H,W] in [-1, 1]
    scores = score_latents(spm, model, x_t, unet_output, t, prompts)

Modules: `model` (network + scoring), `preprocess` (CLIP preprocessing in torch), `weights`
(released and own-format files), `denoise` (x̂0 images, score_latents), `data` (Pick-a-Pic
layout), `objective`, `train`, `evaluate`, `cli` (`python -m trainer.spm`).
"""
from .data import PreferencePair, open_pairs, write_pickapic_dir
from .denoise import score_latents
from .errors import SPMError
from .model import StepAwarePreferenceModel
from .weights import check_family, load_spm, spm_from_clip

__all__ = [
    "StepAwarePreferenceModel",
    "SPMError",
    "load_spm",
    "spm_from_clip",
    "check_family",
    "score_latents",
    "write_pickapic_dir",
    "open_pairs",
    "PreferencePair",
]
