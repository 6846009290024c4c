"""One SPO round: sample b trajectories, branch k candidates per step, keep scored pairs (spec §2).

The rules the reference fixes each have one function: the groups (`mspo_groups`), branching
(`branch_candidates`), what is scored (`score_input`), labelling (`label_group`) and the
continuation (`continuation_choice`); `spo_round` only sequences them. No gradients. UNet cost for j = 0 and a 20-step schedule branching from step index 4:
4 plain steps + 1 forward at the first branched x_t + 15 scoring forwards (the last step's
candidates are clean and need none) = 20 guided forwards, because the continued
candidate's scoring forward IS the next step's forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..models import DiffusionModel, PromptEmbeds
from ..schedule import ddim_mean_std, ddim_step, pred_x0_and_eps
from .config import SamplingConfig
from .pairs import select_pairs


@dataclass
class Transitions:
    """Kept preference pairs, one row per labelled transition (N rows).

    timesteps: Tensor[N] long, t of the transition t → s.
    start_win, start_lose: Tensor[N, C, h, w], x_t of the winning / losing transition
        (the same tensor values when `shared`, i.e. the branching step itself).
    win, lose: Tensor[N, C, h, w], x_s of the winner / loser.
    shared: Tensor[N] bool, winner and loser start from one x_t (one forward serves both).
    prompt_index: Tensor[N] long, row of `embeds` (and `prompts`) each pair belongs to.
    """

    timesteps: torch.Tensor
    start_win: torch.Tensor
    start_lose: torch.Tensor
    win: torch.Tensor
    lose: torch.Tensor
    shared: torch.Tensor
    prompt_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def index(self, idx) -> "Transitions":
        return Transitions(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def cat(items: Sequence["Transitions"], offsets: Sequence[int]) -> "Transitions":
        """Concatenate, shifting each part's prompt_index by its offset into the joint prompt list."""
        parts = [dict((f, getattr(t, f)) for f in Transitions.__dataclass_fields__) for t in items]
        for p, off in zip(parts, offsets):
            p["prompt_index"] = p["prompt_index"] + off
        return Transitions(**{f: torch.cat([p[f] for p in parts]) for f in Transitions.__dataclass_fields__})


@dataclass
class RoundResult:
    transitions: Transitions
    prompts: list[str]
    embeds: PromptEmbeds
    final_latents: torch.Tensor
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """One MSPO group: k candidates branch at step index `start` and each runs plain steps through
    step index `end` (inclusive) before it is scored; all end − start + 1 transitions are labelled."""

    start: int
    end: int


def mspo_groups(cfg: SamplingConfig) -> list[Group]:
    """The branching groups of one trajectory, as the reference lays them out.

    Groups of 1 + j steps start at branch_start, every 1 + j steps inside the window; a group that
    runs past the final step is cut there. With j > 0 a group never starts at the final step: the
    reference's MSPO loop reaches it with the running group's inner steps done and, instead of
    branching there, ends that group with it (scored on the final sample at t = 0). So a window
    that leaves one step over folds it into the last group; with j = 0 every step is its own group.
    """
    n, j = cfg.num_steps, cfg.inner_steps
    window_end = n if cfg.branch_end < 0 else cfg.branch_end
    groups = [Group(i, min(i + j, n - 1)) for i in range(cfg.branch_start, window_end, 1 + j)]
    if j > 0 and len(groups) > 1 and groups[-1].start == n - 1:
        groups = groups[:-2] + [Group(groups[-2].start, n - 1)]
    return groups


def branch_steps(cfg: SamplingConfig) -> list[int]:
    """Step indices where candidates are drawn (the groups' first steps)."""
    return [g.start for g in mspo_groups(cfg)]


def _chunks(n: int, size: int):
    size = size or n
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


# -- the rules of one group, one function each ------------------------------------------------------
def branch_candidates(schedule, out: torch.Tensor, t, x: torch.Tensor, noise: torch.Tensor, num_steps: int, eta: float) -> torch.Tensor:
    """k candidates x_s per latent from ONE guided forward: they share μ and σ, differ in noise.

    out, x: Tensor[b, C, h, w] (guided output at x, timestep t); noise: Tensor[b, k, C, h, w].
    Returns Tensor[b·k, C, h, w], candidate-major within each latent (row r·k + c).
    """
    mean, std, _ = ddim_mean_std(schedule, out, t, x, num_steps, eta)
    b = x.shape[0]
    return (mean[:, None] + std.view(b, 1, 1, 1, 1) * noise).flatten(0, 1)


