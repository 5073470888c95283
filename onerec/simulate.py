"""``onerec-simulate``: offline simulation of watch-time gains, the report users decide from.

    onerec-simulate data_dir=BUNDLE runs=[RUN,ALIGN_RUN,...] out_dir=REPORT
                    [simulator=ground_truth|learned] [baselines=[popularity,sasrec,random]]

For each held-out user (the test split's histories) every model generates sessions of m
items under the same beam settings; a simulator that is *not* the reward model scores
them (the synthetic generator's exact expectations, or a user-response model trained on
users the reward model never saw). Aggregated as OneRec's Table 1: for each of swt
(session watch time), vtr (view-through), wtr (follow) and ltr (like), the mean and the
max over the ``sessions_per_user`` best beams, averaged over users; the *served* session
is the best beam. Gains are relative to the NTP model (the first run), on the served
session's watch time, with a paired 95% bootstrap interval over users.

An align run expands into its iterations (``iter_0`` = its NTP start, ``iter_1`` ...), so
the report shows the gain per IPA iteration.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.bootstrap import paired_relative_gain_ci
from onerec.checkpoint import load_run
from onerec.data import BatchBuilder, ExampleSet, padded_histories, user_feature_matrix
from onerec.generate import SessionGenerator
from onerec.simulators import LearnedSimulatorConfig, SessionResponse, make_simulator
from onerec.trie import SemanticIdTrie

log = logging.getLogger(__name__)

RESPONSE_RATES = ("swt", "vtr", "wtr", "ltr")


@dataclass
class SimulateConfig:
    """``onerec-simulate``.

    Attributes:
        runs: run folders; the first is the NTP model gains are measured against.
        baselines: ``popularity``, ``sasrec``, ``random``.
        simulator: ``ground_truth`` (synthetic bundles), ``learned`` or ``auto``.
        simulator_dir: the learned simulator's folder (trained there when missing).
        users: held-out users to simulate (0: the whole test split).
        sessions_per_user: best beams scored per user (Table 1's mean and max).
        beam_size: beams of the search (at least sessions_per_user).
        reward_run: optional reward model, for the reward-vs-simulator plot.
        compare_simulator: optional second simulator; the report says whether it agrees
            in direction with the first on every gain.
    """

    data_dir: str = "???"
    runs: list[str] = field(default_factory=list)
    out_dir: str = "runs/report"
    baselines: list[str] = field(default_factory=lambda: ["popularity", "random"])
    baselines_dir: str | None = None
    simulator: str = "auto"
    simulator_dir: str | None = None
    compare_simulator: str | None = None
    users: int = 2000
    sessions_per_user: int = 8
    beam_size: int = 16
    num_items: int = 0
    batch_size: int = 128
    expand_iterations: bool = True
    reward_run: str | None = None
    n_resamples: int = 2000
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.sessions_per_user < 1 or self.beam_size < self.sessions_per_user:
            raise ValueError(
                f"need 1 <= sessions_per_user ({self.sessions_per_user}) <= beam_size ({self.beam_size})"
            )


@dataclass
class ModelSessions:
    """Sessions of one model for the simulated users: ``[U, S, m]`` item indices (-1 = none)."""

    name: str
    sessions: np.ndarray
    kind: str  # "onerec" or "baseline"


# ----------------------------------------------------------------------------- inputs
def expand_runs(runs: list[str], expand_iterations: bool) -> list[tuple[str, Path]]:
    """``(name, folder)`` per model; an align run becomes its ``iter_k`` snapshots."""
    out: list[tuple[str, Path]] = []
    for i, run in enumerate(runs):
        path = Path(run).expanduser()
        iterations = sorted(path.glob("iter_*"), key=lambda p: int(p.name.split("_")[1]))
        if expand_iterations and iterations:
            for folder in iterations:
                k = int(folder.name.split("_")[1])
                if k == 0 and i > 0:
                    continue  # iter_0 is the NTP model already listed first
                out.append((f"{path.name}/{folder.name}", folder))
        else:
            out.append((path.name, path))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"two runs share a name: {names}; give the run folders distinct names")
    return out


def simulated_users(bundle: Bundle, max_history: int, m: int, users: int, seed: int) -> ExampleSet:
    """The test split's examples (one per user), a seeded sample of ``users`` of them."""
    frame = bundle.split("test")
    if users > 0 and frame.height > users:
        rows = np.sort(np.random.default_rng(seed).choice(frame.height, size=users, replace=False))
        frame = frame[rows]
    return ExampleSet(frame, max_history, m)


# ----------------------------------------------------------------------------- sessions
@torch.no_grad()
def onerec_sessions(run_dir: Path, bundle: Bundle, examples_for: Callable[[int], ExampleSet], cfg: SimulateConfig, m: int) -> np.ndarray:
    run = load_run(run_dir, cfg.data_dir)
    model = run.model
    if run.session_length < m:
        raise UserError(f"{run_dir} generates sessions of {run.session_length} items; the report needs {m}")
    examples = examples_for(model.config.max_history)
    builder = BatchBuilder.for_bundle(bundle, model.config.history_item_embedding, model.config.user_embedding_buckets)
    generator = SessionGenerator(model, SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes), torch.as_tensor(bundle.codes))
    out = np.full((len(examples), cfg.sessions_per_user, m), -1, dtype=np.int64)
    for start in tqdm(range(0, len(examples), cfg.batch_size), desc=f"generate {run_dir.name}", disable=not cfg.show_progress):
        rows = np.arange(start, min(len(examples), start + cfg.batch_size))
        history, lengths = padded_histories(examples, rows)
        features = user_feature_matrix(builder, examples.users[rows])
        items, _ = generator.generate(history, lengths, features, m, cfg.beam_size, None, True)
        out[rows] = items[:, : cfg.sessions_per_user].numpy()
    return out


