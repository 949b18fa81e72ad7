"""kto_lab.objectives: values against hand computation, gradient directions, centring,
the reference point's clamp and detachment, and the errors for bad input."""

import math

import pytest
import torch

from kto_lab import objectives as O
from kto_lab.config import ConfigError

# One desirable and one undesirable sample, hand-computed below.
ERR_P = torch.tensor([0.5, 0.8])
ERR_R = torch.tensor([0.6, 0.7])
LABELS = torch.tensor([1, 0])
# g = err_r - err_p = [0.1, -0.1]; beta = 2, z_ref = 0.05
# x = w * beta * (g - z) = [+2 * 0.05, -2 * (-0.15)] = [0.1, 0.3]


def floats(out):
    return O.metrics_to_floats(out.metrics)


@pytest.mark.parametrize(
    "utility, expected",
    [
        # mean(1 - sigmoid(x)) = ((1 - 0.524979) + (1 - 0.574443)) / 2
        ("kto", 0.450289),
        # mean(1 - log sigmoid(x)) = (1.644397 + 1.554355) / 2
        ("loss_averse", 1.599376),
        # mean(1 - softplus(x)) = ((1 - 0.744397) + (1 - 0.854355)) / 2
        ("risk_seeking", 0.200624),
    ],
)
def test_kto_loss_matches_hand_computation(utility, expected):
    out = O.kto_loss(ERR_P, ERR_R, LABELS, beta=2.0, z_ref=0.05, utility=utility)
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert floats(out)["rewards/desirable"] == pytest.approx(0.2)
    assert floats(out)["rewards/undesirable"] == pytest.approx(-0.2)
    assert floats(out)["rewards/margin"] == pytest.approx(0.4)
    assert floats(out)["rewards/accuracy"] == 1.0
    assert floats(out)["z_ref"] == pytest.approx(0.1)  # beta * z, in reward units


def test_kto_loss_reports_the_share_of_saturated_samples():
    # x = w * beta * (g - z) = [0.1 * b, 0.3 * b] with b = beta / 2: saturated where |x| >= 2
    for beta, share in ((2.0, 0.0), (20.0, 0.5), (40.0, 1.0)):
        assert floats(O.kto_loss(ERR_P, ERR_R, LABELS, beta=beta, z_ref=0.05))["saturated"] == share


def test_kto_loss_class_weights():
    # lambda_D = 2, lambda_U = 0.5: mean(2 * 0.475021, 0.5 * 0.425557)
    out = O.kto_loss(ERR_P, ERR_R, LABELS, beta=2.0, z_ref=0.05, lambda_desirable=2.0, lambda_undesirable=0.5)
    assert out.loss.item() == pytest.approx((2 * 0.475021 + 0.5 * 0.425557) / 2, abs=1e-5)


def test_labels_accept_bool_01_and_pm1():
    a = O.kto_loss(ERR_P, ERR_R, torch.tensor([True, False]), beta=2.0).loss
    b = O.kto_loss(ERR_P, ERR_R, torch.tensor([1, -1]), beta=2.0).loss
    c = O.kto_loss(ERR_P, ERR_R, LABELS, beta=2.0).loss
    assert a.item() == b.item() == c.item()


def test_dpo_loss_matches_hand_computation():
    # inside = beta/2 * ((err_r_w - err_p_w) - (err_r_l - err_p_l)) = 1 * (0.1 - (-0.1)) = 0.2
    # loss = -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139
    out = O.dpo_loss(ERR_P[:1], ERR_R[:1], ERR_P[1:], ERR_R[1:], beta=2.0)
    assert out.loss.item() == pytest.approx(0.598139, abs=1e-5)
    assert floats(out)["rewards/pair_accuracy"] == 1.0
    swapped = O.dpo_loss(ERR_P[1:], ERR_R[1:], ERR_P[:1], ERR_R[:1], beta=2.0)
    assert swapped.loss.item() == pytest.approx(math.log1p(math.exp(0.2)), abs=1e-5)


def test_sft_csft_bce_match_hand_computation():
    err = torch.tensor([0.5, 0.8, 0.2])
    labels = torch.tensor([1, 0, 1])
    assert O.sft_loss(err, labels).loss.item() == pytest.approx(0.35)  # mean of the desirable 0.5, 0.2
    assert O.csft_loss(err).loss.item() == pytest.approx(0.5)  # mean of all
    # BCE(logit=-err): softplus(0.5) for (0.5, y=1); softplus(-0.8) for (0.8, y=0)
    bce = O.bce_loss(ERR_P, LABELS).loss.item()
    assert bce == pytest.approx((0.974077 + 0.371101) / 2, abs=1e-5)


