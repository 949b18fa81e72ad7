"""kto_lab.step.objective_step: the one step shared by the toy and SD, on tiny denoisers."""

import copy

import pytest
import torch

from kto_lab import objectives as O
from kto_lab.config import ConfigError
from kto_lab.schedule import NoiseSchedule
from kto_lab.step import ObjectiveConfig, objective_step
from toy.model import ToyDenoiser

SCHEDULE = NoiseSchedule.linear(50, beta_end=0.2)


class Recorder:
    """A denoiser that predicts ``scale * x_t`` and records what it was called with."""

    def __init__(self, scale=0.5):
        self.scale = scale
        self.calls = []

    def __call__(self, x_t, t, cond):
        self.calls.append((x_t.clone(), t.clone(), None if cond is None else cond.clone()))
        return self.scale * x_t


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), (torch.arange(n) % 2 == 0).long()


@pytest.mark.parametrize("objective", ["kto", "dpo", "sft", "csft", "bce"])
def test_every_objective_runs_and_reports(objective):
    x0, labels = _batch()
    policy = ToyDenoiser(hidden=16, emb_size=8)
    reference = copy.deepcopy(policy).requires_grad_(False)
    out = objective_step(ObjectiveConfig(objective=objective, beta=3.0), SCHEDULE, policy, x0, labels,
                         reference=reference, x0_loser=x0 + 1, generator=torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    assert "loss" in out.metrics and "err/policy" in out.metrics
    # metrics stay on the device as detached 0-dim tensors (no host sync inside a step)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in out.metrics.values())
    assert out.err_policy.shape[0] == (16 if objective == "dpo" else 8)


@pytest.mark.parametrize("n,seed,hidden", [(8, 0, 16), (2, 3, 64)])
def test_policy_equal_to_reference_gives_zero_rewards_and_half_kto_loss(n, seed, hidden):
    """The reference runs on 2B rows (matched + unrelated) and the policy on B, so their errors agree to
    rounding, not bit for bit, and the rewards are beta times their difference: in float32 the batch-size-dependent
    matmul kernels of this CPU gave rewards/desirable 1.19e-6 for (2, 3, 64) at beta 10. The step therefore runs in
    float64 here, where that rounding is ~1e-15, so the neighbours' 1e-6 tolerance holds on any CPU."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x0, labels = _batch(n, seed)
        torch.manual_seed(seed)
        policy = ToyDenoiser(hidden=hidden, emb_size=16 if hidden == 64 else 8)
        out = objective_step(ObjectiveConfig(beta=10.0), SCHEDULE, policy, x0, labels,
                             reference=copy.deepcopy(policy), generator=torch.Generator().manual_seed(seed))
    finally:
        torch.set_default_dtype(previous)
    assert out.loss.dtype == torch.float64  # the denoiser ran in float64 (the per-sample errors are kept in float32)
    m = O.metrics_to_floats(out.metrics)
    assert m["z_ref"] == pytest.approx(0.0, abs=1e-6)
    assert m["rewards/desirable"] == pytest.approx(0.0, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6)  # 1 - sigmoid(0)


def test_same_generator_seed_same_loss():
    x0, labels = _batch()
    policy = ToyDenoiser(hidden=16, emb_size=8)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = ObjectiveConfig(beta=10.0)
    a = objective_step(cfg, SCHEDULE, policy, x0, labels, reference=ref, generator=torch.Generator().manual_seed(3))
    b = objective_step(cfg, SCHEDULE, policy, x0, labels, reference=ref, generator=torch.Generator().manual_seed(3))
    c = objective_step(cfg, SCHEDULE, policy, x0, labels, reference=ref, generator=torch.Generator().manual_seed(4))
    assert a.loss.item() == b.loss.item() and O.metrics_to_floats(a.metrics) == O.metrics_to_floats(b.metrics)
    assert a.loss.item() != c.loss.item()


def test_unrelated_reference_point_batches_reference_and_rolls_cond():
    x0, labels = _batch(4)
    cond = torch.tensor([10, 11, 12, 13])
    policy, reference = Recorder(0.5), Recorder(0.4)
    objective_step(ObjectiveConfig(beta=1.0), SCHEDULE, policy, x0, labels, cond, reference=reference,
                   generator=torch.Generator().manual_seed(0))
    assert len(reference.calls) == 1, "main and unrelated reference passes must be one forward"
    x_ref, t_ref, c_ref = reference.calls[0]
    assert x_ref.shape[0] == 8
    assert c_ref[:4].tolist() == [10, 11, 12, 13] and c_ref[4:].tolist() == [13, 10, 11, 12]
    assert len(policy.calls) == 2  # matched (with grad) and unrelated (no grad)
    assert policy.calls[1][2].tolist() == [13, 10, 11, 12]
    assert not torch.equal(policy.calls[0][0], policy.calls[1][0]), "the unrelated batch draws its own noise"


def test_one_sample_batch_needs_other_captions_for_the_unrelated_pairs():
    """Rolling a batch of one pairs the sample with its own caption (the matched-batch estimate, silently):
    the step refuses, and uses the caller's other captions (cond_unrelated) when given; structured too."""
    x0, labels = _batch(1)
    policy, reference = Recorder(0.5), Recorder(0.4)
    with pytest.raises(ValueError, match="one sample: rolling would pair it with its own caption"):
        objective_step(ObjectiveConfig(beta=1.0), SCHEDULE, policy, x0, labels, torch.tensor([7]), reference=reference)
    policy, reference = Recorder(0.5), Recorder(0.4)
    objective_step(ObjectiveConfig(beta=1.0), SCHEDULE, policy, x0, labels, torch.tensor([7]), reference=reference,
                   cond_unrelated=torch.tensor([3]), generator=torch.Generator().manual_seed(0))
    assert reference.calls[0][2].tolist() == [7, 3] and policy.calls[1][2].tolist() == [3]
    cond = {"text": torch.zeros(1, 3, 2), "added": {"text_embeds": torch.zeros(1, 1), "time_ids": torch.zeros(1, 6)}}
    with pytest.raises(ValueError, match="one sample"):
        objective_step(ObjectiveConfig(beta=1.0), SCHEDULE, StructuredRecorder(), x0, labels, cond,
                       reference=StructuredRecorder())


@pytest.mark.parametrize("fraction, pairs", [(1.0, 4), (0.5, 2), (0.25, 1), (0.01, 1)])
def test_reference_point_fraction_uses_the_first_unrelated_pairs(fraction, pairs):
    x0, labels = _batch(4)
    cond = torch.tensor([10, 11, 12, 13])
    policy, reference = Recorder(0.5), Recorder(0.4)
    out = objective_step(ObjectiveConfig(beta=1.0, reference_point_fraction=fraction), SCHEDULE, policy, x0, labels,
                         cond, reference=reference, generator=torch.Generator().manual_seed(0))
    x_ref, _, c_ref = reference.calls[0]
    assert len(reference.calls) == 1 and x_ref.shape[0] == 4 + pairs  # still one batched reference forward
    assert c_ref[4:].tolist() == [13, 10, 11, 12][:pairs]  # captions rolled over the whole batch, then cut
    x_u, t_u, c_u = policy.calls[1]
    assert x_u.shape[0] == t_u.shape[0] == pairs and c_u.tolist() == [13, 10, 11, 12][:pairs]
    assert out.err_policy.shape[0] == out.err_ref.shape[0] == 4  # the loss still sees the whole batch


class StructuredRecorder:
    """A denoiser that takes an SDXL-like structured cond and records it."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, cond):
        self.calls.append({k: v.clone() for k, v in cond["added"].items()} | {"text": cond["text"].clone()})
        return 0.5 * x_t


def test_structured_cond_rolls_and_concatenates_every_part_together():
    """Unrelated pairs roll text states, pooled embedding and time ids as one (SDXL conditioning)."""
    x0, labels = _batch(4)
    ids = torch.arange(4).float()
    cond = {"text": ids.view(4, 1, 1).expand(4, 3, 2).clone(),
            "added": {"text_embeds": 10 + ids.view(4, 1), "time_ids": 100 + ids.view(4, 1).expand(4, 6).clone()}}
    policy, reference = StructuredRecorder(), StructuredRecorder()
    objective_step(ObjectiveConfig(beta=1.0), SCHEDULE, policy, x0, labels, cond, reference=reference,
                   generator=torch.Generator().manual_seed(0))
    ref = reference.calls[0]
    rolled = [3, 0, 1, 2]
    assert ref["text"][:, 0, 0].tolist() == [0, 1, 2, 3] + rolled
    assert ref["text_embeds"][:, 0].tolist() == [10, 11, 12, 13] + [10 + i for i in rolled]
    assert ref["time_ids"][:, 0].tolist() == [100, 101, 102, 103] + [100 + i for i in rolled]
    unrelated = policy.calls[1]
    assert unrelated["text"][:, 0, 0].tolist() == rolled
    assert unrelated["time_ids"][:, 5].tolist() == [100 + i for i in rolled]


def test_cond_helpers_on_tuples_none_and_bad_types():
    from kto_lab.step import cat_cond, roll_cond

    a, b = torch.arange(3), torch.arange(3, 6)
    rolled = roll_cond((a, {"p": b}))
    assert rolled[0].tolist() == [2, 0, 1] and rolled[1]["p"].tolist() == [5, 3, 4]
    assert cat_cond((a, b), (b, a))[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert roll_cond(None) is None and cat_cond(None, None) is None
    with pytest.raises(TypeError, match="cond must be"):
        roll_cond("a caption")


def test_unconditional_unrelated_batch_uses_fresh_noise_on_the_same_points():
    """The toy's case: cond=None, so rolling is a no-op; z_ref comes from new noise/timesteps."""
    x0, labels = _batch(4)
    policy, reference = Recorder(0.5), Recorder(0.4)
    objective_step(ObjectiveConfig(beta=1.0), SCHEDULE, policy, x0, labels, reference=reference,
                   generator=torch.Generator().manual_seed(0))
    assert reference.calls[0][2] is None and policy.calls[1][2] is None
    assert reference.calls[0][0].shape[0] == 8


@pytest.mark.parametrize("point", ["batch", "none"])
def test_cheaper_reference_points(point):
    x0, labels = _batch(4)
    policy, reference = Recorder(0.5), Recorder(0.4)
    out = objective_step(ObjectiveConfig(beta=1.0, reference_point=point), SCHEDULE, policy, x0, labels,
                         reference=reference, generator=torch.Generator().manual_seed(0))
    assert len(reference.calls) == 1 and reference.calls[0][0].shape[0] == 4 and len(policy.calls) == 1
    if point == "none":
        assert out.metrics["z_ref"] == 0.0


def test_dpo_pairs_share_noise_and_timestep():
    x0, _ = _batch(4)
    policy, reference = Recorder(0.5), Recorder(0.4)
    objective_step(ObjectiveConfig(objective="dpo", beta=1.0), SCHEDULE, policy, x0, torch.ones(4),
                   reference=reference, x0_loser=x0.clone(), generator=torch.Generator().manual_seed(0))
    x_t, t, _ = policy.calls[0]
    assert torch.equal(t[:4], t[4:]) and torch.equal(x_t[:4], x_t[4:])


def test_missing_reference_or_pairs_is_a_clear_error():
    x0, labels = _batch(4)
    with pytest.raises(ValueError, match="'kto' needs a reference"):
        objective_step(ObjectiveConfig(), SCHEDULE, Recorder(), x0, labels)
    with pytest.raises(ValueError, match="'dpo' needs pairs"):
        objective_step(ObjectiveConfig(objective="dpo"), SCHEDULE, Recorder(), x0, labels, reference=Recorder())


def test_objective_config_validation_names_the_value():
    with pytest.raises(ValueError, match="known objectives"):
        ObjectiveConfig(objective="ppo").validate()
    with pytest.raises(ValueError, match="known utilities"):
        ObjectiveConfig(utility="greedy").validate()
    with pytest.raises(ConfigError, match="beta=0"):
        ObjectiveConfig(beta=0).validate()
    with pytest.raises(ConfigError, match="reference_point='median'"):
        ObjectiveConfig(reference_point="median").validate()
    with pytest.raises(ConfigError, match="reference_point_fraction=0 must be > 0"):
        ObjectiveConfig(reference_point_fraction=0).validate()
    with pytest.raises(ConfigError, match="reference_point_fraction=1.5 must be <= 1"):
        ObjectiveConfig(reference_point_fraction=1.5).validate()
    with pytest.raises(ConfigError, match="reference_point_fraction=0.5 applies only to reference_point='unrelated'"):
        ObjectiveConfig(reference_point="batch", reference_point_fraction=0.5).validate()
    with pytest.raises(ConfigError, match="lambda_undesirable=-1"):
        ObjectiveConfig(lambda_undesirable=-1).validate()


class PerSampleDenoiser(torch.nn.Module):
    """``0.5 * x_t + bias[i]`` with ``i`` = the sample's id passed as ``cond``: every sample has
    its own parameters, so one gradient step moves each sample's error on its own."""

    def __init__(self, n):
        super().__init__()
        self.bias = torch.nn.Parameter(0.1 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0)))

    def forward(self, x_t, t, cond):
        return 0.5 * x_t + self.bias[cond]


