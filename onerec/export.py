"""``onerec-export``: a trained run → a serving artefact (TorchScript + AOTInductor + item tables).

    onerec-export run_dir=RUN out_dir=ARTEFACT [beam_size=16] [aoti=true] [aoti_num_items=[5]]

What is exported is the whole constrained beam search of :class:`~onerec.generate.SessionGenerator`
(encoder, KV-cached decoder, trie walk), so one call maps a batch of padded histories to
sessions of item indices and scores:

- ``model.ts``: ``torch.jit.script`` of the generator (never ``trace``: it would bake in the
  history lengths). ``num_items`` and ``beam_size`` stay call arguments.
- ``model.pt2``: ``torch.export`` + AOTInductor of the same search with ``num_items`` and
  ``beam_size`` fixed as Python ints (the loops unroll into one straight graph) and the batch
  size and history length dynamic; one compiled program per exported ``num_items``. The whole
  loop exports; nothing is split into a hot part.

Both serve the generator with :class:`DenseMoE` in place of the decoder's dropless MoE layers:
the same maths without the training layer's sort by expert, which ``torch.export`` cannot take
(``grouped_mm`` has no CPU fp32 fake kernel; the loop needs ``.tolist()``). TorchScript runs
every expert on every row below 32 rows (two dense matmuls, faster there) and each expert on
its own rows from 32; the AOTInductor programs always run each expert on its own rows (found
with ``nonzero``: data-dependent sizes that export keeps symbolic). The eager
:class:`~onerec.generate.SessionGenerator` stays the reference: :func:`check_against_eager`
(run by the export and by the tests) requires the same items and close scores.

AOTInductor compiles C++ with the host compiler; on a 2-core CPU that takes minutes per
program (the manifest records ``compile_s``). ``aoti=false`` skips it.
"""

# No ``from __future__ import annotations``: TorchScript reads DenseMoE's annotations as objects.

import contextlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import polars as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from data_pipeline.cli import UserError
from onerec.artefact import (
    CONFIG,
    ITEMS,
    MODEL_AOTI,
    MODEL_TS,
    USER_FEATURES,
    WEIGHTS,
    Artefact,
    load_artefact,
    quiet_torchscript,
    runtime_versions,
    weights_version,
    write_manifest,
)
from onerec.generate import SessionGenerator
from onerec.modules.moe import expert_activation, dMoE
from onerec.trie import SemanticIdTrie

__all__ = [
    "DenseMoE",
    "ExportConfig",
    "SessionProgram",
    "aoti_generator",
    "gelu_through_sigmoid",
    "check_against_eager",
    "compile_aoti",
    "export_program",
    "export_run",
    "script_generator",
    "serving_generator",
]

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    """``onerec-export``.

    Attributes:
        run_dir: a run folder from onerec-train or onerec-align.
        out_dir: the artefact folder to write (must be empty or absent unless ``overwrite``).
        data_dir: the bundle (default: the run's own).
        checkpoint: ``best`` (falls back to ``last``) or ``last``.
        beam_size: beams of the served search (fixed in the AOTInductor programs).
        aoti: also compile the torch.export + AOTInductor programs (minutes of C++ compiling).
        aoti_num_items: the session lengths to compile a program for (empty: the model's
            session length); a request for another length runs on TorchScript.
        check: compare both artefacts with the eager generator before writing the manifest.
        overwrite: replace an existing artefact folder.
    """

    run_dir: str = "???"
    out_dir: str = "???"
    data_dir: Optional[str] = None
    checkpoint: str = "best"
    beam_size: int = 16
    aoti: bool = True
    aoti_num_items: List[int] = field(default_factory=list)
    check: bool = True
    overwrite: bool = False


# ---------------------------------------------------------------------------------------
# The inference form of the generator.


#: The TorchScript artefact's :class:`DenseMoE` switches to the sorted per-expert path from
#: this many rows (a beam search step has batch × beam rows): about where the two paths
#: break even (``benchmarks/bench_moe_inference.py``).
TORCHSCRIPT_SPARSE_MIN_ROWS = 32
#: The AOTInductor programs run each expert on its own rows at every size: compiled, that is
#: faster than dense from 16 rows (one user's beam) on (``benchmarks/bench_moe_inference.py``).
AOTI_SPARSE_MIN_ROWS = 1


