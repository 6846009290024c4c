"""Rebuild ShapesWorld's shipped models from scratch with fixed seeds.

    python -m trainer.shapes.build [--stage all|world|pipeline|preference|spm|evaluate] [--quick] [--out DIR]

Stages: world (sample grid + ground-truth sanity numbers), pipeline (CLIP pretraining, VAE, UNet,
SD-layout directory, held-out evaluation), preference (generic labels as a Pick-a-Pic-layout
dataset, PickScore-style CLIP), spm (step-aware version via `python -m trainer.spm`). Each stage
appends how it was trained and how well to <out>/record.json. evaluate trains nothing: it
re-measures the shipped pipeline with the current ground truth and replaces those numbers in its
record entry. --quick shrinks everything to minutes and writes to a scratch directory instead of
the shipped weights.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import write_text
from ..malloc import keep_freed_memory
from .shipped import WEIGHTS


@dataclass(frozen=True)
class BuildConfig:
    """Sizes and seeds of one build. Seeds are fixed so a rebuild reproduces the shipped weights."""

    seed: int = 0  # every stage's seeds derive from it
    renders_per_caption: int = 12  # training renders per caption
    clip_steps: int = 1500  # contrastive CLIP pretraining steps
    vae_steps: int = 1200  # VAE steps on crops
    vae_decoder_steps: int = 400  # decoder fine-tuning steps on full images
    # The earlier recipe learned the shape word between steps 8,000 and 12,000 at lr 8e-4; at 2e-3 the
    # four-level UNet drew every position right by step 1,000, which took 8e-4 about 2,000.
    unet_steps: int = 8000
    unet_batch: int = 64  # UNet batch size
    unet_lr: float = 2e-3  # UNet learning rate
    unet_text_lr: float = 0.0  # > 0: fine-tune the text tower with the UNet (see train_unet)
    unet_v_weight_cap: float = 30.0  # cap of the UNet loss weight per timestep
    unet_offset_noise: float = 0.15  # offset-noise strength of UNet training
    # A second UNet phase: renders drawn with weight (1 − quality), mostly mediocre pictures as on
    # the web. The 16,000-step model trained on U(0, 1) quality alone samples close to the best the
    # VAE can decode, leaving preference tuning little to find (docs/shapes-16k-base.md). 0 = off.
    unet_phase2_steps: int = 2000
    unet_phase2_lr: float = 2e-4  # learning rate of the second UNet phase
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3)  # seeds of the held-out evaluation
    preference_pairs: int = 4800  # pairs of renders
    # Pairs of the base pipeline's own samples (~0.2 s each on 2 cores). A preference model trained on
    # renders alone ranks the base model's samples at chance (docs/shapes-16k-base.md).
    preference_sample_pairs: int = 0
    preference_steps: int = 500  # preference model steps
    spm_steps: int = 300  # 0: the `shapes` preset's own step count
    # A third of the `shapes` SPM preset's rate: it starts from the fitted preference model and only
    # adapts it to noisy x̂0; the shipped SPM and the default run's tuning used this rate.
    spm_lr: float = 1e-4
    threads: int = 2  # torch threads


FULL = BuildConfig()
QUICK = BuildConfig(renders_per_caption=2, clip_steps=20, vae_steps=20, vae_decoder_steps=10, unet_steps=20,
                    unet_phase2_steps=10, eval_seeds=(0,), preference_pairs=256, preference_sample_pairs=32,
                    preference_steps=20, spm_steps=4)
STAGES = ("world", "pipeline", "preference", "spm")  # what `all` runs; `evaluate` only re-measures


def scrub_paths(directory: Path, scratch: Path, out: Path) -> None:
    """Replace this machine's paths in the saved JSON configs (e.g. `_name_or_path`) by placeholders."""
    for f in directory.rglob("*.json"):
        text = f.read_text()
        new = text.replace(str(scratch), "<scratch>").replace(str(out.resolve()), "<weights>").replace(str(out), "<weights>")
        if new != text:
            f.write_text(new)


def update_record(out: Path, key: str, entry: dict, merge: bool = False) -> None:
    """Set record[key] to entry, or with merge=True update the entry already there."""
    path = out / "record.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record[key] = {**record.get(key, {}), **entry} if merge else entry
    write_text(path, json.dumps(record, indent=1) + "\n")  # a build killed mid-write keeps the previous record


