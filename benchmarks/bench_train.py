"""Training throughput (forward + backward + AdamW step) of OneRec's input and MoE path
against a plain-PyTorch reference, on the same weights and the same batches.

* ``onerec``: the model as trained: a torchrec ``EmbeddingCollection`` looks up the
  ``KeyedJaggedTensor``, fbgemm's ``jagged_to_padded_dense`` pads the history, and the
  decoder's feed-forward layers are the dropless MoE (sorted tokens, grouped expert
  matmuls: each token runs through its k experts only).
* ``reference``: the same modules, but the lookups are per-feature ``F.embedding`` calls
  padded with ``pad_sequence`` (a Python split per batch) and every MoE layer runs the
  dense reference (every expert on every token, a (T, E) mask combines them).

Run from the repository root (a couple of minutes on two CPU cores)::

    python -m benchmarks.bench_train [--steps 8] [--sizes tiny small] [--device cpu]

Prints tokens/s (history + target codes + target items per step, as the trainer's
progress bar counts them) and the speed-up of ``onerec`` over ``reference``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from onerec.config import ModelConfig, MoEConfig
from onerec.data import Batch, BatchBuilder
from onerec.losses import ntp_loss
from onerec.model import OneRec
from onerec.modules.moe import reference_moe_forward

CONF = Path(__file__).resolve().parents[1] / "conf"
NUM_ITEMS = 20_000
CODEBOOK = [256, 256, 256]
SESSION_LENGTH = 5
BATCH_SIZE = 128


class PaddedLookup:
    """What ``OneRec._encode`` reads from a looked-up feature: values and a padded view."""

    def __init__(self, values: Tensor, lengths: Tensor) -> None:
        self._values = values  # (N, D)
        self._lengths = lengths  # (B,)

    def values(self) -> Tensor:
        return self._values

    def to_padded_dense(self, desired_length: int) -> Tensor:
        rows = torch.split(self._values, self._lengths.tolist())
        padded = pad_sequence(list(rows), batch_first=True)  # (B, max_len, D)
        return F.pad(padded, (0, 0, 0, desired_length - padded.shape[1]))


class PlainEmbeddings(nn.Module):
    """Per-feature ``F.embedding`` on the torchrec tables' weights (shared, not copied)."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.tables = {name: table.weight for name, table in source.collection.embeddings.items()}
        self.feature_table: Dict[str, str] = {}
        for config in source.collection.embedding_configs():
            for feature in config.feature_names:
                self.feature_table[feature] = config.name

    def forward(self, features: KeyedJaggedTensor) -> Dict[str, PaddedLookup]:
        out = {}
        for key, jagged in features.to_dict().items():
            weight = self.tables[self.feature_table[key]]
            out[key] = PaddedLookup(F.embedding(jagged.values(), weight), jagged.lengths())
        return out


class DenseMoE(nn.Module):
    """Every expert on every token (E / k times the FLOPs), on a dMoE layer's weights."""

    def __init__(self, moe: nn.Module) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.moe
        y, _, _ = reference_moe_forward(
            x, m.router.layer.weight, m.experts.mlp.w1, m.experts.mlp.w2, m.experts.bias, m.top_k
        )
        return y, torch.zeros((), device=x.device)


def reference_model(model: OneRec) -> OneRec:
    """A copy of ``model`` with plain lookups and dense MoE layers (same weight values)."""
    ref = copy.deepcopy(model)
    ref.embeddings = PlainEmbeddings(ref.embeddings)  # type: ignore[assignment]
    for layer in ref.decoder.layers:
        layer.moe = DenseMoE(layer.moe)
    return ref


def model_config(size: str) -> tuple[ModelConfig, MoEConfig]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        model = compose(config_name=f"model/{size}")["model"]
        moe = compose(config_name="moe/default")["moe"]
    return ModelConfig(**OmegaConf.to_object(model)), MoEConfig(**OmegaConf.to_object(moe))


def make_batches(config: ModelConfig, count: int, seed: int) -> List[Batch]:
    """Random batches with skewed history lengths (lognormal, capped at max_history)."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, size, NUM_ITEMS) for size in CODEBOOK], axis=1)
    builder = BatchBuilder(codes, history_item_embedding=config.history_item_embedding, user_buckets=config.user_embedding_buckets)
    batches = []
    for _ in range(count):
        lengths = np.clip(rng.lognormal(np.log(config.max_history / 4), 0.8, BATCH_SIZE), 1, config.max_history).astype(np.int64)
        history = rng.integers(0, NUM_ITEMS, int(lengths.sum()))
        targets = rng.integers(0, NUM_ITEMS, (BATCH_SIZE, SESSION_LENGTH))
        batches.append(
            builder.build(
                torch.from_numpy(history), torch.from_numpy(lengths), torch.arange(BATCH_SIZE), torch.from_numpy(targets)
            )
        )
    return batches


def train_step_fn(model: OneRec) -> Callable[[Batch], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: Batch) -> None:
        out = model(batch)
        loss = ntp_loss(out.logits, batch.target_codes) + out.balance_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def tokens_per_s(step: Callable[[Batch], None], batches: List[Batch], repeats: int) -> float:
    """Median over ``repeats`` passes of total tokens / wall time, after one warm-up step."""
    step(batches[0])
    total = sum(b.num_tokens for b in batches)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        rates.append(total / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="conf/model/<size>.yaml")
    parser.add_argument("--device", default="cpu")
    cli = parser.parse_args()
    device = torch.device(cli.device)
    print(
        f"torch {torch.__version__}, device={device}, threads={torch.get_num_threads()}, "
        f"batch={BATCH_SIZE}, m={SESSION_LENGTH}, codebooks={CODEBOOK}, items={NUM_ITEMS}, "
        f"fwd+bwd+AdamW, median of {cli.repeats} passes x {cli.steps} steps"
    )
    print(f"{'size':<6} {'impl':<10} {'tokens/s':>10} {'vs reference':>13}")
    for size in cli.sizes:
        config, moe = model_config(size)
        torch.manual_seed(0)
        model = OneRec(config, moe, CODEBOOK, NUM_ITEMS, SESSION_LENGTH).to(device).train()
        ref = reference_model(model).train()
        batches = [b.to(device) for b in make_batches(config, cli.steps, seed=0)]
        # Interleave the two so that machine noise hits both alike.
        rates: Dict[str, List[float]] = {"onerec": [], "reference": []}
        for _ in range(cli.repeats):
            rates["reference"].append(tokens_per_s(train_step_fn(ref), batches, 1))
            rates["onerec"].append(tokens_per_s(train_step_fn(model), batches, 1))
        ref_rate = statistics.median(rates["reference"])
        for name in ("onerec", "reference"):
            rate = statistics.median(rates[name])
            print(f"{size:<6} {name:<10} {rate:>10.0f} {rate / ref_rate:>12.2f}x")


if __name__ == "__main__":
    main()
