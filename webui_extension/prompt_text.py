"""WebUI prompt syntax -> the plain text the SPM's CLIP tokenizer should see.

A1111 prompts carry markup the SPM was never trained on: extra networks `<lora:x:1>`,
emphasis `(word:1.2)`, `((word))`, `[word]`, prompt editing `[cat:dog:0.5]` / `[dog:0.5]`,
alternation `[cat|dog]` and `BREAK`. The image ends up showing the final prompt of an
edit, so `[a:b:N]` keeps b and `[a:N]` keeps a; alternation keeps the first choice.
"""
from __future__ import annotations

import re

_EXTRA_NETWORK = re.compile(r"<[^<>]*>")
_EDIT_FROM_TO = re.compile(r"\[([^\[\]:]*):([^\[\]:]*):\s*[\d.]+\s*\]")
_EDIT_ADD = re.compile(r"\[([^\[\]:]*):\s*[\d.]+\s*\]")
_ALTERNATE = re.compile(r"\[([^\[\]|]*)(?:\|[^\[\]|]*)+\]")
_WEIGHT = re.compile(r":\s*-?[\d.]+\s*\)")
_BREAK = re.compile(r"\bBREAK\b")


def plain_prompt(text: str) -> str:
    """Strip WebUI markup; escaped brackets `\\(` stay as literal characters. Pure function."""
    s = str(text).replace("\\(", "\0lp").replace("\\)", "\0rp").replace("\\[", "\0lb").replace("\\]", "\0rb")
    s = _EXTRA_NETWORK.sub(" ", s)
    for _ in range(4):  # nested edits resolve from the inside out
        s = _EDIT_FROM_TO.sub(r"\2", s)
        s = _EDIT_ADD.sub(r"\1", s)
        s = _ALTERNATE.sub(r"\1", s)
    s = _WEIGHT.sub(")", s)
    s = re.sub(r"[()\[\]]", "", s)
    s = _BREAK.sub(",", s)
    s = s.replace("\0lp", "(").replace("\0rp", ")").replace("\0lb", "[").replace("\0rb", "]")
    s = re.sub(r"\s*,(\s*,)+", ",", s)  # empty list items left by removed parts
    s = re.sub(r"\s+,", ",", s)
    return re.sub(r"\s+", " ", s).strip(" ,")