def gelu_through_sigmoid(h: Tensor) -> Tensor:
    """The tanh-approximated GELU written as ``h * sigmoid(2 u)``, ``u = sqrt(2 / pi) (h +
    0.044715 h^3)``: since ``tanh u = 2 sigmoid(2 u) - 1``, the same function (5e-7 apart in
    float32), with ``exp`` for Inductor to vectorise instead of ``tanh``."""
    return h * torch.sigmoid(1.5957691216057308 * (h + 0.044715 * h * h * h))  # 2 * sqrt(2 / pi)


class DenseMoE(nn.Module):
    """A :class:`~onerec.modules.moe.dMoE` for inference: static shapes for small batches.

    ``y = sum_e c_e * gelu(x W1_e^T) W2_e + b`` where ``c [T, E]`` holds the router's top-k
    weights and zeros elsewhere. Two ways to compute it, the same sum:

    - dense, ``(c ⊙ gelu(x W1^T)) W2`` over all experts at once: two matmuls (E / k times
      the expert FLOPs of the dropless path), no data-dependent sizes. The faster way for a
      few rows in TorchScript.
    - per expert, for ``T >= sparse_min_rows`` (0 = never, 1 = always): each expert's rows
      found with ``nonzero``, gathered, run through its two matmuls and added back in
      place (``index_add``): the dropless path's FLOPs, with no sort and no host sync, so
      ``torch.export`` keeps each expert's row count as a data-dependent size and
      AOTInductor compiles it. One thread, the ``small`` model's layer (``python -m
      benchmarks.bench_moe_inference --rows 16 32 128 256 --aoti``): in TorchScript 0.65x
      dense's speed at 16 rows, 0.79-0.99x at 32 (two runs), 1.16x at 128, 1.35x at 256;
      in AOTInductor 1.20x at 16 rows, 1.34x at 32, 1.52x at 128, 1.60x at 256.

    Shares the layer's parameters; no load-balancing loss (0).

    Args:
        moe: the trained layer (``backend="torch"``).
        sparse_min_rows: rows from which the per-expert path runs (0: always dense; 1:
            always per expert, decided without reading the shape, as torch.export needs).
        sigmoid_gelu: write the experts' GELU (tanh form) as ``x * sigmoid(2 u)``: the same
            function (``tanh z = 2 sigmoid(2 z) - 1``; 5e-7 apart in float32), which Inductor
            vectorises with ``exp`` instead of the much dearer ``tanh`` (a 256 x 256
            activation under torch.compile, call overhead included: 118 vs 265 us, ``python
            -m benchmarks.bench_compiled_forms``). For the compiled programs only: eager and
            TorchScript would run more kernels.
    """

    bias: Optional[Tensor]

    def __init__(self, moe: dMoE, sparse_min_rows: int = 0, sigmoid_gelu: bool = False) -> None:
        super().__init__()
        self.sigmoid_gelu: bool = sigmoid_gelu
        self.router = moe.router
        self.num_experts: int = moe.num_experts
        self.top_k: int = int(moe.router.top_k)
        self.hidden_size: int = moe.hidden_size
        self.ffn_hidden_size: int = moe.experts.ffn_hidden_size
        self.sparse_min_rows: int = sparse_min_rows
        self.w1 = moe.experts.mlp.w1  # (E * ffn, D)
        self.w2 = moe.experts.mlp.w2  # (E * ffn, D)
        self.bias = moe.experts.bias

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``x [..., D]`` → ``([..., D], 0)``."""
        in_shape = x.shape
        x2d = x.reshape(-1, self.hidden_size)  # (T, D)
        route = self.router(x2d)
        weights = route.expert_weights.to(x2d.dtype)  # (T, k)
        # ``== 1`` is a plain int test: torch.export never sees a branch on the row count.
        if self.sparse_min_rows == 1 or (self.sparse_min_rows > 1 and x2d.shape[0] >= self.sparse_min_rows):
            out = self._per_expert(x2d, route.expert_indices, weights)
        else:
            out = self._dense(x2d, route.expert_indices, weights)
        bias = self.bias
        if bias is not None:
            out = out + bias
        return out.view(in_shape), torch.zeros((), dtype=torch.float32, device=x.device)

    def _gelu(self, h: Tensor) -> Tensor:
        """megablocks' GELU, the tanh approximation, in the form asked for."""
        if self.sigmoid_gelu:
            return gelu_through_sigmoid(h)
        return expert_activation(h)

    def _dense(self, x2d: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """``x2d [T, D]``, ``indices / weights [T, k]`` → ``[T, D]`` (every expert on every row)."""
        t = x2d.shape[0]
        combine = torch.zeros(t, self.num_experts, dtype=x2d.dtype, device=x2d.device)
        combine = combine.scatter(1, indices, weights)  # (T, E)
        h = self._gelu(x2d @ self.w1.t())  # (T, E * ffn)
        h = (h.view(t, self.num_experts, self.ffn_hidden_size) * combine[:, :, None]).view(t, -1)
        return h @ self.w2  # (T, D)

    def _per_expert(self, x2d: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """``x2d [T, D]``, ``indices / weights [T, k]`` → ``[T, D]`` (each expert on its own rows)."""
        w1 = self.w1.view(self.num_experts, self.ffn_hidden_size, self.hidden_size)
        w2 = self.w2.view(self.num_experts, self.ffn_hidden_size, self.hidden_size)
        chosen = indices.reshape(-1)  # (T * k,) token-major
        chosen_weight = weights.reshape(-1)
        out = torch.zeros_like(x2d)
        for e in range(self.num_experts):
            pairs = torch.nonzero(chosen == e).squeeze(1)  # (n_e,): data-dependent
            tokens = torch.div(pairs, self.top_k, rounding_mode="floor")
            h = self._gelu(x2d.index_select(0, tokens) @ w1[e].t()) @ w2[e]  # (n_e, D)
            out = out.index_add(0, tokens, h * chosen_weight.index_select(0, pairs)[:, None])
        return out


def serving_generator(
    model: nn.Module,
    trie: SemanticIdTrie,
    item_codes: Tensor,
    sparse_min_rows: int = 0,
    broadcast_cached: bool = False,
    sigmoid_gelu: bool = False,
) -> SessionGenerator:
    """A frozen generator snapshot for export: eval mode, no gradients, :class:`DenseMoE` layers.

    Parameters get ``requires_grad=False``: a scripted module whose parameters require grad
    fails under ``torch.inference_mode``.

    Args:
        sparse_min_rows: see :class:`DenseMoE` (0 or 1 for torch.export).
        broadcast_cached: the decoding steps' self-attention as a broadcast product (see
            :meth:`~onerec.modules.attention.MultiHeadAttention.attend_cached`; for Inductor).
        sigmoid_gelu: see :class:`DenseMoE` (for Inductor).
    """
    generator = SessionGenerator.snapshot(model, trie, item_codes)
    for layer in generator.decoder.layers:
        if isinstance(layer.moe, dMoE):
            layer.moe = DenseMoE(layer.moe, sparse_min_rows, sigmoid_gelu)
        layer.self_attn.broadcast_cached = broadcast_cached
    generator.eval()
    for parameter in generator.parameters():
        parameter.requires_grad_(False)
    return generator


def aoti_generator(model: nn.Module, trie: SemanticIdTrie, item_codes: Tensor) -> SessionGenerator:
    """The generator the AOTInductor programs compile: each expert on its own rows, the
    decoding self-attention as a broadcast product, the GELU through ``sigmoid`` (the forms
    Inductor compiles fastest)."""
    return serving_generator(model, trie, item_codes, AOTI_SPARSE_MIN_ROWS, broadcast_cached=True, sigmoid_gelu=True)


def eager_generator(model: nn.Module, trie: SemanticIdTrie, item_codes: Tensor) -> SessionGenerator:
    """The reference: a frozen snapshot with the trained MoE layers untouched."""
    generator = SessionGenerator.snapshot(model, trie, item_codes).eval()
    for parameter in generator.parameters():
        parameter.requires_grad_(False)
    return generator


class SessionProgram(nn.Module):
    """``generator.generate`` with ``num_items`` and ``beam_size`` fixed: what torch.export sees.

    ``forward(history [B, T], lengths [B], user_features [B, F], exclude [B, E])`` →
    ``(items [B, beam, num_items], scores [B, beam])``. ``exclude`` holds item indices never
    to emit, -1 for padding (as :meth:`SessionGenerator.generate`); it is always a tensor
    here (``[B, 1]`` of -1 for none): a program has one signature.
    """

    def __init__(self, generator: SessionGenerator, num_items: int, beam_size: int) -> None:
        super().__init__()
        self.generator = generator
        self.num_items = num_items
        self.beam_size = beam_size

    def forward(self, history: Tensor, lengths: Tensor, user_features: Tensor, exclude: Tensor) -> Tuple[Tensor, Tensor]:
        return self.generator.generate(history, lengths, user_features, self.num_items, self.beam_size, exclude, True)


# ---------------------------------------------------------------------------------------
# The two artefacts.


def script_generator(generator: SessionGenerator) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of the generator (``generate`` and ``forward``)."""
    with quiet_torchscript():
        return torch.jit.script(generator)


def example_inputs(generator: SessionGenerator, batch: int = 3, history: int = 4) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Small inputs to trace with; sizes ≥ 2 so that no dimension is specialised to 0 / 1."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randint(0, generator.num_items, (batch, history), generator=gen)
    lengths = torch.tensor([history] + [max(1, history - 1 - i) for i in range(batch - 1)])
    features = torch.zeros(batch, generator.num_user_features, dtype=torch.long)
    exclude = torch.full((batch, 3), -1, dtype=torch.long)
    exclude[0, :2] = torch.tensor([0, 1])
    return h, lengths, features, exclude


def export_program(generator: SessionGenerator, num_items: int, beam_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`SessionProgram` with dynamic batch size and history length.

    ``Dim.DYNAMIC`` rather than named ranges: the graph carries stride guards such as
    ``min(1 + T, 16 + 16 T) == 1 + T`` that hold for every T ≥ 0 but that the range checker
    cannot prove; with ``DYNAMIC`` they become runtime asserts instead of an export failure.
    Histories longer than the generator's ``max_history`` are cut by the server before the call.
    """
    dynamic = torch.export.Dim.DYNAMIC
    shapes = {
        "history": {0: dynamic, 1: dynamic},
        "lengths": {0: dynamic},
        "user_features": {0: dynamic},
        "exclude": {0: dynamic, 1: dynamic},
    }
    program = SessionProgram(generator, num_items, beam_size).eval()
    with _quiet_pytree():
        return torch.export.export(program, example_inputs(generator), dynamic_shapes=shapes, strict=False)


@contextlib.contextmanager
def _quiet_pytree() -> Iterator[None]:
    """torch's own pytree code trips its ``LeafSpec`` deprecation in export / AOTI: not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        yield


#: Inductor settings of the AOTInductor compile:
#: - ``cpp.threads=1``: the generated kernels are single-threaded (no OpenMP team). Inductor
#:   otherwise bakes the export machine's thread count into every kernel, and the server gets
#:   its parallelism from worker threads running batches side by side (``threads=1`` in
#:   conf/serve.yaml): two OpenMP teams per core are many times slower, not faster.
#: - no precompiled headers: they cost a minute of gcc per compile and buy nothing for one model.
AOTI_OPTIONS: dict[str, Any] = {"cpp.threads": 1, "aot_inductor.precompile_headers": False}


def compile_aoti(
    programs: dict[str, torch.export.ExportedProgram], path: Path, options: Optional[dict[str, Any]] = None
) -> float:
    """AOTInductor-compile each program and package them into one ``.pt2``; returns seconds.

    Programs are named in the package (``m5`` ...) and loaded with
    ``torch._inductor.package.load_package(path, model_name=...)``.

    Args:
        options: Inductor settings on top of :data:`AOTI_OPTIONS` (tests pass
            ``{"cpp.simdlen": 1}``: scalar C++ kernels compile about a third faster).
    """
    from torch._inductor import aot_compile
    from torch._inductor.package import package_aoti

    start = time.perf_counter()
    files: dict[str, Any] = {}
    for name, program in programs.items():
        module = program.module(check_guards=False)
        args, kwargs = program.example_inputs
        settings = {**AOTI_OPTIONS, **(options or {}), "aot_inductor.package": True}
        with _quiet_pytree():
            files[name] = aot_compile(module, args, kwargs, options=settings)
        log.info("compiled the AOTInductor program %s (%.0f s so far)", name, time.perf_counter() - start)
    package_aoti(str(path), files)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# Equivalence with eager.


def reference_histories(
    num_items: int, num_user_features: int, max_history: int, seed: int = 0
) -> Tuple[Tensor, Tensor, Tensor]:
    """A fixed batch of six right-padded histories, 1 to 40 items long (at most ``max_history``:
    the server cuts longer ones before the call, and the compiled program relies on it)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 2, 5, 17, 40, 3]).clamp(max=max_history)
    history = torch.randint(0, num_items, (lengths.numel(), int(lengths.max())), generator=gen)
    history = torch.where(torch.arange(history.shape[1])[None, :] < lengths[:, None], history, torch.zeros_like(history))
    features = torch.zeros(lengths.numel(), num_user_features, dtype=torch.long)
    return history, lengths, features