def software() -> dict:
    """What a bit-for-bit rebuild must match: the same seeds give different bits under other
    library versions, thread counts or CPUs (10 CLIP steps at 1 and at 2 threads already differ)."""
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine()}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_world(cfg: BuildConfig, out: Path, scratch: Path) -> dict:
    """A sample grid and the ground truth by quality level, so the record shows what the world is."""
    from .render import render
    from .report import image_grid
    from .truth import aesthetic, alignment
    from .world import heldout_captions, parse_caption, train_captions

    caps = heldout_captions()[:8]
    levels = (1.0, 0.75, 0.5, 0.25, 0.0)
    rows, numbers = [], {}
    for q in levels:
        x = render([parse_caption(c) for c in caps], torch.full((len(caps),), q), torch.Generator().manual_seed(cfg.seed))
        rows.append(x)
    image_grid(rows, [f"q={q}" for q in levels]).save(out / "world_samples.png")
    train = train_captions()
    for q in levels:
        x = render([parse_caption(c) for c in train], torch.full((len(train),), q), torch.Generator().manual_seed(cfg.seed))
        numbers[str(q)] = {"aesthetic": float(aesthetic(x).mean()), "alignment": float(alignment(x, train).mean())}
    return {"train_captions": len(train), "heldout_captions": len(heldout_captions()),
            "ground_truth_by_quality_on_train_captions": numbers}


def stage_pipeline(cfg: BuildConfig, out: Path, scratch: Path) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from .architectures import TOKEN_LENGTH, scheduler_config
    from .dataset import render_set
    from .tokenizer import write_tokenizer
    from .train_clip import pretrain_clip, tokenize
    from .train_unet import encode_latents, train_unet
    from .train_vae import finetune_decoder, measure_scaling_factor, train_vae
    from .world import train_captions

    timings, reused = {}, []
    t0 = time.time()
    write_tokenizer(scratch / "tokenizer", max_length=TOKEN_LENGTH)
    tokenizer = CLIPTokenizer.from_pretrained(str(scratch / "tokenizer"))
    data = render_set(train_captions(), cfg.renders_per_caption, seed=cfg.seed)
    timings["render_s"] = time.time() - t0
    _log(f"rendered {data.images.shape[0]} training images")

    t0 = time.time()
    clip = reuse_or_build(scratch / "clip", CLIPModel.from_pretrained, reused,
                          lambda: pretrain_clip(data, tokenizer, cfg.clip_steps, seed=cfg.seed + 1, log=_log))
    clip.save_pretrained(str(out / "clip"))
    tokenizer.save_pretrained(str(out / "clip"))
    # here, not after the UNet: `--stage preference` may run beside the UNet and copies them from clip/
    copy_slow_tokenizer_files(scratch / "tokenizer", out / "clip")
    timings["clip_s"] = time.time() - t0

    t0 = time.time()

    def autoencoder():  # the VAE on crops, then its decoder on full images
        vae = reuse_or_build(scratch / "vae", AutoencoderKL.from_pretrained, reused,
                             lambda: train_vae(data, cfg.vae_steps, seed=cfg.seed + 2, log=_log))
        return finetune_decoder(vae, data, cfg.vae_decoder_steps, seed=cfg.seed + 4, log=_log)

    vae = reuse_or_build(scratch / "vae_full", AutoencoderKL.from_pretrained, reused, autoencoder)
    scaling = measure_scaling_factor(vae, data)
    vae.register_to_config(scaling_factor=scaling)
    timings["vae_s"] = time.time() - t0
    _log(f"vae scaling factor {scaling:.4f}")

    t0 = time.time()
    # The pipeline's text tower is CLIP's architecture at a seeded random init, frozen, not the
    # contrastive CLIP's text tower: that one learned colour and little else (swapping the shape word
    # moves its token states by 0.5% of their variance, against 50% at random init), and a UNet
    # conditioned on it, or fine-tuning it, learned the shape word last or never.
    torch.manual_seed(cfg.seed + 5)
    text_encoder = CLIPTextModel(clip.config.text_config).eval()
    mean, std = encode_latents(vae, data)
    tokens, uncond = tokenize(tokenizer, data.captions), tokenize(tokenizer, [""])[0]
    shared = dict(batch=cfg.unet_batch, v_weight_cap=cfg.unet_v_weight_cap, offset_noise=cfg.unet_offset_noise, log=_log)
    unet, text_encoder = train_unet(
        mean, std, data.caption_ids, tokens, text_encoder, uncond, scaling, cfg.unet_steps, seed=cfg.seed + 3,
        checkpoint=scratch / "unet_text_checkpoint.pt", lr=cfg.unet_lr, text_lr=cfg.unet_text_lr, **shared)
    if cfg.unet_phase2_steps:
        unet, text_encoder = train_unet(
            mean, std, data.caption_ids, tokens, text_encoder, uncond, scaling, cfg.unet_phase2_steps, seed=cfg.seed + 7,
            checkpoint=scratch / "unet_phase2_checkpoint.pt", lr=cfg.unet_phase2_lr, text_lr=0.0, init_unet=unet,
            sample_weight=1 - data.quality, **shared)
    timings["unet_s"] = time.time() - t0

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out / "pipeline"))
    copy_slow_tokenizer_files(scratch / "tokenizer", out / "pipeline" / "tokenizer")
    scrub_paths(out / "pipeline", scratch, out)
    _log(f"saved pipeline to {out / 'pipeline'}")
    t0 = time.time()
    loaded = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), safety_checker=None)
    loaded.set_progress_bar_config(disable=True)
    measured = measure_pipeline(loaded, data, cfg)
    timings["eval_s"] = time.time() - t0
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("clip", clip))}
    return {"training_images": int(data.images.shape[0]), "vae_scaling_factor": scaling, "parameters": params,
            "seeds": {"render": cfg.seed, "clip": cfg.seed + 1, "vae": cfg.seed + 2, "vae_decoder": cfg.seed + 4,
                      "text_encoder_init": cfg.seed + 5, "unet": cfg.seed + 3, "unet_phase2": cfg.seed + 7},
            "steps": {"clip": cfg.clip_steps, "vae": cfg.vae_steps, "vae_decoder": cfg.vae_decoder_steps,
                      "unet": cfg.unet_steps, "unet_phase2 (weight 1 - quality)": cfg.unet_phase2_steps},
            "text_encoder": "CLIP text architecture at a seeded random init" + (", frozen" if not cfg.unet_text_lr else
                                                                                 f", trained with the UNet at lr {cfg.unet_text_lr}"),
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "reused_from_scratch_checkpoints": reused, **measured}


