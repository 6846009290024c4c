"""The SPO accordion's values as one typed object: defaults, checks, infotext round trip.

Pure Python (no A1111 imports), so the same code serves the UI, the API and tests.

The accordion's controls, in this order, are also the API's `alwayson_scripts`
arguments: ``{"spo": {"args": [enabled, mode, spm, k, window_start, window_end,
selection, temperature, judge_every, potential, lam]}}``. Callers may pass fewer; the
rest take the defaults.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

MODES = ("per-step", "best-of-k", "fk")
SELECTIONS = ("best", "softmax")
POTENTIALS = ("difference", "max", "sum")  # trainer.spo.strategies.POTENTIALS (no import: settings stay pure Python)
K_MAX = 16
# The judged steps each guided mode starts with (the UI switches the sliders when the mode
# changes); bench/sampler.py measures exactly these: fk resamples at steps 8 and 12 of 20,
# per-step branches every 4th step from step 4 (4, 8, 12, 16).
MODE_WINDOWS = {"per-step": (0.2, 1.0, 4), "fk": (0.4, 0.7, 4)}

# Infotext keys (PNG info). A1111's parser accepts letters, digits, spaces, "-" and "/".
KEY_MODE = "SPO"
KEY_SPM = "SPO SPM"
KEY_K = "SPO k"
KEY_WINDOW = "SPO window"
KEY_SELECTION = "SPO selection"
KEY_TEMPERATURE = "SPO temperature"
KEY_SCORE = "SPO score"
KEY_EVERY = "SPO judge every"
KEY_POTENTIAL = "SPO potential"
KEY_LAMBDA = "SPO lambda"
KEY_SKIPPED = "SPO skipped"  # why an image was generated without SPO although it was enabled


@dataclass(frozen=True)
class SPOSettings:
    """What the user asked for.

    mode: "per-step" (greedy: k candidates at each judged step, the SPM picks one),
        "fk" (k particles resampled by the SPM at the judged steps, the best kept at the end:
        spo_studio.spo.strategies) or "best-of-k" (k whole images per prompt, the best one is kept).
    spm: file name of the step-aware preference model, relative to the SPM folder.
    k: candidates per step (per-step), particles (fk) or images per prompt (best-of-k), >= 2.
    window_start, window_end, judge_every: the judged steps (per-step, fk): fractions of the
        sampling steps, every `judge_every` steps; defaults per mode in MODE_WINDOWS.
    selection: "best" (argmax) or "softmax" (draw with `temperature`), per-step only.
    potential, lam: fk only: resampling weights ∝ exp(lam · potential).
    """

    enabled: bool = False
    mode: str = "best-of-k"  # bench/sampler.py: no guided mode beat it with the shipped SPM, and it is the cheapest
    spm: str = ""
    k: int = 4
    window_start: float = 0.2
    window_end: float = 1.0
    selection: str = "best"
    temperature: float = 1.0
    judge_every: int = 4
    potential: str = "difference"
    lam: float = 16.0

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
            judge_every=_to_int(values["judge_every"]),
            potential=str(values["potential"]).strip(),
            lam=_to_float(values["lam"]),
        )

    @property
    def window(self) -> tuple[float, float]:
        return (self.window_start, self.window_end)

    def strategy(self):
        """The spo_studio.spo.strategies.StrategyConfig these settings ask for (per-step is "greedy")."""
        from spo_studio.spo.strategies import StrategyConfig

        name = {"per-step": "greedy", "fk": "fk", "best-of-k": "best-of-k"}[self.mode]
        return StrategyConfig(name=name, k=self.k, window=self.window, every=self.judge_every,
                              selection=self.selection, temperature=self.temperature, potential=self.potential,
                              lam=self.lam)

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
        if self.mode in ("per-step", "fk"):
            if not 0.0 <= self.window_start <= self.window_end <= 1.0:
                return (
                    f"SPO: branching window must satisfy 0 <= start <= end <= 1, got "
                    f"{self.window_start}..{self.window_end}; generated without SPO."
                )
            if self.judge_every < 1:
                return f"SPO: judge every must be at least 1 step, got {self.judge_every}; generated without SPO."
        if self.mode == "fk":
            if self.potential not in POTENTIALS:
                return (f"SPO: potential must be one of {', '.join(POTENTIALS)}, got {self.potential!r}; "
                        "generated without SPO.")
            if not (self.lam >= 0 and self.lam < float("inf")):
                return f"SPO: lambda must be a number >= 0, got {self.lam}; generated without SPO."
        if self.mode == "per-step":
            if self.selection not in SELECTIONS:
                return (f"SPO: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}; "
                        "generated without SPO.")
            if self.selection == "softmax" and not self.temperature > 0:
                return f"SPO: softmax temperature must be > 0, got {self.temperature}; generated without SPO."
        return None

    def infotext(self) -> dict[str, str]:
        """The settings as infotext fields (only those that matter for the mode)."""
        fields = {KEY_MODE: self.mode, KEY_SPM: self.spm, KEY_K: str(self.k)}
        if self.mode in ("per-step", "fk"):
            fields[KEY_WINDOW] = f"{_fmt(self.window_start)}-{_fmt(self.window_end)}"
            if self.judge_every != 1:
                fields[KEY_EVERY] = str(self.judge_every)
        if self.mode == "fk":
            fields[KEY_POTENTIAL] = self.potential
            fields[KEY_LAMBDA] = _fmt(self.lam)
        if self.mode == "per-step":
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
            # an image made before judge_every existed judged every step of its window
            judge_every=_to_int(params.get(KEY_EVERY, 1), 1),
            potential=str(params.get(KEY_POTENTIAL, d.potential)),
            lam=_to_float(params.get(KEY_LAMBDA, d.lam), d.lam),
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
