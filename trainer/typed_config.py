"""Typed command-line configs: one way for every `python -m trainer.…` command to read its settings.

A command's settings are a dataclass (nested dataclasses are sections). Values come, in this order,
from the field defaults, a preset (a flat {"section.field": value} dict), a YAML file (`--config`),
and the command line (`--section.field value`, `--section.field=value`, dashes or underscores).
Every value is checked against the field's type: `epochs: 2.5` for an int or `k: [4, 5]` for a
number is refused, never truncated. Every failure is a ConfigError whose message is one line
naming the flag.

    cfg = parse(sys.argv[1:], MyConfig, PRESETS)       # raises HelpRequested(text) on -h/--help
    print(usage(MyConfig, PRESETS, prog="python -m x"))

`--config` and `--preset` (when presets are given) are reserved flag names; `-h/--help` raises
HelpRequested. A command's own checks (ranges, choices) run after parse() and raise ConfigError too.

Field help is `field(metadata={"help": ...})`, else the docstring written under the field, else the
`# comment` on its line or right above it.
Types understood: bool, int, float (finite), str, list[str|int|float], tuple[T, ...], tuple[T, T],
Optional[T] (YAML null / "none"), and nested dataclasses.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "HelpRequested", "parse", "build", "usage", "fields_of", "to_dict", "flag_name", "changed_keys"]


class ConfigError(ValueError):
    """A bad config key, value or file; str(e) is one line naming the flag and what to do."""


class HelpRequested(Exception):
    """-h/--help was given; `.text` is the usage to print (exit 0)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


