"""`python -m trainer.lora inspect|convert|merge`: look into, convert and fold in LoRA files.

Every user-facing failure is one line on stderr and exit code 2. Outputs are written under a
temporary name and renamed into place (a full disk leaves nothing behind); merge refuses an --out
that is, lies inside or holds --model.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path

import torch

from ..atomic import atomic_path, describe_os_error
from .errors import LoraFileError
from .files import read_lora, save_diffusers, save_kohya, save_peft
from .state import LoraState

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
FAMILY_CHOICES = ["auto", "sd15", "sdxl", "shapes"]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{value:g} ({n})" if isinstance(value, float) else f"{value} ({n})" for value, n in sorted(counter.items()))


def _leaf(key: str) -> str:
    """The layer's name inside its block: "attn1.to_q", "ff.net.2", "conv1", "self_attn.q_proj", ..."""
    path = key.split(".", 1)[1]
    m = re.match(r"^.*\.(?:transformer_blocks|resnets|layers|attentions)\.\d+\.(.*)$", path)
    if m:
        return m.group(1)
    m = re.match(r"^(?:down_blocks|up_blocks)\.\d+\.(.*)$", path)
    return m.group(1) if m else path


def describe(state: LoraState, list_modules: bool = False) -> str:
    """Human-readable summary of a LoRA (what `inspect` prints)."""
    per_component = Counter(k.split(".", 1)[0] for k in state.modules)
    leaves = Counter(_leaf(k) for k in state.modules)
    conv = sum(m.is_conv and tuple(m.down.shape[2:]) != (1, 1) for m in state.modules.values())
    dtypes = Counter(str(m.down.dtype).replace("torch.", "") for m in state.modules.values())
    lines = [
        f"file:       {state.source}",
        f"layout:     {state.layout}",
        f"family:     {state.family}",
        f"modules:    {len(state.modules)} (" + ", ".join(f"{c} {n}" for c, n in per_component.items()) + f"; {conv} conv)",
        f"rank(s):    {_counts(state.ranks())}",
        f"alpha(s):   {_counts(state.alphas())}" + ("" if all(m.alpha is not None for m in state.modules.values())
                                                    else "  (no alpha stored for some: alpha = rank)"),
        f"dtype(s):   {_counts(dtypes)}",
        "layers:     " + ", ".join(f"{name} x{n}" for name, n in sorted(leaves.items())),
    ]
    if state.unknown_keys:
        shown = ", ".join(state.unknown_keys[:8]) + (" ..." if len(state.unknown_keys) > 8 else "")
        lines.append(f"unknown:    {len(state.unknown_keys)} keys not LoRA weights of a known layout: {shown}")
    if state.metadata:
        lines.append("metadata:")
        for k in sorted(state.metadata):
            v = state.metadata[k].replace("\n", " ")
            lines.append(f"  {k}: {v if len(v) <= 160 else v[:157] + '...'}")
    if list_modules:
        lines.append("module list:")
        for k, m in sorted(state.modules.items()):
            lines.append(f"  {k}  rank {m.rank}  alpha {m.effective_alpha:g}  down {list(m.down.shape)}  up {list(m.up.shape)}")
    return "\n".join(lines)


def _read(args) -> LoraState:
    return read_lora(args.file, family=args.family, check_shapes=not args.no_shape_check)


def cmd_inspect(args) -> int:
    print(describe(_read(args), list_modules=args.modules))
    return 0


def cmd_convert(args) -> int:
    state = read_lora(args.file, family=args.family, check_shapes=not args.no_shape_check)
    if state.unknown_keys:
        print(f"warning: {args.file}: {len(state.unknown_keys)} keys are not LoRA weights and were not converted: "
              + ", ".join(state.unknown_keys[:5]) + (" ..." if len(state.unknown_keys) > 5 else ""), file=sys.stderr)
    dtype = DTYPES[args.dtype] if args.dtype else None
    out = Path(args.out)
    check_output(out, folder=args.to == "peft", marker="adapter_config.json")
    if args.to == "kohya":
        comment = args.comment if args.comment is not None else state.metadata.get("ss_training_comment")
        save_kohya(state, out, output_name=args.name or out.stem,
                   base_model_name=args.base_model or state.metadata.get("ss_sd_model_name"),
                   training_comment=comment, dtype=dtype or torch.float16)
        written = [out]
    elif args.to == "diffusers":
        save_diffusers(state, out, dtype=dtype)
        written = [out]
    else:
        with atomic_path(out, directory=True) as tmp:  # the adapter folder appears whole or not at all
            parts = save_peft(state, tmp, dtype=dtype)
        written = [out / p.relative_to(tmp) for p in parts]
    print(f"wrote {', '.join(map(str, written))} ({args.to}, {state.family}, {len(state.modules)} modules, from {state.layout})")
    return 0


def _model_component_map(model) -> dict:
    parts = {"unet": model.unet}
    names = ["text_encoder", "text_encoder_2"]
    for name, enc in zip(names, model.text_encoders):
        parts[name] = enc
    return parts


