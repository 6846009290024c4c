"""report.json / report.md (numbers) and gallery.html (the images side by side with their scores)."""
from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from ..atomic import write_text
from ..scorers import ScorerSpec
from .generate import ImageKey, Variant
from .prompts import PromptSet
from .stats import paired, summarize


def build_report(cfg_dict: dict, prompts: PromptSet, variants: list[Variant], keys: list[ImageKey],
                 specs: list[ScorerSpec], scores: dict[str, dict[str, float]]) -> dict:
    """Per scorer: each model's mean [95%], and per LoRA the paired difference and win rate against the base."""
    idx = torch.tensor([k.prompt_index for k in keys])
    n = len(prompts.prompts)
    table = {
        "prompts": {"source": cfg_dict.get("prompts"), "count": n, "images_per_prompt": cfg_dict["sampling"]["images_per_prompt"]},
        "model": cfg_dict["model"],
        "sampling": cfg_dict["sampling"],
        "variants": [{"label": v.label, "lora": v.lora, "scale": v.scale if v.lora else None, "folder": v.folder} for v in variants],
        "interval": "Student-t 95% over prompts (images of a prompt averaged first)",
        "scorers": {},
    }
    for spec in specs:
        per = {v.label: torch.tensor([scores[spec.label][f"{v.folder}/{k.name}"] for k in keys]) for v in variants}
        base = per[variants[0].label]
        table["scorers"][spec.label] = {
            "kind": spec.kind,
            "path": spec.path,  # as given (a shipped-model name stays a name, not this machine's path)
            "models": {label: summarize(vals, idx, n) for label, vals in per.items()},
            "vs_base": {v.label: paired(per[v.label], base, idx, n) for v in variants[1:]},
        }
        if prompts.categories is not None:  # PartiPrompts / DrawBench categories, HPDv2 styles
            cats = [prompts.categories[k.prompt_index] for k in keys]
            table["scorers"][spec.label]["by_category"] = {
                c: {label: float(vals[[x == c for x in cats]].double().mean()) for label, vals in per.items()}
                for c in dict.fromkeys(cats)
            }
    return table


def _ci(d: dict, signed: bool = False) -> str:
    f = "{:+.4g}" if signed else "{:.4g}"
    return f"{f.format(d['mean'])} [{f.format(d['lo'])}, {f.format(d['hi'])}]"


def to_markdown(table: dict) -> str:
    p = table["prompts"]
    lines = [
        f"# Evaluation: {p['count']} prompts from {p['source']} × {p['images_per_prompt']} image(s), "
        f"DDIM {table['sampling']['num_steps']} steps (η {table['sampling']['eta']:g}), CFG {table['sampling']['guidance_scale']:g}",
        "",
        f"Base model: `{table['model']['source']}`. Intervals: {table['interval']}. "
        "Win rate: share of (prompt, seed) pairs where the LoRA's image scores higher than the base's (ties ½).",
        "",
        "| scorer | model | mean [95%] | Δ vs base [95%] | win rate vs base [95%] |",
        "|---|---|---|---|---|",
    ]
    for label, s in table["scorers"].items():
        for model, summary in s["models"].items():
            vs = s["vs_base"].get(model)
            delta = _ci(vs["diff"], signed=True) if vs else "—"
            win = _ci(vs["win_rate"]) if vs else "—"
            lines.append(f"| {label} | {model} | {_ci(summary)} | {delta} | {win} |")
    for label, s in table["scorers"].items():
        if "by_category" in s:
            models = list(s["models"])
            lines += ["", f"{label} by category (mean):", "", "| category | " + " | ".join(models) + " |",
                      "|---|" + "---|" * len(models)]
            lines += [f"| {c} | " + " | ".join(f"{m[x]:.4g}" for x in models) + " |" for c, m in s["by_category"].items()]
    return "\n".join(lines) + "\n"


def gallery_html(table: dict, prompts: PromptSet, variants: list[Variant], keys: list[ImageKey],
                 scores: dict[str, dict[str, float]]) -> str:
    """A self-contained page (relative links into images/): one row per prompt and seed, one column per model,
    each image captioned with every scorer's score; the summary table on top."""
    labels = list(scores)
    e = html.escape
    head = "".join(f"<th>{e(v.label)}</th>" for v in variants)
    summary_rows = []
    for label, s in table["scorers"].items():
        cells = "".join(f"<td>{s['models'][v.label]['mean']:.4g}</td>" for v in variants)
        summary_rows.append(f"<tr><th>{e(label)}</th>{cells}</tr>")
    rows = []
    for k in keys:
        cells = []
        for v in variants:
            ref = f"images/{v.folder}/{k.name}"
            lines = "".join(f"<li>{e(lb)}: {scores[lb][f'{v.folder}/{k.name}']:.4g}</li>" for lb in labels)
            cells.append(f'<td><img src="{e(ref)}" alt="{e(v.label)}" loading="lazy"><ul>{lines}</ul></td>')
        prompt = e(prompts.prompts[k.prompt_index])
        rows.append(f'<tr><td class="prompt">{k.prompt_index + 1}. {prompt}<br><small>seed {k.seed}</small></td>{"".join(cells)}</tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>spo-studio evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; vertical-align: top; }}
td.prompt {{ max-width: 22em; }}
img {{ width: 192px; height: auto; image-rendering: pixelated; display: block; }}
ul {{ margin: 2px 0 0 0; padding-left: 1.2em; font-size: 12px; }}
</style></head><body>
<h1>spo-studio evaluation</h1>
<p>{table['prompts']['count']} prompts, {table['prompts']['images_per_prompt']} image(s) each; base model {e(str(table['model']['source']))}.</p>
<h2>Mean scores</h2>
<table id="summary"><tr><th>scorer</th>{head}</tr>{''.join(summary_rows)}</table>
<h2>Images</h2>
<table id="gallery"><tr><th>prompt</th>{head}</tr>
{chr(10).join(rows)}
</table></body></html>
"""


def write_outputs(out: Path, table: dict, markdown: str, page: str) -> dict[str, Path]:
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "gallery.html"}
    write_text(paths["json"], json.dumps(table, indent=1))
    write_text(paths["md"], markdown)
    write_text(paths["html"], page)
    return paths
