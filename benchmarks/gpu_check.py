"""GPU check: one short command (under 5 minutes) for a machine with a CUDA GPU.

    python -m benchmarks.gpu_check              # on CUDA (exits 2 when there is none)
    python -m benchmarks.gpu_check --dry-run    # the same steps on the CPU in fp32, tiny sizes

1. **environment**: torch / fbgemm / torchrec versions, the GPU and its memory.
2. **MoE**: the decoder's dropless MoE layer, its grouped path (``torch._grouped_mm``)
   against ``reference_moe_forward`` (every expert on every token) on the same weights, in
   fp32 and bf16: output and gradient differences, forward + backward time of each.
3. **training**: the ``small`` model (conf/model/small.yaml) on CUDA, ``--steps`` NTP
   steps with bf16 autocast on random histories over ``--items`` items, exactly as
   ``onerec-train`` steps (AdamW, clipping): tokens/s and peak memory.
4. **onerec-train**: the real trainer (``trainer=gpu``) for a few steps and one validation
   on a small synthetic bundle, to check the whole CUDA path end to end.

Prints one line per check and a JSON summary last; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.bench_scale import synthetic_model_and_batches

# Relative error of the grouped path against the reference, by dtype (bf16 keeps 8 bits).
MOE_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


def environment(device: torch.device) -> dict[str, Any]:
    import fbgemm_gpu
    import torchrec

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"),
        "torchrec": getattr(torchrec, "__version__", "?"),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    return info


def _timed_ms(step: Callable[[], None], device: torch.device, iters: int = 5) -> float:
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters * 1e3


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def check_moe(device: torch.device, tokens: int, hidden: int, dtype: torch.dtype) -> dict[str, Any]:
    """The grouped dMoE against the dense reference on the same weights and input."""
    from onerec.modules.moe import MoEArguments, dMoE, grouped_mm_supported, reference_moe_forward

    ffn = 2 * hidden
    impl = "grouped_mm" if grouped_mm_supported(device, dtype, hidden, ffn) else "loop"
    args = MoEArguments(hidden_size=hidden, ffn_hidden_size=ffn, moe_num_experts=8, moe_top_k=2, grouped_impl=impl)
    torch.manual_seed(0)
    layer = dMoE(args).to(device).eval()
    x = torch.randn(tokens, hidden, device=device)

    def grouped() -> tuple[torch.Tensor, ...]:
        xg = x.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            y, _ = layer(xg)
        y.float().square().mean().backward()
        return y.detach(), xg.grad, layer.experts.mlp.w1.grad

    def reference() -> tuple[torch.Tensor, ...]:
        xr = x.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            y, _, _ = reference_moe_forward(
                xr, layer.router.layer.weight, layer.experts.mlp.w1, layer.experts.mlp.w2, layer.experts.bias, args.moe_top_k
            )
        y.float().square().mean().backward()
        return y.detach(), xr.grad, layer.experts.mlp.w1.grad

    layer.zero_grad(set_to_none=True)
    y_g, dx_g, dw_g = grouped()
    dw_g = dw_g.clone()
    layer.zero_grad(set_to_none=True)
    y_r, dx_r, dw_r = reference()
    errors = {"output": _relative(y_g, y_r), "grad_x": _relative(dx_g, dx_r), "grad_w1": _relative(dw_g, dw_r)}
    tolerance = MOE_TOLERANCE[dtype]
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "impl": impl,
        "tokens": tokens,
        "hidden": hidden,
        "rel_err": {k: round(v, 6) for k, v in errors.items()},
        "ok": all(v <= tolerance for v in errors.values()),
        "grouped_ms": round(_timed_ms(lambda: (layer.zero_grad(), grouped()), device), 2),
        "reference_ms": round(_timed_ms(lambda: (layer.zero_grad(), reference()), device), 2),
    }


def check_training(device: torch.device, model_name: str, items: int, history: int, batch_size: int, steps: int) -> dict[str, Any]:
    """NTP steps of ``model_name`` with onerec-train's optimiser and autocast."""
    from onerec.config import TrainerConfig
    from onerec.losses import ntp_loss
    from onerec.train import autocast_dtype, make_optimizer

    model, batches = synthetic_model_and_batches(model_name, items, history, batch_size, steps + 2, str(device))
    optimizer = make_optimizer(model, TrainerConfig())
    amp = autocast_dtype("auto", device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    tokens, elapsed = 0, 0.0
    for i, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            output = model(batch)
            loss = ntp_loss(output.logits, batch.target_codes) + output.balance_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())  # synchronises
        if i >= 2:  # two warm-up steps (allocator, kernels, grouped-mm probe)
            elapsed += time.perf_counter() - start
            tokens += batch.num_tokens
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    return {
        "model": model_name,
        "autocast": str(amp).removeprefix("torch.") if amp else "fp32",
        "items": items,
        "history": history,
        "batch_size": batch_size,
        "steps": steps,
        "tokens_per_s": round(tokens / max(elapsed, 1e-9)),
        "ms_per_step": round(elapsed / max(steps, 1) * 1e3, 1),
        "peak_memory_gib": round(peak, 2),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "ok": finite,
    }