def cmd_merge(args) -> int:
    from ..models import detect_family_from_dir, load_model
    from .peft_bridge import merge_lora

    check_merge_paths(Path(args.model), Path(args.out))
    # shapes are checked against the loaded model itself, which may be a fine-tune or ShapesWorld
    state = read_lora(args.file, family=args.family, check_shapes=False)
    model_family = args.model_family
    if model_family == "auto" and Path(args.model).is_dir():
        model_family = detect_family_from_dir(Path(args.model))  # refuse before loading weights
    if model_family != "auto":
        _check_same_naming(state, model_family, args)
    _quiet_loaders()
    model = load_model(args.model, family=model_family)
    _check_same_naming(state, model.family.name, args)
    parts = _model_component_map(model)
    missing = [c for c in state.components() if c not in parts]
    if missing:
        raise LoraFileError(f"{args.file}: has {missing[0]} layers but the model {args.model} has no {missing[0]}")
    changed = 0
    for component in state.components():
        changed += len(merge_lora(parts[component], state, args.scale, component=component))
    with atomic_path(Path(args.out), directory=True) as tmp:  # never half a pipeline, a full disk included
        save_pipeline(model, str(tmp))
    print(f"merged {changed} layers of {args.file} (scale {args.scale:g}) into {args.model}; wrote {args.out}")
    return 0


def check_output(out: Path, folder: bool, marker: str) -> None:
    """Refuse, before reading weights, an output that would replace something else."""
    if folder:
        if out.is_file():
            raise LoraFileError(f"{out}: exists and is a file; give a folder name for the output")
        if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
            raise LoraFileError(f"{out}: a folder holding other files; give a new or empty folder (it would be replaced)")
    elif out.is_dir():
        raise LoraFileError(f"{out}: is a folder; give a .safetensors file name")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LoraFileError(f"{out}: cannot write there ({parent} is not writable); choose a writable folder")


def check_merge_paths(model: Path, out: Path) -> None:
    """--out must be a folder of its own: not the model, not inside it, not holding it."""
    m, o = model.resolve(), out.resolve()
    if model.exists() and (o == m or m in o.parents):
        raise LoraFileError(f"--out {out} is {'the' if o == m else 'inside the'} --model folder {model}; "
                            "merging writes a new pipeline folder, give one outside the model")
    if model.exists() and o in m.parents:
        raise LoraFileError(f"--out {out} holds the --model {model}; replacing it would delete the model")
    check_output(out, folder=True, marker="model_index.json")


def _check_same_naming(state: LoraState, model_family: str, args) -> None:
    naming = {"sdxl": "sdxl"}
    if naming.get(state.family, "sd15") != naming.get(model_family, "sd15"):
        raise LoraFileError(f"{args.file}: a {state.family} LoRA cannot be merged into the {model_family} model {args.model}")


def _quiet_loaders() -> None:
    """No weight-loading progress bars: stderr is for the one-line error, if any."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # e.g. "requires torchvision" notices


def save_pipeline(model, out: str) -> None:
    """Save a DiffusionModel as a diffusers pipeline directory (save_pretrained)."""
    import diffusers

    scheduler = _scheduler_for(model)
    if model.family.name == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler)
    else:
        pipe = diffusers.StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)


def _scheduler_for(model):
    """The source's own scheduler config when it has one, else the family's shipped one."""
    import diffusers

    config = None
    source = Path(model.source) if model.source else None
    if source is not None and (source / "scheduler" / "scheduler_config.json").is_file():
        config = diffusers.DDIMScheduler.load_config(str(source), subfolder="scheduler")
    elif model.family.name in ("sd15", "sdxl"):
        from ..configs import load_component_config

        config = load_component_config(model.family.name, "scheduler")
    if config is None:
        return diffusers.DDIMScheduler()
    cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return cls.from_config(config)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.lora", description="Inspect, convert and merge LoRA files.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--family", choices=FAMILY_CHOICES, default="auto",
                        help="base model family of the LoRA (default: detect from metadata, names and shapes)")
        sp.add_argument("--no-shape-check", action="store_true",
                        help="do not check layer shapes against the real SD-1.5/SDXL models (custom or tiny models)")

    sp = sub.add_parser("inspect", help="layout, family, ranks, alphas, layers and metadata of a LoRA")
    sp.add_argument("file")
    sp.add_argument("--modules", action="store_true", help="also list every module")
    common(sp)
    sp.set_defaults(run=cmd_inspect)

    sp = sub.add_parser("convert", help="convert a LoRA to kohya/WebUI, diffusers or PEFT layout")
    sp.add_argument("file")
    sp.add_argument("out", help="output .safetensors file (a folder for --to peft)")
    sp.add_argument("--to", choices=["kohya", "diffusers", "peft"], default="kohya")
    sp.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="weight dtype to write (default fp16 for kohya, the input's dtype otherwise)")
    sp.add_argument("--name", default=None, help="ss_output_name / modelspec.title (default: output file name)")
    sp.add_argument("--base-model", default=None, help="ss_sd_model_name (default: the input's, else the family's base)")
    sp.add_argument("--comment", default=None, help="ss_training_comment (default: the input's)")
    common(sp)
    sp.set_defaults(run=cmd_convert)

    sp = sub.add_parser("merge", help="fold a LoRA into a model and save it as a diffusers pipeline folder")
    sp.add_argument("file")
    sp.add_argument("--model", required=True, help="diffusers folder, .safetensors checkpoint or hub id")
    sp.add_argument("--out", required=True, help="output folder (diffusers layout)")
    sp.add_argument("--scale", type=float, default=1.0, help="LoRA strength (default 1.0)")
    sp.add_argument("--model-family", choices=FAMILY_CHOICES, default="auto")
    common(sp)
    sp.set_defaults(run=cmd_merge)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LoraFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # the model loader's errors (ModelLoadError is a ValueError) and bad arguments
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
