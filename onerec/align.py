"""``onerec-align``: Iterative Preference Alignment (OneRec §3.3.2).

    onerec-align data_dir=BUNDLE init_run=RUN reward_run=REWARD_RUN run_dir=ALIGN_RUN

Iteration t, starting from the snapshot M_t (the NTP model for t = 0):

1. draw a fraction ``r_dpo`` of the training users (seeded by t);
2. beam-search N sessions per user with M_t (the batched constrained search);
3. score them with the reward model; chosen = the best, rejected = the worst (the R
   worst for S-DPO); the greedy (most likely) session is logged for comparison;
4. compute the reference log-probabilities of chosen and rejected under M_t once,
   under no_grad (M_t is frozen: it is the reference of this iteration);
5. train ``L = L_NTP + λ · L_DPO`` (NTP on ordinary training batches, DPO on the pairs);
6. save M_{t+1} as ``ALIGN_RUN/iter_<t+1>/`` (a run folder every stage accepts) and as
   ``ALIGN_RUN`` itself, then repeat with it as the next reference.

An iteration's pairs and its step checkpoint are kept in its folder, so a killed run
resumes inside the iteration it was in.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data_pipeline.cli import UserError
from onerec.checkpoint import BEST, LAST, load_checkpoint, load_run, restore_rng, rng_state, save_atomic, save_run_config
from onerec.config import TrainConfig
from onerec.data import BatchBuilder, ExampleSet, epoch_batches, padded_histories, user_feature_matrix
from onerec.generate import SessionGenerator
from onerec.losses import ntp_loss, session_logprob
from onerec.model import OneRec
from onerec.preference_losses import get_preference_loss, implicit_reward_accuracy
from onerec.ranking import evaluate_rankings, rank_items
from onerec.run_log import RunLogger
from onerec.train import make_optimizer, pick_device
from onerec.trie import SemanticIdTrie

log = logging.getLogger(__name__)
PAIRS = "pairs.pt"
DONE = "done.json"


@dataclass
class AlignConfig:
    """``onerec-align``.

    Attributes:
        iterations: IPA iterations (snapshots M_1 .. M_T).
        r_dpo: fraction of training users drawn per iteration (OneRec: 1%).
        min_users: draw at least this many users (small logs would give a handful).
        num_sessions: N, sessions beam-searched per user (OneRec: 128 on GPU).
        num_rejected: R, the worst sessions used as rejected (R > 1 only with ``sdpo``).
        loss: a name in :data:`onerec.preference_losses.PREFERENCE_LOSSES`.
        beta: DPO temperature.
        label_smoothing: for ``cdpo``.
        dpo_weight: λ in L = L_NTP + λ·L_DPO.
        epochs: passes over the pairs per iteration.
        pair_batch_size / ntp_batch_size: pairs and NTP examples per step.
        lr: AdamW learning rate of the alignment steps.
        eval_users: validation users for Recall@10 after each iteration (0: all).
    """

    data_dir: str = "???"
    init_run: str = "???"
    reward_run: str = "???"
    run_dir: str = "runs/align"
    resume: bool = False
    seed: int = 0
    iterations: int = 2
    r_dpo: float = 0.01
    min_users: int = 256
    num_sessions: int = 16
    num_rejected: int = 1
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    dpo_weight: float = 0.5
    epochs: int = 2
    pair_batch_size: int = 32
    ntp_batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    generation_batch_size: int = 64
    eval_users: int = 1000
    device: str = "auto"
    threads: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.r_dpo <= 1.0:
            raise ValueError(f"r_dpo={self.r_dpo} must be in (0, 1]")
        if self.num_rejected < 1 or self.num_rejected >= self.num_sessions:
            raise ValueError(f"num_rejected={self.num_rejected} must be in [1, num_sessions={self.num_sessions})")
        if self.num_rejected > 1 and self.loss != "sdpo":
            raise ValueError(f"num_rejected={self.num_rejected} > 1 needs loss=sdpo, got loss={self.loss!r}")
        get_preference_loss(self.loss)


def sample_users(num_users: int, fraction: float, minimum: int, seed: int, iteration: int) -> np.ndarray:
    """Sorted indices of ``max(minimum, round(fraction · num_users))`` distinct users,
    a function of (seed, iteration) only."""
    count = min(num_users, max(minimum, int(round(fraction * num_users))))
    rng = np.random.default_rng([seed, iteration, 7])
    return np.sort(rng.choice(num_users, size=count, replace=False))


def latest_example_per_user(examples: ExampleSet) -> np.ndarray:
    """Row of each user's most recent training example (rows are sorted by user, session)."""
    users = examples.users
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    return last


