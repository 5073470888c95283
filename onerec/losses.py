"""Next-token prediction over session codes, and the sequence log-probability of a session.

The DPO family lives in :mod:`onerec.preference_losses`; the MoE load-balancing loss in
:mod:`onerec.modules.moe` (it is computed inside each layer's forward).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor


def ntp_loss(logits: List[Tensor], target_codes: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of every code of every target item.

    Args:
        logits: one ``[B, m, K_l]`` tensor per level l.
        target_codes: ``[B, m, L]``.
        label_smoothing: mass spread uniformly over level l's K_l codes (0: plain CE).

    Returns:
        scalar: the mean over the B·m·L predicted codes.
    """
    total = torch.zeros((), device=target_codes.device)
    for level, level_logits in enumerate(logits):
        total = total + F.cross_entropy(
            level_logits.float().flatten(0, 1), target_codes[:, :, level].flatten(), reduction="sum",
            label_smoothing=label_smoothing,
        )
    return total / target_codes.numel()


def session_logprob(logits: List[Tensor], target_codes: Tensor) -> Tensor:
    """log p(session | history): the sum of its m·L code log-probabilities.

    Args:
        logits: one ``[B, m, K_l]`` tensor per level.
        target_codes: ``[B, m, L]``.

    Returns:
        ``[B]``.
    """
    total = torch.zeros(target_codes.shape[0], device=target_codes.device)
    for level, level_logits in enumerate(logits):
        log_probs = torch.log_softmax(level_logits.float(), dim=-1)
        total = total + log_probs.gather(-1, target_codes[:, :, level, None]).squeeze(-1).sum(1)
    return total


def next_item_loss(logits: Tensor, target_items: Tensor) -> Tensor:
    """Mean cross-entropy of each target item under one softmax over the catalogue.

    Args:
        logits: ``[B, num_items]``.
        target_items: ``[B, m]``.
    """
    b, m = target_items.shape
    expanded = logits.float()[:, None, :].expand(b, m, logits.shape[-1])
    return F.cross_entropy(expanded.reshape(b * m, -1), target_items.reshape(-1))