def test_sft_without_desirable_samples_is_zero_but_keeps_the_graph():
    err = torch.tensor([0.5, 0.8], requires_grad=True)
    out = O.sft_loss(err, torch.tensor([0, 0]))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(err.grad, torch.zeros(2))


def test_csft_caption_prefixes():
    assert O.csft_caption("a cat", True) == "good image, a cat"
    assert O.csft_caption("a cat", False) == "bad image, a cat"


@pytest.mark.parametrize("utility", ["kto", "loss_averse", "risk_seeking", "prospect"])
@pytest.mark.parametrize("g", [-0.3, 0.0, 0.4])
def test_kto_gradient_raises_desirable_and_lowers_undesirable_likelihood(utility, g):
    """Gradient descent on the loss must lower the policy's error (raise its likelihood) on a
    desirable sample and raise it on an undesirable one: dL/d err_p > 0 resp. < 0."""
    err_r = torch.tensor([0.5, 0.5])
    err_p = (err_r - g).clone().requires_grad_(True)
    O.kto_loss(err_p, err_r, LABELS, beta=3.0, z_ref=0.1, utility=utility).loss.backward()
    assert err_p.grad[0] > 0, "desirable: the loss must fall when its error falls"
    assert err_p.grad[1] < 0, "undesirable: the loss must fall when its error rises"


def test_dpo_gradient_directions():
    ew = torch.tensor([0.5], requires_grad=True)
    el = torch.tensor([0.5], requires_grad=True)
    O.dpo_loss(ew, torch.tensor([0.5]), el, torch.tensor([0.5]), beta=10.0).loss.backward()
    assert ew.grad.item() > 0 and el.grad.item() < 0


def test_bce_and_sft_gradient_directions():
    err = torch.tensor([0.5, 0.5], requires_grad=True)
    O.bce_loss(err, LABELS).loss.backward()
    assert err.grad[0] > 0 and err.grad[1] < 0
    err = torch.tensor([0.5, 0.5], requires_grad=True)
    O.sft_loss(err, LABELS).loss.backward()
    assert err.grad[0] > 0 and err.grad[1] == 0


@pytest.mark.parametrize("name", sorted(O.UTILITIES))
def test_centred_utilities_vanish_at_zero_and_increase(name):
    u = O.centered(O.get_utility(name))
    assert u(torch.zeros(1)).item() == pytest.approx(0.0, abs=1e-7)
    x = torch.linspace(-5, 5, 101)
    assert (u(x).diff() > 0).all(), f"{name} must be monotonically increasing"


def test_centring_changes_value_not_gradient():
    x = torch.linspace(-3, 3, 13, requires_grad=True)
    (g1,) = torch.autograd.grad(O.get_utility("kto")(x).sum(), x)
    (g2,) = torch.autograd.grad(O.centered(O.get_utility("kto"))(x).sum(), x)
    assert torch.allclose(g1, g2)
    assert O.get_utility("kto")(torch.zeros(1)).item() == 0.5


def test_utility_shapes_match_figure9():
    """U'(0): 1/4 for the sigmoid, 1/2 for loss-averse and risk-seeking; loss-averse saturates
    for gains, risk-seeking for losses, the sigmoid on both sides (appendix D.4)."""
    def slope(name, at):
        x = torch.tensor([float(at)], requires_grad=True)
        (g,) = torch.autograd.grad(O.get_utility(name)(x).sum(), x)
        return g.item()
    assert slope("kto", 0) == pytest.approx(0.25)
    assert slope("loss_averse", 0) == pytest.approx(0.5)
    assert slope("risk_seeking", 0) == pytest.approx(0.5)
    assert slope("loss_averse", 8) < 1e-3 and slope("loss_averse", -8) > 0.999
    assert slope("risk_seeking", -8) < 1e-3 and slope("risk_seeking", 8) > 0.999
    assert slope("kto", 8) < 1e-3 and slope("kto", -8) < 1e-3


def test_prospect_value_shape_and_validation():
    v = O.prospect_value(0.88, 2.25)
    assert v(torch.tensor([1.0])).item() == pytest.approx(1.0)
    assert v(torch.tensor([-1.0])).item() == pytest.approx(-2.25)
    assert v(torch.tensor([2.0])).item() == pytest.approx(2.0 ** 0.88)
    with pytest.raises(ValueError, match="alpha"):
        O.prospect_value(alpha=1.5)
    with pytest.raises(ValueError, match="lam"):
        O.prospect_value(lam=0)


