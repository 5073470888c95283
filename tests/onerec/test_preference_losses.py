"""Preference losses against numbers worked out by hand.

The fixtures are chosen so that the log-ratios are small integers. With beta = 0.5:

    row 0: pc=-1, rc=-2 -> pc-rc = +1 ; pr=-3, rr=-2 -> pr-rr = -1 ; h = 2  ; beta*h = 1
    row 1: pc=-2, rc=-1 -> pc-rc = -1 ; pr=-1, rr=-1 -> pr-rr =  0 ; h = -1 ; beta*h = -0.5

and -logsigmoid(x) = log(1 + exp(-x)) = log1p(exp(-x)).
"""

from __future__ import annotations

import math

import pytest
import torch

from onerec.preference_losses import (
    PREFERENCE_LOSSES,
    PreferenceLossOutput,
    cdpo_loss,
    dpo_loss,
    get_preference_loss,
    implicit_reward_accuracy,
    ipo_loss,
    kl_estimate,
    sdpo_loss,
    sequence_logprob,
)

BETA = 0.5


def _pairs(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """(pc, pr, rc, rr) for the two rows of the module docstring, float64."""
    pc = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=requires_grad)
    pr = torch.tensor([-3.0, -1.0], dtype=torch.float64, requires_grad=requires_grad)
    rc = torch.tensor([-2.0, -1.0], dtype=torch.float64, requires_grad=requires_grad)
    rr = torch.tensor([-2.0, -1.0], dtype=torch.float64, requires_grad=requires_grad)
    return pc, pr, rc, rr


def _softplus(x: float) -> float:
    """-logsigmoid(-x) = log(1 + exp(x)), written independently of torch."""
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------
# Each variant against hand-worked numbers
# ---------------------------------------------------------------------------------------


def test_dpo_matches_hand_computed_loss_and_rewards() -> None:
    out = dpo_loss(*_pairs(), beta=BETA)
    # row 0: -logsigmoid(1)    = log1p(exp(-1))  ~ 0.3133
    # row 1: -logsigmoid(-0.5) = log1p(exp(0.5)) ~ 0.9741
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert isinstance(out, PreferenceLossOutput)
    assert out.loss.shape == ()
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # chosen rewards: 0.5 * [+1, -1]; rejected rewards: 0.5 * [-1, 0]
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, -0.5], dtype=torch.float64))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.0], dtype=torch.float64))


def test_cdpo_matches_hand_computed_loss() -> None:
    eps = 0.25
    out = cdpo_loss(*_pairs(), beta=BETA, label_smoothing=eps)
    # loss(x) = (1-eps) * log1p(exp(-x)) + eps * log1p(exp(x)), with x = beta*h = 1 and -0.5
    row0 = 0.75 * math.log1p(math.exp(-1.0)) + 0.25 * math.log1p(math.exp(1.0))
    row1 = 0.75 * math.log1p(math.exp(0.5)) + 0.25 * math.log1p(math.exp(-0.5))
    assert out.loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-12)


def test_ipo_matches_hand_computed_loss() -> None:
    out = ipo_loss(*_pairs(), beta=BETA)
    # target 1/(2*beta) = 1 ; row 0: (2 - 1)^2 = 1 ; row 1: (-1 - 1)^2 = 4 ; mean = 2.5
    assert out.loss.item() == pytest.approx(2.5, abs=1e-12)


