"""Tests for onerec/modules/moe.py: routing worked out by hand, droplessness, the grouped /
loop / dense-reference agreement, megablocks' state-dict layout, loss-free balancing,
TorchScript, and argument errors."""

import dataclasses
import importlib.util
import io
import math
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F

from onerec.modules.moe import (
    MoEArguments,
    build_moe,
    dMoE,
    grouped_mm_supported,
    load_balancing_loss,
    reference_moe_forward,
)


def _gelu_tanh(v: float) -> float:
    # megablocks' GELU (tanh approximation): 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))).
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def _hand_layer(**overrides: object) -> dMoE:
    """E=3 experts, hidden=4, ffn=1, k=2, with weights chosen so softmax gives eighths.

    Token t is the unit vector e_t (t = 0, 1, 2), so its router logits are column t of the
    router weight. Logits ln(a), ln(b), ln(c) give softmax a/s, b/s, c/s with s = a + b + c:

        token 0: ln[1, 2, 5] -> scores [1/8, 2/8, 5/8] -> top-2 experts 2 (5/8), 1 (2/8)
        token 1: ln[5, 2, 1] -> scores [5/8, 2/8, 1/8] -> top-2 experts 0 (5/8), 1 (2/8)
        token 2: ln[1, 3, 4] -> scores [1/8, 3/8, 4/8] -> top-2 experts 2 (4/8), 1 (3/8)

    Every expert has w1 row u_e = [1, 1, 1, 0], so its pre-activation on a unit token is 1
    and its hidden unit is g = gelu(1); its w2 row is the unit vector v_e, so
    expert e outputs g * v_e. The output bias is [0, 0, 0, 0.5].
    """
    fields: Dict[str, object] = dict(
        hidden_size=4, ffn_hidden_size=1, moe_num_experts=3, moe_top_k=2, moe_loss_weight=0.1
    )
    fields.update(overrides)
    layer = dMoE(MoEArguments(**fields))  # type: ignore[arg-type]
    logits = torch.log(torch.tensor([[1.0, 5.0, 1.0], [2.0, 2.0, 3.0], [5.0, 1.0, 4.0]]))  # (E, 3 tokens)
    with torch.no_grad():
        layer.router.layer.weight.copy_(torch.cat([logits, torch.zeros(3, 1)], dim=1))  # (E, D)
        layer.experts.mlp.w1.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(3, 1))  # (E*ffn, D)
        layer.experts.mlp.w2.copy_(torch.eye(3, 4))  # (E*ffn, D)
        layer.experts.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5]))
    return layer


def _hand_tokens() -> torch.Tensor:
    return torch.eye(3, 4).unsqueeze(0)  # (B=1, T=3, D=4)


def test_routing_output_and_load_balancing_loss_by_hand() -> None:
    layer = _hand_layer()  # training mode: the aux loss is live
    y, lbl = layer(_hand_tokens())
    g = _gelu_tanh(1.0)
    expected = torch.tensor(
        [
            [0.0, 2 / 8 * g, 5 / 8 * g, 0.5],  # token 0: 5/8 * v_2 + 2/8 * v_1 + bias
            [5 / 8 * g, 2 / 8 * g, 0.0, 0.5],  # token 1: 5/8 * v_0 + 2/8 * v_1 + bias
            [0.0, 3 / 8 * g, 4 / 8 * g, 0.5],  # token 2: 4/8 * v_2 + 3/8 * v_1 + bias
        ]
    ).unsqueeze(0)
    assert y.shape == (1, 3, 4)
    torch.testing.assert_close(y, expected)
    # Assignments: expert 0 <- token 1; expert 1 <- tokens 0, 1, 2; expert 2 <- tokens 0, 2.
    assert layer.tokens_per_expert.tolist() == [1, 3, 2]
    # mean scores over the 3 tokens: [(1+5+1)/24, (2+2+3)/24, (5+1+4)/24] = [7, 7, 10] / 24
    # dot = (1*7 + 3*7 + 2*10) / 24 = 48 / 24 = 2
    # scale = E * w / (num_layers * T * k) = 3 * 0.1 / (1 * 3 * 2) = 0.05 -> loss 0.1
    torch.testing.assert_close(lbl, torch.tensor(0.1))
    # num_layers=2 halves the per-layer scale: 0.025 * 2 = 0.05.
    _, lbl2 = _hand_layer(num_layers=2)(_hand_tokens())
    torch.testing.assert_close(lbl2, torch.tensor(0.05))
    # Aux loss is a training signal only (megablocks records it only in training).
    assert layer.eval()(_hand_tokens())[1].item() == 0.0


