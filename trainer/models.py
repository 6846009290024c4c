"""Loading SD-1.5, SDXL and ShapesWorld models (their differences: the family table, trainer/families.py).

Everything downstream (SPO sampling and training, the SPM trainer, the plugins) sees a
`DiffusionModel` and calls `encode_prompts`, `guided_output`, `decode`, `encode`. SDXL's
second text encoder, pooled embeddings and time ids are handled here and nowhere else.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .families import FAMILIES, Family, family_of_checkpoint_keys, family_of_unet_config
from .schedule import NoiseSchedule, guided


class ModelLoadError(ValueError):
    """A model path or checkpoint that cannot be loaded; the message is one line for the user."""


# what differs between families lives in the family table (trainer/families.py)
FamilySpec = Family


@dataclass
class PromptEmbeds:
    """Text conditioning for a batch of B prompts.

    hidden: Tensor[B, L, D] (SDXL: both encoders' penultimate states concatenated, D = 2048).
    pooled: Tensor[B, P] or None (SDXL: the second encoder's projected pooled output).
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx) -> "PromptEmbeds":
        return PromptEmbeds(self.hidden[idx], None if self.pooled is None else self.pooled[idx])

    def repeat_interleave(self, n: int) -> "PromptEmbeds":
        """Each prompt repeated n times in a row: [p0, p0, ..., p1, p1, ...] (candidates share a prompt)."""
        return PromptEmbeds(
            self.hidden.repeat_interleave(n, 0), None if self.pooled is None else self.pooled.repeat_interleave(n, 0)
        )

    @staticmethod
    def cat(items: Sequence["PromptEmbeds"]) -> "PromptEmbeds":
        pooled = None if items[0].pooled is None else torch.cat([e.pooled for e in items])
        return PromptEmbeds(torch.cat([e.hidden for e in items]), pooled)

    def to(self, *args, **kwargs) -> "PromptEmbeds":
        return PromptEmbeds(self.hidden.to(*args, **kwargs), None if self.pooled is None else self.pooled.to(*args, **kwargs))


@dataclass
class DiffusionModel:
    """A latent text-to-image model as SPO needs it. Latents are scaled (VAE latent × scaling_factor)."""

    family: FamilySpec
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list
    schedule: NoiseSchedule
    source: str = ""
    resolution: int = field(default=0)

    def __post_init__(self):
        if not self.resolution:
            self.resolution = int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent at the model's resolution."""
        f = self.vae_scale_factor
        return (self.unet.config.in_channels, self.resolution // f, self.resolution // f)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """Tokenize and encode B prompts -> PromptEmbeds (hidden [B, L, D], pooled [B, P] for SDXL)."""
        prompts = list(prompts)
        if not self.family.pooled_text:
            ids = self._tokenize(self.tokenizers[0], prompts)
            return PromptEmbeds(self.text_encoders[0](ids)[0].to(self.dtype))
        hidden, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            out = enc(self._tokenize(tok, prompts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = out[0]  # the last encoder (with projection) gives the pooled embedding
        return PromptEmbeds(torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype))

    def uncond_embeds(self, batch: int) -> PromptEmbeds:
        """Unconditional embeddings for CFG, Tensor shapes as encode_prompts for `batch` prompts."""
        empty = self.encode_prompts([""])
        if self.family.zero_uncond:
            empty = PromptEmbeds(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))
        return PromptEmbeds(empty.hidden.expand(batch, -1, -1), None if empty.pooled is None else empty.pooled.expand(batch, -1))

    def _tokenize(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    # -- UNet -----------------------------------------------------------------------------------
    def unet_forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds, unet: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """One UNet call. latents [N, C, h, w], timesteps [N] long, embeds of N prompts -> output [N, C, h, w].

        unet: run this module instead of self.unet (e.g. the DDP-wrapped trainable UNet).
        """
        kwargs = {}
        if self.family.pooled_text:
            kwargs["added_cond_kwargs"] = {"text_embeds": embeds.pooled, "time_ids": self.time_ids(latents.shape[0])}
        timesteps = torch.as_tensor(timesteps, device=latents.device).expand(latents.shape[0])
        return (unet or self.unet)(latents, timesteps, encoder_hidden_states=embeds.hidden, **kwargs).sample

    def guided_output(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds,
        guidance_scale: float,
        unet: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """Classifier-free-guided UNet output from ONE UNet call on a [uncond; cond] batch of 2B.

        latents [B, C, h, w]; timesteps [B] or scalar; cond/uncond: B prompts each -> Tensor[B, C, h, w].
        """
        t = torch.as_tensor(timesteps, device=latents.device).expand(latents.shape[0])
        out = self.unet_forward(torch.cat([latents, latents]), torch.cat([t, t]), PromptEmbeds.cat([uncond, cond]), unet)
        return guided(out, guidance_scale)

    def time_ids(self, batch: int) -> torch.Tensor:
        """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w), Tensor[batch, 6]."""
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]], device=self.device, dtype=self.dtype).expand(batch, -1)

    # -- VAE ------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Scaled latents [B, 4, h, w] -> images [B, 3, H, W] in [−1, 1] (clamped).

        clamp=False keeps the decoder's overshoot: what SPO hands its scorer, as the reference does.
        """
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype)).sample
        return (images.clamp(-1, 1) if clamp else images).to(self.dtype)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [−1, 1] -> scaled latents [B, 4, h, w] (a sample of the posterior)."""
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(vae_dtype)).latent_dist
        return (dist.sample(generator) * self.vae.config.scaling_factor).to(self.dtype)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".sft")


