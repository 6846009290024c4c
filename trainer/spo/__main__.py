"""`python -m trainer.spo`: SPO LoRA post-training. No arguments = the ShapesWorld default run.

    python -m trainer.spo                                   # ShapesWorld, ~4.5 min on 2 CPU cores
    python -m trainer.spo --preset sd15 --prompts prompts.txt --model.source DIR --scorer.source SPM.bin
    accelerate launch -m trainer.spo --preset sdxl ...       # several GPUs
    python -m trainer.spo --config my.yaml --sampling.k 6 --train.lr=1e-4
"""
from __future__ import annotations

import sys

from .. import typed_config
from .config import PRESETS, ConfigError, SPOConfig, validate

GUARANTEES = """\
safety: a folder that already holds a run is refused unless --resume (continue it) or --overwrite
(start over; the old checkpoints, logs and exports are removed first); two runs cannot share a
folder at once; --resume refuses a changed model/LoRA setting and falls back to the newest intact
checkpoint. Every bad input is one line on stderr and exit code 2, before any training starts."""


def usage(preset: str) -> str:
    return typed_config.usage(SPOConfig, PRESETS, preset=preset, prog="python -m trainer.spo",
                              intro=__doc__.strip() + "\n\n" + GUARANTEES)


def parse(argv: list[str]) -> SPOConfig:
    """The validated config of a command line (preset < --config YAML < --section.field flags)."""
    cfg = typed_config.parse(argv, SPOConfig, PRESETS, default_preset="shapes", prog="python -m trainer.spo",
                             intro=__doc__.strip() + "\n\n" + GUARANTEES)
    validate(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from ..malloc import keep_freed_memory
    from ..models import ModelLoadError

    keep_freed_memory()
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse(argv)
        _quiet_loaders()
        from .train import train

        result = train(cfg)
    except typed_config.HelpRequested as h:
        print(h.text)
        return 0
    except (ConfigError, ModelLoadError) + _user_errors() as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        from ..atomic import describe_os_error

        print(f"error: {describe_os_error(e)}", file=sys.stderr)
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


def _quiet_loaders() -> None:
    """No weight-loading progress bars: stderr is for the one-line error, if any."""
    try:
        import diffusers
        import transformers
    except ImportError:
        return
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # e.g. "requires torchvision" notices


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
