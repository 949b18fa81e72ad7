"""kto_lab.schedule.FlowMatchingSchedule: rectified flow behind the step's schedule interface."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kto_lab.config import ConfigError
from kto_lab.schedule import FLOW_ERRORS, FlowMatchingSchedule, NoiseSchedule
from kto_lab.step import ObjectiveConfig, objective_step


def test_target_is_the_velocity_of_the_straight_path():
    """x_t = (1 - t) x0 + t eps: clean at t = 0, pure noise at t = 1, and d x_t / d t = eps - x0."""
    sched = FlowMatchingSchedule(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    ends = torch.tensor([0.0, 1000.0, 0.0, 1000.0])
    x_end = sched.add_noise(x0, noise, ends)
    assert torch.equal(x_end[0], x0[0]) and torch.equal(x_end[1], noise[1])
    t, dt = torch.tensor([100.0, 370.0, 500.0, 900.0], dtype=torch.float64), 1e-3
    velocity = (sched.add_noise(x0, noise, t + dt) - sched.add_noise(x0, noise, t)) / (dt / 1000)
    assert torch.allclose(velocity, sched.target(x0, noise, t), atol=1e-6)
    assert torch.equal(sched.target(x0, noise, t), noise - x0)


def test_a_perfect_velocity_predictor_has_zero_error_in_the_step():
    """For data that is one point x*, the exact velocity field is (x_t - x*) / t; through the
    shared step its error is zero, so g = 0 whatever the reference, and DDPM's eps target is not it."""
    sched = FlowMatchingSchedule(num_train_timesteps=1000, shift=3.0)
    x_star = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x0 = x_star.expand(16, 2).clone()

    def perfect(x_t, t, cond):
        return (x_t - x_star) / sched.noise_level(t, x_t)

    for flow_error in FLOW_ERRORS:  # zero in every space the error can be measured in
        out = objective_step(ObjectiveConfig(objective="sft", flow_error=flow_error), sched, perfect, x0,
                             torch.ones(16, dtype=torch.long), generator=torch.Generator().manual_seed(0))
        assert out.err_policy.abs().max() < 1e-20, flow_error
    wrong = objective_step(ObjectiveConfig(objective="sft", flow_error="velocity"), sched,
                           lambda x_t, t, c: perfect(x_t, t, c) + x_star, x0, torch.ones(16, dtype=torch.long),
                           generator=torch.Generator().manual_seed(0))
    assert wrong.err_policy.min() > 0.5  # the eps part alone (v + x0) is not the velocity


