"""The image cache: base and LoRA images for the same prompts and seeds, generated once.

Layout under the run folder:
    images/<variant>/<i>-<prompt hash>-s<seed>.png   one PNG per (model variant, prompt i, seed)
    images/<variant>/variant.json                    what made them (model, LoRA hash, sampler)
A variant folder name carries a hash of its settings, so changing the sampler or the LoRA file
starts a new folder instead of mixing images; a killed run regenerates only missing files.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_text
from .config import ConfigError, EvalConfig
from .prompts import PromptSet


@dataclass(frozen=True)
class Variant:
    """The base model (lora None) or the base with one LoRA merged at `scale`. folder: images/<folder>."""

    label: str
    lora: str | None
    scale: float
    folder: str
    settings: dict


@dataclass(frozen=True)
class ImageKey:
    """One image of the evaluation grid: prompt index, image index within the prompt, seed, file name."""

    prompt_index: int
    image_index: int
    seed: int
    name: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_keys(prompts: PromptSet, cfg: EvalConfig) -> list[ImageKey]:
    """Every (prompt, seed) of the run, prompt-major; the same list for every variant (paired design)."""
    n = cfg.sampling.images_per_prompt
    keys = []
    for i, p in enumerate(prompts.prompts):
        ph = hashlib.sha1(p.encode("utf-8")).hexdigest()[:8]
        for j in range(n):
            seed = cfg.sampling.seed + i * n + j
            keys.append(ImageKey(i, j, seed, f"{i:05d}-{ph}-s{seed}.png"))
    return keys


def _labels(paths: list[str]) -> list[str]:
    stems = [Path(p).stem or "lora" for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{k + 1}" for k, s in enumerate(stems)]


def plan_variants(cfg: EvalConfig) -> list[Variant]:
    """Base first, then one variant per --lora (checked to exist and hashed by content)."""
    s = cfg.sampling
    common = {
        "model": cfg.model.source, "family": cfg.model.family, "num_steps": s.num_steps,
        "guidance_scale": s.guidance_scale, "eta": s.eta, "dtype": cfg.scoring.dtype,
    }
    out = []
    for label, lora in [("base", None), *zip(_labels(cfg.lora), cfg.lora)]:
        settings = dict(common)
        if lora is not None:
            path = Path(lora).expanduser()
            if not path.is_file():
                raise ConfigError(f"--lora: no such file {lora}")
            settings.update(lora=str(path), lora_sha256=_sha256(path), lora_scale=cfg.lora_scale)
        digest = hashlib.sha256(json.dumps({k: v for k, v in settings.items() if k != "lora"}, sort_keys=True).encode()).hexdigest()[:10]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        out.append(Variant(label, None if lora is None else str(Path(lora).expanduser()), cfg.lora_scale, f"{safe}-{digest}", settings))
    return out


def missing(out: Path, variant: Variant, keys: list[ImageKey]) -> list[ImageKey]:
    folder = out / "images" / variant.folder
    return [k for k in keys if not (folder / k.name).is_file()]


def save_png(image: torch.Tensor, path: Path) -> None:
    """Tensor[3, H, W] in [−1, 1] -> 8-bit PNG, written to a temporary name and moved into place."""
    from PIL import Image

    arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_png(path: Path) -> torch.Tensor:
    """PNG -> Tensor[3, H, W] float32 in [−1, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


class LoraSwitch:
    """Merges one LoRA at a time into the loaded model and restores the original weights after,
    so every variant runs on the same base weights without reloading them."""

    def __init__(self, model):
        self.model = model
        self.saved: dict[tuple[str, str], torch.Tensor] = {}

    def parts(self) -> dict:
        parts = {"unet": self.model.unet}
        for name, enc in zip(("text_encoder", "text_encoder_2"), self.model.text_encoders):
            parts[name] = enc
        return parts

    def apply(self, path: str, scale: float) -> None:
        from ..lora import LoraFileError, merge_lora, read_lora

        self.restore()
        state = read_lora(path, check_shapes=False)
        fam = self.model.family.name
        if (state.family == "sdxl") != (fam == "sdxl"):
            raise LoraFileError(f"{path}: a {state.family} LoRA does not fit the {fam} model {self.model.source}")
        parts = self.parts()
        for component in state.components():
            if component not in parts:
                raise LoraFileError(f"{path}: has {component} layers but the {fam} model has no {component}")
            live = dict(parts[component].named_modules())
            for p in state.component(component):
                for cand in (p, p.removeprefix("text_model.")):
                    if cand in live and hasattr(live[cand], "weight"):
                        self.saved[(component, cand)] = live[cand].weight.detach().clone()
                        break
            merge_lora(parts[component], state, scale, component=component)

    def restore(self) -> None:
        parts = self.parts()
        with torch.no_grad():
            for (component, name), w in self.saved.items():
                dict(parts[component].named_modules())[name].weight.copy_(w)
        self.saved.clear()


def check_lora_family(path: str, model_family: str) -> None:
    """Refuse, before any weights load, a LoRA whose naming belongs to the other family (SDXL vs SD-1.5/ShapesWorld)."""
    from ..lora import LoraFileError, read_lora

    state = read_lora(path, check_shapes=False)
    if (state.family == "sdxl") != (model_family == "sdxl"):
        raise LoraFileError(f"{path}: a {state.family} LoRA cannot be evaluated on the {model_family} model")


def generate_missing(cfg: EvalConfig, prompts: PromptSet, variants: list[Variant], out: Path, load_model, progress=True) -> int:
    """Generate every image not yet on disk; returns how many were made. load_model() -> DiffusionModel
    is called only when something is missing (a finished run rescored by a new scorer loads no model)."""
    from tqdm.auto import tqdm

    from ..spo.rollout import sample_images

    keys = image_keys(prompts, cfg)
    todo = [(v, missing(out, v, keys)) for v in variants]
    total = sum(len(m) for _, m in todo)
    if total == 0:
        return 0
    model = load_model()
    switch = LoraSwitch(model)
    s = cfg.sampling
    bar = tqdm(total=total, desc="generating", unit="img", disable=not progress)
    try:
        for variant, keys_left in todo:
            if not keys_left:
                continue
            folder = out / "images" / variant.folder
            folder.mkdir(parents=True, exist_ok=True)
            write_text(folder / "variant.json", json.dumps({"label": variant.label, **variant.settings}, indent=1))
            if variant.lora is None:
                switch.restore()
            else:
                switch.apply(variant.lora, variant.scale)
            bar.set_postfix_str(variant.label)
            for start in range(0, len(keys_left), s.batch_size):
                chunk = keys_left[start : start + s.batch_size]
                images = sample_images(
                    model, [prompts.prompts[k.prompt_index] for k in chunk], [k.seed for k in chunk],
                    num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta,
                )
                for k, img in zip(chunk, images):
                    save_png(img, folder / k.name)
                bar.update(len(chunk))
    finally:
        switch.restore()
        bar.close()
    return total
