"""A tiny byte-level BPE vocabulary for ShapesWorld, loadable with `CLIPTokenizer.from_pretrained`.

CLIP's tokenizer lower-cases, splits words, maps bytes to printable characters and merges
pairs by rank, marking a word's last symbol with "</w>". Our vocabulary holds every byte symbol
(with and without "</w>"), so any text tokenizes, plus merge chains that make each world word
one token, so captions are short and each word has its own embedding.
"""
from __future__ import annotations

import json
from pathlib import Path

from .world import vocabulary_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes, in byte order (printable bytes stand for themselves,
    the others are shifted past 255, the scheme CLIP's tokenizer decodes with)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def apply_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's merge rule: repeatedly join the adjacent pair of lowest rank."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks) + 1), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def bpe_tables(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges): byte symbols, their word-final forms, then merges added until every word
    is one token (a new merge can change another word's segmentation, so repeat to a fixed point)."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for word in words:
            parts = apply_bpe(word, ranks)
            while len(parts) > 1:
                pair = (parts[0], parts[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                if pair[0] + pair[1] not in tokens:
                    tokens.append(pair[0] + pair[1])
                parts = apply_bpe(word, ranks)
                changed = True
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(directory: str | Path, max_length: int = 77) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs that CLIPTokenizer loads."""
    from transformers import CLIPTokenizer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_tables(vocabulary_words() + [","])  # architectures.token_ids() must agree
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=max_length, pad_token=EOS)
    tok.save_pretrained(str(d))
