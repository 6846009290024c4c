"""`python -m trainer.spm {train,eval,convert}`: the SPM's command line.

    train    fit an SPM on Pick-a-Pic-layout pairs (presets sd15 / sdxl / shapes; every
             training setting is also a flag, e.g. --lr 1e-5 --max-steps 200)
    eval     pairwise accuracy of an SPM on held-out pairs by timestep bucket (table + JSON)
    convert  a released .bin/.safetensors SPM -> this project's directory format

Errors on bad input are one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import typed_config
from .errors import SPMError
from .train import PRESETS, SPMTrainConfig

PROG = "python -m trainer.spm"
GUARANTEES = ("Bad input is one line on stderr and exit code 2, checked before any model loads. convert writes "
              "into a temporary folder renamed into place (never half a model; an existing file or a foreign "
              "folder as destination is refused); train --resume continues from the newest complete checkpoint.")


@dataclass
class EvalArgs:
    spm: str = field(default="", metadata={"help": "SPM file or directory (required)"})
    base_model: str = field(default="", metadata={"help": "diffusers pipeline dir, hub id or checkpoint (required)"})
    data: str = field(default="", metadata={"help": "Pick-a-Pic-layout dir or datasets name (required)"})
    split: str = field(default="validation", metadata={"help": "datasets split"})
    family: str = field(default="auto", metadata={"help": "auto, sd15, sdxl or shapes"})
    timesteps: tuple[int, ...] = field(default=(0, 250, 500, 750, 950), metadata={"help": "timestep buckets"})
    batch_size: int = field(default=8, metadata={"help": "pairs per batch"})
    guidance_scale: float = field(default=5.0, metadata={"help": "CFG scale of the base model's x̂0"})
    max_pairs: Optional[int] = field(default=None, metadata={"help": "evaluate at most this many pairs (none: all)"})
    seed: int = field(default=0, metadata={"help": "seeds t and noise"})
    tokenizer: str = field(default="", metadata={"help": "CLIP tokenizer dir or hub id (default: the SPM's own)"})
    device: str = field(default="", metadata={"help": "cpu, cuda, ... (default: cuda when available)"})
    dtype: str = field(default="fp32", metadata={"help": "fp32, fp16 or bf16"})
    out: str = field(default="", metadata={"help": "write the report here as JSON"})


@dataclass
class ConvertArgs:
    src: str = field(default="", metadata={"help": "sd-v1-5_step-aware_preference_model.bin or sdxl_…, or the same as .safetensors"})
    dst: str = field(default="", metadata={"help": "output directory (model.safetensors + config.json)"})
    family: str = field(default="", metadata={"help": "sd15, sdxl or shapes (default: from the file name)"})
    tokenizer: str = field(default="", metadata={"help": "CLIP tokenizer dir or hub id to bundle (default: record PickScore's hub id)"})
    clip_config: str = field(default="", metadata={"help": "CLIPConfig JSON/dir when the file is not CLIP-H (tests, ShapesWorld)"})
    dtype: str = field(default="fp32", metadata={"help": "fp32, fp16 or bf16"})


DTYPE_NAMES = ("fp32", "fp16", "bf16")


def _choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise typed_config.ConfigError(f"{flag} must be one of {', '.join(choices)} (got {value!r})")


def parse_train(argv: list[str]) -> SPMTrainConfig:
    """`train` flags: the preset's values (if --preset), then --config YAML, then the flags given."""
    return typed_config.parse(argv, SPMTrainConfig, PRESETS, dashed=True, prog=f"{PROG} train",
                              intro="Train an SPM. Defaults shown are those without --preset; a preset sets the "
                                    "hyper-parameters and any flag given overrides it.\n" + GUARANTEES)


def parse_eval(argv: list[str]) -> EvalArgs:
    args = typed_config.parse(argv, EvalArgs, dashed=True, prog=f"{PROG} eval",
                              intro="Pairwise accuracy of an SPM on held-out pairs by timestep bucket.")
    for name in ("spm", "base_model", "data"):
        if not getattr(args, name):
            raise typed_config.ConfigError(f"--{name.replace('_', '-')} is required (see {PROG} eval --help)")
    _choice("--dtype", args.dtype, DTYPE_NAMES)
    return args