def score_input(schedule, candidates: torch.Tensor, cand_out: torch.Tensor | None, s: int):
    """What the scorer sees for a group's candidates: (latents to decode [b·k, C, h, w], timestep).

    A group that ends before the final step is scored on x̂0 predicted by the forward at its
    candidates (timestep s = the next step's); one that ends at the final step on the candidates
    themselves, the clean samples, at t = 0.
    """
    if cand_out is None:
        return candidates, 0
    ts = torch.full((candidates.shape[0],), int(s), device=candidates.device, dtype=torch.long)
    x0, _ = pred_x0_and_eps(cand_out, candidates, schedule.alpha(ts), schedule.prediction_type)
    return x0, int(s)


def label_group(path: list[torch.Tensor], path_t: list[int], keep_rows: torch.Tensor, win: torch.Tensor, lose: torch.Tensor, k: int) -> list[Transitions]:
    """Every transition of a kept pair's two sub-trajectories, winner's vs loser's (spec §2, MSPO).

    path: [x_t repeated k, candidates, …after each inner step], each Tensor[b·k, C, h, w];
    path_t: the timestep of each transition (len(path) − 1); keep_rows: Tensor[n] rows (latents)
    whose pair passed the threshold; win, lose: Tensor[b] candidate index per row.
    Only the branching transition shares its x_t between winner and loser.
    """
    if not len(keep_rows):
        return []
    w_idx = keep_rows * k + win[keep_rows].to(keep_rows.device)
    l_idx = keep_rows * k + lose[keep_rows].to(keep_rows.device)
    return [
        Transitions(
            timesteps=torch.full((len(keep_rows),), int(path_t[m]), dtype=torch.long),
            start_win=path[m][w_idx].cpu(),
            start_lose=path[m][l_idx].cpu(),
            win=path[m + 1][w_idx].cpu(),
            lose=path[m + 1][l_idx].cpu(),
            shared=torch.full((len(keep_rows),), m == 0, dtype=torch.bool),
            prompt_index=keep_rows.cpu(),
        )
        for m in range(len(path_t))
    ]


