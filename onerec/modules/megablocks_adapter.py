"""megablocks' dMoE behind :class:`onerec.modules.moe.dMoE`'s interface (``moe.backend=megablocks``).

megablocks is optional and never imported unless asked for: it needs a CUDA torch-2.7
environment and cannot be installed beside this project's torch/torchrec.
"""

from __future__ import annotations

import types
from typing import Optional, Tuple

import torch
from torch import nn

from onerec.modules.moe import MoEArguments, load_balancing_loss


class MegablocksDMoE(nn.Module):
    """Adapter around ``megablocks.layers.dmoe.dMoE`` with :class:`dMoE`'s interface.

    It registers megablocks' ``router`` and ``experts`` directly, so its state dict has the
    same keys as :class:`dMoE` and loads the same checkpoints. All megablocks quirks live
    here: its CUDA/fp16 defaults, its bias returned separately (``return_bias``), its
    (sl, bs, hs) input, and its global list of load-balancing inputs, drained every forward.

    Args:
        args: :class:`MoEArguments` (``backend="megablocks"``).
        device: CUDA device for the weights (megablocks' default is the current device).
        dtype: weight dtype (megablocks' grouped GEMM package is, to our knowledge, built for
            ``torch.bfloat16``; unverified here).
    """

    def __init__(
        self, args: MoEArguments, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        mb_arguments, mb_moe, mb_dmoe = _import_megablocks()
        self.args = args
        mb_args = mb_arguments.Arguments(
            hidden_size=args.hidden_size,
            ffn_hidden_size=args.ffn_hidden_size,
            num_layers=args.num_layers,
            bias=args.bias,
            return_bias=False,
            moe_num_experts=args.moe_num_experts,
            moe_top_k=args.moe_top_k,
            moe_loss_weight=args.moe_loss_weight,
            moe_normalize_expert_weights=args.moe_normalize_expert_weights,
            moe_jitter_eps=args.moe_jitter_eps,
            moe_lbl_in_fp32=True,
            # "sparse" needs triton < 3.2 and ffn % 128 == 0; "grouped" matches our path.
            mlp_impl="grouped",
            fp16=dtype == torch.float16,
            bf16=dtype == torch.bfloat16,
            device=device if device is not None else torch.cuda.current_device(),
        )
        layer = mb_dmoe.dMoE(mb_args)
        self.router = layer.router
        self.experts = layer.experts
        self._mb_moe = mb_moe  # the module object, to drain its global load-balancing list
        self.register_buffer(
            "tokens_per_expert", torch.zeros(args.moe_num_experts, dtype=torch.int64), persistent=False
        )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Same contract as :meth:`dMoE.forward`: (..., hidden) -> ((..., hidden), ())."""
        in_shape = x.shape
        x3d = x.reshape(-1, 1, self.args.hidden_size)  # megablocks wants (sl, bs, hs)
        scores, expert_weights, top_experts = self.router(x3d)
        out = self.experts(x3d, scores, expert_weights, top_experts)
        # megablocks appends (counts, scores) to a module-level list in training and never
        # frees it; the loss is computed here from the same tensors instead.
        self._mb_moe.clear_load_balancing_loss()
        tokens_per_expert = torch.bincount(top_experts.reshape(-1), minlength=self.args.moe_num_experts)
        self.tokens_per_expert.copy_(tokens_per_expert)
        if self.training and self.args.moe_loss_weight > 0:
            lbl = load_balancing_loss(
                tokens_per_expert, scores, self.args.moe_top_k, self.args.num_layers, self.args.moe_loss_weight
            )
        else:
            lbl = torch.zeros((), dtype=torch.float32, device=x.device)
        return out.reshape(in_shape), lbl


def _import_megablocks() -> Tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """megablocks.layers.{arguments, moe, dmoe}, imported on demand with an error that says
    how to get going without them."""
    try:
        from megablocks.layers import arguments as mb_arguments
        from megablocks.layers import dmoe as mb_dmoe
        from megablocks.layers import moe as mb_moe
    except ImportError as err:
        raise ImportError(
            "moe.backend=megablocks needs the megablocks package, which requires a CUDA "
            "torch-2.7 environment (it cannot be installed beside this project's torch/torchrec); "
            "moe.backend=torch is the default and computes the same layer. "
            f"Import failed with: {err}"
        ) from err
    return mb_arguments, mb_moe, mb_dmoe
