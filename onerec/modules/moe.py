"""Dropless mixture-of-experts feed-forward layer (megablocks' dMoE, in plain PyTorch).

The layer follows megablocks' ``dMoE`` so that a checkpoint trained here loads into
megablocks and back: the same ``Arguments`` field names, a softmax router with top-k,
GELU experts stored as ``w1``/``w2`` of shape ``[E * ffn, hidden]``, the state-dict keys
``router.layer.weight``, ``experts.mlp.w1``, ``experts.mlp.w2``, ``experts.bias`` and the
load-balancing loss of ``megablocks.layers.moe.batched_load_balancing_loss``.

What differs from megablocks, on purpose:

* No global mutable state: ``forward`` returns ``(output, load_balancing_loss)``
  instead of appending to a module-level list that the training loop must drain.
* The expert bias is added to the output (megablocks' ``return_bias=False``).
* ``balancing="loss_free"``: the auxiliary-loss-free balancing of DeepSeek-V3 / the OneRec
  technical report (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
  Mixture-of-Experts", arXiv:2408.15664). A per-expert bias is added to the router scores
  for top-k *selection only*; the combine weights stay the unbiased scores. The bias is
  nudged by :meth:`dMoE.update_routing_bias` after each optimiser step.
* The load-balancing loss is always computed in float32 (megablocks' ``moe_lbl_in_fp32``).

Expert compute sorts the ``T * k`` (token, expert) assignments by expert and runs two
grouped matmuls (``torch.nn.functional.grouped_mm``) where the device supports them, or a
loop over the experts' contiguous slices otherwise. :func:`reference_moe_forward` is the
plain dense per-expert version that tests and ``benchmarks/bench_moe.py`` compare against.

Example::

    args = MoEArguments(hidden_size=256, ffn_hidden_size=1024, moe_num_experts=8, moe_top_k=2)
    moe = build_moe(args)
    y, lbl = moe(x)                      # x: (B, T, 256) -> y: (B, T, 256), lbl: ()
    loss = ntp_loss + lbl                # sum lbl over all MoE layers
"""


import dataclasses
import functools
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MoEArguments",
    "RouterOutput",
    "LearnedRouter",
    "ExpertWeights",
    "DroplessExperts",
    "dMoE",
    "build_moe",
    "load_balancing_loss",
    "reference_moe_forward",
    "grouped_mm_supported",
    "expert_activation",
]

_BALANCING = ("aux_loss", "loss_free")
_BACKENDS = ("torch", "megablocks")
_GROUPED_IMPLS = ("auto", "grouped_mm", "loop")

# megablocks' default ``init_method`` / ``output_layer_init_method``: normal(0, 0.02).
_INIT_STD = 0.02