def copy_slow_tokenizer_files(src: Path, dst: Path) -> None:
    """vocab.json and merges.txt next to tokenizer.json: transformers < 5 loads CLIPTokenizer from them."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, dst / name)


def measure_pipeline(pipe, data, cfg: BuildConfig) -> dict:
    """The ground-truth numbers of a pipeline's record entry: its VAE on the training renders `data`,
    held-out samples, and how much the denoiser listens to each caption word."""
    from .evaluate import caption_sensitivity, heldout_report
    from .world import train_captions

    recon = vae_reconstruction_report(pipe.vae, data)
    report = heldout_report(pipe, list(cfg.eval_seeds))
    _log(f"vae reconstruction {recon}")
    _log(f"held-out: alignment {report['alignment']['mean']:.3f}, aesthetic {report['aesthetic']['mean']:.2f} "
         f"± {report['aesthetic_std']:.2f}")
    return {"vae_reconstruction": recon, "heldout_eval": report,
            "caption_sensitivity_xhat0_mse_by_t (64 training captions; see evaluate.caption_sensitivity)":
                caption_sensitivity(pipe, random.Random(cfg.seed).sample(train_captions(), 64), seed=cfg.seed)}


def stage_evaluate(cfg: BuildConfig, out: Path, scratch: Path) -> dict:
    """Re-measure the shipped pipeline with the current ground truth, without training: the pipeline
    entry of the record keeps how it was trained and gets these numbers in place of its own."""
    from diffusers import StableDiffusionPipeline

    from .dataset import render_set
    from .world import train_captions

    pipe = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return measure_pipeline(pipe, render_set(train_captions(), cfg.renders_per_caption, seed=cfg.seed), cfg)


def reuse_or_build(path: Path, load, reused: list[str], build):
    """The model an earlier, interrupted build saved at `path`, or `build()` saved there (its name is
    appended to `reused` when reused, so the record says which parts were not retrained)."""
    if path.exists():
        _log(f"{path.name}: reused {path}")
        reused.append(path.name)
        return load(str(path)).eval()
    model = build()
    model.save_pretrained(str(path))
    return model


@torch.no_grad()
def vae_reconstruction_report(vae, data, n: int = 256) -> dict:
    """Does the autoencoder keep the ground truth? Aesthetic/alignment of originals vs reconstructions."""
    from .truth import aesthetic, alignment

    idx = torch.randperm(data.images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    x = data.batch(idx)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    caps = [data.captions[i] for i in data.caption_ids[idx].tolist()]
    a0, a1 = aesthetic(x), aesthetic(rec)
    return {"images": n, "l1": float((rec - x).abs().mean()),
            "aesthetic_original": float(a0.mean()), "aesthetic_reconstructed": float(a1.mean()),
            "aesthetic_correlation": float(torch.corrcoef(torch.stack([a0, a1]))[0, 1]),
            "alignment_original": float(alignment(x, caps).mean()), "alignment_reconstructed": float(alignment(rec, caps).mean())}


@dataclass(frozen=True)
class BuildCommand(BuildConfig):
    """The command line: the build's sizes and seeds (BuildConfig) plus where and what to run."""

    preset: str = "full"
    """full (the shipped weights' sizes) | quick (tiny sizes, minutes; writes to a scratch dir)"""
    stage: str = "all"
    """all | world | pipeline | preference | spm | evaluate"""
    out: str = ""
    """output directory (default: the shipped weights dir; with --quick a scratch dir)"""
    scratch: str = ""
    """checkpoints and intermediates (default: a temp dir)"""