def same_sessions(
    items: Tensor, scores: Tensor, ref_items: Tensor, ref_scores: Tensor, atol: float = 1e-3, rtol: float = 1e-4
) -> Optional[str]:
    """None when two searches agree (same items, same dead beams, close scores), else why not."""
    if items.shape != ref_items.shape or scores.shape != ref_scores.shape:
        return f"shapes differ: {tuple(items.shape)} vs {tuple(ref_items.shape)}"
    if not torch.equal(items, ref_items):
        rows = (items != ref_items).flatten(1).any(1).nonzero().flatten().tolist()
        return f"items differ in batch rows {rows}"
    finite = torch.isfinite(ref_scores)
    if not torch.equal(finite, torch.isfinite(scores)):
        return "dead beams (-inf scores) differ"
    if not torch.allclose(scores[finite], ref_scores[finite], atol=atol, rtol=rtol):
        return f"scores differ by up to {(scores[finite] - ref_scores[finite]).abs().max().item():.3g}"
    return None


def check_against_eager(
    reference: SessionGenerator,
    run: Any,
    num_items: int,
    beam_size: int,
    what: str,
    with_exclude: bool = True,
) -> None:
    """Run ``run(history, lengths, features, exclude)`` and the eager ``reference`` on
    :func:`reference_histories` (plus an exclusion mask) and raise naming ``what`` on a mismatch."""
    history, lengths, features = reference_histories(
        reference.num_items, reference.num_user_features, reference.max_history
    )
    exclude = torch.full((lengths.numel(), 40), -1, dtype=torch.long)  # (B, E), -1 = padding
    if with_exclude:
        exclude[1] = torch.arange(min(40, reference.num_items))  # one user excludes 40 items
        exclude[3, :2] = torch.tensor([5, 2])
    with torch.no_grad():
        ref_items, ref_scores = reference.generate(history, lengths, features, num_items, beam_size, exclude, True)
        items, scores = run(history, lengths, features, exclude)
    problem = same_sessions(items, scores, ref_items, ref_scores)
    if problem is not None:
        raise RuntimeError(f"{what} disagrees with the eager generator (num_items={num_items}): {problem}")