def baseline_sessions(name: str, bundle: Bundle, examples: ExampleSet, cfg: SimulateConfig, m: int) -> np.ndarray:
    """One session per user: the baseline's top-m items not in the user's history."""
    from onerec.baselines import item_popularity, popularity_order

    users = len(examples)
    if name == "random":
        rng = np.random.default_rng(cfg.seed + 17)
        sessions = np.stack([rng.choice(bundle.num_items, size=m, replace=False) for _ in range(users)])
        return sessions[:, None, :]
    if name == "popularity":
        order = popularity_order(item_popularity(bundle))
        depth = min(order.size, m + int(examples.history_lengths.max(initial=0)))  # enough after dropping seen items
        candidates = np.broadcast_to(order[:depth], (users, depth))
    elif name == "sasrec":
        from onerec.baselines import load_sasrec, sasrec_rankings, train_sasrec
        from onerec.baselines.sasrec import CHECKPOINT

        folder = Path(cfg.baselines_dir or Path(cfg.out_dir) / "baselines")
        if not (folder / CHECKPOINT).is_file():
            train_sasrec(bundle, folder)
        model = load_sasrec(folder / CHECKPOINT, bundle)
        candidates = sasrec_rankings(model, examples, top_k=m + 50).items
    else:
        raise UserError(f"unknown baseline {name!r}; expected popularity, sasrec or random")
    sessions = np.full((users, 1, m), -1, dtype=np.int64)
    for u in range(users):
        seen = set(examples.histories(np.array([u]))[0].tolist())
        fresh = [int(i) for i in candidates[u] if i >= 0 and int(i) not in seen][:m]
        sessions[u, 0, : len(fresh)] = fresh
    return sessions