# -- reading the dataclass ----------------------------------------------------------------------------
def _docs(cls) -> dict[str, str]:
    """Help of each field: metadata["help"], else the string literal written under the field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docs win
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body
        lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        for node in body:  # a `# comment` on the field's line or on the lines right above it
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = lines[node.lineno - 1]
                above, i = [], node.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    above.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                if trailing or above:
                    docs[node.target.id] = trailing or " ".join(above)
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = f.metadata["help"]
    return docs


def fields_of(cfg_or_cls, prefix: str = "") -> dict[str, tuple[Any, Any, str]]:
    """{"section.field": (value or default, type, help)} for every leaf field, in declaration order."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    inst = None if isinstance(cfg_or_cls, type) else cfg_or_cls
    hints, docs, out = typing.get_type_hints(cls), _docs(cls), {}
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if inst is not None:
            value = getattr(inst, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        if dataclasses.is_dataclass(typ):
            out.update(fields_of(value if value is not None else typ, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (value, typ, docs.get(f.name, ""))
    return out


def flag_name(key: str, dashed: bool = False) -> str:
    """"--sampling.k" (or "--max-steps" for a command whose flags are spelt with dashes)."""
    return "--" + (key.replace("_", "-") if dashed else key)


def to_dict(cfg) -> dict:
    """Nested plain dict (tuples as lists), as written to config.yaml / checkpoints."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose value differs between two to_dict() results (keys missing on one side too)."""
    out = []
    for k in list(old) + [k for k in new if k not in old]:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


# -- values --------------------------------------------------------------------------------------------
def _type_name(typ) -> str:
    if typing.get_origin(typ) in (list, tuple):
        return "comma-separated list"
    return {bool: "true/false", int: "integer", float: "number", str: "text"}.get(typ, str(typ))


def _optional(typ):
    """T for Optional[T] / T | None, else None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0]
    return None


def _scalar(flag: str, raw: Any, typ) -> Any:
    """One value of type bool/int/float/str from a CLI string or a YAML scalar; strict."""
    shown = "null" if raw is None else repr(raw)
    bad = ConfigError(f"{flag}: expected {'an' if typ is int else 'a'} {_type_name(typ)}, got {shown}")
    if isinstance(raw, str):
        text = raw.strip()
        if typ is str:
            return raw
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise bad
        try:
            value = int(text) if typ is int else float(text)
        except ValueError:
            raise bad from None
        if typ is float and not math.isfinite(value):
            raise ConfigError(f"{flag}: must be a finite number, got {raw!r}")
        return value
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        raise bad
    if isinstance(raw, bool) or raw is None:  # YAML `true` is no number, null no value
        raise bad
    if typ is int:
        if isinstance(raw, int):
            return raw
        raise bad  # 2.5 is not truncated to 2, nor 2.0 silently accepted as a count
    if typ is float:
        if isinstance(raw, (int, float)):
            if not math.isfinite(raw):
                raise ConfigError(f"{flag}: must be a finite number, got {raw!r}")
            return float(raw)
        raise bad
    if typ is str:
        raise ConfigError(f"{flag}: expected text, got {shown} (quote it in YAML)")
    raise ConfigError(f"{flag}: unsupported field type {typ}")


def coerce(flag: str, raw: Any, typ) -> Any:
    """`raw` (a CLI string or a YAML value) as a value of `typ`, or ConfigError naming `flag`."""
    inner = _optional(typ)
    if inner is not None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null")):
            return None
        return coerce(flag, raw, inner)
    origin = typing.get_origin(typ)
    if origin in (list, tuple):
        args = typing.get_args(typ)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            elem, length = (args[0] if args else str), None
        else:
            elem, length = args[0], len(args)
        if isinstance(raw, str):
            items = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            raise ConfigError(f"{flag}: expected a list, got {raw!r}")
        values = [_scalar(flag, x, elem) for x in items]
        if length is not None and len(values) != length:
            raise ConfigError(f"{flag}: expected {length} comma-separated values, got {len(values)}")
        return tuple(values) if origin is tuple else values
    if isinstance(raw, (list, tuple, dict)):
        raise ConfigError(f"{flag}: expected one {_type_name(typ)}, got {raw!r}")
    return _scalar(flag, raw, typ)


# -- building a config -----------------------------------------------------------------------------------
def _set(cfg, key: str, raw: Any, table: dict, dashed: bool, origin: str = "") -> Any:
    if key not in table:
        near = difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
        hint = f"; did you mean {flag_name(near[0], dashed)}?" if near else "; see --help for the list"
        raise ConfigError(f"{origin}unknown setting {flag_name(key, dashed)}{hint}")
    obj = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        obj = getattr(obj, p)
    value = coerce(origin + flag_name(key, dashed), raw, table[key][1])
    object.__setattr__(obj, leaf, value)  # frozen dataclasses too: the config is being built
    return value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        k = str(k).replace("-", "_")
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_yaml(path: str) -> dict[str, Any]:
    """The flat {"section.field": value} of a YAML config file; one-line ConfigError if unreadable."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file {path}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a UTF-8 text file (is it a YAML file?)") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror})") from None
    if "\x00" in text:
        raise ConfigError(f"--config {path}: binary file, not YAML")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise ConfigError(f"--config {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got a {type(data).__name__}")
    return _flatten(data)


def _has_field(cls, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def build(root_cls, presets: dict[str, dict] | None = None, *, preset: str | None = None,
          yaml_path: str | None = None, overrides: dict[str, Any] | None = None, dashed: bool = False,
          default_preset: str | None = None):
    """Defaults < preset < YAML file < overrides, every value type-checked.

    preset: a key of `presets` (None: no preset). A `preset:` key inside the YAML file selects the
    preset when none was given; one that contradicts the given preset is an error. Without either,
    `default_preset` applies. If the root dataclass has a `preset` field it records the preset used.
    """
    presets = presets or {}
    file_values = read_yaml(yaml_path) if yaml_path else {}
    if "preset" in file_values and not (presets or _has_field(root_cls, "preset")):
        raise ConfigError(f"--config {yaml_path}: this command has no presets; remove `preset:`")
    if "preset" in file_values:
        in_file = file_values.pop("preset")
        if preset is not None and in_file != preset:
            raise ConfigError(f"--config {yaml_path} says preset: {in_file} but --preset {preset} was given; keep one")
        preset = in_file
    if preset is None:
        preset = default_preset
    if preset is not None and preset not in presets:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(presets)}")
    cfg = root_cls()
    table = fields_of(cfg)
    if preset is not None and "preset" in table:
        object.__setattr__(cfg, "preset", preset)
    for key, value in (presets.get(preset, {}) if preset is not None else {}).items():
        _set(cfg, key, value, table, dashed)
    for key, value in file_values.items():
        _set(cfg, key, value, table, dashed, origin=f"--config {yaml_path}: ")
    for key, value in (overrides or {}).items():
        _set(cfg, key.replace("-", "_"), value, table, dashed)
    return cfg