# ---------------------------------------------------------------------------------------
# The command.


def _items_table(bundle: Any) -> pl.DataFrame:
    items = bundle.items.sort("item_idx")
    return pl.DataFrame(
        {
            "item_idx": items["item_idx"].cast(pl.Int64),
            "item_id": items["item_id"].cast(pl.Utf8),
            "codes": items["codes"],
            "popularity": items["train_count"].cast(pl.Int64) if "train_count" in items.columns else np.zeros(items.height, dtype=np.int64),
        }
    )


def export_run(cfg: ExportConfig) -> Artefact:
    """Write the artefact of ``cfg.run_dir`` to ``cfg.out_dir`` and return it, verified.

    Everything is written to ``OUT.partial`` first and renamed at the end, so a failed or
    killed export never leaves a folder that looks complete.
    """
    from onerec.checkpoint import load_run

    out = Path(cfg.out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise UserError(f"out_dir={out} is not empty; pass overwrite=true to replace it")
        shutil.rmtree(out)
    if cfg.beam_size < 1:
        raise UserError(f"beam_size must be >= 1, got {cfg.beam_size}")
    if cfg.checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint={cfg.checkpoint!r}; expected best or last")
    run = load_run(cfg.run_dir, cfg.data_dir, which=cfg.checkpoint)
    m = run.session_length
    aoti_lengths = sorted(set(cfg.aoti_num_items or [m])) if cfg.aoti else []
    for n in aoti_lengths:
        if not 1 <= n <= m:
            raise UserError(f"aoti_num_items holds {n}; each must be in [1, session length {m}]")
    if run.config.moe.backend != "torch":
        raise UserError(f"moe.backend={run.config.moe.backend!r}: only the torch MoE backend exports")

    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        runtimes, timings = _write_programs(run, cfg, aoti_lengths, staging)
        _write_tables(run, staging)
        ids = run.bundle.items.sort("item_idx")["item_id"].cast(pl.Utf8).to_list()
        write_manifest(staging, {
            "model_version": weights_version(run.model.state_dict()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"run_dir": str(run.path), "checkpoint": run.checkpoint, "data_dir": str(run.bundle.path)},
            "versions": runtime_versions(),
            "session_length": m,
            "beam_size": cfg.beam_size,
            "max_history": int(run.config.model.max_history),
            "num_items": run.bundle.num_items,
            "codebook_sizes": run.bundle.codebook_sizes,
            "user_features": dict(zip(run.bundle.user_feature_names, run.bundle.user_feature_cardinalities)),
            "item_id_type": "int" if all(_is_canonical_int(i) for i in ids) else "str",
            "runtimes": runtimes,
            "timings": timings,
        })
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    staging.replace(out)
    return load_artefact(out)


def _write_programs(
    run: Any, cfg: ExportConfig, aoti_lengths: List[int], staging: Path
) -> Tuple[dict[str, Any], dict[str, float]]:
    """model.ts and (``aoti_lengths``) model.pt2, each checked against eager when ``cfg.check``."""
    bundle = run.bundle
    m = run.session_length
    codes = torch.as_tensor(bundle.codes)
    trie = SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes)
    reference = eager_generator(run.model, trie, codes)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    scripted = script_generator(serving_generator(run.model, trie, codes, TORCHSCRIPT_SPARSE_MIN_ROWS))
    with quiet_torchscript():
        scripted.save(str(staging / MODEL_TS))
    timings["torchscript_s"] = round(time.perf_counter() - start, 2)
    if cfg.check:
        check_against_eager(
            reference, lambda h, l, f, e: scripted.generate(h, l, f, m, cfg.beam_size, e, True), m, cfg.beam_size, MODEL_TS
        )
    log.info("TorchScript: %.1f s", timings["torchscript_s"])
    runtimes: dict[str, Any] = {
        "torchscript": {"file": MODEL_TS},
        "aoti": None,
        "eager": {"file": WEIGHTS, "needs": "the onerec package"},
    }
    if not aoti_lengths:
        return runtimes, timings

    start = time.perf_counter()
    generator = aoti_generator(run.model, trie, codes)
    programs = {f"m{n}": export_program(generator, n, cfg.beam_size) for n in aoti_lengths}
    timings["export_s"] = round(time.perf_counter() - start, 2)
    log.info("torch.export of %s: %.1f s; AOTInductor compile next (minutes on a small CPU)", list(programs), timings["export_s"])
    timings["aoti_compile_s"] = round(compile_aoti(programs, staging / MODEL_AOTI), 2)
    log.info("AOTInductor: %.1f s", timings["aoti_compile_s"])
    if cfg.check:
        from torch._inductor.package import load_package

        for n in aoti_lengths:
            program = load_package(str(staging / MODEL_AOTI), model_name=f"m{n}")
            check_against_eager(reference, program, n, cfg.beam_size, f"{MODEL_AOTI} (m{n})")
    runtimes["aoti"] = {
        "file": MODEL_AOTI,
        "num_items": aoti_lengths,
        "beam_size": cfg.beam_size,
        "dynamic": ["batch", "history"],
        "compile_s": timings["aoti_compile_s"],
    }
    return runtimes, timings


def _write_tables(run: Any, staging: Path) -> None:
    """weights.pt, items.parquet, user_features.json, config.yaml."""
    bundle = run.bundle
    torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, staging / WEIGHTS)
    _items_table(bundle).write_parquet(staging / ITEMS)
    features = {
        "names": bundle.user_feature_names,
        "cardinalities": dict(zip(bundle.user_feature_names, bundle.user_feature_cardinalities)),
    }
    (staging / USER_FEATURES).write_text(json.dumps(features, indent=2))
    (staging / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(run.config)))


def _is_canonical_int(text: str) -> bool:
    """``"42"`` yes; ``"042"``, ``"4.2"``, ``"-0"``, ``"x"`` no (they would not round-trip)."""
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def _export_and_report(cfg: ExportConfig) -> None:
    artefact = export_run(cfg)
    manifest = artefact.manifest
    print(f"artefact: {artefact.path}  model_version={artefact.model_version}")
    print(f"  session_length={artefact.session_length} beam_size={artefact.beam_size} max_history={artefact.max_history}")
    print(f"  runtimes: {', '.join(k for k, v in manifest['runtimes'].items() if v)}; timings: {manifest['timings']}")


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("export", "onerec-export", _export_and_report)


if __name__ == "__main__":
    main()