def test_register_utility_as_function_and_decorator():
    try:
        O.register_utility("test_linear", lambda x: x)

        @O.register_utility("test_cubic")
        def cubic(x):
            return x ** 3

        assert O.get_utility("test_linear") is not None and O.get_utility("test_cubic") is cubic
        out = O.kto_loss(ERR_P, ERR_R, LABELS, beta=2.0, utility="test_linear")
        # 1 - x with x = [0.2, 0.2] (z_ref = 0)
        assert out.loss.item() == pytest.approx(0.8)
        with pytest.raises(TypeError, match="callable"):
            O.register_utility("bad", 3)
    finally:
        O.UTILITIES.pop("test_linear", None), O.UTILITIES.pop("test_cubic", None)


def test_reference_point_clamps_at_zero():
    # mean(err_r - err_p) = -0.2 < 0 -> 0
    assert O.reference_point(torch.tensor([0.6, 0.6]), torch.tensor([0.4, 0.4])).item() == 0.0
    # mean = 0.15 > 0 -> 0.15
    assert O.reference_point(torch.tensor([0.4, 0.5]), torch.tensor([0.6, 0.6])).item() == pytest.approx(0.15)


def test_reference_point_reduces_across_processes_before_the_clamp():
    err_p, err_r = torch.tensor([0.4]), torch.tensor([0.6])  # local mean 0.2
    # another "process" with mean -0.6: the global mean is -0.2, so z = 0 (not mean(max(0, .)) = 0.1)
    z = O.reference_point(err_p, err_r, reduce_mean=lambda z: (z + torch.tensor(-0.6)) / 2)
    assert z.item() == 0.0


def test_reference_point_is_detached_and_blocks_gradient():
    err_p = torch.tensor([0.4, 0.5], requires_grad=True)
    err_r = torch.tensor([0.6, 0.6])
    z = O.reference_point(err_p, err_r)
    assert not z.requires_grad
    # even a z that requires grad is detached inside kto_loss: the gradient is only through g
    z_leaf = torch.tensor(0.1, requires_grad=True)
    out = O.kto_loss(err_p, err_r, torch.tensor([1, 1]), beta=2.0, z_ref=z_leaf)
    out.loss.backward()
    assert z_leaf.grad is None
    assert err_p.grad is not None and (err_p.grad > 0).all()


def test_denoising_error_is_per_sample_mean_in_fp32():
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16)
    target = torch.ones(2, 3, 4, 4, dtype=torch.bfloat16)
    target[1] *= 2
    err = O.denoising_error(pred, target)
    assert err.dtype == torch.float32 and err.tolist() == [1.0, 4.0]


def test_implicit_reward():
    assert O.implicit_reward(ERR_P, ERR_R, 2.0).tolist() == pytest.approx([0.2, -0.2])


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known utilities: .*kto.*loss_averse.*risk_seeking"):
        O.get_utility("nope")
    with pytest.raises(ValueError, match="known utilities"):
        O.kto_loss(ERR_P, ERR_R, LABELS, beta=1.0, utility="nope")
    with pytest.raises(ValueError, match="known objectives: kto, dpo, sft, csft, bce, nft"):
        O.check_objective("ppo")


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta_names_the_value(beta):
    with pytest.raises(ConfigError, match="beta="):
        O.kto_loss(ERR_P, ERR_R, LABELS, beta=beta)
    with pytest.raises(ConfigError, match="beta="):
        O.dpo_loss(ERR_P, ERR_R, ERR_P, ERR_R, beta=beta)


def test_check_finite_names_where():
    assert O.check_finite(torch.tensor(1.0), where="x").item() == 1.0
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at kto step 7"):
        O.check_finite(torch.tensor(float("nan")), where="kto step 7")
    with pytest.raises(FloatingPointError, match="inf"):
        O.check_finite(torch.tensor(float("inf")), where="dpo step 1")


def test_batch_without_desirable_samples_keeps_the_graph_and_reports_nan_for_the_absent_class():
    err = torch.tensor([0.3, 0.4], requires_grad=True)
    sft = O.sft_loss(err, torch.tensor([0, 0]))
    assert sft.loss.item() == 0.0 and sft.loss.requires_grad
    kto = O.kto_loss(err, torch.tensor([0.2, 0.2]), torch.tensor([0, 0]), beta=1.0)
    m = floats(kto)
    assert math.isnan(m["rewards/desirable"]) and math.isnan(m["rewards/margin"])
    assert m["rewards/undesirable"] == pytest.approx(-0.15)


