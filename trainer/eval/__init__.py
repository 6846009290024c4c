"""`python -m trainer.eval`: did the LoRA make the model better, by the numbers people trust?

Generates the base model's and each LoRA's images for the same prompts and seeds (cached on
disk), scores them with PickScore, HPSv2, ImageReward, the LAION aesthetic predictor, CLIPScore
and SPMs (trainer.scorers), and writes report.md / report.json / gallery.html.

Modules: `config` (typed settings, presets), `prompts` (prompt-set readers), `generate` (image
cache), `scoring` (score cache), `stats`, `report`, `run` (the whole evaluation), `__main__` (CLI).
"""
from .config import EvalConfig, build_config
from .prompts import PromptSet, read_prompts
from .run import evaluate

__all__ = ["EvalConfig", "PromptSet", "build_config", "evaluate", "read_prompts"]
