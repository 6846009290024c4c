"""Prompt sets read from files the user saved (nothing is fetched): see README "Prompt sets".

    read_prompts("PartiPrompts.tsv")          # -> PromptSet(name, prompts, categories)

Formats, by suffix: .txt (one prompt a line), .tsv (PartiPrompts: `Prompt` + `Category` columns),
.csv (DrawBench: `Prompts` + `Category`), .json (HPDv2 benchmark: a list of strings, or of objects
with a `prompt`; a folder of them, e.g. anime.json … photo.json, is read in name order with the file
name as category), .parquet (Pick-a-Pic v1 `validation_unique-*.parquet`, `caption` column; a folder
of them) and a `datasets.save_to_disk` folder (dataset_info.json + *.arrow; a saved DatasetDict gives
its validation_unique split). Captions are stripped
and de-duplicated in first-seen order (the paper's 500 unique Pick-a-Pic prompts).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

SHAPES_SETS = ("shapes-heldout", "shapes-train")
PROMPT_COLUMNS = ("prompt", "prompts", "caption", "text")


@dataclass(frozen=True)
class PromptSet:
    """name: what the report calls it; prompts: unique, non-empty; categories: one per prompt or None."""

    name: str
    prompts: list[str]
    categories: list[str] | None = None

    def head(self, n: int) -> "PromptSet":
        if not n or n >= len(self.prompts):
            return self
        return PromptSet(self.name, self.prompts[:n], None if self.categories is None else self.categories[:n])


def _unique(rows: list[tuple[str, str | None]], source: str) -> tuple[list[str], list[str] | None]:
    seen: dict[str, str | None] = {}
    for text, cat in rows:
        text = " ".join(str(text).split()) if text is not None else ""
        if text and text not in seen:
            seen[text] = cat
    if not seen:
        raise ConfigError(f"--prompts: {source} holds no prompts")
    cats = list(seen.values())
    return list(seen), (None if all(c is None for c in cats) else [c or "" for c in cats])


def _column(header: list[str], wanted: tuple[str, ...], path: Path) -> int | None:
    lower = [h.strip().lower() for h in header]
    for w in wanted:
        if w in lower:
            return lower.index(w)
    return None


def _read_table(path: Path, delimiter: str) -> list[tuple[str, str | None]]:
    """PartiPrompts (.tsv) / DrawBench (.csv): a header row with a prompt column, optional Category."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if not rows:
        raise ConfigError(f"--prompts: {path} is empty")
    p = _column(rows[0], PROMPT_COLUMNS, path)
    if p is None:
        raise ConfigError(f"--prompts: {path} has no Prompt/Prompts/caption column in its header {rows[0][:4]}")
    c = _column(rows[0], ("category",), path)
    return [(r[p], r[c] if c is not None and c < len(r) else None) for r in rows[1:] if p < len(r)]


def _read_json(path: Path, category: str | None = None) -> list[tuple[str, str | None]]:
    """HPDv2 benchmark files (a JSON list of prompt strings), or a list of {"prompt": ...} objects."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--prompts: {path} is not valid JSON ({e})") from None
    if isinstance(data, dict):
        data = data.get("prompts", data.get("data"))
    if not isinstance(data, list):
        raise ConfigError(f"--prompts: {path} should hold a list of prompts (HPDv2 benchmark layout)")
    out = []
    for item in data:
        if isinstance(item, dict):
            item = next((item[k] for k in PROMPT_COLUMNS if isinstance(item.get(k), str)), None)
        if not isinstance(item, str):
            raise ConfigError(f"--prompts: {path}: entries must be strings or objects with a 'prompt' (got {type(item).__name__})")
        out.append((item, category))
    return out


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ConfigError("--prompts: reading parquet/arrow needs pyarrow: pip install 'spo-studio[data]' (or just pyarrow)") from None
    import pyarrow

    return pyarrow


def _caption_column(names: list[str], path: Path) -> str:
    for n in names:
        if n.lower() in PROMPT_COLUMNS:
            return n
    raise ConfigError(f"--prompts: {path} has no caption/prompt column (columns: {', '.join(names[:8])})")


def _read_parquet(files: list[Path]) -> list[tuple[str, str | None]]:
    """Only the caption column is read: Pick-a-Pic's parquet files also hold both images per row."""
    import pyarrow.parquet as pq

    _pyarrow()
    out = []
    for f in files:
        try:
            schema = pq.read_schema(f)
            col = _caption_column(schema.names, f)
            table = pq.read_table(f, columns=[col])
        except ConfigError:
            raise
        except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError types
            raise ConfigError(f"--prompts: {f} is not a readable parquet file ({str(e).splitlines()[0][:160]})") from None
        out += [(c, None) for c in table.column(col).to_pylist()]
    return out


def _read_arrow_dir(path: Path) -> list[tuple[str, str | None]]:
    """A `datasets` save_to_disk folder: its *.arrow shards are Arrow IPC streams (read without datasets)."""
    pa = _pyarrow()
    shards = sorted(path.glob("*.arrow"))
    if not shards:
        raise ConfigError(f"--prompts: {path} has dataset_info.json but no .arrow shards (a DatasetDict? pass its split folder, e.g. {path}/validation_unique)")
    out = []
    for f in shards:
        try:
            with pa.memory_map(str(f)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(src).read_all()
        except Exception as e:
            raise ConfigError(f"--prompts: {f} is not a readable arrow shard ({str(e).splitlines()[0][:160]})") from None
        col = _caption_column(table.column_names, f)
        out += [(c, None) for c in table.column(col).to_pylist()]
    return out


def read_prompts(source: str) -> PromptSet:
    """The prompt set named by --prompts (a file, a folder, or a shapes-* name). One-line ConfigError otherwise."""
    if source in SHAPES_SETS:
        from ..shapes import heldout_captions, train_captions

        prompts = heldout_captions() if source == "shapes-heldout" else train_captions()
        return PromptSet(source, prompts)
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"--prompts: no such file or folder {source} (or use one of {', '.join(SHAPES_SETS)})")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():  # a DatasetDict saved whole: take the paper's split
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            if "validation_unique" not in splits:
                raise ConfigError(f"--prompts: {source} is a saved DatasetDict without validation_unique; pass its split folder (one of {', '.join(splits)})")
            path = path / "validation_unique"
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            rows = _read_arrow_dir(path)
        elif parquet := sorted(path.glob("**/*validation_unique*.parquet")) or sorted(path.glob("*.parquet")):
            rows = _read_parquet(parquet)
        elif files := sorted(path.glob("*.json")):
            rows = [r for f in files for r in _read_json(f, f.stem)]
        else:
            raise ConfigError(f"--prompts: {source} holds no .parquet, .arrow or .json prompt files")
    else:
        suffix = path.suffix.lower()
        if suffix == ".tsv":
            rows = _read_table(path, "\t")
        elif suffix == ".csv":
            rows = _read_table(path, ",")
        elif suffix == ".json":
            rows = _read_json(path)
        elif suffix == ".parquet":
            rows = _read_parquet([path])
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"--prompts: {source} is not UTF-8 text; give .txt, .tsv, .csv, .json or .parquet") from None
            rows = [(line, None) for line in text.splitlines()]
    prompts, categories = _unique(rows, source)
    return PromptSet(path.name, prompts, categories)