def parse(argv: list[str], root_cls, presets: dict[str, dict] | None = None, *, default_preset: str | None = None,
          positional: tuple[str, ...] = (), dashed: bool = False, prog: str = "", intro: str = ""):
    """The config a command line asks for (see the module doc). Raises ConfigError or HelpRequested.

    --preset NAME and --config FILE are understood when `presets` are given / always; a bool field
    given with no value (`--resume`) is true; `positional` names the fields that bare arguments fill.
    """
    preset, yaml_path, overrides, want_help, bare = None, None, {}, False, []
    table = fields_of(root_cls)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            want_help = True
            continue
        if not arg.startswith("--") or arg == "--":
            bare.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i] if i < len(argv) else None
            is_bool = key in table and (table[key][1] is bool or _optional(table[key][1]) is bool)
            if is_bool and (nxt is None or nxt.startswith("--") or nxt.lower() not in
                            ("1", "0", "true", "false", "yes", "no", "on", "off")):
                value = "true"
            elif nxt is None or (nxt.startswith("--") and len(nxt) > 2 and not _is_number(nxt)):
                raise ConfigError(f"{flag_name(key, dashed)} needs a value")
            else:
                value, i = nxt, i + 1
        if key == "preset" and (presets or "preset" not in table):
            preset = value
        elif key == "config":
            yaml_path = value
        else:
            overrides[key] = value
    if want_help:
        raise HelpRequested(usage(root_cls, presets, preset=preset if preset in (presets or {}) else default_preset,
                                  prog=prog, intro=intro, positional=positional, dashed=dashed))
    if len(bare) > len(positional):
        extra = bare[len(positional)]
        raise ConfigError(f"unexpected argument {extra!r}; settings look like {flag_name(next(iter(table)), dashed)} VALUE "
                          "(see --help)")
    for name, value in zip(positional, bare):
        overrides[name] = value
    missing = [n for n in positional[len(bare):] if n not in overrides]
    if missing:
        raise ConfigError(f"missing {missing[0].upper()} (see --help)")
    return build(root_cls, presets, preset=preset, yaml_path=yaml_path, overrides=overrides, dashed=dashed,
                 default_preset=default_preset)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def usage(root_cls, presets: dict[str, dict] | None = None, *, preset: str | None = None, prog: str = "",
          intro: str = "", positional: tuple[str, ...] = (), dashed: bool = False) -> str:
    """Help text: the intro, --preset/--config, then every field with its default (preset applied) and help."""
    cfg = build(root_cls, presets, preset=preset, dashed=dashed) if preset is not None else root_cls()
    head = f"usage: {prog} " + "".join(f"{p.upper()} " for p in positional) + "[--setting VALUE ...]" if prog else ""
    lines = [line for line in (head, intro.strip()) if line] + ["", "options:"]
    if presets:
        shown = f"; defaults below are the {preset} preset's" if preset is not None else ""
        lines.append(f"  --preset NAME        {' | '.join(presets)}{shown}")
    lines.append("  --config FILE.yaml   nested mapping of the settings below; the command line overrides it")
    lines += ["", "settings (--name VALUE or --name=VALUE; lists comma-separated; a bare true/false flag means true):"]
    for key, (value, typ, doc) in fields_of(cfg).items():
        if key == "preset" and presets:
            continue
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        name = key.upper() if key in positional else flag_name(key, dashed)
        lines.append(f"  {name:<30} {str(shown):<24} {doc}".rstrip())
    return "\n".join(lines)
