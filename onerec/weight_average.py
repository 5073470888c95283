"""An exponential moving average of the weights, validated and saved in place of the raw ones.

Late in a run the validation metric jumps by a few percent from epoch to epoch (the last
batches' noise); the average of the last few thousand steps' weights smooths that out.
torch's :class:`~torch.optim.swa_utils.AveragedModel` does the averaging (one fused ``lerp``
over all parameters per step); this wrapper adds what a training run needs around it:
the buffers (the MoE's routing bias and expert counts are controller state, not weights, so
they are the live model's, not averaged), and a state that a checkpoint can carry.

Example::

    average = WeightAverage(model, decay=0.999)
    for batch in batches:
        ...; optimizer.step()
        average.update(model)
    best = average.model(model)  # the averaged weights, the live model's buffers
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """``W_avg ← decay · W_avg + (1 - decay) · W`` after every step (the first copies ``W``).

    Args:
        model: the model being trained (copied once; the copy holds the average).
        decay: between 0 and 1; 0.999 averages over roughly the last 1,000 steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay}; expected a number strictly between 0 and 1")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        for parameter in self.averaged.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def model(self, live: nn.Module) -> nn.Module:
        """The averaged model, its buffers refreshed from ``live`` (same architecture)."""
        for mine, theirs in zip(self.averaged.module.buffers(), live.buffers(), strict=True):
            mine.copy_(theirs)
        return self.averaged.module

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the averaged weights themselves."""
        return {"decay": self.decay, "updates": self.updates}

    @torch.no_grad()
    def restore(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Put back the averaged weights and the step count of :meth:`state`."""
        if float(state["decay"]) != self.decay:
            raise ValueError(f"the checkpoint averaged with decay {state['decay']}, this run asks for {self.decay}")
        self.averaged.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(int(state["updates"]))