# ----------------------------------------------------------------------------- scoring
def score_sessions(simulator: Any, examples: ExampleSet, sessions: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """``{swt, vtr, wtr, ltr}`` of every session: ``[U, S]`` arrays (NaN where no session)."""
    u, s, m = sessions.shape
    out = {k: np.full((u, s), np.nan) for k in RESPONSE_RATES}
    for start in range(0, u, batch_size):
        rows = np.arange(start, min(u, start + batch_size))
        history, lengths = padded_histories(examples, rows)
        flat = sessions[rows].reshape(-1, m)
        reps = np.repeat(rows, s)
        response: SessionResponse = simulator.score(
            examples.users[reps], history.repeat_interleave(s, 0), lengths.repeat_interleave(s, 0), flat
        )
        exists = (flat >= 0).any(1)
        for key in RESPONSE_RATES:
            values = getattr(response, key)
            out[key][rows] = np.where(exists, values, np.nan).reshape(len(rows), s)
    return out


def summarize_model(scores: dict[str, np.ndarray], sessions: np.ndarray, bundle: Bundle) -> dict[str, float]:
    row: dict[str, float] = {}
    for key in RESPONSE_RATES:
        values = scores[key]
        row[f"{key}_mean"] = float(np.nanmean(np.nanmean(values, 1)))
        row[f"{key}_max"] = float(np.nanmean(np.nanmax(values, 1)))
    served = sessions[:, 0]
    row["swt_served"] = float(np.nanmean(scores["swt"][:, 0]))
    emitted = sessions[sessions >= 0]
    row["legal_rate"] = float(((emitted >= 0) & (emitted < bundle.num_items)).mean()) if emitted.size else 0.0
    row["distinct_items"] = float(np.mean([len(set(s[s >= 0].tolist())) for s in served]))
    if "author_id" in bundle.items.columns:
        authors = bundle.items.sort("item_idx")["author_id"].to_numpy()
        row["distinct_authors"] = float(np.mean([len(set(authors[s[s >= 0]].tolist())) for s in served]))
    row["coverage"] = float(np.unique(served[served >= 0]).size / bundle.num_items)
    return row


# ----------------------------------------------------------------------------- report
def simulate(cfg: SimulateConfig) -> dict[str, Any]:
    if not cfg.runs:
        raise UserError("runs=[...] is empty; pass at least the NTP run folder")
    bundle = Bundle.open(cfg.data_dir)
    m = cfg.num_items or bundle.target_items
    out_dir = Path(cfg.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    simulator_name = cfg.simulator
    if simulator_name == "auto":
        simulator_name = "ground_truth" if bundle.has_ground_truth else "learned"
    simulator_dir = cfg.simulator_dir or str(out_dir / "learned_simulator")
    # The learned simulator is trained on the users the reward model never saw.
    sim_cfg = LearnedSimulatorConfig(show_progress=cfg.show_progress)
    simulator = make_simulator(simulator_name, bundle, simulator_dir, sim_cfg, cfg.reward_run)

    cache: dict[int, ExampleSet] = {}

    def examples_for(max_history: int) -> ExampleSet:
        if max_history not in cache:
            cache[max_history] = simulated_users(bundle, max_history, m, cfg.users, cfg.seed)
        return cache[max_history]

    models: list[ModelSessions] = []
    for name, folder in expand_runs(cfg.runs, cfg.expand_iterations):
        models.append(ModelSessions(name, onerec_sessions(folder, bundle, examples_for, cfg, m), "onerec"))
    reference_examples = examples_for(bundle.history_length)
    for name in cfg.baselines:
        models.append(ModelSessions(name, baseline_sessions(name, bundle, reference_examples, cfg, m), "baseline"))

    scored = {model.name: score_sessions(simulator, reference_examples, model.sessions) for model in tqdm(models, desc="simulate", disable=not cfg.show_progress)}
    baseline = models[0].name
    table = {model.name: summarize_model(scored[model.name], model.sessions, bundle) for model in models}
    gains = {}
    base_served = scored[baseline]["swt"][:, 0]
    for model in models[1:]:
        served = scored[model.name]["swt"][:, 0]
        ok = np.isfinite(served) & np.isfinite(base_served)
        ci = paired_relative_gain_ci(served[ok], base_served[ok], n_resamples=cfg.n_resamples, seed=cfg.seed)
        gains[model.name] = {"swt_rel": ci.estimate, "ci95": [ci.low, ci.high]}

    report: dict[str, Any] = {
        "baseline": baseline,
        "simulator": simulator_name,
        "users": len(reference_examples),
        "session_items": m,
        "sessions_per_user": cfg.sessions_per_user,
        "beam_size": cfg.beam_size,
        "models": table,
        "gains": gains,
        "command": shlex.join(["onerec-simulate", *sys.argv[1:]]) if sys.argv and "onerec-simulate" in sys.argv[0] else None,
    }
    if cfg.compare_simulator:
        other = make_simulator(cfg.compare_simulator, bundle, simulator_dir, sim_cfg, cfg.reward_run)
        other_base = score_sessions(other, reference_examples, models[0].sessions)["swt"][:, 0]
        agreement = {}
        for model in models[1:]:
            served = score_sessions(other, reference_examples, model.sessions)["swt"][:, 0]
            ok = np.isfinite(served) & np.isfinite(other_base)
            rel = float(served[ok].mean() / other_base[ok].mean() - 1.0)
            agreement[model.name] = {"swt_rel": rel, "same_direction": bool(np.sign(rel) == np.sign(gains[model.name]["swt_rel"]))}
        report["compare_simulator"] = {"name": cfg.compare_simulator, "gains": agreement}

    reward_points = None
    if cfg.reward_run:
        reward_points = reward_vs_simulator(cfg.reward_run, reference_examples, models, scored)
    from onerec.report_plots import write_plots

    report["plots"] = write_plots(out_dir, report, scored, reward_points)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(render_markdown(report, cfg))
    return report


@torch.no_grad()
def reward_vs_simulator(
    reward_run: str, examples: ExampleSet, models: list[ModelSessions], scored: dict[str, dict[str, np.ndarray]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The reward model's score and the simulator's swt of every model's served session."""
    from onerec.reward import load_reward_model

    reward_model = load_reward_model(reward_run).eval()
    points = {}
    rows = np.arange(len(examples))
    history, lengths = padded_histories(examples, rows)
    for model in models:
        served = model.sessions[:, 0]
        ok = (served >= 0).all(1)
        reward = reward_model.reward(history[ok], lengths[ok], torch.from_numpy(served[ok])).float().numpy()
        points[model.name] = (reward, scored[model.name]["swt"][ok, 0])
    return points


def render_markdown(report: dict[str, Any], cfg: SimulateConfig) -> str:
    cols = ["swt_served", "swt_mean", "swt_max", "vtr_mean", "vtr_max", "wtr_mean", "wtr_max", "ltr_mean", "ltr_max", "distinct_items", "distinct_authors", "coverage", "legal_rate"]
    lines = [
        "# Offline watch-time simulation",
        "",
        f"Simulator: **{report['simulator']}** · users: {report['users']} · session: {report['session_items']} items · "
        f"mean/max over the best {report['sessions_per_user']} of {report['beam_size']} beams · baseline: `{report['baseline']}`",
        "",
        "swt in seconds of expected watch time per session; vtr/wtr/ltr are per-item view-through, follow and like probabilities.",
        "",
        "| model | gain (served swt) | 95% CI | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for name, row in report["models"].items():
        gain = report["gains"].get(name)
        gain_cells = [f"{gain['swt_rel']:+.2%}", f"[{gain['ci95'][0]:+.2%}, {gain['ci95'][1]:+.2%}]"] if gain else ["(baseline)", ""]
        cells = []
        for c in cols:
            v = row.get(c)
            if v is None or v != v:  # absent, or NaN: the data has no such label (e.g. no follows)
                cells.append("-")
            elif c.startswith("swt"):
                cells.append(f"{v / 1000:.1f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(gain_cells + cells) + " |")
    if "compare_simulator" in report:
        comp = report["compare_simulator"]
        lines += ["", f"Second simulator `{comp['name']}` (served swt gain vs the baseline):", ""]
        for name, g in comp["gains"].items():
            lines.append(f"- {name}: {g['swt_rel']:+.2%} ({'same direction' if g['same_direction'] else 'OPPOSITE direction'})")
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in report.get("plots", [])), ""]
    lines += ["Settings:", "", "```", json.dumps({k: v for k, v in cfg.__dict__.items()}, indent=2, default=str), "```", ""]
    if report.get("command"):
        lines += ["Command:", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    from onerec.stages import hydra_main

    def run(cfg: SimulateConfig) -> None:
        report = simulate(cfg)
        print((Path(cfg.out_dir) / "report.md").read_text())
        print(f"report: {Path(cfg.out_dir) / 'report.md'}")

    hydra_main("simulate", "onerec-simulate", run)


if __name__ == "__main__":
    main()
