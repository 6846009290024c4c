"""Text files written so that an interrupted write never leaves a half-written one behind."""
from __future__ import annotations

import os
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `<path>.tmp` beside `path`, then os.replace it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
