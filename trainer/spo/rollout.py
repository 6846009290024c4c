"""One SPO round: sample b trajectories, branch k candidates per step, keep scored pairs (spec §2).

No gradients. UNet cost for j = 0 and a 20-step schedule branching from step index 4:
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


def branch_steps(cfg: SamplingConfig) -> list[int]:
    """Step indices where candidates are drawn: every 1 + j steps inside the window."""
    end = cfg.num_steps if cfg.branch_end < 0 else cfg.branch_end
    return [i for i in range(cfg.branch_start, end, 1 + cfg.inner_steps) if i + cfg.inner_steps < cfg.num_steps]


def _chunks(n: int, size: int):
    size = size or n
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


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

    scorer: any object with score(images [B,3,H,W] in [−1,1], prompts, timesteps [B]) -> [B].
    generator: drives x_T, the candidates' noise and the continuation choice (CPU generator).
    """
    prompts = list(prompts)
    b, k, j = len(prompts), cfg.k, cfg.inner_steps
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

    def score(x0, ts):
        images = torch.cat([model.decode(x0[s]) for s in _chunks(x0.shape[0], cfg.micro_batch)])
        if score_timestep == "zero":
            ts = torch.zeros_like(ts)
        return scorer.score(images, prompts_k, ts.cpu()).float().view(b, k)

    x = randn((b, *model.latent_shape))
    out = None  # guided UNet output at x for timestep index i; reused after a branched step
    kept: list[Transitions] = []
    n_branch = n_kept = 0
    gaps = []
    chosen_score = float("nan")
    branch_at = set(branch_steps(cfg))
    i = 0
    while i < cfg.num_steps:
        t = timesteps[i]
        if out is None:
            out = guided(x, t, cond, uncond)
        if i not in branch_at:
            x = ddim_step(sched, out, t, x, cfg.num_steps, cfg.eta, noise=randn(x.shape)).prev_sample
            out, i = None, i + 1
            continue

        # k candidates share μ, σ of this step's one forward.
        mean, std, _ = ddim_mean_std(sched, out, t, x, cfg.num_steps, cfg.eta)
        noise = randn((b, k, *x.shape[1:]))
        path = [x.repeat_interleave(k, 0), (mean[:, None] + std.view(b, 1, 1, 1, 1) * noise).flatten(0, 1)]
        path_t = [t]
        # MSPO: each candidate runs j plain steps before it is scored.
        for m in range(1, j + 1):
            tm = timesteps[i + m]
            o = guided(path[-1], tm, cond_k, uncond_k)
            path.append(ddim_step(sched, o, tm, path[-1], cfg.num_steps, cfg.eta, noise=randn(path[-1].shape)).prev_sample)
            path_t.append(tm)
        last = i + j  # index of the step whose output the candidates are
        s = sched.prev_timestep(timesteps[last], cfg.num_steps)
        cand = path[-1]
        if s >= 0:
            cand_out = guided(cand, s, cond_k, uncond_k)
            ts = torch.full((b * k,), int(s), device=model.device, dtype=torch.long)
            x0, _ = pred_x0_and_eps(cand_out, cand, sched.alpha(ts), sched.prediction_type)
            scores = score(x0, ts)
        else:  # the final step's candidates are clean images
            cand_out = None
            scores = score(cand, torch.zeros(b * k, dtype=torch.long, device=model.device))

        pairs = select_pairs(scores, cfg.threshold)
        n_branch += b
        n_kept += int(pairs.keep.sum())
        gaps.append(pairs.gap)
        rows = torch.nonzero(pairs.keep).flatten()
        if len(rows):
            w_idx = rows * k + pairs.win[rows].to(rows.device)
            l_idx = rows * k + pairs.lose[rows].to(rows.device)
            for m in range(j + 1):  # label every transition of the two sub-trajectories
                kept.append(
                    Transitions(
                        timesteps=torch.full((len(rows),), int(path_t[m]), dtype=torch.long),
                        start_win=path[m][w_idx].cpu(),
                        start_lose=path[m][l_idx].cpu(),
                        win=path[m + 1][w_idx].cpu(),
                        lose=path[m + 1][l_idx].cpu(),
                        shared=torch.full((len(rows),), m == 0, dtype=torch.bool),
                        prompt_index=rows.cpu(),
                    )
                )

        if cfg.continuation == "random":
            choice = torch.randint(0, k, (b,), generator=generator).to(model.device)
        else:
            choice = (pairs.win if cfg.continuation == "winner" else pairs.lose).to(model.device)
        pick = torch.arange(b, device=model.device) * k + choice
        chosen_score = scores.flatten()[pick.cpu()].mean().item()
        x = cand[pick]
        out = cand_out[pick] if cand_out is not None and cfg.reuse_forward else None
        i = last + 1

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