def _matched_errors(model, x0, labels, ids, seed):
    """The matched-batch errors the step sees with this generator seed (same t and noise draws)."""
    with torch.no_grad():
        return objective_step(ObjectiveConfig(objective="csft"), SCHEDULE, model, x0, labels, ids,
                              generator=torch.Generator().manual_seed(seed)).err_policy


@pytest.mark.parametrize("utility", ["kto", "loss_averse", "risk_seeking", "prospect"])
@pytest.mark.parametrize("reference_point", ["unrelated", "none"])
def test_kto_step_raises_desirable_and_lowers_undesirable_likelihood(utility, reference_point):
    """One SGD step of Diffusion-KTO lowers the denoising error (raises the likelihood) of every
    desirable sample and raises it for every undesirable one, on the noise the step drew."""
    x0, labels = _batch(8)
    ids = torch.arange(8)
    policy = PerSampleDenoiser(8)
    reference = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():  # start away from the reference so that g != 0 too
        policy.bias.add_(0.05 * torch.randn(8, 2, generator=torch.Generator().manual_seed(1)))
    before = _matched_errors(policy, x0, labels, ids, seed=5)
    out = objective_step(ObjectiveConfig(utility=utility, beta=3.0, reference_point=reference_point), SCHEDULE,
                         policy, x0, labels, ids, reference=reference, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out.err_policy, before)
    out.loss.backward()
    with torch.no_grad():
        policy.bias -= 0.01 * policy.bias.grad
    after = _matched_errors(policy, x0, labels, ids, seed=5)
    des = labels > 0
    assert (after[des] < before[des]).all(), "desirable errors must fall"
    assert (after[~des] > before[~des]).all(), "undesirable errors must rise"
