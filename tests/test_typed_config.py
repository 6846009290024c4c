"""trainer.typed_config: the one parser of every CLI's settings (types, presets, YAML, help)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from trainer.typed_config import ConfigError, HelpRequested, build, changed_keys, fields_of, parse, to_dict, usage


@dataclass
class Inner:
    k: int = 4
    """candidates per step"""
    names: list[str] = field(default_factory=lambda: ["a", "b"])


@dataclass
class Root:
    preset: str = "small"
    lr: float = 1e-3
    steps: Optional[int] = None  # none: until the data ends
    betas: tuple[float, float] = (0.9, 0.999)
    buckets: tuple[int, ...] = (0, 500)
    resume: bool = False
    out: str = field(default="out", metadata={"help": "where to write"})
    inner: Inner = field(default_factory=Inner)


PRESETS = {"small": {"inner.k": 2}, "big": {"inner.k": 8, "lr": 1e-4}}


def test_precedence_preset_yaml_flags_and_both_spellings(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\ninner:\n  k: 3\n")
    cfg = parse(["--preset", "big", "--config", str(y), "--inner.k=5", "--steps", "7",
                 "--resume"], Root, PRESETS)
    assert (cfg.preset, cfg.lr, cfg.inner.k, cfg.steps, cfg.resume) == ("big", 0.5, 5, 7, True)
    assert parse([], Root, PRESETS, default_preset="small").inner.k == 2
    assert parse(["--resume", "false", "--betas", "0.8,0.9", "--buckets", "1,2,3"], Root).betas == (0.8, 0.9)
    assert parse(["--buckets", "1,2,3"], Root).buckets == (1, 2, 3)
    assert parse(["--steps", "none"], Root).steps is None
    assert parse(["--inner.names", "x, y"], Root).inner.names == ["x", "y"]


@pytest.mark.parametrize("argv,yaml_text,needle", [
    (["--inner.k", "2.5"], None, "--inner.k: expected an integer, got '2.5'"),
    ([], "inner:\n  k: 2.5\n", "--inner.k: expected an integer, got 2.5"),
    ([], "inner:\n  k: [4, 5]\n", "--inner.k: expected one integer"),
    ([], "lr: null\n", "--lr: expected a number, got null"),
    ([], "lr: .inf\n", "--lr: must be a finite number"),
    ([], "out: 5\n", "--out: expected text"),
    ([], "resume: 1\n", "--resume: expected a true/false"),
    (["--betas", "1,2,3"], None, "--betas: expected 2 comma-separated values, got 3"),
    (["--inner.kk", "3"], None, "did you mean --inner.k?"),
    (["stray"], None, "unexpected argument 'stray'"),
    (["--lr"], None, "--lr needs a value"),
    (["--preset", "huge"], None, "unknown preset 'huge'"),
    (["--preset", "big"], "preset: small\n", "says preset: small but --preset big"),
    ([], "inner: [1\n", "not valid YAML (line"),
])
def test_every_bad_value_is_one_config_error_naming_the_flag(tmp_path, argv, yaml_text, needle):
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        argv = argv + ["--config", str(tmp_path / "c.yaml")]
    with pytest.raises(ConfigError) as e:
        parse(argv, Root, PRESETS)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_negative_numbers_are_values_not_flags():
    assert parse(["--lr", "-1e-3", "--inner.k", "-2"], Root).inner.k == -2


def test_dashed_commands_positionals_and_help():
    @dataclass
    class Convert:
        src: str = field(default="", metadata={"help": "input file"})
        dst: str = ""
        max_steps: int = 3

    cfg = parse(["a.bin", "b", "--max-steps", "9"], Convert, positional=("src", "dst"), dashed=True)
    assert (cfg.src, cfg.dst, cfg.max_steps) == ("a.bin", "b", 9)
    with pytest.raises(ConfigError, match="--max-steps: expected an integer"):
        parse(["a", "b", "--max_steps", "x"], Convert, positional=("src", "dst"), dashed=True)
    with pytest.raises(ConfigError, match="missing DST"):
        parse(["a"], Convert, positional=("src", "dst"), dashed=True)
    with pytest.raises(HelpRequested) as h:
        parse(["--help"], Convert, positional=("src", "dst"), dashed=True, prog="x convert")
    assert "usage: x convert SRC DST" in h.value.text and "--max-steps" in h.value.text and "input file" in h.value.text


def test_help_lists_every_field_with_its_doc_and_the_presets_values():
    text = usage(Root, PRESETS, preset="big")
    for flag in fields_of(Root):
        if flag != "preset":
            assert f"--{flag}" in text
    assert "candidates per step" in text and "where to write" in text and "none: until the data ends" in text
    assert "--inner.k                      8" in text


def test_to_dict_and_changed_keys():
    a, b = build(Root), build(Root, overrides={"inner.k": 9, "lr": 2.0})
    assert to_dict(a)["betas"] == [0.9, 0.999]
    assert changed_keys(to_dict(a), to_dict(b)) == ["lr", "inner.k"]