@dataclasses.dataclass
class MoEArguments:
    """Flat MoE configuration; field names follow ``megablocks.layers.arguments.Arguments``.

    Args:
        hidden_size: model width D (input and output of the layer).
        ffn_hidden_size: width of one expert's hidden layer.
        num_layers: number of MoE layers in the model; scales the load-balancing loss so
            that the sum over layers equals megablocks' ``batched_load_balancing_loss``.
        bias: add a learned output bias ``experts.bias`` of shape ``[hidden_size]``.
        moe_num_experts: E, number of experts.
        moe_top_k: k, experts per token (``1 <= k <= E``).
        moe_loss_weight: weight of the load-balancing loss (``balancing="aux_loss"``).
        moe_normalize_expert_weights: ``None`` or p > 0: divide the k chosen weights of a
            token by their p-norm (p=1 makes them sum to 1).
        moe_jitter_eps: ``None`` or eps in (0, 1): in training, the router's input is
            multiplied by noise uniform in ``[1 - eps, 1 + eps]`` (megablocks semantics; the
            experts see the clean input).
        balancing: ``"aux_loss"`` (megablocks' load-balancing loss) or ``"loss_free"``
            (per-expert selection bias, no auxiliary loss).
        bias_update_rate: step u of the loss-free update ``b += u * sign(mean_load - load)``.
        backend: ``"torch"`` (this file) or ``"megablocks"`` (needs a CUDA torch-2.7 env).
        grouped_impl: ``"auto"`` (grouped_mm where it works, else the loop),
            ``"grouped_mm"`` (fail if it cannot run) or ``"loop"``.
    """

    hidden_size: int = 1024
    ffn_hidden_size: int = 4096
    num_layers: int = 1
    bias: bool = True
    moe_num_experts: int = 1
    moe_top_k: int = 1
    moe_loss_weight: float = 0.1
    moe_normalize_expert_weights: Optional[float] = None
    moe_jitter_eps: Optional[float] = None
    balancing: str = "aux_loss"
    bias_update_rate: float = 1e-3
    backend: str = "torch"
    grouped_impl: str = "auto"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "ffn_hidden_size", "num_layers", "moe_num_experts", "moe_top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.moe_top_k > self.moe_num_experts:
            raise ValueError(
                f"moe_top_k={self.moe_top_k} must be <= moe_num_experts={self.moe_num_experts}"
            )
        if not self.moe_loss_weight >= 0.0:
            raise ValueError(f"moe_loss_weight must be >= 0, got {self.moe_loss_weight!r}")
        p = self.moe_normalize_expert_weights
        if p is not None and (isinstance(p, bool) or not p > 0):
            raise ValueError(
                f"moe_normalize_expert_weights must be None or a p-norm order > 0, got {p!r}"
            )
        eps = self.moe_jitter_eps
        if eps is not None and not 0.0 < eps < 1.0:
            raise ValueError(f"moe_jitter_eps must be None or in (0, 1), got {eps!r}")
        if self.balancing not in _BALANCING:
            raise ValueError(f"balancing must be one of {_BALANCING}, got {self.balancing!r}")
        if not self.bias_update_rate >= 0.0:
            raise ValueError(f"bias_update_rate must be >= 0, got {self.bias_update_rate!r}")
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.grouped_impl not in _GROUPED_IMPLS:
            raise ValueError(
                f"grouped_impl must be one of {_GROUPED_IMPLS}, got {self.grouped_impl!r}"
            )
        if self.backend == "megablocks" and self.balancing == "loss_free":
            raise ValueError(
                "balancing='loss_free' is only implemented by backend='torch'; "
                "megablocks has no selection bias (got backend='megablocks')"
            )


class RouterOutput(NamedTuple):
    """Routing decision for T tokens.

    Args:
        scores: (T, E) softmax router probabilities (unbiased; feed the aux loss).
        expert_weights: (T, k) combine weight of each chosen expert.
        expert_indices: (T, k) int64 chosen experts, best first.
    """

    scores: torch.Tensor
    expert_weights: torch.Tensor
    expert_indices: torch.Tensor


def load_balancing_loss(
    tokens_per_expert: torch.Tensor,
    scores: torch.Tensor,
    top_k: int,
    num_layers: int,
    loss_weight: float,
) -> torch.Tensor:
    """megablocks' load-balancing loss for one layer (Switch Transformer, Fedus et al. 2021).

    ``E * loss_weight / (num_layers * T * k) * dot(tokens_per_expert, scores.mean(0))``.
    Summed over the ``num_layers`` MoE layers it equals megablocks'
    ``batched_load_balancing_loss``; with a perfectly uniform router it is
    ``loss_weight / num_layers`` per layer.

    Args:
        tokens_per_expert: (E,) number of the T * k assignments that went to each expert.
        scores: (T, E) softmax router probabilities.
        top_k: k.
        num_layers: number of MoE layers the loss is spread over.
        loss_weight: ``moe_loss_weight``.

    Returns:
        () float32 loss, differentiable through ``scores`` only.
    """
    num_tokens, num_experts = scores.shape[0], scores.shape[1]
    if num_tokens == 0:
        # megablocks sums instead of averaging here; both give 0 for an empty batch.
        return scores.float().sum() * 0.0
    scale = num_experts * loss_weight / (num_layers * num_tokens * top_k)
    return scale * torch.dot(tokens_per_expert.float(), scores.float().mean(dim=0))