def continuation_choice(mode: str, win: torch.Tensor, lose: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Which candidate each trajectory continues from, Tensor[b] long: a uniform draw (the
    reference's), or the pair's winner / loser."""
    if mode == "random":
        return torch.randint(0, k, (win.shape[0],), generator=generator)
    return (win if mode == "winner" else lose).long().cpu()


@torch.no_grad()
def spo_round(
    model: DiffusionModel,
    scorer,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    generator: torch.Generator,
    score_timestep: str = "candidate",
) -> RoundResult:
    """Sample len(prompts) trajectories with per-step candidate branching; return the kept pairs.

    scorer: any object with score(images [B,3,H,W] as decoded (unclamped), prompts, timesteps [B]) -> [B].
    generator: drives x_T, the candidates' noise and the continuation choice (CPU generator).
    """
    prompts = list(prompts)
    b, k = len(prompts), cfg.k
    sched = model.schedule
    timesteps = sched.timesteps(cfg.num_steps).to(model.device)
    cond = model.encode_prompts(prompts)
    uncond = model.uncond_embeds(b)
    cond_k, uncond_k = cond.repeat_interleave(k), uncond.repeat_interleave(k)
    prompts_k = [p for p in prompts for _ in range(k)]

    def randn(shape):
        return torch.randn(shape, generator=generator).to(model.device, model.dtype)

    def guided(x, t, c, u):
        """Guided output for a batch, chunked by micro_batch."""
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        return torch.cat([model.guided_output(x[s], t[s], c.index(s), u.index(s), cfg.guidance_scale) for s in _chunks(x.shape[0], cfg.micro_batch)])

    def step(x, t, c, u, out=None):
        out = guided(x, t, c, u) if out is None else out
        return ddim_step(sched, out, t, x, cfg.num_steps, cfg.eta, noise=randn(x.shape)).prev_sample

    def score(latents, ts: int):
        # the decoder's overshoot is kept: the scorer's preprocessing clamps where its recipe does
        images = torch.cat([model.decode(latents[s], clamp=False) for s in _chunks(latents.shape[0], cfg.micro_batch)])
        t = torch.full((b * k,), 0 if score_timestep == "zero" else ts, dtype=torch.long)
        return scorer.score(images, prompts_k, t).float().view(b, k)

    x = randn((b, *model.latent_shape))
    out = None  # guided UNet output at x for timestep index i; reused after a branched step
    kept: list[Transitions] = []
    n_branch = n_kept = 0
    gaps = []
    chosen_score = float("nan")
    groups = {g.start: g for g in mspo_groups(cfg)}
    i = 0
    while i < cfg.num_steps:
        t = timesteps[i]
        group = groups.get(i)
        if group is None:  # a plain step
            x, out, i = step(x, t, cond, uncond, out), None, i + 1
            continue

        if out is None:
            out = guided(x, t, cond, uncond)
        path = [x.repeat_interleave(k, 0), branch_candidates(sched, out, t, x, randn((b, k, *x.shape[1:])), cfg.num_steps, cfg.eta)]
        path_t = [int(t)]
        for m in range(group.start + 1, group.end + 1):  # MSPO: plain steps before the candidates are scored
            path.append(step(path[-1], timesteps[m], cond_k, uncond_k))
            path_t.append(int(timesteps[m]))
        cand = path[-1]
        s = int(sched.prev_timestep(timesteps[group.end], cfg.num_steps))
        cand_out = guided(cand, s, cond_k, uncond_k) if s >= 0 else None
        scores = score(*score_input(sched, cand, cand_out, s))

        pairs = select_pairs(scores, cfg.threshold)
        n_branch += b
        n_kept += int(pairs.keep.sum())
        gaps.append(pairs.gap)
        kept += label_group(path, path_t, torch.nonzero(pairs.keep).flatten().to(model.device), pairs.win, pairs.lose, k)

        choice = continuation_choice(cfg.continuation, pairs.win, pairs.lose, k, generator)
        pick = torch.arange(b) * k + choice
        chosen_score = scores.flatten()[pick].mean().item()
        pick = pick.to(model.device)
        x = cand[pick]
        out = cand_out[pick] if cand_out is not None and cfg.reuse_forward else None
        i = group.end + 1

    transitions = (
        Transitions.cat(kept, [0] * len(kept)) if kept else _empty_transitions(model.latent_shape)
    )
    gap = torch.cat(gaps) if gaps else torch.zeros(0)
    stats = {
        "branched": n_branch,
        "kept": n_kept,
        "tie_rate": 1.0 - n_kept / max(n_branch, 1),
        "mean_gap": float(gap.mean()) if len(gap) else 0.0,
        "final_score": chosen_score,  # scorer's score of the continued candidate at the last branched step
    }
    return RoundResult(transitions, prompts, cond, x, stats)


def _empty_transitions(latent_shape) -> Transitions:
    z = torch.zeros((0, *latent_shape))
    return Transitions(torch.zeros(0, dtype=torch.long), z, z, z, z, torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long))


@torch.no_grad()
def sample_images(
    model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], num_steps: int = 20, guidance_scale: float = 5.0, eta: float = 1.0
) -> torch.Tensor:
    """Plain stochastic DDIM, one seed per prompt (fixed seeds for before/after comparisons).

    Returns images Tensor[B, 3, H, W] in [−1, 1].
    """
    prompts = list(prompts)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def randn():
        return torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens]).to(model.device, model.dtype)

    x = randn()
    cond, uncond = model.encode_prompts(prompts), model.uncond_embeds(len(prompts))
    for t in model.schedule.timesteps(num_steps).to(model.device):
        out = model.guided_output(x, t, cond, uncond, guidance_scale)
        x = ddim_step(model.schedule, out, t, x, num_steps, eta, noise=randn()).prev_sample
    return model.decode(x)