def test_normalized_expert_weights_by_hand() -> None:
    # p = 1: the two chosen weights are divided by their sum.
    # token 0: [5/8, 2/8] / (7/8) = [5/7, 2/7]; token 1: [5/7, 2/7]; token 2: [4/7, 3/7].
    layer = _hand_layer(moe_normalize_expert_weights=1.0).eval()
    y, _ = layer(_hand_tokens())
    g = _gelu_tanh(1.0)
    expected = torch.tensor(
        [
            [0.0, 2 / 7 * g, 5 / 7 * g, 0.5],
            [5 / 7 * g, 2 / 7 * g, 0.0, 0.5],
            [0.0, 3 / 7 * g, 4 / 7 * g, 0.5],
        ]
    ).unsqueeze(0)
    torch.testing.assert_close(y, expected)


def test_top1_by_hand() -> None:
    # k = 1: token 0 -> expert 2 (5/8), token 1 -> expert 0 (5/8), token 2 -> expert 2 (4/8).
    y, lbl = _hand_layer(moe_top_k=1)(_hand_tokens())
    g = _gelu_tanh(1.0)
    expected = torch.tensor(
        [[0.0, 0.0, 5 / 8 * g, 0.5], [5 / 8 * g, 0.0, 0.0, 0.5], [0.0, 0.0, 4 / 8 * g, 0.5]]
    ).unsqueeze(0)
    torch.testing.assert_close(y, expected)
    # counts [1, 0, 2]; dot = (1*7 + 0 + 2*10) / 24 = 27/24; scale = 3*0.1/(3*1) = 0.1
    torch.testing.assert_close(lbl, torch.tensor(0.1 * 27 / 24))


def _expert_ffn(layer: dMoE, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e of ``layer`` on x (..., D), written out from megablocks' layout."""
    args = layer.args
    w1 = layer.experts.mlp.w1.view(args.moe_num_experts, args.ffn_hidden_size, args.hidden_size)[e]
    w2 = layer.experts.mlp.w2.view(args.moe_num_experts, args.ffn_hidden_size, args.hidden_size)[e]
    return F.gelu(x @ w1.t(), approximate="tanh") @ w2


@pytest.mark.parametrize("grouped_impl", ["auto", "loop"])
def test_dropless_when_every_token_picks_the_same_expert(grouped_impl: str) -> None:
    torch.manual_seed(0)
    num_tokens, k = 64, 2
    args = MoEArguments(
        hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, moe_top_k=k, grouped_impl=grouped_impl
    )
    layer = dMoE(args).eval()
    with torch.no_grad():
        layer.router.layer.weight.zero_()
        layer.router.layer.weight[0].fill_(5.0)  # positive tokens all prefer expert 0
        layer.experts.bias.normal_()
    x = torch.rand(num_tokens, 8) + 0.5  # (T, D)
    y, _ = layer(x)
    route = layer.router(x)
    assert (route.expert_indices[:, 0] == 0).all()
    counts = layer.tokens_per_expert
    assert counts[0].item() == num_tokens  # no capacity: expert 0 takes all 64
    assert counts.sum().item() == num_tokens * k  # no token lost
    for t in range(num_tokens):
        expected = layer.experts.bias.clone()
        for j in range(k):
            e = int(route.expert_indices[t, j])
            expected = expected + route.expert_weights[t, j] * _expert_ffn(layer, e, x[t])
        torch.testing.assert_close(y[t], expected)


def _grads(layer: dMoE, x: torch.Tensor, use_reference: bool) -> List[torch.Tensor]:
    """Output, loss and gradients of (output, x, every parameter) under one scalar objective."""
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    if use_reference:
        y, scores, counts = reference_moe_forward(
            x,
            layer.router.layer.weight,
            layer.experts.mlp.w1,
            layer.experts.mlp.w2,
            layer.experts.bias,
            layer.args.moe_top_k,
            layer.args.moe_normalize_expert_weights,
            layer.router.selection_bias if layer.args.balancing == "loss_free" else None,
        )
        lbl = torch.zeros(())
        if layer.args.balancing == "aux_loss":
            lbl = load_balancing_loss(
                counts, scores, layer.args.moe_top_k, layer.args.num_layers, layer.args.moe_loss_weight
            )
    else:
        y, lbl = layer(x)
    (y.square().sum() + 10.0 * lbl).backward()
    return [y.detach(), lbl.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"moe_normalize_expert_weights": 1.0, "bias": False},
        {"moe_normalize_expert_weights": 2.0, "moe_top_k": 3},
        {"balancing": "loss_free"},
        {"moe_top_k": 1, "num_layers": 3},
    ],
)
def test_grouped_mm_equals_loop_equals_reference(overrides: Dict[str, object]) -> None:
    torch.manual_seed(0)
    args = MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2)
    args = dataclasses.replace(args, **overrides)  # type: ignore[arg-type]
    layer = dMoE(dataclasses.replace(args, grouped_impl="loop"))  # training mode, no jitter
    with torch.no_grad():
        layer.router.layer.weight.normal_(0.0, 1.0)  # spread the routing over the experts
        if layer.experts.bias is not None:
            layer.experts.bias.normal_()
        layer.router.selection_bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
    x = torch.randn(3, 5, 8)  # (B, T, D)
    expected = _grads(layer, x, use_reference=True)
    results = {"loop": _grads(layer, x, use_reference=False)}
    if grouped_mm_supported(x.device, x.dtype, 8, 16):
        grouped = dMoE(dataclasses.replace(args, grouped_impl="grouped_mm"))
        grouped.load_state_dict(layer.state_dict())
        results["grouped_mm"] = _grads(grouped, x, use_reference=False)
    for name, got in results.items():
        assert len(got) == len(expected), name
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_grouped_mm_and_loop_agree_under_autocast() -> None:
    if not grouped_mm_supported(torch.device("cpu"), torch.bfloat16, 8, 16):
        pytest.skip("grouped_mm cannot run in bfloat16 on this CPU build")
    torch.manual_seed(0)
    args = MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2)
    loop = dMoE(dataclasses.replace(args, grouped_impl="loop"))
    grouped = dMoE(dataclasses.replace(args, grouped_impl="grouped_mm"))
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # The router runs in bf16 too, so both layers route identically.
        y_loop, _ = loop(x)
        y_grouped, _ = grouped(x)
    torch.testing.assert_close(y_grouped, y_loop)


