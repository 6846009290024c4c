"""The README's numbers are the numbers in their committed JSON files.

A block of README.md that reports results is fenced by two comments naming its files:

    <!-- numbers: bench/results/claims.json docs/default-run/report.json#metrics -->
    | ... table, list or paragraph ... |
    <!-- end numbers -->

(`#a.b` narrows a file to one subtree; `FILE@COMMIT` reads the file as committed then, for
results of earlier models that a rerun has replaced.) Every number in the block with a decimal point or a
thousands separator must be one of the files' values at the precision printed (a number
followed by % may also be a fraction × 100). Every README table with such numbers must sit in
a fenced block; a table of settings rather than results is fenced as `<!-- numbers: settings -->`.
So a rerun that changes a JSON file fails here until the README says the same,
and a new table needs only its fence: the check itself has no list of numbers.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
OPEN = re.compile(r"<!--\s*numbers:\s*(.+?)\s*-->")
CLOSE = re.compile(r"<!--\s*end numbers\s*-->")
# 0.73, −0.015, +0.338, 17,152, 1.2 (not 5e-4 style, not plain small integers such as "16 captions")
NUMBER = re.compile(r"(?<![\w.])[+−-]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![\w.]*\d)(\s*%)?")
INTEGER = re.compile(r"(?<![\w.,/×-])[+−]?\d+(?![\w.,]*\d|[A-Za-z]|\s*[×x%]|\.\d)")  # a count standing alone: 20, 35 (not 2×2, 5e-4)
SKIP = re.compile(r"`[^`]*`|\(\s*[^()]*\.(?:json|py|md|png)[^()]*\)|commit [0-9a-f]{7,}")  # code, file links, commits


def _values(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _values(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _values(v)]
    return []


def _source(spec: str) -> list[float]:
    """The numbers of `path[@commit][#a.b]`: a committed file, today's or as of an earlier commit."""
    spec, _, subtree = spec.partition("#")
    path, _, commit = spec.partition("@")
    if commit:
        done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0 and not (REPO / ".git").exists():
            pytest.skip("no git history to read an earlier commit's results from")
        assert done.returncode == 0, f"README names {path} at commit {commit}, which git cannot show"
        data = json.loads(done.stdout)
    else:
        file = REPO / path
        assert file.is_file(), f"README names {path}, which is not in the repository"
        data = json.loads(file.read_text())
    for key in filter(None, subtree.split(".")):
        data = data[key]
    return _values(data)


def numbers_in(text: str) -> list[tuple[str, float, int, bool]]:
    """(as printed, value, decimals, percent) of every checked number in `text`.

    In a table's data rows, plain integers count too (counts such as UNet calls), except in the
    first column, which names the row.
    """
    out = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 3 and n > 0 and lines[n - 1].startswith("|") and not set(line) <= set("|-: "):
            for m in INTEGER.finditer(SKIP.sub(" ", "|".join(cells[2:]))):
                out.append((m.group(0), float(m.group(0).replace("−", "-").lstrip("+")), 0, False))
    for m in NUMBER.finditer(SKIP.sub(" ", text)):
        raw = m.group(0).split("%")[0].strip()
        plain = raw.replace("−", "-").replace(",", "").lstrip("+")
        decimals = len(plain.split(".")[1]) if "." in plain else 0
        out.append((raw, float(plain), decimals, m.group(1) is not None))
    return out


def matches(value: float, decimals: int, percent: bool, pool: list[float]) -> bool:
    half = 0.5 * 10 ** -decimals + 1e-9
    candidates = pool + ([v * 100 for v in pool] if percent else [])
    # a printed magnitude may drop the sign (an interval's end written as "−0.000")
    return any(abs(value - v) <= half or abs(abs(value) - abs(v)) <= half and value == 0 for v in candidates)


