"""ShapesWorld: a tiny text-to-image world with a known ground truth (see docs in world.py).

Public API: captions (`train_captions`, `heldout_captions`, `parse_caption`), the renderer
(`render`, `render_captions`), the ground truth (`alignment`, `aesthetic`, `preference_label`,
scorers `AestheticScore`, `AlignmentScore`, `CombinedScore`), report helpers (`mean_ci95`,
`image_grid`) and the shipped weights (`weights_dir`, `check_weights`, `load_shapes_pipeline_dir`).
"""
from .report import image_grid, mean_ci95
from .render import render, render_captions
from .truth import (
    AestheticScore,
    AlignmentScore,
    CombinedScore,
    aesthetic,
    alignment,
    preference_label,
    preference_utility,
)
from .shipped import REBUILD, ShapesWeightsError, check_weights, load_shapes_pipeline_dir, weights_dir
from .world import Scene, heldout_captions, parse_caption, train_captions