class LearnedRouter(nn.Module):
    """Softmax router with top-k selection (megablocks' ``LearnedRouter``).

    Holds ``layer`` (``nn.Linear(hidden, E, bias=False)``) and, for loss-free balancing,
    ``selection_bias`` (E,): added to the scores only to choose the top-k experts.
    """

    jitter_eps: Optional[float]
    normalize_p: Optional[float]

    def __init__(self, args: MoEArguments) -> None:
        super().__init__()
        self.num_experts: int = args.moe_num_experts
        self.top_k: int = args.moe_top_k
        self.jitter_eps = args.moe_jitter_eps
        self.normalize_p = (
            None if args.moe_normalize_expert_weights is None else float(args.moe_normalize_expert_weights)
        )
        self.loss_free: bool = args.balancing == "loss_free"
        self.layer = nn.Linear(args.hidden_size, args.moe_num_experts, bias=False)
        # Saved only for loss-free balancing, so that aux-loss checkpoints carry exactly
        # megablocks' keys. float32 so that many small updates are not rounded away.
        self.register_buffer(
            "selection_bias",
            torch.zeros(args.moe_num_experts, dtype=torch.float32),
            persistent=self.loss_free,
        )

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route tokens.

        Args:
            x: (T, hidden) tokens.

        Returns:
            RouterOutput with scores (T, E), expert_weights (T, k), expert_indices (T, k).
        """
        jitter_eps = self.jitter_eps
        if self.training and jitter_eps is not None:
            # megablocks multiplies the router *input* by the noise, not the logits.
            noise = torch.rand_like(x)
            x = x * (1.0 - jitter_eps + noise * (2.0 * jitter_eps))
        scores = self.layer(x).softmax(dim=-1)  # (T, E)
        if self.loss_free:
            # The bias steers which experts are chosen, never how much they weigh.
            biased = scores.float() + self.selection_bias
            expert_indices = torch.topk(biased, self.top_k, dim=-1).indices  # (T, k)
            expert_weights = scores.gather(1, expert_indices)  # (T, k)
        else:
            expert_weights, expert_indices = torch.topk(scores, self.top_k, dim=-1)
        normalize_p = self.normalize_p
        if normalize_p is not None:
            expert_weights = expert_weights / torch.linalg.vector_norm(
                expert_weights, ord=normalize_p, dim=-1, keepdim=True
            )
        return RouterOutput(scores, expert_weights, expert_indices)


class ExpertWeights(nn.Module):
    """Weights of E GELU experts, stored as megablocks' ``SparseMLP``/``GroupedMLP``.

    ``w1``, ``w2``: ``[E * ffn, hidden]``; expert e computes
    ``gelu(x @ w1_e.T) @ w2_e`` with ``w_e = w.view(E, ffn, hidden)[e]``.
    """

    def __init__(self, args: MoEArguments) -> None:
        super().__init__()
        rows = args.moe_num_experts * args.ffn_hidden_size
        self.w1 = nn.Parameter(torch.empty(rows, args.hidden_size))
        self.w2 = nn.Parameter(torch.empty(rows, args.hidden_size))


def expert_activation(h: torch.Tensor) -> torch.Tensor:
    # megablocks' DEFAULT_ACTIVATION_FN is the tanh approximation of GELU; using the same
    # one is what makes outputs match on the same weights.
    return F.gelu(h, approximate="tanh")


def _grouped_expert_ffn(
    x_sorted: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Both expert matmuls as grouped GEMMs.

    Args:
        x_sorted: (N, hidden) tokens sorted by expert.
        w1, w2: (E, ffn, hidden).
        offsets: (E,) int32 inclusive cumulative token counts (end of each group).

    Returns:
        (N, hidden).
    """
    h = F.grouped_mm(x_sorted, w1.transpose(1, 2), offs=offsets)  # (N, ffn)
    return F.grouped_mm(expert_activation(h), w2, offs=offsets)  # (N, hidden)


