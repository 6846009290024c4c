"""ShapesWorld's vocabulary, caption grammar and the train / held-out caption split.

A caption names one scene: "a [small|large] <colour> <shape> on a <colour> background, <position>".
The size word is optional (without it the renderer picks a size). Quality is never named.
Held-out captions use (shape, colour, background) triples that no training caption uses, so
evaluating on them measures composition rather than memorisation.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "diamond")
# RGB in [0, 1]; saturated so that washing out is measurable and hue survives it.
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.70, 0.22),
    "blue": (0.12, 0.25, 0.88),
    "yellow": (0.95, 0.83, 0.10),
    "purple": (0.58, 0.16, 0.78),
}
# Shape centre in pixels (x, y) on the 64×64 canvas, y pointing down.
POSITIONS = {
    "top left": (20.0, 20.0),
    "top right": (44.0, 20.0),
    "bottom left": (20.0, 44.0),
    "bottom right": (44.0, 44.0),
    "center": (32.0, 32.0),
}
# Equal-area radius in pixels (a circle's radius; other shapes have the same area).
SIZES = {"small": 7.0, "large": 11.0}
IMAGE_SIZE = 64

# (shape, colour, background) never seen in training; every shape twice, every colour used.
HELDOUT_TRIPLES = (
    ("circle", "red", "blue"),
    ("circle", "yellow", "purple"),
    ("square", "green", "red"),
    ("square", "purple", "yellow"),
    ("triangle", "blue", "green"),
    ("triangle", "red", "yellow"),
    ("diamond", "yellow", "blue"),
    ("diamond", "purple", "green"),
)

_GRAMMAR_WORDS = {"a", "an", "on", "background"}
_PATTERN = re.compile(
    r"^an? (?:(?P<size>small|large) )?(?P<colour>\w+) (?P<shape>\w+) on an? (?P<background>\w+) background, "
    r"(?P<position>.+)$"
)


@dataclass(frozen=True)
class Scene:
    """What a caption says. size None = unspecified (the renderer draws one of SIZES)."""

    shape: str
    colour: str
    background: str
    position: str
    size: str | None = None

    @property
    def caption(self) -> str:
        size = f"{self.size} " if self.size else ""
        return f"a {size}{self.colour} {self.shape} on a {self.background} background, {self.position}"

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.background)


def _known_words() -> set[str]:
    words = set(_GRAMMAR_WORDS) | set(SHAPES) | set(COLOURS) | set(SIZES)
    for p in POSITIONS:
        words.update(p.split())
    return words


def vocabulary_words() -> list[str]:
    """Every word a ShapesWorld caption can contain (for building the tokenizer)."""
    return sorted(_known_words())


def parse_caption(caption: str) -> Scene:
    """Caption -> Scene. Raises ValueError naming the first word outside the world's vocabulary."""
    text = caption.strip().lower().rstrip(".")
    known = _known_words()
    for word in re.findall(r"[^\s,]+", text):
        if word not in known:
            raise ValueError(
                f"unknown word {word!r} in caption {caption!r}: ShapesWorld knows shapes {list(SHAPES)}, "
                f"colours {list(COLOURS)}, positions {list(POSITIONS)}, sizes {list(SIZES)}"
            )
    m = _PATTERN.match(" ".join(text.split()).replace(" ,", ","))
    if m is None or m["shape"] not in SHAPES or m["colour"] not in COLOURS or m["background"] not in COLOURS \
            or m["position"] not in POSITIONS:
        raise ValueError(
            f"caption {caption!r} does not follow ShapesWorld's form "
            f"'a [small|large] <colour> <shape> on a <colour> background, <position>'"
        )
    if m["colour"] == m["background"]:
        raise ValueError(f"caption {caption!r}: the shape's colour and the background must differ")
    return Scene(m["shape"], m["colour"], m["background"], m["position"], m["size"])


def all_scenes() -> list[Scene]:
    """Every scene of the world, in a fixed order (with and without the size word)."""
    scenes = []
    for shape, colour, bg, pos, size in itertools.product(
        SHAPES, COLOURS, COLOURS, POSITIONS, (None, *SIZES)
    ):
        if colour != bg:
            scenes.append(Scene(shape, colour, bg, pos, size))
    return scenes


def train_captions() -> list[str]:
    """All captions whose (shape, colour, background) is not held out (1080 captions)."""
    held = set(HELDOUT_TRIPLES)
    return [s.caption for s in all_scenes() if s.triple not in held]


def heldout_captions() -> list[str]:
    """The fixed evaluation list: 16 captions, two per held-out triple, varied position and size."""
    positions = list(POSITIONS)
    out = []
    for i, (shape, colour, bg) in enumerate(HELDOUT_TRIPLES):
        out.append(Scene(shape, colour, bg, positions[i % 5], "large").caption)
        out.append(Scene(shape, colour, bg, positions[(i + 2) % 5], "small").caption)
    return out