def test_grouped_mm_request_on_unaligned_sizes_names_the_problem() -> None:
    # ffn=3 floats = 12-byte rows: grouped_mm needs 16-byte alignment.
    layer = dMoE(MoEArguments(hidden_size=8, ffn_hidden_size=3, moe_num_experts=2, grouped_impl="grouped_mm"))
    with pytest.raises(ValueError, match="ffn_hidden_size=3"):
        layer(torch.randn(4, 8))


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_and_shapes_match_megablocks(bias: bool) -> None:
    layer = dMoE(MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, bias=bias))
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    expected = {
        "router.layer.weight": (4, 8),
        "experts.mlp.w1": (64, 8),
        "experts.mlp.w2": (64, 8),
    }
    if bias:
        expected["experts.bias"] = (8,)
    assert shapes == expected
    # Loss-free balancing adds its selection bias, so that it survives checkpoints.
    loss_free = dMoE(MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, balancing="loss_free"))
    assert set(loss_free.state_dict()) == set(expected) | {"experts.bias", "router.selection_bias"}


def test_loss_free_bias_changes_selection_not_weights() -> None:
    torch.manual_seed(0)
    args = MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2, balancing="loss_free")
    layer = dMoE(args)
    with torch.no_grad():
        layer.router.selection_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))
    x = torch.randn(32, 8)
    y, lbl = layer(x)
    assert lbl.item() == 0.0  # no auxiliary loss in loss-free mode
    route = layer.router(x)
    assert (route.expert_indices == 3).any(dim=1).all()  # the bias forces expert 3 in
    # ...but its weight is the plain softmax score, not score + 10.
    torch.testing.assert_close(route.expert_weights, route.scores.gather(1, route.expert_indices))
    assert route.expert_weights.max().item() <= 1.0


def test_loss_free_update_moves_toward_balance_and_leaves_weights_alone() -> None:
    torch.manual_seed(0)
    args = MoEArguments(
        hidden_size=8,
        ffn_hidden_size=16,
        moe_num_experts=4,
        moe_top_k=1,
        balancing="loss_free",
        bias_update_rate=0.02,
    )
    layer = dMoE(args)
    with torch.no_grad():
        layer.router.layer.weight[0].add_(0.5)  # skew positive tokens towards expert 0
    params_before = {k: v.clone() for k, v in layer.named_parameters()}
    x = torch.rand(256, 8)

    def max_share() -> float:
        with torch.no_grad():
            layer(x)
        return layer.tokens_per_expert.max().item() / x.shape[0]

    start = max_share()
    assert start > 0.5
    counts_before = layer.tokens_per_expert.clone()
    layer.update_routing_bias()  # defaults to the last forward's counts
    bias = layer.router.selection_bias
    # b += u * sign(mean - load): the overloaded expert goes down by u, starved ones go up.
    overloaded = int(counts_before.argmax())
    assert bias[overloaded].item() == pytest.approx(-0.02)
    assert all(bias[e].item() == pytest.approx(0.02) for e in range(4) if counts_before[e] < 64)
    for _ in range(60):
        max_share()
        layer.update_routing_bias(layer.tokens_per_expert)
    assert max_share() < start - 0.2
    for name, value in layer.named_parameters():
        assert torch.equal(value, params_before[name]), name