def select_pairs(rewards: torch.Tensor, num_rejected: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen = the best-rewarded session, rejected = the ``num_rejected`` worst.

    Args:
        rewards: ``[U, N]`` (-inf for sessions that do not exist).

    Returns:
        ``chosen [U]`` and ``rejected [U, R]`` indices into N, worst first.
    """
    chosen = rewards.argmax(dim=1)
    finite = torch.where(torch.isfinite(rewards), rewards, torch.full_like(rewards, float("inf")))
    rejected = finite.argsort(dim=1)[:, :num_rejected]
    return chosen, rejected


@dataclass
class PreferencePairs:
    """Everything one iteration trains on (saved as ``pairs.pt``)."""

    rows: np.ndarray  # [U] training-example rows (their histories)
    chosen: torch.Tensor  # [U, m]
    rejected: torch.Tensor  # [U, R, m]
    reference_chosen: torch.Tensor  # [U]
    reference_rejected: torch.Tensor  # [U, R]
    stats: dict[str, float]


class Aligner:
    def __init__(self, cfg: AlignConfig) -> None:
        from onerec.reward import load_reward_model

        self.cfg = cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        self.run_dir = Path(cfg.run_dir).expanduser()
        init = load_run(cfg.init_run, cfg.data_dir)
        self.train_config: TrainConfig = init.config
        self.train_config.data_dir = cfg.data_dir
        self.bundle = init.bundle
        self.policy: OneRec = init.model.to(self.device)
        self.session_length = init.session_length
        self.reward_model = load_reward_model(cfg.reward_run).to(self.device).eval()
        mcfg = self.train_config.model
        self.builder = BatchBuilder.for_bundle(self.bundle, mcfg.history_item_embedding, mcfg.user_embedding_buckets)
        self.train_set = ExampleSet(self.bundle.split("train"), mcfg.max_history, self.session_length)
        self.valid_set = ExampleSet(self.bundle.split("valid"), mcfg.max_history, self.session_length)
        self.trie = SemanticIdTrie.from_codes(self.bundle.codes, self.bundle.codebook_sizes)
        self.item_codes = torch.as_tensor(self.bundle.codes).to(self.device)
        self.user_rows = latest_example_per_user(self.train_set)
        self.preference_loss = get_preference_loss(cfg.loss)
        self.logger: RunLogger | None = None

    # ------------------------------------------------------------------ pairs
    @torch.no_grad()
    def make_pairs(self, iteration: int, reference: OneRec) -> PreferencePairs:
        cfg = self.cfg
        picked = sample_users(self.user_rows.size, cfg.r_dpo, cfg.min_users, cfg.seed, iteration)
        rows = self.user_rows[picked]
        generator = SessionGenerator(reference, self.trie, self.item_codes)
        m, n = self.session_length, cfg.num_sessions
        sessions, rewards, logps = [], [], []
        for start in tqdm(range(0, rows.size, cfg.generation_batch_size), desc=f"IPA {iteration + 1}: generate", disable=not cfg.show_progress):
            chunk = rows[start : start + cfg.generation_batch_size]
            history, lengths = padded_histories(self.train_set, chunk)
            history, lengths = history.to(self.device), lengths.to(self.device)
            features = user_feature_matrix(self.builder, self.train_set.users[chunk]).to(self.device)
            items, scores = generator.generate(history, lengths, features, m, n, None, True)  # (B, N, m)
            b = chunk.size
            flat = items.view(b * n, m)
            alive = torch.isfinite(scores).view(-1) & (flat >= 0).all(1)
            reward = self.reward_model.reward(
                history.repeat_interleave(n, 0), lengths.repeat_interleave(n, 0), flat.clamp(min=0)
            ).float()
            reward = torch.where(alive, reward, torch.full_like(reward, -float("inf")))
            sessions.append(items.cpu())
            rewards.append(reward.view(b, n).cpu())
            logps.append(scores.cpu())
        sessions_t, rewards_t, beam_logps = torch.cat(sessions), torch.cat(rewards), torch.cat(logps)
        chosen, rejected = select_pairs(rewards_t, cfg.num_rejected)
        u = torch.arange(rows.size)
        chosen_sessions = sessions_t[u, chosen]  # (U, m)
        rejected_sessions = sessions_t[u[:, None], rejected]  # (U, R, m)
        finite = torch.isfinite(rewards_t)
        stats = {
            "users": float(rows.size),
            "reward_chosen": float(rewards_t[u, chosen].mean()),
            "reward_rejected": float(rewards_t[u[:, None], rejected].mean()),
            "reward_greedy": float(rewards_t[:, 0].mean()),
            "reward_mean": float(rewards_t[finite].mean()),
        }
        stats["reward_margin"] = stats["reward_chosen"] - stats["reward_rejected"]
        reference.eval()
        ref_chosen = self.sequence_logprobs(reference, rows, chosen_sessions)
        ref_rejected = self.sequence_logprobs(reference, np.repeat(rows, cfg.num_rejected), rejected_sessions.flatten(0, 1))
        return PreferencePairs(
            rows=rows,
            chosen=chosen_sessions,
            rejected=rejected_sessions,
            reference_chosen=ref_chosen,
            reference_rejected=ref_rejected.view(rows.size, cfg.num_rejected),
            stats=stats,
        )

    def sequence_logprobs(self, model: OneRec, rows: np.ndarray, sessions: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """log p(session | history) of each row under ``model`` (grad only if enabled)."""
        out = []
        for start in range(0, rows.size, chunk):
            batch = self.session_batch(rows[start : start + chunk], sessions[start : start + chunk])
            output = model(batch)
            out.append(session_logprob(output.logits, batch.target_codes))
        return torch.cat(out) if out else torch.zeros(0)

    def session_batch(self, rows: np.ndarray, sessions: torch.Tensor):
        history, lengths = self.train_set.histories(rows)
        return self.builder.build(
            torch.from_numpy(history), torch.from_numpy(lengths), torch.from_numpy(self.train_set.users[rows]), sessions.cpu()
        ).to(self.device)

    # ------------------------------------------------------------------ train
    def train_iteration(self, iteration: int, pairs: PreferencePairs, folder: Path) -> dict[str, float]:
        cfg = self.cfg
        policy = self.policy
        # Dropout off, as TRL's DPO trainer does: with dropout the policy's log-probs are
        # noisier and biased low against the (eval-mode) reference's.
        policy.eval()
        optimizer = make_optimizer(policy, self._trainer_cfg())
        u = pairs.rows.size
        steps_per_epoch = max(1, u // cfg.pair_batch_size)
        total = steps_per_epoch * cfg.epochs
        step = 0
        if (folder / LAST).is_file():
            state = load_checkpoint(folder / LAST)
            policy.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
            step = int(state["step"])
        rng_seed = [cfg.seed, iteration, 11]
        ntp_batches = epoch_batches(self.train_set.history_lengths, cfg.ntp_batch_size, cfg.seed + 1000 + iteration, 0)
        sums: dict[str, float] = {}
        bar = tqdm(total=total, initial=step, desc=f"IPA {iteration + 1}: train", disable=not cfg.show_progress)
        r = cfg.num_rejected
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            order = np.random.default_rng(rng_seed + [epoch]).permutation(u)
            pick = order[k * cfg.pair_batch_size : (k + 1) * cfg.pair_batch_size]
            rows = pairs.rows[pick]
            sessions = torch.cat([pairs.chosen[pick], pairs.rejected[pick].flatten(0, 1)])
            all_rows = np.concatenate([rows, np.repeat(rows, r)])
            logps = self.sequence_logprobs(policy, all_rows, sessions, chunk=len(all_rows))
            b = rows.size
            policy_chosen, policy_rejected = logps[:b], logps[b:].view(b, r)
            ref_chosen = pairs.reference_chosen[pick].to(self.device)
            ref_rejected = pairs.reference_rejected[pick].to(self.device)
            if r == 1:
                policy_rejected, ref_rejected = policy_rejected[:, 0], ref_rejected[:, 0]
            pref = self.preference_loss(
                policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=cfg.beta, label_smoothing=cfg.label_smoothing
            )
            ntp_batch = self.builder.from_examples(self.train_set, ntp_batches[step % ntp_batches.shape[0]]).to(self.device)
            output = policy(ntp_batch)
            ntp = ntp_loss(output.logits, ntp_batch.target_codes)
            loss = ntp + output.balance_loss + cfg.dpo_weight * pref.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            values = {
                "loss": loss.item(),
                "ntp": ntp.item(),
                "preference_loss": pref.loss.item(),
                "reward_accuracy": implicit_reward_accuracy(pref.chosen_rewards, pref.rejected_rewards).item(),
                "implicit_margin": (pref.chosen_rewards.mean() - pref.rejected_rewards.mean()).item(),
                "logp_shift_chosen": (policy_chosen.detach() - ref_chosen).mean().item(),
            }
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['reward_accuracy']:.2f}")
            if step % 50 == 0 or step == total:
                save_atomic({"model": policy.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(), "step": step}, folder / LAST)
        bar.close()
        return {key: value / max(step, 1) for key, value in sums.items()}

    def _trainer_cfg(self):
        tcfg = copy.deepcopy(self.train_config.trainer)
        tcfg.lr = self.cfg.lr
        tcfg.weight_decay = self.cfg.weight_decay
        return tcfg

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def kl_to_reference(self, reference: OneRec, pairs: PreferencePairs, users: int = 256) -> float:
        """Mean per-code KL(policy ‖ reference) along the policy's most likely sessions.

        Beam search gives modes, not samples, so the sampled estimate E[log π - log π_ref]
        does not apply; the exact KL between the two next-code distributions at each
        step of the greedy session does, and needs no sampling.
        """
        rows = pairs.rows[:users]
        history, lengths = padded_histories(self.train_set, rows)
        features = user_feature_matrix(self.builder, self.train_set.users[rows]).to(self.device)
        generator = SessionGenerator(self.policy, self.trie, self.item_codes)
        items, _ = generator.generate(history.to(self.device), lengths.to(self.device), features, self.session_length, 1, None, True)
        batch = self.session_batch(rows, items[:, 0].cpu())
        policy_logits, reference_logits = self.policy(batch).logits, reference(batch).logits
        total = torch.zeros((), device=self.device)
        for p, q in zip(policy_logits, reference_logits):
            log_p, log_q = torch.log_softmax(p.float(), -1), torch.log_softmax(q.float(), -1)
            total = total + (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        return (total / len(policy_logits)).item()

    def validate(self) -> dict[str, float]:
        self.policy.eval()
        generator = SessionGenerator(self.policy, self.trie, self.item_codes)
        rankings = rank_items(
            generator, self.builder, self.valid_set, top_k=10, beam_size=self.train_config.generation.beam_size,
            batch_size=self.train_config.generation.batch_size, limit=self.cfg.eval_users, device=self.device,
        )
        return evaluate_rankings(rankings, self.valid_set)

    # ------------------------------------------------------------------ loop
    def save_snapshot(self, folder: Path) -> None:
        save_run_config(self.train_config, folder, {"align": dict(self.cfg.__dict__)})
        save_atomic({"model": self.policy.state_dict(), "step": 0}, folder / BEST)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and any(self.run_dir.glob("iter_*")):
            raise UserError(f"{self.run_dir} already holds IPA iterations; pass resume=true or choose a new run_dir")
        self.logger = RunLogger(self.run_dir)
        history: list[dict[str, Any]] = []
        if not (self.run_dir / "iter_0" / DONE).is_file():
            start = self.validate()
            self.save_snapshot(self.run_dir / "iter_0")
            (self.run_dir / "iter_0" / DONE).write_text(json.dumps({"valid": start}))
            self.logger.log(0, "valid", start)
        for iteration in range(cfg.iterations):
            folder = self.run_dir / f"iter_{iteration + 1}"
            if (folder / DONE).is_file():
                self.policy.load_state_dict(load_checkpoint(folder / BEST)["model"])
                history.append(json.loads((folder / DONE).read_text()))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            # M_t, frozen: the reference of this iteration and the generator of its pairs.
            reference = copy.deepcopy(self.policy).eval()
            reference.requires_grad_(False)
            if (folder / PAIRS).is_file():
                pairs = torch.load(folder / PAIRS, weights_only=False)
            else:
                pairs = self.make_pairs(iteration, reference)
                save_atomic(pairs, folder / PAIRS)  # type: ignore[arg-type]
            train_stats = self.train_iteration(iteration, pairs, folder)
            train_stats["kl_to_reference"] = self.kl_to_reference(reference, pairs)
            valid = self.validate()
            record = {"iteration": iteration + 1, **pairs.stats, **train_stats, **{f"valid_{k}": v for k, v in valid.items()}}
            self.logger.log(iteration + 1, "ipa", record)
            log.info("IPA iteration %d: %s", iteration + 1, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
            self.save_snapshot(folder)
            (folder / LAST).unlink(missing_ok=True)
            (folder / DONE).write_text(json.dumps(record))
            history.append(record)
        # The align run folder itself is the last snapshot, usable by every later stage.
        self.save_snapshot(self.run_dir)
        self.logger.close()
        summary = {"run_dir": str(self.run_dir), "iterations": history}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def align(cfg: AlignConfig) -> dict[str, Any]:
    return Aligner(cfg).run()


def report(cfg: AlignConfig) -> None:
    summary = align(cfg)
    for record in summary["iterations"]:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}))
    print(f"aligned model: {summary['run_dir']}")


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("align", "onerec-align", report)


if __name__ == "__main__":
    main()
