"""How fast the ShapesWorld UNet learns each caption word, under a choice of architecture and text tower.

    python -m bench.unet_recipe --steps 3000 --eval-every 1000                      # the build's recipe
    python -m bench.unet_recipe --levels 3 --text clip-tuned --out bench/results/unet_recipe_old.json

Trains the UNet as the build's pipeline stage does (`trainer.shapes.train_unet`, same data, seeds, lr
and schedule over --steps; --lr to change the rate), on the shipped pipeline's VAE unless --vae is
given, and every --eval-every steps measures it: held-out alignment by term (16 captions × 2 seeds,
20 DDIM steps, CFG 5) and, on 32 training captions, the denoiser's x̂0 error with one caption word
swapped over the error with the right caption (`trainer.shapes.evaluate.caption_sensitivity`): 1.0 means the word is ignored.
--levels 3 is the earlier UNet (lowest level 4×4); --text picks the text tower: a seeded random init
or the contrastive CLIP's, frozen or fine-tuned with the UNet (lr 2e-4, as the earlier recipe did).
Prints a table and writes JSON (rewritten after every measurement).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

WORDS = ("shape", "colour", "position")
TEXTS = ("random-frozen", "random-tuned", "clip-frozen", "clip-tuned")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.unet_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="UNet steps, the length of the lr schedule (default 3000)")
    p.add_argument("--eval-every", type=int, default=1000, help="measure every N steps (default 1000)")
    p.add_argument("--levels", type=int, choices=(3, 4), default=4, help="UNet levels: 4 = the build's (default), 3 = the earlier")
    p.add_argument("--lr", type=float, default=None, help="UNet learning rate (default: the build's)")
    p.add_argument("--text", choices=TEXTS, default="random-frozen", help="text tower (default random-frozen, the build's)")
    p.add_argument("--vae", type=Path, help="AutoencoderKL directory (default: the shipped pipeline's vae/)")
    p.add_argument("--clip", type=Path, help="CLIPModel directory for --text clip-* (default: the shipped clip/)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=Path("bench/results/unet_recipe.json"), help="JSON result path")
    args = p.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1:
        p.error(f"--steps and --eval-every must be at least 1, got {args.steps} and {args.eval_every}")
    return args


def unet_config(levels: int) -> dict:
    from trainer.shapes.architectures import unet_config as build_config

    config = build_config()
    if levels == 3:  # the earlier UNet: no 2×2 level
        config.update(block_out_channels=(32, 64, 64),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    return config


def text_tower(kind: str, clip_dir: Path):
    from transformers import CLIPModel, CLIPTextModel

    from trainer.shapes.architectures import clip_config

    if kind.startswith("clip"):
        clip = CLIPModel.from_pretrained(str(clip_dir))
        tower = CLIPTextModel(clip.config.text_config)
        getattr(tower, "text_model", tower).load_state_dict(clip.text_model.state_dict())
        return tower
    from trainer.shapes.build import FULL

    torch.manual_seed(FULL.seed + 5)  # the build's text_encoder_init seed
    return CLIPTextModel(clip_config().text_config)


def measure(pipe, captions: list[str]) -> dict:
    from trainer.shapes.evaluate import caption_sensitivity, heldout_report

    report = heldout_report(pipe, [0, 1])
    sens = caption_sensitivity(pipe, captions)
    return {"alignment": report["alignment"]["mean"], "terms": report["alignment_terms"],
            "aesthetic": report["aesthetic"]["mean"],
            "swap_error_ratio": {t: {w: v[w] / v["right"] for w in WORDS} for t, v in sens.items()},
            "xhat0_error": sens}


def main(argv=None) -> int:
    args = parse_args(argv)
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from trainer.atomic import write_text
    from trainer.malloc import keep_freed_memory
    from trainer.shapes.build import FULL
    from trainer.shapes.architectures import scheduler_config
    from trainer.shapes.dataset import render_set
    from trainer.shapes.shipped import check_weights, weights_dir
    from trainer.shapes.train_clip import tokenize
    from trainer.shapes.train_unet import encode_latents, train_unet
    from trainer.shapes.world import train_captions

    args.lr = args.lr or FULL.unet_lr
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    pipeline_dir = check_weights()
    vae = AutoencoderKL.from_pretrained(str(args.vae or pipeline_dir / "vae")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(pipeline_dir / "tokenizer"))
    data = render_set(train_captions(), FULL.renders_per_caption, seed=FULL.seed)  # the build's training set
    mean, std = encode_latents(vae, data)
    text = text_tower(args.text, args.clip or weights_dir("clip"))
    torch.manual_seed(FULL.seed + 3)  # the build's UNet seed
    unet = UNet2DConditionModel(**unet_config(args.levels))
    probe = random.Random(0).sample(train_captions(), 32)
    rows, started = [], time.time()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def on_step(done: int, unet, text_encoder) -> None:
        if done % args.eval_every and done != args.steps:
            return
        was_training = text_encoder.training
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                       unet=unet.eval(), scheduler=DDIMScheduler(**scheduler_config()),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            rows.append({"step": done, "seconds": round(time.time() - started, 1), **measure(pipe, probe)})
        unet.train()
        text_encoder.train(was_training)
        r = rows[-1]
        print(f"step {done}: alignment {r['alignment']:.3f} ("
              + ", ".join(f"{k} {v:.2f}" for k, v in r["terms"].items()) + "); swapped/right x̂0 error at t=300/700: "
              + ", ".join(f"{w} {r['swap_error_ratio']['300'][w]:.2f}/{r['swap_error_ratio']['700'][w]:.2f}" for w in WORDS),
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps({"args": settings, "rows": rows}, indent=1) + "\n")

    train_unet(mean, std, data.caption_ids, tokenize(tokenizer, data.captions), text, tokenize(tokenizer, [""])[0],
               vae.config.scaling_factor, args.steps, seed=FULL.seed + 3, init_unet=unet, lr=args.lr,
               batch=FULL.unet_batch, v_weight_cap=FULL.unet_v_weight_cap, offset_noise=FULL.unet_offset_noise,
               text_lr=2e-4 if args.text.endswith("tuned") else 0.0, log=lambda m: None, on_step=on_step)
    print(f"\n{args.levels} levels, text {args.text}\n")
    print("| step | alignment | shape | colour | background | position | shape swap t=300 | position swap t=700 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["terms"]
        print(f"| {r['step']} | {r['alignment']:.3f} | {t['shape']:.2f} | {t['colour']:.2f} | {t['background']:.2f} | "
              f"{t['position']:.2f} | {r['swap_error_ratio']['300']['shape']:.2f} | {r['swap_error_ratio']['700']['position']:.2f} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
