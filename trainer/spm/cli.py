"""`python -m trainer.spm {train,eval,convert}`: the SPM's command line.

    train    fit an SPM on Pick-a-Pic-layout pairs (presets sd15 / sdxl / shapes; every
             training setting is also a flag, e.g. --lr 1e-5 --max-steps 200)
    eval     pairwise accuracy of an SPM on held-out pairs by timestep bucket (table + JSON)
    convert  a released .bin/.safetensors SPM -> this project's directory format

Errors on bad input are one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from .errors import SPMError
from .train import PRESETS, SPMTrainConfig


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per SPMTrainConfig field (default None: only given flags override the preset)."""
    hints = typing.get_type_hints(SPMTrainConfig)
    for f in dataclasses.fields(SPMTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint, text = hints[f.name], f.metadata.get("help", "")
        if hint is bool:
            parser.add_argument(flag, type=_bool, nargs="?", const=True, default=None, metavar="BOOL",
                                help=f"{text} (default {str(f.default).lower()})")
        elif typing.get_origin(hint) is tuple:
            elem = int if f.name == "eval_timesteps" else float
            parser.add_argument(flag, type=lambda s, e=elem: tuple(e(x) for x in s.split(",")), default=None,
                                metavar="A,B,...", help=f"{text} (default {','.join(map(str, f.default))})")
        else:
            parser.add_argument(flag, type=hint, default=None, metavar=f.name.upper(), help=f"{text} (default {f.default!r})")


def config_from_args(args) -> SPMTrainConfig:
    """The preset's values overridden by the flags that were given."""
    from .train import make_config

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SPMTrainConfig) if getattr(args, f.name) is not None}
    return make_config(args.preset, **overrides)


def _train(args) -> int:
    from .train import train_spm

    train_spm(config_from_args(args))
    return 0


def _eval(args) -> int:
    import torch

    from .data import open_pairs
    from .evaluate import accuracy_by_timestep, format_accuracy_table, write_report
    from .train import load_base_model
    from .weights import check_family, load_spm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pairs = open_pairs(args.data, args.split)  # a bad path fails before model loading
    base = load_base_model(args.base_model, args.family, dtype, device)
    spm = load_spm(args.spm, device=device, dtype=dtype, tokenizer=args.tokenizer)
    check_family(spm, base.family.name)
    report = accuracy_by_timestep(spm, base, pairs, args.timesteps, args.batch_size, args.guidance_scale, args.seed, args.max_pairs)
    report["spm"], report["base_model"], report["data"] = str(args.spm), str(args.base_model), str(args.data)
    print(format_accuracy_table(report))
    if args.out:
        print(f"wrote {write_report(report, args.out)}")
    return 0


def _convert(args) -> int:
    import torch

    from .weights import load_released

    config = None
    if args.clip_config:
        from transformers import CLIPConfig

        path = Path(args.clip_config)
        try:
            config = CLIPConfig.from_pretrained(str(path)) if path.is_dir() else CLIPConfig.from_json_file(str(path))
        except (OSError, ValueError) as e:
            raise SPMError(f"--clip-config {path}: not a CLIP config ({str(e).splitlines()[0][:120]})") from None
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    spm = load_released(args.src, dtype=dtype, config=config, tokenizer=args.tokenizer, family=args.family)
    if args.tokenizer:
        spm.get_tokenizer()  # bundle it: the converted directory then scores offline
    out = spm.save_pretrained(args.dst, training={"converted_from": Path(args.src).name})
    kind = "step-aware" if spm.step_aware else "step-agnostic"
    print(f"converted {args.src} -> {out} ({kind}, family {spm.family or 'unknown'}, {args.dtype})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.spm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an SPM on Pick-a-Pic-layout pairs",
                       description="Train an SPM. Defaults shown are those without --preset; a preset sets "
                                   "the hyper-parameters and any flag given overrides it.")
    t.add_argument("--preset", choices=sorted(PRESETS), default=None, help="hyper-parameter preset (spec §4 for sd15/sdxl)")
    _add_config_flags(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="pairwise accuracy by timestep bucket on held-out pairs")
    e.add_argument("--spm", required=True, help="SPM file or directory")
    e.add_argument("--base-model", required=True, help="diffusers pipeline dir, hub id or checkpoint")
    e.add_argument("--data", required=True, help="Pick-a-Pic-layout dir or datasets name")
    e.add_argument("--split", default="validation")
    e.add_argument("--family", default="auto")
    e.add_argument("--timesteps", type=lambda s: tuple(int(x) for x in s.split(",")), default=(0, 250, 500, 750, 950))
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--guidance-scale", type=float, default=5.0)
    e.add_argument("--max-pairs", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--tokenizer", default=None, help="CLIP tokenizer dir or hub id (default: the SPM's own)")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    e.add_argument("--out", default=None, help="write the report here as JSON")
    e.set_defaults(func=_eval)

    c = sub.add_parser("convert", help="released .bin/.safetensors SPM -> spo-studio SPM directory")
    c.add_argument("src", help="sd-v1-5_step-aware_preference_model.bin or sdxl_…, or the same as .safetensors")
    c.add_argument("dst", help="output directory (model.safetensors + config.json)")
    c.add_argument("--family", choices=["sd15", "sdxl", "shapes"], default=None, help="default: from the file name")
    c.add_argument("--tokenizer", default=None, help="CLIP tokenizer dir or hub id to bundle (default: record PickScore's hub id)")
    c.add_argument("--clip-config", default=None, help="CLIPConfig JSON/dir when the file is not CLIP-H (tests, ShapesWorld)")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    c.set_defaults(func=_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..malloc import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return args.func(args)
    except ValueError as e:  # our errors (and trainer.models.ModelLoadError) are one line for the user
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