def test_update_routing_bias_errors_name_the_problem() -> None:
    aux = dMoE(MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4))
    with pytest.raises(ValueError, match="'aux_loss'"):
        aux.update_routing_bias()
    loss_free = dMoE(MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, balancing="loss_free"))
    with pytest.raises(ValueError, match=r"\(4,\), got \(3,\)"):
        loss_free.update_routing_bias(torch.ones(3))


def test_torchscript_matches_eager() -> None:
    torch.manual_seed(0)
    args = MoEArguments(
        hidden_size=8,
        ffn_hidden_size=16,
        moe_num_experts=4,
        moe_top_k=2,
        moe_normalize_expert_weights=1.0,
        moe_jitter_eps=0.1,
        balancing="loss_free",
    )
    layer = dMoE(args).eval()
    with torch.no_grad():
        layer.router.layer.weight.normal_()
        layer.experts.bias.normal_()
        layer.router.selection_bias.copy_(torch.tensor([0.2, 0.0, -0.1, 0.0]))
    scripted = torch.jit.script(layer)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        y, lbl = layer(x)
        for module in (scripted, loaded):
            y_s, lbl_s = module(x)
            torch.testing.assert_close(y_s, y)
            torch.testing.assert_close(lbl_s, lbl)


def test_empty_input_and_leading_dims() -> None:
    layer = dMoE(MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2))
    y, lbl = layer(torch.randn(0, 3, 8))
    assert y.shape == (0, 3, 8) and lbl.item() == 0.0
    assert layer(torch.randn(2, 3, 4, 8))[0].shape == (2, 3, 4, 8)


def test_jitter_only_in_training() -> None:
    torch.manual_seed(0)
    base = MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2)
    plain = dMoE(base).eval()
    with torch.no_grad():
        plain.router.layer.weight.normal_()
    jittered = dMoE(dataclasses.replace(base, moe_jitter_eps=0.5))
    jittered.load_state_dict(plain.state_dict())
    x = torch.randn(16, 8)
    torch.testing.assert_close(jittered.eval()(x)[0], plain(x)[0])
    assert not torch.allclose(jittered.train()(x)[0], plain(x)[0])


def test_megablocks_backend_without_megablocks_is_a_clear_error() -> None:
    if importlib.util.find_spec("megablocks") is not None:
        pytest.skip("megablocks is installed here")
    args = MoEArguments(hidden_size=8, ffn_hidden_size=16, moe_num_experts=4, backend="megablocks")
    with pytest.raises(ImportError, match=r"CUDA torch-2\.7.*moe\.backend=torch is the default"):
        build_moe(args)
    with pytest.raises(ValueError, match="build_moe"):
        dMoE(args)
    assert isinstance(build_moe(dataclasses.replace(args, backend="torch")), dMoE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"moe_num_experts": 2, "moe_top_k": 3}, "moe_top_k=3 must be <= moe_num_experts=2"),
        ({"hidden_size": 0}, "hidden_size must be a positive int, got 0"),
        ({"moe_num_experts": 2.0}, "moe_num_experts must be a positive int, got 2.0"),
        ({"moe_loss_weight": -1.0}, "got -1.0"),
        ({"moe_normalize_expert_weights": 0}, "p-norm order > 0, got 0"),
        ({"moe_jitter_eps": 1.5}, r"in \(0, 1\), got 1.5"),
        ({"balancing": "switch"}, "balancing must be one of .*got 'switch'"),
        ({"backend": "tutel"}, "backend must be one of .*got 'tutel'"),
        ({"grouped_impl": "cutlass"}, "grouped_impl must be one of .*got 'cutlass'"),
        ({"bias_update_rate": -0.1}, "got -0.1"),
        ({"backend": "megablocks", "balancing": "loss_free"}, "loss_free.*backend='megablocks'"),
    ],
)
def test_invalid_arguments_name_the_bad_value(overrides: Dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoEArguments(**overrides)  # type: ignore[arg-type]
