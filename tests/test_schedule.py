"""DDIM step with log-prob vs diffusers.DDIMScheduler and torch.distributions."""
import pytest
import torch
from diffusers import DDIMScheduler

from tiny_models import SCHEDULER
from trainer.schedule import NoiseSchedule, ddim_step, gaussian_log_prob, guided


def sd_scheduler(prediction_type="epsilon"):
    cfg = {k: v for k, v in SCHEDULER.items() if k != "_class_name"}
    cfg["prediction_type"] = prediction_type
    s = DDIMScheduler(**cfg)
    s.set_timesteps(20)
    return s


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers_at_every_timestep(prediction_type):
    ref = sd_scheduler(prediction_type)
    ours = NoiseSchedule.from_scheduler_config(ref.config)
    assert ours.timesteps(20).tolist() == ref.timesteps.tolist() == list(range(951, 0, -50))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    for t in ref.timesteps:
        out = torch.randn(x.shape, generator=g)
        z = torch.randn(x.shape, generator=g)
        expected = ref.step(out, t, x, eta=1.0, variance_noise=z)
        step = ddim_step(ours, out, t, x, 20, eta=1.0, noise=z)
        torch.testing.assert_close(step.prev_sample, expected.prev_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(step.pred_x0, expected.pred_original_sample, atol=1e-5, rtol=0)
        # μ is the sample with zero noise; σ from diffusers' own variance rule
        mean_ref = ref.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        torch.testing.assert_close(step.mean, mean_ref, atol=1e-5, rtol=0)
        prev_t = t - 1000 // 20
        std_ref = ref._get_variance(t, prev_t) ** 0.5
        torch.testing.assert_close(step.std, torch.full((3,), float(std_ref)), atol=1e-6, rtol=0)
        x = step.prev_sample


def test_final_step_uses_final_alpha_cumprod():
    s = NoiseSchedule.stable_diffusion()
    assert float(s.alpha(-49)) == pytest.approx(s.final_alpha_cumprod)
    assert s.final_alpha_cumprod == pytest.approx(float(s.alphas_cumprod[0]))


def test_log_prob_is_normal_log_density_averaged_over_chw():
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    std = torch.tensor([0.3, 1.7])
    expected = torch.distributions.Normal(mean, std.view(2, 1, 1, 1)).log_prob(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected)


def test_step_log_prob_of_given_sample_equals_drawn_one():
    s = NoiseSchedule.stable_diffusion()
    g = torch.Generator().manual_seed(2)
    x, out = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    drawn = ddim_step(s, out, 501, x, 20, generator=g)
    again = ddim_step(s, out, 501, x, 20, prev_sample=drawn.prev_sample)
    torch.testing.assert_close(drawn.log_prob, again.log_prob)
    # moving the sample away from the mean lowers its log-probability
    far = ddim_step(s, out, 501, x, 20, prev_sample=drawn.mean + 5 * drawn.std.view(-1, 1, 1, 1))
    assert (far.log_prob < again.log_prob).all()


def test_guidance_formula():
    u, c = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    assert guided(torch.cat([u, c]), 5.0).item() == pytest.approx(1 + 5 * 2)