# --- DiffusionNFT -------------------------------------------------------------------------------------------


def test_nft_implicit_policies_and_loss_match_hand_computation():
    """v+ = (1 - b) v_ref + b v, v- = (1 + b) v_ref - b v (DiffusionNFT sec. 3.2); loss = mean(r e+ + (1 - r) e-)."""
    v, v_ref = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.5, 1.0], [1.0, 1.0]])
    pos, neg = O.nft_implicit_policies(v, v_ref, 0.5)
    assert pos.tolist() == [[0.75, 1.5], [0.5, 0.0]] and neg.tolist() == [[0.25, 0.5], [1.5, 2.0]]
    out = O.nft_loss(torch.tensor([0.2, 0.4]), torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.25]),
                     err_policy=ERR_P, err_ref=ERR_R, beta=0.5)
    assert out.loss.item() == pytest.approx((0.2 + (0.25 * 0.4 + 0.75 * 3.0)) / 2)
    m = floats(out)
    assert m["rewards/desirable"] == pytest.approx(0.5 * 0.1) and m["rewards/undesirable"] == pytest.approx(-0.05)
    assert m["nft/positive"] == pytest.approx(0.3) and m["nft/negative"] == pytest.approx(3.0)
    # beta = 1: the positive policy is the policy itself, so a liked image's term is plain flow matching (SFT)
    assert torch.equal(O.nft_implicit_policies(v, v_ref, 1.0)[0], v)


def test_nft_minimiser_is_the_papers_policy_improvement():
    """The paper's theorem: at one x_t, min over v of E[r |v+ - v_i|^2 + (1 - r) |v- - v_i|^2], with v_ref the mean
    target E[v_i] (the old policy's velocity), is v_ref + (2 / beta) alpha (v_pos - v_ref), alpha = E[r] and v_pos the
    r-weighted mean target. Found here by gradient descent on the implemented loss."""
    g = torch.Generator().manual_seed(0)
    targets, r = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.rand(64, generator=g, dtype=torch.float64)
    v_ref = targets.mean(0, keepdim=True)
    for beta in (0.3, 1.0, 2.0):
        v = v_ref.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([v], lr=1, max_iter=200, tolerance_grad=1e-12)

        def closure():
            opt.zero_grad()
            pos, neg = O.nft_implicit_policies(v.expand(64, 3), v_ref.expand(64, 3), beta)
            e = lambda p: (p - targets).pow(2).sum(1)
            loss = O.nft_loss(e(pos), e(neg), r, err_policy=e(v), err_ref=e(v_ref), beta=beta).loss
            loss.backward()
            return loss

        opt.step(closure)
        alpha, v_pos = r.mean(), (r[:, None] * targets).sum(0) / r.sum()
        assert torch.allclose(v.detach()[0], v_ref[0] + 2 / beta * alpha * (v_pos - v_ref[0]), atol=1e-5), beta


def test_nft_gradient_raises_liked_and_lowers_disliked_likelihood():
    """At v = v_ref the loss pulls the policy towards a liked target and pushes it from a disliked one."""
    target, v_ref = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    for r, direction in ((1.0, 1.0), (0.0, -1.0)):
        v = v_ref.clone().requires_grad_(True)
        pos, neg = O.nft_implicit_policies(v, v_ref, 0.5)
        e = lambda p: (p - target).pow(2).sum(1)
        O.nft_loss(e(pos), e(neg), torch.tensor([r]), err_policy=e(v), err_ref=e(v_ref), beta=0.5).loss.backward()
        assert direction * -v.grad[0, 0] > 0  # the descent direction moves v towards (r=1) / away from (r=0) target


def test_nft_rejects_rewards_outside_0_1_and_bad_beta():
    e = torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError, match=r"rewards must lie in \[0, 1\].*got -1 .. 1"):
        O.nft_loss(e, e, torch.tensor([1.0, -1.0]), err_policy=e, err_ref=e, beta=1.0)
    with pytest.raises(ConfigError, match="beta="):
        O.nft_implicit_policies(e, e, 0.0)
    assert O.nft_reward(torch.tensor([1, 0])).tolist() == [1.0, 0.0]
    assert O.nft_reward(torch.tensor([1, -1])).tolist() == [1.0, 0.0] and O.nft_reward(torch.tensor([True])).item() == 1.0
