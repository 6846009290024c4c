"""The SPO accordion's values as one typed object: defaults, checks, infotext round trip.

Pure Python (no A1111 imports), so the same code serves the UI, the API and tests.

The accordion's controls, in this order, are also the API's `alwayson_scripts`
arguments: ``{"spo": {"args": [enabled, mode, spm, k, window_start, window_end,
selection, temperature]}}``. Callers may pass fewer; the rest take the defaults.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

MODES = ("per-step", "best-of-k")
SELECTIONS = ("best", "softmax")
K_MAX = 16

# Infotext keys (PNG info). A1111's parser accepts letters, digits, spaces, "-" and "/".
KEY_MODE = "SPO"
KEY_SPM = "SPO SPM"
KEY_K = "SPO k"
KEY_WINDOW = "SPO window"
KEY_SELECTION = "SPO selection"
KEY_TEMPERATURE = "SPO temperature"
KEY_SCORE = "SPO score"
KEY_SKIPPED = "SPO skipped"  # why an image was generated without SPO although it was enabled


@dataclass(frozen=True)
class SPOSettings:
    """What the user asked for.

    mode: "per-step" (SPO-guided sampling: k candidates at every step of the window, the
        SPM picks one) or "best-of-k" (k whole images per prompt, the best one is kept).
    spm: file name of the step-aware preference model, relative to the SPM folder.
    k: candidates per step (per-step) or images per prompt (best-of-k), >= 2.
    window_start, window_end: fractions of the sampling steps that branch (per-step);
        (0.2, 1.0) on 20 steps is SPO's κ = 750.
    selection: "best" (argmax) or "softmax" (draw with `temperature`), per-step only.
    """

    enabled: bool = False
    mode: str = "per-step"
    spm: str = ""
    k: int = 4
    window_start: float = 0.2
    window_end: float = 1.0
    selection: str = "best"
    temperature: float = 1.0

    @classmethod
    def from_args(cls, *args) -> "SPOSettings":
        """From the script's positional args (UI or API order); missing trailing args take defaults.

        Values are coerced (API callers send JSON numbers and strings); nothing is validated here:
        call `problem()` for that.
        """
        names = list(cls.__dataclass_fields__)
        values = asdict(cls())
        for name, value in zip(names, args):
            if value is not None:
                values[name] = value
        return cls(
            enabled=_to_bool(values["enabled"]),
            mode=str(values["mode"]).strip(),
            spm=str(values["spm"] or "").strip(),
            k=_to_int(values["k"], NOT_A_NUMBER),
            window_start=_to_float(values["window_start"]),
            window_end=_to_float(values["window_end"]),
            selection=str(values["selection"]).strip(),
            temperature=_to_float(values["temperature"]),
        )

    @property
    def window(self) -> tuple[float, float]:
        return (self.window_start, self.window_end)

    def problem(self) -> str | None:
        """One line saying what is wrong and how to fix it, or None when the settings can run."""
        if self.mode not in MODES:
            return f"SPO: mode must be one of {', '.join(MODES)}, got {self.mode!r}; generated without SPO."
        if self.k == NOT_A_NUMBER:
            return f"SPO: k must be a whole number from 2 to {K_MAX}; generated without SPO."
        if self.k < 2:
            return f"SPO: k must be at least 2 (got {self.k}); generated without SPO."
        if self.k > K_MAX:
            return f"SPO: k must be at most {K_MAX} (got {self.k}); generated without SPO."
        if not self.spm:
            return ("SPO: no step-aware preference model selected; put one in models/spo and pick it. "
                    "Generated without SPO.")
        if self.mode == "per-step":
            if not 0.0 <= self.window_start <= self.window_end <= 1.0:
                return (
                    f"SPO: branching window must satisfy 0 <= start <= end <= 1, got "
                    f"{self.window_start}..{self.window_end}; generated without SPO."
                )
            if self.selection not in SELECTIONS:
                return (f"SPO: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}; "
                        "generated without SPO.")
            if self.selection == "softmax" and not self.temperature > 0:
                return f"SPO: softmax temperature must be > 0, got {self.temperature}; generated without SPO."
        return None

    def infotext(self) -> dict[str, str]:
        """The settings as infotext fields (only those that matter for the mode)."""
        fields = {KEY_MODE: self.mode, KEY_SPM: self.spm, KEY_K: str(self.k)}
        if self.mode == "per-step":
            fields[KEY_WINDOW] = f"{_fmt(self.window_start)}-{_fmt(self.window_end)}"
            fields[KEY_SELECTION] = self.selection
            if self.selection == "softmax":
                fields[KEY_TEMPERATURE] = _fmt(self.temperature)
        return fields

    @classmethod
    def from_infotext(cls, params: dict) -> "SPOSettings":
        """Back from parsed infotext (A1111's `parse_generation_parameters` dict of strings).

        No "SPO" key means SPO was off for that image. Unknown or broken values fall back to
        the defaults, so pasting never fails.
        """
        d = cls()
        if KEY_MODE not in params:
            return d
        start, end = parse_window(params.get(KEY_WINDOW), d.window)
        return cls(
            enabled=True,
            mode=str(params.get(KEY_MODE, d.mode)),
            spm=str(params.get(KEY_SPM, d.spm)),
            k=_to_int(params.get(KEY_K, d.k), d.k),
            window_start=start,
            window_end=end,
            selection=str(params.get(KEY_SELECTION, d.selection)),
            temperature=_to_float(params.get(KEY_TEMPERATURE, d.temperature), d.temperature),
        )


def parse_window(text, default: tuple[float, float]) -> tuple[float, float]:
    """"0.2-1" -> (0.2, 1.0); anything unreadable -> default."""
    try:
        a, b = str(text).split("-")
        return float(a), float(b)
    except (ValueError, TypeError):
        return default


def _fmt(x: float) -> str:
    return f"{float(x):g}"


def _to_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


NOT_A_NUMBER = -(2**31)  # what an unreadable k ("inf", "four", null) becomes; problem() names it


def _to_int(v, default: int = -1) -> int:
    try:
        return int(round(float(v)))
    except (TypeError, ValueError, OverflowError):  # "inf" overflows round()
        return default


def _to_float(v, default: float = float("nan")) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default
