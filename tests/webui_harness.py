"""Shared set-up for the A1111 extension tests: the stand-in `modules` on sys.path, an
`extensions/` folder holding spo-studio as A1111 would, a toy checkpoint, SPM files, and a
txt2img job runner. No tests here."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "webui_standin"
if str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

from modules import errors, paths, processing, scripts, shared  # noqa: E402
from toy_model import ToySDModel  # noqa: E402

PACKAGE = "spo_studio_webui"  # the name the entry script loads webui_extension/ under
SPO_ARGS = ["enabled", "mode", "spm", "k", "window_start", "window_end", "selection", "temperature", "judge_every",
            "potential", "lam"]


class RedSPM:
    """Toy SPM: prefers red images (mean of the red channel, ×10); rejects empty prompts like the real one."""

    def __init__(self, family):
        self.family = family
        self.calls: list[tuple[int, list[str], list[int]]] = []

    def score(self, images, prompts, timesteps):
        if any(not str(p).strip() for p in prompts):
            raise ValueError("SPM score: prompts must be non-empty strings")
        self.calls.append((images.shape[0], list(prompts), [int(t) for t in timesteps]))
        return images[:, 0].mean(dim=(1, 2)) * 10


class FlakySPM(RedSPM):
    """Fails from its `fail_at`-th call on (the first call is the script's pre-flight check)."""

    fail_at = 3

    def score(self, images, prompts, timesteps):
        if len(self.calls) + 1 >= self.fail_at:
            raise RuntimeError("CUDA out of memory")
        return super().score(images, prompts, timesteps)


def red_loader(path):
    name = os.path.basename(path)
    if "broken" in name:
        raise RuntimeError("unexpected EOF")
    return (FlakySPM if "flaky" in name else RedSPM)("sdxl" if "sdxl" in name else "sd15")


def install(tmp: Path, how: str = "repo") -> Path:
    """An A1111 `extensions/` folder with spo-studio installed `how`: "repo" (Install from URL:
    the whole repository), "link" (a link to webui_extension/) or "copy" (only webui_extension/,
    under another folder name; the library `spo_studio` comes from the Python path, as when pip-installed)."""
    ext = tmp / "extensions"
    ext.mkdir(exist_ok=True)
    if how == "repo":
        (ext / "spo-studio").symlink_to(REPO, target_is_directory=True)
    elif how == "link":
        (ext / "spo-link").symlink_to(REPO / "webui_extension", target_is_directory=True)
    else:
        import shutil

        shutil.copytree(REPO / "webui_extension", ext / "spo-copy", ignore=shutil.ignore_patterns("__pycache__"))
    return ext


def forget_extension_modules() -> None:
    """Drop the extension's modules so the next load_scripts imports them afresh."""
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def setup_webui(tmp: Path, how: str = "repo", sdxl: bool = False, spm_files=("red_sd15.pt", "red_sdxl.pt"), img2img=False):
    """Load the extension like A1111 does and build the txt2img script runner.

    Returns (runner, spo_script, script_module). SPM files are empty placeholders read by
    `red_loader` (tests of the real SPM replace the loader with trainer.spm's)."""
    paths.models_path = str(tmp / "models")
    spm_dir = tmp / "models" / "spo"
    spm_dir.mkdir(parents=True, exist_ok=True)
    for name in spm_files:
        (spm_dir / name).write_bytes(b"")
    shared.sd_model = ToySDModel(is_sdxl=sdxl)
    shared.cmd_opts.spo_models_dir = None
    errors.reported.clear()
    forget_extension_modules()
    scripts.load_scripts(str(install(tmp, how)))
    module = sys.modules[PACKAGE + ".script"]
    module.SPM_CACHE.clear()
    module.SPM_CACHE.loader = red_loader
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(is_img2img=img2img)
    runner.setup_ui()
    spo = next(s for s in runner.alwayson_scripts if s.title() == "SPO")
    return runner, spo, module


def spo_args(runner, **spo) -> list:
    """The job's script_args with the SPO accordion set to `spo` (through the API path)."""
    d = dict(zip(SPO_ARGS, [True, "per-step", "red_sd15.pt", 4, 0.0, 1.0, "best", 1.0, 1, "max", 4.0]))
    d.update(spo)
    return runner.api_args({"SPO": {"args": [d[k] for k in SPO_ARGS]}})


def run_txt2img(runner, script_args=None, **kw):
    """One txt2img job through the stand-in's process_images; SPO off unless script_args say so."""
    args = script_args if script_args is not None else runner.default_args()
    opts = dict(prompt="a red square", seed=1234, batch_size=2, steps=8, sampler_name="Euler a", width=32, height=32,
                cfg_scale=1.5)
    opts.update(kw)
    p = processing.StableDiffusionProcessingTxt2Img(script_args=args, scripts_runner=runner, **opts)
    return p, processing.process_images(p)


def run_img2img(runner, init_image, script_args=None, **kw):
    """One img2img job (runner built with is_img2img=True)."""
    args = script_args if script_args is not None else runner.default_args()
    opts = dict(prompt="a red square", seed=77, batch_size=2, steps=10, sampler_name="Euler a", width=32, height=32,
                cfg_scale=1.5, denoising_strength=0.6)
    opts.update(kw)
    p = processing.StableDiffusionProcessingImg2Img(init_images=[init_image], script_args=args, scripts_runner=runner, **opts)
    return p, processing.process_images(p)


def red_score(image) -> float:
    """RedSPM's score of a saved (uint8) image."""
    import numpy as np

    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return float(arr[..., 0].mean() * 10)
