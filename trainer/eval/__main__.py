"""`python -m trainer.eval`: base model vs LoRA(s) on a prompt set, scored by released scorers.

    python -m trainer.eval                        # ShapesWorld: shipped base vs outputs/spo-shapes LoRA, offline
    python -m trainer.eval --preset paper --model.source sd15/ --lora spo_sd15.safetensors \\
        --prompts pickapic_v1/validation_unique/ \\
        --scorers pickscore=PickScore_v1/,hpsv2=HPS_v2_compressed.pt,imagereward=ImageReward.pt,aesthetic=sac+logos+ava1-l14-linearMSE.pth \\
        --assets.clip_tokenizer clip-tok/ --assets.bert_tokenizer bert-base-uncased/ --assets.aesthetic_clip clip-vit-large-patch14/
    python -m trainer.eval --config eval.yaml --sampling.num_steps 50
Rerunning with the same --output_dir resumes: cached images are not regenerated, cached scores not recomputed.
"""
from __future__ import annotations

import sys

from .config import PRESETS, ConfigError, EvalConfig, build_config


def usage(preset: str) -> str:
    from ..typed_config import usage as typed_usage

    text = typed_usage(EvalConfig, PRESETS, preset=preset, prog="python -m trainer.eval", intro=__doc__.strip())
    return text + "\n\n  --lora FILE    repeatable: each LoRA is compared with the base\n  --quiet        no progress bars"


def parse_args(argv: list[str]) -> tuple[str, str | None, dict, bool, bool]:
    """-> (preset, yaml path, {dotted key: raw value}, help requested, quiet)."""
    preset, yaml_path, overrides, want_help, quiet = None, None, {}, False, False
    loras: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help, i = True, i + 1
            continue
        if arg == "--quiet":
            quiet, i = True, i + 1
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --prompts FILE (see --help)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        key = key.replace("-", "_")
        if key == "preset":
            preset = value
        elif key == "config":
            yaml_path = value
        elif key == "lora":
            loras += [v.strip() for v in value.split(",") if v.strip()]
        else:
            overrides[key] = value
    if loras:
        overrides["lora"] = loras
    return preset, yaml_path, overrides, want_help, quiet


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error classes whose message is one line written for the user."""
    from ..lora import LoraFileError
    from ..models import ModelLoadError
    from ..scorers import ScorerError
    from ..shapes import ShapesWeightsError
    from ..spm import SPMError

    return ConfigError, ModelLoadError, LoraFileError, ScorerError, SPMError, ShapesWeightsError


def _quiet_loaders() -> None:
    """No weight-loading bars from transformers/diffusers: the progress bars are ours, stderr's last line the error."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    errors = _user_errors()
    try:
        preset, yaml_path, overrides, want_help, quiet = parse_args(argv)
        if want_help:
            print(usage(preset if preset in PRESETS else "shapes"))
            return 0
        cfg = build_config(preset, yaml_path, overrides)
        _quiet_loaders()
        from .run import evaluate

        result = evaluate(cfg, progress=not quiet)
    except errors as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(result["markdown"])
    p = result["paths"]
    print(f"report: {p['md']}, {p['json']}\ngallery: {p['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
