"""`python -m trainer.spo`: SPO LoRA post-training. No arguments = the ShapesWorld default run.

    python -m trainer.spo                                   # ShapesWorld, ~4.5 min on 2 CPU cores
    python -m trainer.spo --preset sd15 --prompts prompts.txt --model.source DIR --scorer.source SPM.bin
    accelerate launch -m trainer.spo --preset sdxl ...       # several GPUs
    python -m trainer.spo --config my.yaml --sampling.k 6 --train.lr=1e-4
"""
from __future__ import annotations

import sys

from .config import PRESETS, ConfigError, build_config, flat_fields


def usage(preset: str) -> str:
    cfg = build_config(preset)
    lines = [
        __doc__.strip(),
        "",
        "options:",
        "  --preset NAME       " + " | ".join(PRESETS) + f" (default shapes; defaults below are {preset}'s)",
        "  --config FILE.yaml  nested mapping of the keys below; command-line keys override it",
        "  --resume            continue from the newest checkpoint in --output_dir",
        "",
        "config keys (--key VALUE or --key=VALUE; lists comma-separated):",
    ]
    for key, (value, _, doc) in flat_fields(cfg).items():
        if key == "preset":
            continue
        shown = ",".join(value) if isinstance(value, list) else value
        lines.append(f"  --{key:<28} {shown!s:<42} {doc}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[str, str | None, dict[str, str], bool]:
    """-> (preset, yaml path, {dotted key: raw value}, help requested)."""
    preset, yaml_path, overrides, want_help = "shapes", None, {}, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help = True
            i += 1
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --sampling.k 4 (see --help)")
        key, eq, value = arg[2:].partition("=")
        if key == "resume" and not eq:
            overrides["resume"] = "true"
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "preset":
            preset = value
        elif key == "config":
            yaml_path = value
        else:
            overrides[key.replace("-", "_")] = value
    return preset, yaml_path, overrides, want_help


def main(argv: list[str] | None = None) -> int:
    from ..malloc import keep_freed_memory
    from ..models import ModelLoadError

    keep_freed_memory()
    argv = sys.argv[1:] if argv is None else argv
    try:
        preset, yaml_path, overrides, want_help = parse_args(argv)
        if want_help:
            print(usage(preset if preset in PRESETS else "shapes"))
            return 0
        cfg = build_config(preset, yaml_path, overrides)
        from .train import train

        result = train(cfg)
    except (ConfigError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "kohya" in result:
        print(f"LoRA (kohya/WebUI): {result['kohya']}")
        print(f"LoRA (diffusers):   {result['diffusers']}")
        if cfg.model.source == "shapes":
            from .report import shapes_report

            report = shapes_report(result["model"], result["output_dir"], seeds=cfg.eval_seeds)
            print(report["markdown"])
            print(f"grid: {report['grid']}\ntable: {report['table_md']}, {report['table_json']}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error classes whose message is written for the user (bad files, bad inputs)."""
    import importlib

    found = []
    for module, name in ((".lora", "LoraFileError"), (".spm", "SPMError"), (".shapes", "ShapesWeightsError")):
        try:  # relative to the library's top package: `trainer` in the repository, `spo_studio` installed
            found.append(getattr(importlib.import_module(module, __package__.rpartition(".")[0]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


if __name__ == "__main__":
    sys.exit(main())
