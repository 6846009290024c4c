"""spo-studio core: Step-aware Preference Optimization for diffusion models.

Library modules hold pure math (`schedule`, `spo.pairs`) apart from I/O
(`models`, `lora`, CLIs); host programs (ComfyUI, A1111) import this package and
never the other way round.
"""

__version__ = "0.1.0"