def parse_convert(argv: list[str]) -> ConvertArgs:
    args = typed_config.parse(argv, ConvertArgs, dashed=True, positional=("src", "dst"), prog=f"{PROG} convert",
                              intro="A released .bin/.safetensors SPM -> spo-studio SPM directory.\n" + GUARANTEES)
    _choice("--dtype", args.dtype, DTYPE_NAMES)
    if args.family:
        _choice("--family", args.family, ("sd15", "sdxl", "shapes"))
    return args


def _train(argv) -> int:
    from .train import train_spm

    cfg = parse_train(argv)
    cfg.validate()
    train_spm(cfg)
    return 0


def _eval(argv) -> int:
    import torch

    args = parse_eval(argv)
    from .data import open_pairs
    from .evaluate import accuracy_by_timestep, format_accuracy_table, write_report
    from .train import load_base_model
    from .weights import check_family, load_spm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pairs = open_pairs(args.data, args.split)  # a bad path fails before model loading
    base = load_base_model(args.base_model, args.family, dtype, device)
    spm = load_spm(args.spm, device=device, dtype=dtype, tokenizer=args.tokenizer or None)
    check_family(spm, base.family.name)
    report = accuracy_by_timestep(spm, base, pairs, args.timesteps, args.batch_size, args.guidance_scale, args.seed, args.max_pairs)
    report["spm"], report["base_model"], report["data"] = str(args.spm), str(args.base_model), str(args.data)
    print(format_accuracy_table(report))
    if args.out:
        print(f"wrote {write_report(report, args.out)}")
    return 0


def _convert(argv) -> int:
    import torch

    from ..atomic import atomic_path
    from .weights import load_released, read_spm_config

    args = parse_convert(argv)
    dst = Path(args.dst)
    check_destination(dst, read_spm_config)
    config = None
    if args.clip_config:
        from transformers import CLIPConfig

        path = Path(args.clip_config)
        try:
            config = CLIPConfig.from_pretrained(str(path)) if path.is_dir() else CLIPConfig.from_json_file(str(path))
        except (OSError, ValueError) as e:
            raise SPMError(f"--clip-config {path}: not a CLIP config ({str(e).splitlines()[0][:120]})") from None
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    spm = load_released(args.src, dtype=dtype, config=config, tokenizer=args.tokenizer or None, family=args.family or None)
    if args.tokenizer:
        spm.get_tokenizer()  # bundle it: the converted directory then scores offline
    with atomic_path(dst, directory=True) as tmp:  # all or nothing, a full disk included
        spm.save_pretrained(tmp, training={"converted_from": Path(args.src).name})
    out = dst
    kind = "step-aware" if spm.step_aware else "step-agnostic"
    print(f"converted {args.src} -> {out} ({kind}, family {spm.family or 'unknown'}, {args.dtype})")
    return 0


def check_destination(dst: Path, read_spm_config) -> None:
    """Refuse, before loading anything, a destination convert could not or should not replace."""
    if dst.is_file() or dst.is_symlink():
        raise SPMError(f"{dst}: exists and is a file; give a new folder name for the converted SPM")
    if dst.is_dir() and any(dst.iterdir()) and read_spm_config(dst) is None:
        raise SPMError(f"{dst}: a folder holding other files; give a new or empty folder for the converted SPM")
    parent = next((p for p in [dst, *dst.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SPMError(f"{dst}: cannot write there ({parent} is read-only); choose a writable folder")


COMMANDS = {"train": _train, "eval": _eval, "convert": _convert}


def main(argv: list[str] | None = None) -> int:
    from ..atomic import describe_os_error
    from ..malloc import keep_freed_memory

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        text = __doc__.strip() + "\n\n" + GUARANTEES + f"\n\n{PROG} COMMAND --help lists a command's settings."
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        print(text, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    keep_freed_memory()
    try:
        return COMMANDS[argv[0]](argv[1:])
    except typed_config.HelpRequested as h:
        print(h.text)
        return 0
    except ValueError as e:  # our errors (and trainer.models.ModelLoadError) are one line for the user
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
