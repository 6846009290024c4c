"""What differs between the WebUI versions the extension supports (A1111 1.8 … 1.10, Forge).

- `process_before_every_sampling` (the point where per-step SPO swaps the sampler's
  function) exists from A1111 1.9 on and in Forge. On 1.8, `run_before_sampling` reaches
  the same point from `process`: txt2img creates its sampler inside `p.sample()`, so for
  the length of that call the first sampler `sd_samplers.create_sampler` makes is handed
  to the hook before it samples (the hires-fix pass creates its own, left alone);
  img2img made its sampler in `init()`, so the hook runs as `p.sample()` starts.
- Infotext values: only plain strings work everywhere (1.8/1.9 write callables as their
  repr and fail to serialise them for the API); see `script.postprocess_image`.
"""
from __future__ import annotations

from typing import Callable

from modules import processing, scripts, sd_samplers

HAS_SAMPLING_HOOK = hasattr(scripts.Script, "process_before_every_sampling")

PER_STEP_DID_NOT_RUN = (
    "SPO: per-step sampling did not run in this WebUI (the sampler never called SPO; it needs "
    "WebUI >= 1.9, or 1.8 with its own samplers); generated without SPO."
)


def run_before_sampling(p, hook: Callable[[], None]) -> None:
    """Call `hook()` where WebUI >= 1.9 calls process_before_every_sampling: after the job's
    sampler exists (as `p.sampler`) and before it samples, for every batch of the job.

    For WebUI 1.8 only (it wraps this job's `p.sample`; the module's create_sampler is
    swapped only while that call runs, and generation is one job at a time).
    """
    sample = p.sample

    def sample_with_hook(*args, **kwargs):
        if isinstance(p, processing.StableDiffusionProcessingImg2Img):
            hook()
            return sample(*args, **kwargs)
        create = sd_samplers.create_sampler

        def create_then_hook(name, model):
            sd_samplers.create_sampler = create  # the first sampler only: not the hires-fix pass's
            p.sampler = create(name, model)
            hook()
            return p.sampler  # the hook may have replaced it (DDIM, PLMS, UniPC)

        sd_samplers.create_sampler = create_then_hook
        try:
            return sample(*args, **kwargs)
        finally:
            sd_samplers.create_sampler = create

    p.sample = sample_with_hook