def blocks(text: str) -> list[tuple[int, list[str], str]]:
    """(line number, sources, block text) of every fenced block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = OPEN.search(lines[i])
        if m:
            j = next((k for k in range(i + 1, len(lines)) if CLOSE.search(lines[k])), None)
            assert j is not None, f"README.md:{i + 1}: `<!-- numbers: ... -->` without `<!-- end numbers -->`"
            out.append((i + 1, m.group(1).split(), "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


def unfenced_tables(text: str) -> list[int]:
    """First line (1-based) of every table with checked numbers outside a fenced block."""
    fenced, inside, in_code, tables = set(), False, False, []
    for n, line in enumerate(text.splitlines()):
        if OPEN.search(line) or CLOSE.search(line):
            inside = bool(OPEN.search(line))
            continue
        in_code ^= line.startswith("```")
        if inside:
            fenced.add(n)
        if line.startswith("|") and not in_code:
            if tables and tables[-1][-1][0] == n - 1:
                tables[-1].append((n, line))
            else:
                tables.append([(n, line)])
    return [t[0][0] + 1 for t in tables if t[0][0] not in fenced and any(numbers_in(line) for _, line in t)]


def test_every_fenced_readme_number_is_in_its_json():
    text = README.read_text()
    found = blocks(text)
    assert found, "README.md has no fenced number blocks"
    wrong = []
    for line, sources, body in found:
        if sources == ["settings"]:
            continue  # hyper-parameters the code defines, not measured results
        pool = [v for spec in sources for v in _source(spec)]
        for raw, value, decimals, percent in numbers_in(body):
            if not matches(value, decimals, percent, pool):
                wrong.append(f"README.md block at line {line} ({' '.join(sources)}): {raw}{'%' if percent else ''}")
    assert not wrong, "numbers that are not in their JSON files:\n" + "\n".join(wrong)


def test_every_readme_table_of_results_is_fenced():
    lines = unfenced_tables(README.read_text())
    assert not lines, (f"README.md lines {lines}: a table of results outside `<!-- numbers: FILE.json -->` ... "
                       "`<!-- end numbers -->` (name the committed JSON its numbers come from)")


# ---------------------------------------------------------------- the checker itself


def test_the_checker_reads_printed_precision_signs_and_percent():
    got = numbers_in("aesthetic +0.338 [−0.033, 7.96], 17,152 evals, 86 % and 12.5 % at lr 5e-4, `1.5` (bench/x.json)")
    assert [(r, v, d, p) for r, v, d, p in got] == [
        ("+0.338", 0.338, 3, False), ("−0.033", -0.033, 3, False), ("7.96", 7.96, 2, False),
        ("17,152", 17152.0, 0, False), ("12.5", 12.5, 1, True)]
    assert matches(0.70, 2, False, [0.7049]) and not matches(0.71, 2, False, [0.7049])
    assert matches(12.5, 1, True, [0.125]) and not matches(12.5, 1, False, [0.125])
    assert matches(17152, 0, False, [17152]) and not matches(16000, 0, False, [17152, 20480])
    # table rows: plain counts are checked too, except in the first column and the header
    rows = numbers_in("| variant | calls | s |\n|---|---|---|\n| best-of-4 | 35 | 2×2, 90th, 5e-4 |")
    assert [r for r, *_ in rows] == ["35"]


def test_a_drifted_number_fails(tmp_path, monkeypatch):
    (tmp_path / "r.json").write_text(json.dumps({"a": {"acc": [0.7049, 0.6448]}, "b": 0.71}))
    good = "<!-- numbers: r.json#a -->\n| x | 0.70 / 0.64 |\n<!-- end numbers -->\n"
    bad = good.replace("0.70 / 0.64", "0.71 / 0.65")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    for text, ok in ((good, True), (bad, False)):
        (line, sources, body), = blocks(text)
        pool = [v for s in sources for v in _source(s)]
        assert all(matches(v, d, p, pool) for _, v, d, p in numbers_in(body)) is ok
    assert unfenced_tables("| a | 0.5 |\n| b | 0.6 |\n\n| c |\n") == [1]
    assert unfenced_tables(good) == []