@functools.lru_cache(maxsize=None)
def _grouped_mm_runs(device: str, dtype: torch.dtype) -> bool:
    """Try a tiny grouped_mm forward + backward on ``device``; cached per (device, dtype)."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # Constant inputs: the probe must not draw from (and so shift) the global RNG.
            num_experts, width = 2, 16
            x = torch.ones(3, width, device=device, dtype=dtype, requires_grad=True)
            w1 = torch.ones(num_experts, width, width, device=device, dtype=dtype, requires_grad=True)
            w2 = torch.ones(num_experts, width, width, device=device, dtype=dtype, requires_grad=True)
            offsets = torch.tensor([1, 3], device=device, dtype=torch.int32)
            y = _grouped_expert_ffn(x, w1, w2, offsets)
            y.backward(torch.ones_like(y))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, hidden_size: int, ffn_hidden_size: int) -> bool:
    """Whether the grouped_mm expert path can run for these sizes on this device and dtype.

    The kernels need 16-byte aligned rows (hidden and ffn a multiple of 4 in float32, of 8
    in bfloat16) and a device/dtype that this torch build implements, checked once by a probe.
    """
    if not hasattr(F, "grouped_mm") or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    itemsize = dtype.itemsize
    if (hidden_size * itemsize) % 16 or (ffn_hidden_size * itemsize) % 16:
        return False
    return _grouped_mm_runs(str(device), dtype)


class DroplessExperts(nn.Module):
    """Dropless expert compute: every token reaches all of its k experts, no capacity.

    Holds ``mlp`` (:class:`ExpertWeights`) and the optional output ``bias`` ``[hidden]``
    (megablocks' ``ParallelDroplessMLP``).
    """

    bias: Optional[torch.Tensor]

    def __init__(self, args: MoEArguments) -> None:
        super().__init__()
        self.num_experts: int = args.moe_num_experts
        self.top_k: int = args.moe_top_k
        self.hidden_size: int = args.hidden_size
        self.ffn_hidden_size: int = args.ffn_hidden_size
        self.grouped_impl: str = args.grouped_impl
        self.mlp = ExpertWeights(args)
        if args.bias:
            self.bias = nn.Parameter(torch.empty(args.hidden_size))
        else:
            self.register_parameter("bias", None)

    def _grouped_mm_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The dtype the grouped path would compute in, or None to take the loop."""
        if self.grouped_impl == "loop":
            return None
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            # grouped_mm is not on autocast's cast list: cast by hand, as autocast does for
            # the loop's matmuls, so both paths compute in the same precision.
            dtype = torch.get_autocast_dtype(x.device.type)
        if grouped_mm_supported(x.device, dtype, self.hidden_size, self.ffn_hidden_size):
            return dtype
        if self.grouped_impl == "grouped_mm":
            raise ValueError(
                f"grouped_impl='grouped_mm' cannot run on device={x.device} dtype={dtype} with "
                f"hidden_size={self.hidden_size}, ffn_hidden_size={self.ffn_hidden_size} (needs "
                "torch.nn.functional.grouped_mm, float32/bf16/fp16 and 16-byte aligned rows); "
                "use grouped_impl='auto' or 'loop'"
            )
        return None

    def _loop_expert_ffn(self, x_sorted: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """Expert FFN over each expert's contiguous slice of the sorted tokens. (N, hidden)."""
        w1 = self.mlp.w1.view(self.num_experts, self.ffn_hidden_size, self.hidden_size)
        w2 = self.mlp.w2.view(self.num_experts, self.ffn_hidden_size, self.hidden_size)
        counts: List[int] = tokens_per_expert.tolist()
        chunks: List[torch.Tensor] = []
        start = 0
        for e in range(self.num_experts):
            n = counts[e]
            if n > 0:
                h = expert_activation(x_sorted[start : start + n] @ w1[e].t())  # (n, ffn)
                chunks.append(h @ w2[e])  # (n, hidden)
            start += n
        return torch.cat(chunks, dim=0)

    def forward(
        self, x: torch.Tensor, expert_weights: torch.Tensor, expert_indices: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run each token through its k experts and combine.

        Args:
            x: (T, hidden) tokens.
            expert_weights: (T, k) combine weights.
            expert_indices: (T, k) chosen experts.

        Returns:
            output (T, hidden) including the bias, and tokens_per_expert (E,) int64.
        """
        num_tokens = x.shape[0]
        flat_experts = expert_indices.reshape(-1)  # (N,) with N = T * k, token-major
        tokens_per_expert = torch.bincount(flat_experts, minlength=self.num_experts)  # (E,)
        if num_tokens == 0:
            out = x.new_zeros(0, self.hidden_size)
        else:
            # Sort the assignments by expert so each expert reads one contiguous slice.
            # Stable, so ties keep token order and results do not depend on the sort kernel.
            order = torch.sort(flat_experts, stable=True).indices  # (N,)
            x_sorted = x.index_select(0, torch.div(order, self.top_k, rounding_mode="floor"))
            if torch.jit.is_scripting():
                # TorchScript cannot compile F.grouped_mm (keyword-only arguments) nor the
                # Python device probe, so the scripted (serving) layer takes the loop: the
                # same maths. The compiler drops the eager-only branch below unseen.
                y_sorted = self._loop_expert_ffn(x_sorted, tokens_per_expert)
            else:
                dtype = self._grouped_mm_dtype(x)
                if dtype is None:
                    y_sorted = self._loop_expert_ffn(x_sorted, tokens_per_expert)
                else:
                    shape = (self.num_experts, self.ffn_hidden_size, self.hidden_size)
                    w1 = self.mlp.w1.view(shape).to(dtype)
                    w2 = self.mlp.w2.view(shape).to(dtype)
                    offsets = torch.cumsum(tokens_per_expert, dim=0).to(torch.int32)
                    y_sorted = _grouped_expert_ffn(x_sorted.to(dtype), w1, w2, offsets)
            # Un-sort with the inverse permutation (a gather, not a scatter-add, so the
            # forward is deterministic on GPUs too), then weight and sum the k experts.
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            y = y_sorted.index_select(0, inverse).view(num_tokens, self.top_k, self.hidden_size)
            out = (y * expert_weights.unsqueeze(-1).to(y.dtype)).sum(dim=1)  # (T, hidden)
        bias = self.bias
        if bias is not None:
            out = out + bias
        return out, tokens_per_expert


class dMoE(nn.Module):  # noqa: N801 - megablocks' class name, kept for familiarity
    """Dropless MoE feed-forward layer, plain-PyTorch backend (TorchScript-able in eval).

    Submodules give megablocks' state-dict keys::

        router.layer.weight   [E, hidden]
        experts.mlp.w1        [E * ffn, hidden]
        experts.mlp.w2        [E * ffn, hidden]
        experts.bias          [hidden]            (args.bias)
        router.selection_bias [E]                 (balancing="loss_free" only)

    ``tokens_per_expert`` (E,) is a non-persistent buffer holding the last forward's load,
    for logging and for :meth:`update_routing_bias`.

    Args:
        args: :class:`MoEArguments` with ``backend="torch"`` (use :func:`build_moe` to honour
            ``backend``).

    Example::

        moe = dMoE(MoEArguments(hidden_size=64, ffn_hidden_size=256, moe_num_experts=4, moe_top_k=2))
        y, lbl = moe(torch.randn(2, 10, 64))     # y: (2, 10, 64), lbl: ()
    """

    __jit_ignored_attributes__ = ["args"]

    def __init__(self, args: MoEArguments) -> None:
        super().__init__()
        if args.backend != "torch":
            raise ValueError(
                f"dMoE is the backend='torch' layer, got backend={args.backend!r}; "
                "build the layer with build_moe(args) to honour moe.backend"
            )
        self.args = args
        self.hidden_size: int = args.hidden_size
        self.num_experts: int = args.moe_num_experts
        self.top_k: int = args.moe_top_k
        self.num_layers: int = args.num_layers
        self.moe_loss_weight: float = args.moe_loss_weight
        self.compute_aux_loss: bool = args.balancing == "aux_loss" and args.moe_loss_weight > 0
        self.router = LearnedRouter(args)
        self.experts = DroplessExperts(args)
        self.register_buffer(
            "tokens_per_expert", torch.zeros(args.moe_num_experts, dtype=torch.int64), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """megablocks' default init: normal(0, 0.02) weights, zero bias and selection bias."""
        nn.init.normal_(self.router.layer.weight, mean=0.0, std=_INIT_STD)
        nn.init.normal_(self.experts.mlp.w1, mean=0.0, std=_INIT_STD)
        nn.init.normal_(self.experts.mlp.w2, mean=0.0, std=_INIT_STD)
        if self.experts.bias is not None:
            nn.init.zeros_(self.experts.bias)
        with torch.no_grad():
            self.router.selection_bias.zero_()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Apply the MoE FFN token-wise.

        Args:
            x: (..., hidden) e.g. (B, T, D); every leading position is one token.

        Returns:
            output (..., hidden) and the load-balancing loss () float32: megablocks' loss
            in training with ``balancing="aux_loss"``, else 0.
        """
        in_shape = x.shape
        x2d = x.reshape(-1, self.hidden_size)  # (T, D)
        route = self.router(x2d)
        out, tokens_per_expert = self.experts(x2d, route.expert_weights, route.expert_indices)
        self.tokens_per_expert.copy_(tokens_per_expert)
        if self.training and self.compute_aux_loss:
            lbl = load_balancing_loss(
                tokens_per_expert, route.scores, self.top_k, self.num_layers, self.moe_loss_weight
            )
        else:
            lbl = torch.zeros((), dtype=torch.float32, device=x.device)
        return out.view(in_shape), lbl

    def update_routing_bias(self, tokens_per_expert: Optional[torch.Tensor] = None) -> None:
        """Loss-free balancing step: ``b += bias_update_rate * sign(mean_load - load)``.

        Call after the optimiser step (outside autograd). Under data parallelism, sum the
        counts over micro-batches and all-reduce them first so every rank takes the same step.

        Args:
            tokens_per_expert: (E,) load to balance; defaults to the last forward's.
        """
        if self.args.balancing != "loss_free":
            raise ValueError(
                f"update_routing_bias needs balancing='loss_free', got {self.args.balancing!r}"
            )
        load = self.tokens_per_expert if tokens_per_expert is None else tokens_per_expert
        if load.shape != (self.num_experts,):
            raise ValueError(
                f"tokens_per_expert must have shape ({self.num_experts},), got {tuple(load.shape)}"
            )
        bias = self.router.selection_bias
        with torch.no_grad():
            load = load.to(device=bias.device, dtype=torch.float32)
            bias.add_(self.args.bias_update_rate * torch.sign(load.mean() - load))


def build_moe(args: MoEArguments) -> nn.Module:
    """The MoE layer for ``args.backend``: :class:`dMoE` or the megablocks adapter."""
    if args.backend == "megablocks":
        from onerec.modules.megablocks_adapter import MegablocksDMoE  # megablocks is optional

        return MegablocksDMoE(args)
    return dMoE(args)


def reference_moe_forward(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: Optional[torch.Tensor],
    top_k: int,
    normalize_expert_weights: Optional[float] = None,
    selection_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain dense MoE: every expert runs on every token, then a (T, E) mask combines them.

    Slow (E / k times the FLOPs) and obviously correct; the reference for tests and
    benchmarks. No jitter (call it as an eval-mode layer).

    Args:
        x: (..., hidden).
        router_weight: (E, hidden).
        w1, w2: (E * ffn, hidden).
        bias: (hidden,) or None.
        top_k: k.
        normalize_expert_weights: None or p-norm order for the k weights.
        selection_bias: (E,) loss-free selection bias, or None.

    Returns:
        output (..., hidden), scores (T, E), tokens_per_expert (E,) int64.
    """
    num_experts, hidden = router_weight.shape
    x2d = x.reshape(-1, hidden)  # (T, D)
    scores = torch.softmax(x2d @ router_weight.t(), dim=-1)  # (T, E)
    selection = scores if selection_bias is None else scores.float() + selection_bias
    indices = torch.topk(selection, top_k, dim=-1).indices  # (T, k)
    weights = scores.gather(1, indices)  # (T, k)
    if normalize_expert_weights is not None:
        weights = weights / weights.norm(p=normalize_expert_weights, dim=-1, keepdim=True)
    combine = torch.zeros_like(scores).scatter(1, indices, weights)  # (T, E)
    w1e = w1.view(num_experts, -1, hidden)  # (E, ffn, D)
    w2e = w2.view(num_experts, -1, hidden)
    out = torch.zeros_like(x2d)
    for e in range(num_experts):
        y = F.gelu(x2d @ w1e[e].t(), approximate="tanh") @ w2e[e]  # (T, D)
        out = out + combine[:, e : e + 1] * y
    if bias is not None:
        out = out + bias
    tokens_per_expert = torch.bincount(indices.reshape(-1), minlength=num_experts)
    return out.view(x.shape), scores, tokens_per_expert

