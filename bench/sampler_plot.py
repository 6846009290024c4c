"""The score-vs-compute PNG of bench/sampler.py, drawn with Pillow (no plotting library needed).

    python -m bench.sampler_plot bench/results/sampler.json bench/results/sampler.png

Top row: aesthetic against model evaluations per image (log scale) with the oracle as the judge,
then with the SPM, then the gain of fk over best-of-k (same k, same judge) against the judge's
pairwise accuracy. Bottom row: the same two curves against modelled seconds per image.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"best-of-k": (31, 119, 180), "fk": (214, 39, 40), "greedy": (44, 160, 44), "plain": (0, 0, 0),
           "fk-ablation": (255, 127, 14)}
W, H = 520, 380  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 62, 16, 34, 48


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


class Axes:
    """One panel: data → pixel mapping, frame, ticks, labels."""

    def __init__(self, draw, x0, y0, xlim, ylim, title, xlabel, ylabel, logx=False):
        self.d, self.x0, self.y0, self.logx = draw, x0, y0, logx
        self.xlim, self.ylim = xlim, ylim
        f, small = _font(15), _font(12)
        l, t, r, b = x0 + PAD_L, y0 + PAD_T, x0 + W - PAD_R, y0 + H - PAD_B
        self.box = (l, t, r, b)
        draw.rectangle(self.box, outline=(0, 0, 0))
        draw.text((l, y0 + 8), f"{title}   [y: {ylabel}]", fill=(0, 0, 0), font=f)
        draw.text(((l + r) // 2 - 4 * len(xlabel), b + 26), xlabel, fill=(0, 0, 0), font=small)
        for v in self._ticks(*xlim, log=logx):
            px = self.px(v, ylim[0])[0]
            draw.line((px, b, px, b + 4), fill=(0, 0, 0))
            draw.text((px - 10, b + 6), f"{v:g}", fill=(0, 0, 0), font=small)
        for v in self._ticks(*ylim):
            py = self.px(xlim[0], v)[1]
            draw.line((l - 4, py, l, py), fill=(0, 0, 0))
            draw.line((l, py, r, py), fill=(230, 230, 230))
            draw.text((x0 + 8, py - 7), f"{v:.2f}", fill=(0, 0, 0), font=small)

    @staticmethod
    def _ticks(lo, hi, log=False):
        if log:
            return [2.0**e for e in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1) if lo <= 2.0**e <= hi]
        step = 10 ** math.floor(math.log10((hi - lo) / 4 or 1))
        for m in (1, 2, 5, 10):
            if (hi - lo) / (m * step) <= 6:
                step *= m
                break
        v = math.ceil(lo / step) * step
        out = []
        while v <= hi + 1e-9:
            out.append(round(v, 10))
            v += step
        return out

    def px(self, x, y):
        l, t, r, b = self.box
        fx = (math.log(x) - math.log(self.xlim[0])) / (math.log(self.xlim[1]) - math.log(self.xlim[0])) if self.logx \
            else (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return l + fx * (r - l), b - fy * (b - t)

    def series(self, pts, colour, label=None, line=True, marker=4):
        """pts: [(x, y, ci)]; draws error bars, markers and (optionally) a connecting line."""
        pts = sorted(pts)
        xy = [self.px(x, y) for x, y, _ in pts]
        if line and len(xy) > 1:
            self.d.line(xy, fill=colour, width=2)
        for (x, y, ci), (px, py) in zip(pts, xy):
            _, lo = self.px(x, y - ci)
            _, hi = self.px(x, y + ci)
            self.d.line((px, lo, px, hi), fill=colour, width=1)
            self.d.ellipse((px - marker, py - marker, px + marker, py + marker), fill=colour)
        if label and xy:
            self.d.text((xy[-1][0] + 6, xy[-1][1] - 6), label, fill=colour, font=_font(11))


def _curves(results, judge, xkey):
    """{series: [(x, aesthetic, ci)]} for one judge; plain is shared."""
    out: dict[str, list] = {}
    for r in results:
        if r["judge"] not in (judge, "none"):
            continue
        x = r[xkey]
        point = (x, r["aesthetic_mean"], r["aesthetic_ci95"])
        if r["strategy"] == "plain":
            out.setdefault("plain", []).append(point)
        elif r["strategy"] == "best-of-k":
            out.setdefault("best-of-k", []).append(point)
        elif r["strategy"] == "greedy":
            out.setdefault("greedy", []).append(point)
        elif r["strategy"] == "fk":
            out.setdefault("fk-ablation" if r["settings"].get("ablation") else "fk", []).append(point)
    return out


def plot(payload: dict, out: Path) -> None:
    results = payload["results"]
    img = Image.new("RGB", (3 * W, 2 * H), "white")
    d = ImageDraw.Draw(img)
    ys = [r["aesthetic_mean"] + s * r["aesthetic_ci95"] for r in results if r["judge"] in ("oracle", "spm", "none")
          for s in (-1, 1)]
    ylim = (math.floor(min(ys) * 10) / 10, math.ceil(max(ys) * 10) / 10)
    for row, (xkey, xlabel) in enumerate((("model_evals_per_image", "model evaluations per image (log)"),
                                          ("seconds_per_image_modelled", "modelled seconds per image (log)"))):
        xs = [r[xkey] for r in results if r["judge"] in ("oracle", "spm", "none")]
        xlim = (min(xs) / 1.3, max(xs) * 1.3)
        for col, judge in enumerate(("oracle", "spm")):
            title = ("judge: ground-truth aesthetic (oracle)" if judge == "oracle" else "judge: shipped SPM")
            ax = Axes(d, col * W, row * H, xlim, ylim, title, xlabel, "aesthetic", logx=True)
            for name, pts in _curves(results, judge, xkey).items():
                ax.series(pts, COLOURS[name], name, line=name in ("best-of-k", "fk"))
    # gain vs judge accuracy
    pts, labels = [], []
    for r in results:
        if r["strategy"] == "fk" and r["k"] == 4 and r.get("vs_best_of_k_evals") and not r["settings"].get("ablation"):
            acc = 1.0 if r["judge"] == "oracle" else r.get("judge_pairwise_accuracy")
            if acc is not None:
                c = r["vs_best_of_k_evals"]
                pts.append((acc, c["diff"], c["ci95"]))
                labels.append(r["judge"])
    if pts:
        lo = min(p[1] - p[2] for p in pts)
        hi = max(p[1] + p[2] for p in pts)
        ax = Axes(d, 2 * W, 0, (0.45, 1.02), (min(lo, -0.05), max(hi, 0.05)),
                  "fk k=4 minus best-of-4, same judge", "judge pairwise accuracy vs the oracle", "aesthetic diff")
        zero = ax.px(0.45, 0.0)[1]
        d.line((ax.box[0], zero, ax.box[2], zero), fill=(120, 120, 120))
        for (x, y, ci), lab in zip(pts, labels):
            colour = COLOURS["fk"] if lab == "spm" else (90, 90, 90)
            ax.series([(x, y, ci)], colour, lab.replace("oracle+noise", "noise "), line=False)
    # legend
    lx, ly = 2 * W + PAD_L, H + PAD_T
    for i, (name, colour) in enumerate(COLOURS.items()):
        d.ellipse((lx, ly + 22 * i, lx + 10, ly + 22 * i + 10), fill=colour)
        d.text((lx + 18, ly + 22 * i - 3), name, fill=(0, 0, 0), font=_font(14))
    s = payload.get("settings", {})
    note = f"{s.get('captions')} held-out captions x {s.get('seeds')} seeds; bars: 95% intervals"
    d.text((lx, ly + 22 * len(COLOURS) + 10), note, fill=(0, 0, 0), font=_font(12))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    img.save(tmp)
    tmp.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m bench.sampler_plot RESULTS.json OUT.png", file=sys.stderr)
        sys.exit(2)
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