def test_sdpo_matches_hand_computed_loss() -> None:
    # Two users, R = 2 rejected each.
    # user 0: pc-rc = -1 - (-2) = 1 ; pr-rr = [-3 - (-2), -1 - (-2)] = [-1, 1]
    #         z = beta * ((pr-rr) - (pc-rc)) = 0.5 * [-2, 0] = [-1, 0]
    #         loss = -logsigmoid(-log(e^-1 + e^0)) = log(1 + e^-1 + 1) = log(2 + e^-1)
    # user 1: pc-rc = 0 ; pr-rr = [0, 0] ; z = [0, 0] ; loss = log(1 + 1 + 1) = log(3)
    pc = torch.tensor([-1.0, -4.0], dtype=torch.float64)
    rc = torch.tensor([-2.0, -4.0], dtype=torch.float64)
    pr = torch.tensor([[-3.0, -1.0], [-5.0, -6.0]], dtype=torch.float64)
    rr = torch.tensor([[-2.0, -2.0], [-5.0, -6.0]], dtype=torch.float64)
    out = sdpo_loss(pc, pr, rc, rr, beta=BETA)
    expected = (math.log(2.0 + math.exp(-1.0)) + math.log(3.0)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.rejected_rewards.shape == (2, 2)
    torch.testing.assert_close(
        out.rejected_rewards, torch.tensor([[-0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    )


def test_pairwise_losses_average_over_all_rejected_pairs() -> None:
    # dpo with [B, R] rejected: each (chosen, rejected_r) is its own pair.
    # row 0: pc-rc = 1, pr-rr = [-1, 1] -> h = [2, 0] -> beta*h = [1, 0]
    # row 1: pc-rc = 0, pr-rr = [0, 0]  -> h = [0, 0]
    # losses log1p(e^-1), log 2, log 2, log 2 ; mean over the 4 pairs
    pc = torch.tensor([-1.0, -4.0], dtype=torch.float64)
    rc = torch.tensor([-2.0, -4.0], dtype=torch.float64)
    pr = torch.tensor([[-3.0, -1.0], [-5.0, -6.0]], dtype=torch.float64)
    rr = torch.tensor([[-2.0, -2.0], [-5.0, -6.0]], dtype=torch.float64)
    out = dpo_loss(pc, pr, rc, rr, beta=BETA)
    expected = (math.log1p(math.exp(-1.0)) + 3 * math.log(2.0)) / 4
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # ipo: target 1 ; (2-1)^2 + (0-1)^2 * 3 = 4 ; mean over 4 pairs = 1
    assert ipo_loss(pc, pr, rc, rr, beta=BETA).loss.item() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------
# Relations between variants
# ---------------------------------------------------------------------------------------


def test_cdpo_without_smoothing_is_dpo() -> None:
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8, dtype=torch.float64) * 3 for _ in range(4))
    a = cdpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0)
    b = dpo_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


@pytest.mark.parametrize("rejected_shape", [(8,), (8, 1)])
def test_sdpo_with_one_rejected_is_dpo(rejected_shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    pc, rc = torch.randn(8, dtype=torch.float64) * 3, torch.randn(8, dtype=torch.float64) * 3
    pr = torch.randn(rejected_shape, dtype=torch.float64) * 3
    rr = torch.randn(rejected_shape, dtype=torch.float64) * 3
    s = sdpo_loss(pc, pr, rc, rr, beta=0.3)
    d = dpo_loss(pc, pr, rc, rr, beta=0.3)
    torch.testing.assert_close(s.loss, d.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.rejected_rewards, d.rejected_rewards)


def test_sdpo_is_finite_for_huge_margins() -> None:
    # A naive sum(exp(...)) would overflow to inf here; logsumexp must not.
    pc = torch.tensor([0.0, 0.0])
    rc = torch.tensor([0.0, 0.0])
    pr = torch.tensor([[1e4, 1e4], [-1e4, -1e4]])
    rr = torch.zeros(2, 2)
    out = sdpo_loss(pc, pr, rc, rr, beta=1.0)
    # user 0: log(1 + 2 e^1e4) ~ 1e4 + log 2 ; user 1: log(1 + 2 e^-1e4) ~ 0
    assert out.loss.item() == pytest.approx((1e4 + math.log(2.0)) / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_gradients_reach_only_the_policy(name: str) -> None:
    pc, pr, rc, rr = _pairs(requires_grad=True)
    out = get_preference_loss(name)(pc, pr, rc, rr, beta=BETA)
    out.loss.backward()
    assert pc.grad is not None and pr.grad is not None
    assert torch.all(pc.grad != 0) and torch.all(pr.grad != 0)
    # The reference is detached inside the loss, even when it was built with grad.
    assert rc.grad is None and rr.grad is None
    assert not out.chosen_rewards.requires_grad
    assert not out.rejected_rewards.requires_grad


def test_dpo_gradient_matches_hand_derivative() -> None:
    # d/dpc [-logsigmoid(beta*h)] = -beta * sigmoid(-beta*h), divided by B=2 for the mean.
    # row 0: beta*h = 1    -> -0.5 * sigmoid(-1)  / 2
    # row 1: beta*h = -0.5 -> -0.5 * sigmoid(0.5) / 2 ; and d/dpr = -d/dpc
    pc, pr, rc, rr = _pairs(requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta=BETA).loss.backward()

    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    expected = torch.tensor(
        [-0.5 * sigmoid(-1.0) / 2, -0.5 * sigmoid(0.5) / 2], dtype=torch.float64
    )
    torch.testing.assert_close(pc.grad, expected)
    torch.testing.assert_close(pr.grad, -expected)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_unknown_loss_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'dpoo'.*\['cdpo', 'dpo', 'ipo', 'sdpo'\]"):
        get_preference_loss("dpoo")


def test_table_holds_the_four_variants() -> None:
    expected = {"dpo": dpo_loss, "cdpo": cdpo_loss, "ipo": ipo_loss, "sdpo": sdpo_loss}
    assert PREFERENCE_LOSSES == expected
    for name, fn in PREFERENCE_LOSSES.items():
        assert get_preference_loss(name) is fn


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 1), (2,), (2, 1), (2,)), r"policy_chosen_logps must have shape \[B\].*\(2, 1\)"),
        (((0,), (0,), (0,), (0,)), r"policy_chosen_logps.*B >= 1.*\(0,\)"),
        (((2,), (2,), (3,), (2,)), r"reference_chosen_logps.*\(2,\).*got \(3,\)"),
        (((2,), (3,), (2,), (3,)), r"policy_rejected_logps.*B=2.*got \(3,\)"),
        (((2,), (2, 2, 1), (2,), (2, 2, 1)), r"policy_rejected_logps.*\(2, 2, 1\)"),
        (((2,), (2, 0), (2,), (2, 0)), r"policy_rejected_logps.*R >= 1.*\(2, 0\)"),
        (((2,), (2, 3), (2,), (2, 2)), r"reference_rejected_logps.*\(2, 3\).*got \(2, 2\)"),
    ],
)
def test_shape_errors_name_the_tensor_and_shape(
    name: str, shapes: tuple[tuple[int, ...], ...], match: str
) -> None:
    tensors = [torch.zeros(s) for s in shapes]
    with pytest.raises(ValueError, match=match):
        get_preference_loss(name)(*tensors, beta=BETA)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_bad_beta_and_dtype_are_rejected(name: str) -> None:
    pc, pr, rc, rr = _pairs()
    fn = get_preference_loss(name)
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"beta must be > 0"):
            fn(pc, pr, rc, rr, beta=beta)
    with pytest.raises(ValueError, match=r"policy_chosen_logps must be a floating-point.*int64"):
        fn(torch.tensor([1, 2]), pr, rc, rr, beta=BETA)