BUILD_PRESETS = {"full": {}, "quick": {f.name: getattr(QUICK, f.name) for f in dataclasses.fields(BuildConfig)
                                       if getattr(QUICK, f.name) != getattr(FULL, f.name)}}
# Sizes a rebuild may change and the least each may be.
MINIMUM = {"unet_steps": 1, "unet_phase2_steps": 0, "preference_pairs": 1, "preference_sample_pairs": 0,
           "preference_steps": 1, "threads": 1}


def parse(argv: list[str]) -> BuildCommand:
    """--quick is short for --preset quick; every BuildConfig field is a flag (--unet-steps 7)."""
    from .. import typed_config

    argv = ["--preset=quick" if a == "--quick" else a for a in argv]
    cmd = typed_config.parse(argv, BuildCommand, BUILD_PRESETS, default_preset="full", dashed=True,
                             prog="python -m trainer.shapes.build", intro=__doc__.split("\n\n")[0])
    stages = ("all",) + STAGES + ("evaluate",)
    if cmd.stage not in stages:
        raise typed_config.ConfigError(f"--stage must be one of {', '.join(stages)} (got {cmd.stage!r})")
    for name, least in MINIMUM.items():
        if getattr(cmd, name) < least:
            raise typed_config.ConfigError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(cmd, name)}")
    return cmd


def main(argv: list[str] | None = None) -> int:
    from ..typed_config import ConfigError, HelpRequested

    try:
        cmd = parse(list(sys.argv[1:] if argv is None else argv))
    except HelpRequested as h:
        print(h.text)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    cfg = BuildConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(BuildConfig)})
    quick = cmd.preset == "quick"
    scratch = Path(cmd.scratch) if cmd.scratch else Path(tempfile.gettempdir()) / ("shapes_build_quick" if quick else "shapes_build")
    out = Path(cmd.out) if cmd.out else (scratch / "weights" if quick else WEIGHTS)
    out.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    stages = STAGES if cmd.stage == "all" else (cmd.stage,)
    runners = {"world": stage_world, "pipeline": stage_pipeline, "preference": _stage("preference"), "spm": _stage("spm"),
               "evaluate": stage_evaluate}
    command = " ".join(["python -m trainer.shapes.build"] + (argv if argv is not None else sys.argv[1:]))
    command = command.replace(str(scratch), "<scratch>").replace(str(out), "<weights>")  # no machine's paths
    for name in stages:
        _log(f"stage {name} ...")
        t0 = time.time()
        entry = runners[name](cfg, out, scratch)
        if name == "evaluate":  # the numbers of the pipeline's entry, not an entry of its own
            update_record(out, "pipeline", {**entry, "evaluated_by": command}, merge=True)
        else:
            update_record(out, name, {"command": command, "config": asdict(cfg), "software": software(),
                                      "wall_seconds": round(time.time() - t0, 1), **entry})
        _log(f"stage {name} done in {time.time() - t0:.0f}s")
    return 0


def _stage(name: str):
    def run(cfg: BuildConfig, out: Path, scratch: Path) -> dict:
        from . import build_preference

        return getattr(build_preference, f"stage_{name}")(cfg, out, scratch, _log)

    return run


if __name__ == "__main__":
    raise SystemExit(main())