def detect_family_from_dir(path: Path) -> str:
    """sd15 / sdxl / shapes from a diffusers pipeline directory's configs."""
    if (path / "text_encoder_2").is_dir():
        return "sdxl"
    unet_cfg = path / "unet" / "config.json"
    if not unet_cfg.is_file():
        raise ModelLoadError(f"{path}: not a diffusers pipeline directory (no unet/config.json)")
    cfg = json.loads(unet_cfg.read_text())
    if family_of_unet_config(cfg) == "sd15":
        return "sd15"
    if cfg.get("sample_size", 64) <= 32:
        return "shapes"
    raise ModelLoadError(
        f"{path}: UNet config matches neither SD-1.5, SDXL nor ShapesWorld; pass --model.family explicitly"
    )


def detect_family_from_keys(keys: Sequence[str], path: str) -> str:
    """sd15 / sdxl from the key names of an original-layout single-file checkpoint."""
    keys = set(keys)
    family = family_of_checkpoint_keys(keys)
    if family is not None:
        return family
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelLoadError(f"{path}: looks like an SD-2.x checkpoint; spo-studio supports SD-1.5 and SDXL")
    raise ModelLoadError(f"{path}: unknown checkpoint family (neither SD-1.5 nor SDXL keys found)")


def _read_single_file_keys(path: Path) -> list[str]:
    if path.suffix not in (".safetensors", ".sft"):
        raise ModelLoadError(f"{path}: only .safetensors single-file checkpoints are loaded (pickle files are never unpickled)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ModelLoadError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e).splitlines()[0]})")


def load_model(
    source: str | os.PathLike,
    family: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config_dir: str | os.PathLike | None = None,
) -> DiffusionModel:
    """Load a model from a local diffusers directory, a hub id, or a single-file checkpoint.

    family: "auto" detects it; single files need a diffusers-layout `config_dir` with the
    tokenizer(s) when the shipped configs (trainer/configs/<family>) lack them, since nothing
    is fetched from a hub here.
    """
    if family not in ("auto", *FAMILIES):
        raise ModelLoadError(f"unknown model family {family!r}; choose auto, {', '.join(FAMILIES)}")
    path = Path(source).expanduser()
    if path.is_dir():
        fam = detect_family_from_dir(path) if family == "auto" else family
        model = _load_pipeline_dir(str(path), fam, dtype)
    elif path.is_file():
        model = _load_single_file(path, family, dtype, config_dir)
    elif HUB_ID.match(str(source)) and not str(source).startswith((".", "/")):
        model = _load_hub(str(source), family, dtype)
    else:
        raise ModelLoadError(f"{source}: no such model directory or file (give a diffusers directory, a .safetensors checkpoint or a hub id)")
    model.source = str(source)
    if model.family.name == "sdxl" and dtype == torch.float16:
        model.vae.to(torch.float32)  # SDXL's VAE overflows in fp16; decode/encode cast at its boundary
    model.unet.to(device)
    model.vae.to(device)
    for enc in model.text_encoders:
        enc.to(device)
    for m in [model.unet, model.vae, *model.text_encoders]:
        m.requires_grad_(False).eval()
    return model