def check_trainer(device: torch.device, steps: int) -> dict[str, Any]:
    """onerec-train's own loop (trainer=gpu on CUDA) on a small synthetic bundle."""
    from data_pipeline.examples import ExampleConfig
    from data_pipeline.items import ItemEmbeddingConfig
    from data_pipeline.prep import PrepConfig, prepare
    from data_pipeline.semantic_ids import SemanticIdConfig
    from data_pipeline.sessions import SessionConfig
    from data_pipeline.sources.synthetic import SyntheticConfig
    from onerec.config import ModelConfig, TrainConfig, TrainerConfig
    from onerec.train import Trainer

    with tempfile.TemporaryDirectory() as work:
        bundle = Path(work) / "bundle"
        prepare(
            PrepConfig(
                data=SyntheticConfig(num_users=600, num_items=500, num_topics=8, seed=0),
                out_dir=str(bundle),
                sessions=SessionConfig(target_items=3, watch_time_quantile=0.2, require_engagement=False),
                examples=ExampleConfig(history_length=32),
                items=ItemEmbeddingConfig(dim=16, side_dim=4),
                semantic_ids=SemanticIdConfig(levels=3, codebook_size=16, iterations=10),
                show_progress=False,
            )
        )
        gpu = device.type == "cuda"
        trainer_cfg = TrainerConfig(
            batch_size=64, max_steps=steps, eval_every=steps, eval_users=64, warmup_steps=2, log_every=1,
            device=device.type, precision="bf16" if gpu else "fp32", show_progress=False,
        )
        cfg = TrainConfig(data_dir=str(bundle), run_dir=str(Path(work) / "run"), model=ModelConfig(max_history=32), trainer=trainer_cfg)
        cfg.generation = dataclasses.replace(cfg.generation, beam_size=10, batch_size=64)
        start = time.perf_counter()
        summary = Trainer(cfg).run()
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(work) / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    return {
        "steps": summary["steps"],
        "seconds": round(seconds, 1),
        "valid_recall@10": round(valid[-1]["recall@10"], 4) if valid else None,
        "legal_rate": valid[-1]["legal_rate"] if valid else None,
        "ok": summary["steps"] == steps and bool(valid) and valid[-1]["legal_rate"] == 1.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run every check on the CPU (fp32, tiny sizes)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue of the training check")
    parser.add_argument("--history", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()

    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        moe_sizes, train = [(256, 64, torch.float32)], dict(model_name="tiny", items=5_000, history=16, batch_size=16, steps=2)
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        moe_sizes = [(16384, 512, torch.float32), (16384, 512, torch.bfloat16)]
        train = dict(model_name="small", items=args.items, history=args.history, batch_size=args.batch_size, steps=args.steps)

    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(device)}
    print("environment", json.dumps(results["environment"]), flush=True)
    results["moe"] = [check_moe(device, tokens, hidden, dtype) for tokens, hidden, dtype in moe_sizes]
    for row in results["moe"]:
        print("moe", json.dumps(row), flush=True)
    results["training"] = check_training(device, **train)  # type: ignore[arg-type]
    print("training", json.dumps(results["training"]), flush=True)
    results["onerec_train"] = check_trainer(device, steps=4 if args.dry_run else 20)
    print("onerec-train", json.dumps(results["onerec_train"]), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["ok"] = all(r["ok"] for r in results["moe"]) and results["training"]["ok"] and results["onerec_train"]["ok"]
    print(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