@pytest.mark.parametrize("objective", ["kto", "dpo", "sft", "csft", "bce", "nft"])
def test_every_objective_runs_through_the_unchanged_step(objective):
    sched = FlowMatchingSchedule(num_train_timesteps=50, shift=3.0)
    seen = []

    def denoiser(x_t, t, cond):
        seen.append(t)
        return 0.5 * x_t

    x0, labels = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
    out = objective_step(ObjectiveConfig(objective=objective, beta=3.0), sched, denoiser, x0, labels,
                         reference=lambda x, t, c: 0.4 * x, x0_loser=x0 + 1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and "err/policy" in out.metrics
    t = torch.cat(seen)
    assert t.dtype == torch.float32 and ((t > 0) & (t < 50)).all() and len(t.unique()) > 1


def _cdf(sched: FlowMatchingSchedule, levels):
    """The CDF of the noise level t = shift(u), u ~ density, by inverting the shift."""
    s = sched.shift
    u = levels / (s - (s - 1) * levels)
    if sched.density == "uniform":
        return u
    if sched.density == "logit_normal":
        return stats.norm.cdf((np.log(u / (1 - u)) - sched.logit_mean) / sched.logit_std)
    # mode: f is decreasing from 1 to 0, so P(f(U) <= x) = 1 - f^{-1}(x); invert f on a fine grid
    grid = np.linspace(0, 1, 200_001)
    f = 1 - grid - sched.mode_scale * (np.cos(math.pi * grid / 2) ** 2 - 1 + grid)
    return 1 - np.interp(u, f[::-1], grid[::-1])


@pytest.mark.parametrize("kw", [
    dict(density="uniform"),
    dict(density="logit_normal"),
    dict(density="logit_normal", logit_mean=0.5, logit_std=0.7, shift=3.0),
    dict(density="mode", mode_scale=1.29),
    dict(density="uniform", shift=3.0),
])
def test_timestep_sampling_matches_its_distribution(kw):
    """A Kolmogorov-Smirnov test (20,000 draws, fixed seed) accepts the intended distribution
    and rejects a slightly different one, so the check can fail."""
    sched = FlowMatchingSchedule(num_train_timesteps=1000, **kw)
    t = sched.sample_timesteps(20_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1000
    levels = (t.double() / 1000).clamp(1e-12, 1 - 1e-12).numpy()
    assert stats.kstest(levels, lambda x: _cdf(sched, x)).pvalue > 1e-3
    near = FlowMatchingSchedule(**{**kw, "shift": kw.get("shift", 1.0) * 1.1})
    assert stats.kstest(levels, lambda x: _cdf(near, x)).pvalue < 1e-6


def test_logit_mean_above_zero_means_more_noise_as_in_sd3():
    sched = FlowMatchingSchedule(num_train_timesteps=1, logit_mean=1.0)
    assert sched.sample_timesteps(4000, generator=torch.Generator().manual_seed(0)).median() > 0.7


def test_shift_and_forward_process_match_diffusers():
    """Our shifted grid is FlowMatchEulerDiscreteScheduler's sigmas; our x_t is its scale_noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched = FlowMatchingSchedule.from_diffusers(scheduler)
    assert (sched.num_train_timesteps, sched.shift, sched.density) == (1000, 3.0, "logit_normal")
    unshifted = torch.linspace(1.0, 1 / 1000, 1000, dtype=torch.float64)
    assert torch.allclose(sched.shifted(unshifted).float(), scheduler.sigmas, atol=1e-6)
    t = scheduler.timesteps[[0, 10, 400, 999]]  # the model-unit timesteps SD3 training feeds the transformer
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 16, 8, 8, generator=g), torch.randn(4, 16, 8, 8, generator=g)
    assert torch.allclose(sched.add_noise(x0, noise, t), scheduler.scale_noise(x0, t, noise), atol=1e-6)
    assert FlowMatchingSchedule.from_diffusers(scheduler, density="uniform").density == "uniform"


def test_euler_sampling_grid_runs_from_noise_to_clean():
    sched = FlowMatchingSchedule(num_train_timesteps=50, shift=3.0)
    grid = sched.sampling_timesteps(4)
    assert grid[0] == 50 and grid[-1] == 0 and (grid.diff() < 0).all()
    assert grid[2] == pytest.approx(50 * 3 * 0.5 / (1 + 2 * 0.5))
    with pytest.raises(ValueError, match="sampling steps must be an integer >= 1, got 0"):
        sched.sampling_timesteps(0)


def _oneline(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("kw, match", [
    (dict(prediction_type="v_prediction"), "prediction_type='v_prediction' is a DDPM option; .*'flow_prediction'"),
    (dict(prediction_type="epsilon"), "prediction_type='epsilon' is a DDPM option"),
    (dict(density="cosmap"), "density='cosmap' is not allowed; choose one of"),
    (dict(shift=0.0), "shift=0.0 must be > 0"),
    (dict(logit_std=0.0), "logit_std=0.0 must be > 0"),
    (dict(mode_scale=2.0), "mode_scale=2.0 must be <= 1.75"),
    (dict(num_train_timesteps=0), "num_train_timesteps=0 must be an integer >= 1"),
])
def test_bad_flow_options_are_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        FlowMatchingSchedule(**kw)
    _oneline(e)


def test_a_scheduler_of_the_other_family_is_a_one_line_error():
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    with pytest.raises(ConfigError, match="DDPMScheduler is not a flow-matching scheduler") as e:
        FlowMatchingSchedule.from_diffusers(DDPMScheduler())
    _oneline(e)
    with pytest.raises(ConfigError, match="FlowMatchEulerDiscreteScheduler has no DDPM alphas_cumprod") as e:
        NoiseSchedule.from_diffusers(FlowMatchEulerDiscreteScheduler(shift=3.0))
    _oneline(e)
    with pytest.raises(ConfigError, match="use_dynamic_shifting") as e:
        FlowMatchingSchedule.from_diffusers(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    _oneline(e)
    bad = FlowMatchEulerDiscreteScheduler(shift=3.0)
    bad.register_to_config(prediction_type="v_prediction")
    with pytest.raises(ConfigError, match="prediction_type='v_prediction' is a DDPM option"):
        FlowMatchingSchedule.from_diffusers(bad)



# --- objective.flow_error: which error of a flow model is the implicit reward's ---------------------------------


@pytest.mark.parametrize("flow_error", ["velocity", "epsilon", "x0"])
def test_flow_errors_are_the_errors_of_the_estimates_one_velocity_implies(flow_error):
    """FlowMatchingSchedule.error: the velocity error, or the error of the epsilon estimate x_t + (1 - t) v and of
    the x0 estimate x_t - t v computed from the same prediction, against the forward process's eps and x0."""
    sched = FlowMatchingSchedule(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x0, eps, v_hat = (torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([5.0, 200.0, 500.0, 800.0, 995.0], dtype=torch.float64)
    x_t, s = sched.add_noise(x0, eps, t), sched.noise_level(t, x0)
    direct = {"velocity": (v_hat, eps - x0), "epsilon": (x_t + (1 - s) * v_hat, eps), "x0": (x_t - s * v_hat, x0)}
    pred, truth = direct[flow_error]
    expected = (pred - truth).pow(2).flatten(1).mean(1)
    assert torch.allclose(sched.error(v_hat, sched.target(x0, eps, t), t, flow_error).double(), expected, rtol=1e-5)


def test_the_default_flow_error_and_the_velocity_error_are_unchanged_plain_errors():
    from kto_lab.objectives import denoising_error
    from kto_lab.schedule import DEFAULT_FLOW_ERROR, FLOW_ERRORS

    sched, g = FlowMatchingSchedule(), torch.Generator().manual_seed(1)
    p, q, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.tensor([1, 300, 600, 999])
    assert torch.equal(sched.error(p, q, t, "velocity"), denoising_error(p, q))  # bit for bit: old runs unchanged
    assert torch.equal(sched.error(p, q, t), sched.error(p, q, t, DEFAULT_FLOW_ERROR))
    assert DEFAULT_FLOW_ERROR in FLOW_ERRORS


def test_flow_error_bad_values_and_ddpm_schedules_are_one_line_errors():
    p = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match=r"objective.flow_error='score' is not allowed; choose one of") as e:
        FlowMatchingSchedule().error(p, p, torch.ones(2), "score")
    _oneline(e)
    with pytest.raises(ConfigError, match="objective.flow_error='x0' is a flow-matching option, but this is a DDPM") as e:
        NoiseSchedule.linear(50).error(p, p, torch.ones(2, dtype=torch.long), "x0")
    _oneline(e)
    assert NoiseSchedule.linear(50).error(p, p + 1, torch.ones(2, dtype=torch.long)).tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="flow_error='v' is not allowed"):
        ObjectiveConfig(flow_error="v").validate()
    with pytest.raises(ConfigError, match="objective.flow_error='epsilon' is a flow-matching option"):
        objective_step(ObjectiveConfig(objective="sft", flow_error="epsilon"), NoiseSchedule.linear(50),
                       lambda x, t, c: x, torch.zeros(4, 2), torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize("flow_error", ["velocity", "epsilon", "x0"])
def test_every_objective_sees_the_chosen_flow_error(flow_error):
    """The step hands every objective the schedule's error of the chosen kind: the policy's errors equal the
    schedule's on the same draws, for KTO's matched and unrelated batches and DiffusionNFT alike."""
    sched = FlowMatchingSchedule(num_train_timesteps=50)
    x0, labels = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
    policy, reference = (lambda x, t, c: 0.5 * x), (lambda x, t, c: 0.4 * x)
    for objective in ("kto", "nft", "sft"):
        cfg = ObjectiveConfig(objective=objective, beta=1.0, flow_error=flow_error)
        out = objective_step(cfg, sched, policy, x0, labels, reference=reference,
                             generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)  # the step's first draws: t, then the noise
        t = sched.sample_timesteps(8, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t, target = sched.add_noise(x0, noise, t), sched.target(x0, noise, t)
        assert torch.allclose(out.err_policy, sched.error(policy(x_t, t, None), target, t, flow_error)), objective
        if objective != "sft":
            assert torch.allclose(out.err_ref, sched.error(reference(x_t, t, None), target, t, flow_error))


def test_nft_trains_on_flow_schedules_and_refuses_ddpm_in_one_line():
    from kto_lab.step import flow_only_message

    x0, labels = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
    policy = torch.nn.Linear(2, 2)
    out = objective_step(ObjectiveConfig(objective="nft", beta=1.0), FlowMatchingSchedule(num_train_timesteps=50),
                         lambda x, t, c: policy(x), x0, labels, reference=lambda x, t, c: 0.4 * x,
                         generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and policy.weight.grad.abs().sum() > 0
    assert {"nft/positive", "nft/negative", "rewards/margin", "err/reference"} <= set(out.metrics)
    with pytest.raises(ConfigError, match=r"objective='nft' \(DiffusionNFT\) .* flow-matching models only") as e:
        objective_step(ObjectiveConfig(objective="nft", beta=1.0), NoiseSchedule.linear(50), lambda x, t, c: x,
                       x0, labels, reference=lambda x, t, c: x)
    _oneline(e)
    assert str(e.value) == flow_only_message("nft")