def _components(family: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    enc2 = CLIPTextModelWithProjection if FAMILIES[family].pooled_text else None
    return UNet2DConditionModel, AutoencoderKL, CLIPTextModel, enc2, CLIPTokenizer


def _load_pipeline_dir(root: str, family: str, dtype: torch.dtype, **hub_kwargs) -> DiffusionModel:
    unet_cls, vae_cls, enc_cls, enc2_cls, tok_cls = _components(family)
    try:
        unet = unet_cls.from_pretrained(root, subfolder="unet", torch_dtype=dtype, **hub_kwargs)
        vae = vae_cls.from_pretrained(root, subfolder="vae", torch_dtype=dtype, **hub_kwargs)
        encoders = [enc_cls.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype, **hub_kwargs)]
        tokenizers = [tok_cls.from_pretrained(root, subfolder="tokenizer", **hub_kwargs)]
        if enc2_cls is not None:
            encoders.append(enc2_cls.from_pretrained(root, subfolder="text_encoder_2", torch_dtype=dtype, **hub_kwargs))
            tokenizers.append(tok_cls.from_pretrained(root, subfolder="tokenizer_2", **hub_kwargs))
        schedule = _schedule_from(root, **hub_kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"{root}: cannot load the {family} pipeline ({str(e).splitlines()[0]})") from None
    return DiffusionModel(FAMILIES[family], unet, vae, encoders, tokenizers, schedule)


def _schedule_from(root: str, **hub_kwargs) -> NoiseSchedule:
    from diffusers import DDIMScheduler

    cfg = DDIMScheduler.load_config(root, subfolder="scheduler", **hub_kwargs)
    return NoiseSchedule.from_scheduler_config(cfg)


def _load_hub(repo_id: str, family: str, dtype: torch.dtype) -> DiffusionModel:
    fam = family
    if fam == "auto":
        fam = "sdxl" if "xl" in repo_id.lower() else "sd15"
    try:
        return _load_pipeline_dir(repo_id, fam, dtype)
    except ModelLoadError as e:
        raise ModelLoadError(f"{e} — no hub access? download the model and pass its local directory") from None


def _load_single_file(path: Path, family: str, dtype: torch.dtype, config_dir) -> DiffusionModel:
    """An original-layout (LDM) checkpoint through diffusers' single-file loader.

    Configs come from `config_dir` (a diffusers-layout directory with tokenizers), else the
    shipped trainer/configs/<family> when it holds tokenizers, else diffusers' own lookup
    (the local hub cache when offline).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = _read_single_file_keys(path)
    fam = detect_family_from_keys(keys, str(path)) if family == "auto" else family
    if config_dir is None:
        from .configs import config_dir as shipped

        if (shipped(fam) / "tokenizer").is_dir():
            config_dir = shipped(fam)
    kwargs = {"torch_dtype": dtype}
    if config_dir is not None:
        config_dir = Path(config_dir)
        if not (config_dir / "tokenizer").is_dir():
            raise ModelLoadError(f"{config_dir}: --model.config_dir must be a diffusers-layout directory with tokenizer/")
        kwargs.update(config=str(config_dir), local_files_only=True)
    pipe_cls = StableDiffusionXLPipeline if fam == "sdxl" else StableDiffusionPipeline
    try:
        pipe = pipe_cls.from_single_file(str(path), **kwargs)
    except Exception as e:  # diffusers raises assorted types for mismatched checkpoints and missing configs
        hint = "" if config_dir else "; offline, pass --model.config_dir DIR (the base model's diffusers repo without weights)"
        raise ModelLoadError(f"{path}: cannot load as {fam} single-file checkpoint ({str(e).splitlines()[0][:200]}){hint}") from None
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if fam == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if fam == "sdxl" else [])
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler.config)
    return DiffusionModel(FAMILIES[fam], pipe.unet, pipe.vae, encoders, tokenizers, schedule)
