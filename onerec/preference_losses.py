"""Preference-optimisation losses for Iterative Preference Alignment (OneRec §3.3).

IPA beam-searches several sessions per user, lets the reward model pick a *chosen* and one
or more *rejected* sessions, and trains the policy with a DPO-family loss against a frozen
reference model (the previous iteration). Every loss here is a small tensor-only function
with the same signature, so the alignment stage picks one by name from
:data:`PREFERENCE_LOSSES` and never branches on the loss type itself.

Notation used in the docstrings (all log-probs are *sequence* log-probs, e.g. from
:func:`sequence_logprob`)::

    pc, rc : policy / reference log-prob of the chosen session            [B]
    pr, rr : policy / reference log-prob of the rejected session(s)       [B] or [B, R]
    h      : (pc - rc) - (pr - rr)   the implicit reward margin / beta    [B] or [B, R]

The implicit reward of a session is ``beta * (policy_logp - reference_logp)``
(Rafailov et al. 2023, §5); ``chosen_rewards`` and ``rejected_rewards`` in
:class:`PreferenceLossOutput` are those rewards, detached, for logging.

Gradients flow only into the policy log-probs: the reference inputs are detached inside
every loss, so a reference computed without ``torch.no_grad()`` cannot leak gradients into
the reference model.

Example::

    loss_fn = get_preference_loss("dpo")
    out = loss_fn(pc, pr, rc, rr, beta=0.1)
    out.loss.backward()
    accuracy = implicit_reward_accuracy(out.chosen_rewards, out.rejected_rewards)
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PREFERENCE_LOSSES",
    "PreferenceLoss",
    "PreferenceLossOutput",
    "cdpo_loss",
    "dpo_loss",
    "get_preference_loss",
    "implicit_reward_accuracy",
    "ipo_loss",
    "kl_estimate",
    "sdpo_loss",
    "sequence_logprob",
]


class PreferenceLossOutput(NamedTuple):
    """What every preference loss returns.

    Attributes:
        loss: scalar, the mean loss over the batch (over all B*R pairs for the pairwise
            losses given [B, R] rejected log-probs; over the B users for S-DPO).
        chosen_rewards: [B], ``beta * (pc - rc)``, detached.
        rejected_rewards: [B] or [B, R] (the shape of the rejected log-probs),
            ``beta * (pr - rr)``, detached.
    """

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


class PreferenceLoss(Protocol):
    """The signature shared by every entry of :data:`PREFERENCE_LOSSES`."""

    def __call__(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor,
        *,
        beta: float,
        label_smoothing: float = 0.0,
    ) -> PreferenceLossOutput: ...


# --------------------------------------------------------------------------------------
# Shared validation and the implicit-reward margins
# --------------------------------------------------------------------------------------


def _check_inputs(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> None:
    pc, pr = policy_chosen_logps, policy_rejected_logps
    rc, rr = reference_chosen_logps, reference_rejected_logps
    named = {
        "policy_chosen_logps": pc,
        "policy_rejected_logps": pr,
        "reference_chosen_logps": rc,
        "reference_rejected_logps": rr,
    }
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if pc.ndim != 1 or pc.shape[0] == 0:
        raise ValueError(
            f"policy_chosen_logps must have shape [B] with B >= 1, got {tuple(pc.shape)}"
        )
    if rc.shape != pc.shape:
        raise ValueError(
            f"reference_chosen_logps must have the shape of policy_chosen_logps "
            f"{tuple(pc.shape)}, got {tuple(rc.shape)}"
        )
    batch = pc.shape[0]
    if pr.ndim not in (1, 2) or pr.shape[0] != batch or pr.numel() == 0:
        raise ValueError(
            f"policy_rejected_logps must have shape [B] or [B, R] with B={batch} "
            f"(from policy_chosen_logps) and R >= 1, got {tuple(pr.shape)}"
        )
    if rr.shape != pr.shape:
        raise ValueError(
            f"reference_rejected_logps must have the shape of policy_rejected_logps "
            f"{tuple(pr.shape)}, got {tuple(rr.shape)}"
        )
    if not beta > 0.0:  # also rejects NaN
        raise ValueError(f"beta must be > 0, got {beta}")


def _check_no_label_smoothing(loss_name: str, label_smoothing: float) -> None:
    # Silently ignoring a configured smoothing would make a config lie about the run.
    if label_smoothing != 0.0:
        raise ValueError(
            f"label_smoothing={label_smoothing} has no meaning for the {loss_name!r} loss; "
            f"use 'cdpo' for label smoothing, or set label_smoothing=0"
        )


def _checked_logratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """Validate, then ``(pc - rc, pr - rr)`` with the reference detached: [B], [B] / [B, R]."""
    _check_inputs(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, beta,
    )
    chosen = policy_chosen_logps - reference_chosen_logps.detach()
    rejected = policy_rejected_logps - reference_rejected_logps.detach()
    return chosen, rejected


def _pairwise_margin(chosen_logratios: Tensor, rejected_logratios: Tensor) -> Tensor:
    """``h = (pc - rc) - (pr - rr)``, broadcasting the chosen over R rejected: [B] / [B, R]."""
    if rejected_logratios.ndim == 2:
        return chosen_logratios.unsqueeze(-1) - rejected_logratios  # (B, R)
    return chosen_logratios - rejected_logratios  # (B,)


def _rewards(
    beta: float, chosen_logratios: Tensor, rejected_logratios: Tensor
) -> tuple[Tensor, Tensor]:
    return beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# --------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """DPO, the sigmoid (Bradley-Terry) loss: ``-logsigmoid(beta * h)``.

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly
    a Reward Model", Eq. 7. Given [B, R] rejected log-probs, each (chosen, rejected_r) is
    its own pair and the loss is the mean over all B*R pairs.

    Args:
        policy_chosen_logps: [B] policy log-prob of the chosen session.
        policy_rejected_logps: [B] or [B, R] policy log-prob of the rejected session(s).
        reference_chosen_logps: [B] reference log-prob of the chosen session.
        reference_rejected_logps: same shape as ``policy_rejected_logps``.
        beta: KL strength (> 0); larger keeps the policy closer to the reference.
        label_smoothing: must be 0; the smoothed variant is :func:`cdpo_loss`.

    Returns:
        :class:`PreferenceLossOutput` (scalar loss, [B] and [B] / [B, R] rewards).
    """
    _check_no_label_smoothing("dpo", label_smoothing)
    chosen, rejected = _checked_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, beta,
    )
    h = _pairwise_margin(chosen, rejected)
    losses = -F.logsigmoid(beta * h)
    return PreferenceLossOutput(losses.mean(), *_rewards(beta, chosen, rejected))


def cdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Conservative DPO: ``-(1 - eps) * logsigmoid(beta*h) - eps * logsigmoid(-beta*h)``.

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"
    (https://ericmitchell.ai/cdpo.pdf), Eq. 3; TRL's sigmoid loss with ``label_smoothing``.
    ``eps`` is the assumed probability that a preference label is flipped: with noisy
    labels (a reward model choosing between two near-equal sessions) the loss stops pushing
    the margin to infinity. ``eps = 0`` is exactly :func:`dpo_loss`.

    Args:
        policy_chosen_logps: [B] policy log-prob of the chosen session.
        policy_rejected_logps: [B] or [B, R] policy log-prob of the rejected session(s).
        reference_chosen_logps: [B] reference log-prob of the chosen session.
        reference_rejected_logps: same shape as ``policy_rejected_logps``.
        beta: KL strength (> 0).
        label_smoothing: ``eps`` in [0, 0.5]; above 0.5 the labels would mean the opposite.

    Returns:
        :class:`PreferenceLossOutput` (loss is the mean over all B*R pairs).
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5] for 'cdpo', got {label_smoothing}")
    chosen, rejected = _checked_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, beta,
    )
    logits = beta * _pairwise_margin(chosen, rejected)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(
        -logits
    )
    return PreferenceLossOutput(losses.mean(), *_rewards(beta, chosen, rejected))


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """IPO: ``(h - 1 / (2 * beta)) ** 2``.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17 (``beta`` plays the paper's ``tau``). A squared loss regresses the
    margin to a finite target instead of pushing it to infinity, so it does not overfit
    deterministic preferences. The target ``1/(2*beta)`` is on the scale of ``h``: TRL feeds
    IPO length-*averaged* log-probs; whether to sum or average per token is the caller's
    choice (OneRec sessions have a fixed number of semantic-ID tokens, so the two differ
    only by a constant factor that ``beta`` absorbs).

    Args:
        policy_chosen_logps: [B] policy log-prob of the chosen session.
        policy_rejected_logps: [B] or [B, R] policy log-prob of the rejected session(s).
        reference_chosen_logps: [B] reference log-prob of the chosen session.
        reference_rejected_logps: same shape as ``policy_rejected_logps``.
        beta: regularisation strength (> 0).
        label_smoothing: must be 0.

    Returns:
        :class:`PreferenceLossOutput` (loss is the mean over all B*R pairs).
    """
    _check_no_label_smoothing("ipo", label_smoothing)
    chosen, rejected = _checked_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, beta,
    )
    h = _pairwise_margin(chosen, rejected)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLossOutput(losses.mean(), *_rewards(beta, chosen, rejected))


def sdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """S-DPO (softmax DPO), one chosen against R rejected sessions.

    Chen et al. 2024, "On Softmax Direct Preference Optimization for Recommendation"
    (NeurIPS 2024), Eq. 11: a Plackett-Luce partial ranking that puts the chosen session
    above all R rejected ones::

        loss_b = -logsigmoid( -log sum_r exp( beta * ((pr_r - rr_r) - (pc - rc)) ) )

    averaged over the B users. It is computed as written, with ``logsumexp`` so large
    margins do not overflow. With R = 1 it is exactly :func:`dpo_loss`. Because the
    rejected terms enter through a softmax, the hardest negatives (highest implicit
    reward) get the largest gradient.

    Args:
        policy_chosen_logps: [B] policy log-prob of the chosen session.
        policy_rejected_logps: [B, R] (or [B], read as R = 1) policy log-probs of the
            rejected sessions.
        reference_chosen_logps: [B] reference log-prob of the chosen session.
        reference_rejected_logps: same shape as ``policy_rejected_logps``.
        beta: KL strength (> 0).
        label_smoothing: must be 0.

    Returns:
        :class:`PreferenceLossOutput`; ``rejected_rewards`` has the shape of the input.
    """
    _check_no_label_smoothing("sdpo", label_smoothing)
    chosen, rejected = _checked_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, beta,
    )
    rejected_2d = rejected if rejected.ndim == 2 else rejected.unsqueeze(-1)  # (B, R)
    z = beta * (rejected_2d - chosen.unsqueeze(-1))  # (B, R)
    losses = -F.logsigmoid(-torch.logsumexp(z, dim=-1))  # (B,)
    return PreferenceLossOutput(losses.mean(), *_rewards(beta, chosen, rejected))


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "ipo": ipo_loss,
    "sdpo": sdpo_loss,
}
"""Loss name (as written in ``align.yaml``) → loss function."""


def get_preference_loss(name: str) -> PreferenceLoss:
    """Look up a loss of :data:`PREFERENCE_LOSSES` by name.

    Raises:
        ValueError: ``name`` is not a known loss; the message lists the valid names.
    """
    try:
        return PREFERENCE_LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown preference loss {name!r}; expected one of {sorted(PREFERENCE_LOSSES)}"
        ) from None


# --------------------------------------------------------------------------------------
# What the losses need and what the alignment loop logs
# --------------------------------------------------------------------------------------


def sequence_logprob(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Sum of the log-probs of ``labels`` under ``logits`` over the unmasked positions.

    The positions are already aligned: ``logits[:, t]`` is the distribution that
    ``labels[:, t]`` was drawn from (shift decoder outputs before calling). The
    log-softmax is taken in float32 even for half-precision logits, so the sum over a
    session does not lose the small per-token differences DPO compares.

    Args:
        logits: [B, T, V] unnormalised scores.
        labels: [B, T] integer token ids; any value (e.g. -100 padding) where ``mask`` is
            False, a valid id in [0, V) where it is True.
        mask: [B, T] bool (or 0/1) tensor, True where the token counts.

    Returns:
        [B] float32 sequence log-probs (0 for a row with no unmasked tokens).

    Example::

        logits = decoder(...)                       # (B, T, V)
        logps = sequence_logprob(logits, target_tokens, target_tokens != PAD)  # (B,)
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape [B, T] = {tuple(logits.shape[:2])} (from logits), "
            f"got {tuple(labels.shape)}"
        )
    if mask.shape != labels.shape:
        raise ValueError(
            f"mask must have the shape of labels {tuple(labels.shape)}, got {tuple(mask.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    mask = mask if mask.dtype == torch.bool else mask != 0
    vocab = logits.shape[-1]
    # Padding ids (often -100) would make gather fail; they are masked out below anyway.
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    bad = (safe_labels < 0) | (safe_labels >= vocab)
    if bool(bad.any()):
        first = safe_labels[bad][0].item()
        raise ValueError(
            f"labels must be in [0, {vocab}) where mask is True, got {first} "
            f"at {int(bad.sum())} unmasked position(s)"
        )
    logits32 = logits.float()
    # x_label - logsumexp(x) instead of log_softmax(...).gather: same value, and no second
    # [B, T, V] tensor of log-probs is kept for backward.
    token_logps = logits32.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits32, dim=-1
    )  # (B, T)
    # where, not multiply: constrained decoding masks illegal tokens with -inf, and
    # -inf * 0 would turn a padded position into NaN.
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(dim=-1)


def implicit_reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of users whose chosen session out-scores *every* rejected one.

    Args:
        chosen_rewards: [B] implicit rewards of the chosen sessions.
        rejected_rewards: [B] or [B, R] implicit rewards of the rejected sessions.

    Returns:
        Scalar float tensor in [0, 1]; ties count as wrong (strict ``>``).
    """
    if chosen_rewards.ndim != 1 or chosen_rewards.shape[0] == 0:
        raise ValueError(
            f"chosen_rewards must have shape [B] with B >= 1, got {tuple(chosen_rewards.shape)}"
        )
    batch = chosen_rewards.shape[0]
    if (
        rejected_rewards.ndim not in (1, 2)
        or rejected_rewards.shape[0] != batch
        or rejected_rewards.numel() == 0
    ):
        raise ValueError(
            f"rejected_rewards must have shape [B] or [B, R] with B={batch} and R >= 1, "
            f"got {tuple(rejected_rewards.shape)}"
        )
    if rejected_rewards.ndim == 1:
        wins = chosen_rewards > rejected_rewards  # (B,)
    else:
        wins = (chosen_rewards.unsqueeze(-1) > rejected_rewards).all(dim=-1)  # (B,)
    return wins.float().mean()


def kl_estimate(policy_logps: Tensor, reference_logps: Tensor) -> Tensor:
    """Monte-Carlo estimate of KL(policy || reference): ``mean(policy_logps - reference_logps)``.

    This is the standard (k1) estimator: for sessions ``y ~ policy``,
    ``KL = E_y[log policy(y) - log reference(y)]``, so the sample mean is unbiased. It is
    only valid when the sessions were *sampled from the policy* (not beam-searched, not
    taken from the logs), has high variance, and a single batch can come out negative.
    Meant for monitoring drift from the reference; its gradient is not the KL gradient
    (the score-function term of the sampling is missing), so do not use it as a penalty.

    Args:
        policy_logps: [N] (any shape) policy log-probs of sessions sampled from the policy.
        reference_logps: same shape, reference log-probs of the same sessions.

    Returns:
        Scalar tensor, in nats.
    """
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"policy_logps and reference_logps must have the same shape, got "
            f"{tuple(policy_logps.shape)} and {tuple(reference_logps.shape)}"
        )
    if policy_logps.numel() == 0:
        raise ValueError("kl_estimate needs at least one sample, got empty tensors")
    return (policy_logps - reference_logps).mean()