@pytest.mark.parametrize("name", ["dpo", "ipo", "sdpo"])
def test_label_smoothing_outside_cdpo_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match=rf"label_smoothing=0.1 .*{name!r}.*'cdpo'"):
        get_preference_loss(name)(*_pairs(), beta=BETA, label_smoothing=0.1)


@pytest.mark.parametrize("eps", [-0.1, 0.6])
def test_cdpo_rejects_label_smoothing_outside_range(eps: float) -> None:
    with pytest.raises(ValueError, match=rf"label_smoothing must be in \[0, 0.5\].*{eps}"):
        cdpo_loss(*_pairs(), beta=BETA, label_smoothing=eps)


# ---------------------------------------------------------------------------------------
# sequence_logprob, implicit_reward_accuracy, kl_estimate
# ---------------------------------------------------------------------------------------


def test_sequence_logprob_sums_unmasked_token_logprobs() -> None:
    neg_inf = float("-inf")
    logits = torch.tensor(
        [
            # t0: uniform over 3 -> p(label 1) = 1/3
            # t1: exp -> [1, 3, 1] -> p(label 1) = 3/5
            # t2: padding; -inf logits (a constrained-decoding mask) must not leak NaN
            [[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0], [neg_inf, 0.0, neg_inf]],
            # row 1: fully masked -> 0
            [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        requires_grad=True,
    )
    labels = torch.tensor([[1, 1, 0], [-100, -100, -100]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = sequence_logprob(logits, labels, mask)
    assert out.shape == (2,)
    assert out.dtype == torch.float32
    expected = torch.tensor([math.log(1 / 3) + math.log(3 / 5), 0.0])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # a 0/1 float mask means the same as a bool one
    torch.testing.assert_close(sequence_logprob(logits, labels, mask.float()), expected)


def test_sequence_logprob_upcasts_half_precision() -> None:
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16)  # uniform over 4
    out = sequence_logprob(logits, torch.tensor([[3, 0]]), torch.ones(1, 2, dtype=torch.bool))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(2 * math.log(1 / 4), abs=1e-6)


def test_sequence_logprob_errors() -> None:
    logits = torch.zeros(2, 3, 4)
    ok_labels = torch.zeros(2, 3, dtype=torch.long)
    ok_mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"logits must have shape \[B, T, V\].*\(2, 3\)"):
        sequence_logprob(torch.zeros(2, 3), ok_labels, ok_mask)
    with pytest.raises(ValueError, match=r"labels must have shape \[B, T\] = \(2, 3\).*\(2, 2\)"):
        sequence_logprob(logits, torch.zeros(2, 2, dtype=torch.long), ok_mask)
    with pytest.raises(ValueError, match=r"mask must have the shape of labels.*\(3, 2\)"):
        sequence_logprob(logits, ok_labels, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor.*float32"):
        sequence_logprob(logits, ok_labels.float(), ok_mask)
    bad = ok_labels.clone()
    bad[1, 2] = 4
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\).*got 4"):
        sequence_logprob(logits, bad, ok_mask)


def test_implicit_reward_accuracy_needs_chosen_above_every_rejected() -> None:
    chosen = torch.tensor([1.0, 1.0, 1.0])
    # row 0: 1 > 0 and 1 > 0.5 -> win ; row 1: tie with 1 -> loss ; row 2: 1 < 2 -> loss
    rejected = torch.tensor([[0.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
    assert implicit_reward_accuracy(chosen, rejected).item() == pytest.approx(1 / 3)
    # 1-D rejected: wins on rows 0 and 1 (1 > 0.5, 1 > 0), loss on row 2 (1 < 2)
    one_d = torch.tensor([0.5, 0.0, 2.0])
    assert implicit_reward_accuracy(chosen, one_d).item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"rejected_rewards.*B=3.*\(2, 2\)"):
        implicit_reward_accuracy(chosen, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"chosen_rewards must have shape \[B\]"):
        implicit_reward_accuracy(torch.zeros(3, 1), rejected)


def test_implicit_reward_accuracy_from_a_loss_output() -> None:
    out = dpo_loss(*_pairs(), beta=BETA)
    # chosen rewards [0.5, -0.5] vs rejected [-0.5, 0.0]: row 0 wins, row 1 loses
    assert implicit_reward_accuracy(out.chosen_rewards, out.rejected_rewards).item() == 0.5


def test_kl_estimate_is_mean_log_ratio() -> None:
    policy = torch.tensor([-1.0, -2.0])
    reference = torch.tensor([-1.5, -1.0])
    # (-1 - -1.5) = 0.5 ; (-2 - -1) = -1 ; mean = -0.25 (one batch may come out negative)
    assert kl_estimate(policy, reference).item() == pytest.approx(-0.25)
    with pytest.raises(ValueError, match=r"same shape.*\(2,\) and \(3,\)"):
        kl_estimate(policy, torch.zeros(3))
    with pytest.raises(ValueError, match=r"at least one sample"):
        kl_estimate(torch.zeros(0), torch.zeros(0))


def test_kl_estimate_converges_to_the_true_kl() -> None:
    # policy = Categorical(p), reference = Categorical(q): KL = sum p log(p/q), exactly.
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    est = kl_estimate(p.log()[samples], q.log()[samples]).item()
    # std of log(p/q) under p is ~0.8, so the standard error is ~0.002; 0.02 never flakes.
    assert est == pytest.approx(true_kl, abs=0.02)
