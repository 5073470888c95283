"""The real :class:`~serving.backend.SessionBackend`: an exported OneRec artefact behind the server.

:class:`ArtefactBackend` loads a folder written by ``onerec-export`` (hashes and torch/fbgemm
versions checked) and answers a batch of requests with **one** beam-search call per distinct
``num_items`` in the batch:

1. Map each history id (a string) through the items table; unknown ids are dropped and reported
   (first occurrence order, no repeats). Keep the last ``max_history`` known items.
2. A request with no known item gets the popularity list (most-consumed training items, minus
   its ``exclude``) and ``fallback="popularity"``; it never reaches the model.
3. The rest are right-padded into ``history [B, T]`` (T = the longest history in the group),
   ``lengths [B]``, ``user_features [B, F]`` and, when any request excludes something,
   ``exclude [B, E]`` (the excluded item indices, -1-padded), which the search never emits.
4. The best beam of each row is its session. Scores: every item of a session carries the
   session's **mean log-probability per item** (its beam score, a sum of code
   log-probabilities, divided by ``num_items``): a finite float ≤ 0, higher is better, equal
   within a session because the beam is scored as a whole. A row whose every beam died (the
   exclusions left no legal session) gets the popularity answer too.

Runtimes (``runtime=``): ``aoti`` (the torch.export + AOTInductor programs, called without
the GIL so that worker threads compute side by side; a ``num_items`` without a compiled
program, and batches of more than ``aoti_max_batch`` requests, run on TorchScript),
``torchscript``, ``eager`` (the plain PyTorch
generator rebuilt from the weights: the reference), and ``auto``: the first of
:data:`AUTO_ORDER` the artefact holds. The order is what ``benchmarks/bench_serving.py``
measured (README: serving latency).

Item ids come back as ints when every id of the catalogue is a canonical decimal integer
(the manifest's ``item_id_type``), else as strings.

User features: the categorical features the model was trained with (``user_features.json``),
each sent as its integer code (0 = unknown; the bundle keeps codes, not the raw values). A
missing or null feature is 0; a name the model does not read is ignored; any other value is
a 422 naming the feature.

Example::

    backend = ArtefactBackend("runs/artefact", runtime="auto")
    [answer] = backend.recommend_batch([RecommendRequest(history=("12", "7"), num_items=5)])
    answer.items, answer.scores, answer.unknown_items, answer.fallback
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from data_pipeline.cli import UserError
from onerec.aoti_runner import GilFreeProgram
from onerec.artefact import Artefact, load_artefact
from serving.api import InvalidRequestError, RecommendRequest, RecommendResponse
from serving.in_flight import InFlight

__all__ = ["AUTO_ORDER", "RUNTIMES", "ArtefactBackend"]

log = logging.getLogger(__name__)

RUNTIMES = ("aoti", "torchscript", "eager")
#: ``runtime="auto"`` takes the first of these that the artefact holds: the order
#: ``benchmarks/bench_serving.py`` measured (small model, history 50, beam 16, 5 items, idle
#: 2-core CPU, README): at concurrency 1 p50 31 ms AOTInductor, 60 ms TorchScript, 101 ms
#: eager; at concurrency 16, 96-104 requests/s AOTInductor, 72-76 TorchScript, 49-60 eager.
AUTO_ORDER = ("aoti", "torchscript", "eager")


class _Runtime(Protocol):
    name: str

    def generate(
        self, history: Tensor, lengths: Tensor, features: Tensor, num_items: int, exclude: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(items [B, beam, num_items], scores [B, beam])``, best beam first."""
        ...


class _TorchScriptRuntime:
    name = "torchscript"

    def __init__(self, artefact: Artefact) -> None:
        self.module = artefact.load_torchscript()
        self.beam_size = artefact.beam_size

    def generate(
        self, history: Tensor, lengths: Tensor, features: Tensor, num_items: int, exclude: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return self.module.generate(history, lengths, features, num_items, self.beam_size, exclude, True)


class _EagerRuntime:
    name = "eager"

    def __init__(self, artefact: Artefact) -> None:
        self.generator = artefact.load_eager()
        self.beam_size = artefact.beam_size

    def generate(
        self, history: Tensor, lengths: Tensor, features: Tensor, num_items: int, exclude: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return self.generator.generate(history, lengths, features, num_items, self.beam_size, exclude, True)


class _AotiRuntime:
    """One compiled program per exported ``num_items``; other lengths, and batches of more
    than ``max_batch`` requests (0: no limit), go to TorchScript.

    The programs are called through :mod:`onerec.aoti_runner`, which releases the GIL while
    they compute, so the server's worker threads run them side by side (as they do
    TorchScript). A package that only torch's own loader can call (it keeps the GIL for the
    whole call: ``python -m benchmarks.gil_check``) would stall the other workers and the
    event loop; for those, with ``max_batch`` > 0, a call made while another model call is in
    flight goes to TorchScript too.
    """

    name = "aoti"

    def __init__(self, artefact: Artefact, num_runners: int, max_batch: int = 0) -> None:
        self.programs = {m: artefact.load_aoti(m, num_runners=num_runners) for m in artefact.aoti_num_items}
        self.holds_gil = not all(isinstance(p, GilFreeProgram) for p in self.programs.values())
        if self.holds_gil:
            log.warning("%s: AOTInductor through torch's loader, which holds the GIL while it computes", artefact.path)
        self.num_catalogue_items = artefact.num_items
        self.max_history = artefact.max_history
        self.max_batch = max_batch
        self.fallback = _TorchScriptRuntime(artefact)
        self.in_flight = InFlight()

    def generate(
        self, history: Tensor, lengths: Tensor, features: Tensor, num_items: int, exclude: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        with self.in_flight as others:
            program = self.programs.get(num_items)
            busy = self.holds_gil and self.max_batch > 0 and others > 0
            if program is None or busy or 0 < self.max_batch < history.shape[0]:
                return self.fallback.generate(history, lengths, features, num_items, exclude)
            # The program was traced for histories within max_history (longer ones are cut first).
            assert history.shape[1] <= self.max_history, "histories must be cut to max_history"
            if exclude is None:  # a program has one signature: "nothing" is one -1 per row
                exclude = torch.full((history.shape[0], 1), -1, dtype=torch.long)
            items, scores = program(history, lengths, features, exclude)
            return items, scores


def resolve_runtime(runtime: str, artefact: Artefact) -> str:
    """``auto`` → the first of :data:`AUTO_ORDER` present; a named runtime must be present."""
    available = [name for name in AUTO_ORDER if name != "aoti" or artefact.aoti_num_items]
    if runtime == "auto":
        return available[0]
    if runtime not in RUNTIMES:
        raise UserError(f"runtime={runtime!r}; expected auto or one of {RUNTIMES}")
    if runtime not in available:
        raise UserError(f"runtime={runtime!r} but {artefact.path} has no AOTInductor program (exported with aoti=false)")
    return runtime


@dataclass
class _Prepared:
    """One request, mapped to indices."""

    known: list[int]
    unknown: tuple[str, ...]
    banned: list[int]
    features: list[int]


class ArtefactBackend:
    """Serves an ``onerec-export`` artefact (see the module docstring for the behaviour).

    Args:
        path: the artefact folder.
        runtime: ``auto``, ``aoti``, ``torchscript`` or ``eager``.
        threads: torch intra-op threads for this process (0: leave torch's setting).
        num_runners: AOTInductor programs that may run at once (the server's worker threads).
        aoti_max_batch: with ``runtime=aoti``, batches of more requests run on TorchScript
            (0: never; see ``_AotiRuntime``).
        verify: check every file's sha256 on load (versions are always checked).

    Attributes:
        model_version: the manifest's model version (a hash of the weights).
        max_history: the most recent known history items the model reads.
        runtime: the runtime in use.
        session_length: the largest ``num_items`` the model can generate.
    """

    def __init__(
        self,
        path: str | Path,
        runtime: str = "auto",
        *,
        threads: int = 0,
        num_runners: int = 1,
        aoti_max_batch: int = 0,
        verify: bool = True,
    ) -> None:
        self.artefact = load_artefact(path, verify=verify)
        art = self.artefact
        if threads > 0:
            torch.set_num_threads(threads)
        self.runtime = resolve_runtime(runtime, art)
        self.model_version = art.model_version
        self.max_history = art.max_history
        self.session_length = art.session_length
        self.beam_size = art.beam_size
        self.num_catalogue_items = art.num_items

        items = art.items
        ids = [str(i) for i in items["item_id"].to_list()]
        self._index: dict[str, int] = {item_id: i for i, item_id in enumerate(ids)}
        self._ids_out: list[int | str] = (
            [int(i) for i in ids] if art.manifest.get("item_id_type") == "int" else list(ids)
        )
        popularity = items["popularity"].to_numpy()
        # Most popular first; ties by item index, so the list is deterministic.
        self._popular: list[int] = np.lexsort((np.arange(len(ids)), -popularity)).tolist()
        self._feature_names = art.user_feature_names
        self._feature_cards = art.user_feature_cardinalities

        self._runner: _Runtime
        if self.runtime == "aoti":
            self._runner = _AotiRuntime(art, num_runners=max(1, num_runners), max_batch=aoti_max_batch)
        elif self.runtime == "torchscript":
            self._runner = _TorchScriptRuntime(art)
        else:
            self._runner = _EagerRuntime(art)
        log.info("serving %s (model_version=%s) with the %s runtime", art.path, self.model_version, self.runtime)

    # ------------------------------------------------------------------ the Protocol
    def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        """One response per request, same order; one model call per distinct ``num_items``."""
        prepared = [self._prepare(r) for r in requests]
        answers: list[RecommendResponse | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, (request, p) in enumerate(zip(requests, prepared)):
            if p.known:
                groups.setdefault(request.num_items, []).append(i)
            else:
                answers[i] = self._popularity(request.num_items, p)
        for num_items, rows in groups.items():
            sessions = self._generate([prepared[i] for i in rows], num_items)
            for i, (items, score) in zip(rows, sessions):
                if not items:  # every beam died: the exclusions left no legal session
                    answers[i] = self._popularity(num_items, prepared[i])
                else:
                    answers[i] = RecommendResponse(
                        items=[self._ids_out[j] for j in items],
                        scores=[score] * len(items),
                        unknown_items=prepared[i].unknown,
                        fallback=None,
                    )
        return [a for a in answers if a is not None]

    # ------------------------------------------------------------------ steps
    def _prepare(self, request: RecommendRequest) -> _Prepared:
        if not 1 <= request.num_items <= self.session_length:
            raise InvalidRequestError(
                f"num_items={request.num_items}: this model generates sessions of 1 to {self.session_length} items"
            )
        known: list[int] = []
        unknown: dict[str, None] = {}
        for item in request.history:
            idx = self._index.get(item)
            if idx is None:
                unknown.setdefault(item, None)
            else:
                known.append(idx)
        banned = list(dict.fromkeys(self._index[e] for e in request.exclude if e in self._index))
        return _Prepared(known[-self.max_history :], tuple(unknown), banned, self._features(request.user_features))

    def _features(self, given: Any) -> list[int]:
        codes: list[int] = []
        for name, card in zip(self._feature_names, self._feature_cards):
            value = given.get(name) if given else None
            if value is None:
                codes.append(0)
            elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < card:
                codes.append(value)
            else:
                raise InvalidRequestError(
                    f"user feature {name!r} must be an integer code in [0, {card}) (0 = unknown), got {value!r}"
                )
        return codes

    def _popularity(self, num_items: int, p: _Prepared) -> RecommendResponse:
        banned = set(p.banned)
        top: list[int] = []
        for idx in self._popular:
            if idx not in banned:
                top.append(idx)
                if len(top) == num_items:
                    break
        return RecommendResponse(
            items=[self._ids_out[i] for i in top],
            scores=[1.0 / (rank + 1) for rank in range(len(top))],  # rank-based, like the list
            unknown_items=p.unknown,
            fallback="popularity",
        )

    def _generate(self, batch: list[_Prepared], num_items: int) -> list[tuple[list[int], float]]:
        """The best session of each prepared request: ``(item indices, per-item score)``."""
        b = len(batch)
        width = max(len(p.known) for p in batch)
        history = torch.zeros(b, width, dtype=torch.long)  # (B, T), right-padded
        lengths = torch.zeros(b, dtype=torch.long)
        for row, p in enumerate(batch):
            history[row, : len(p.known)] = torch.tensor(p.known, dtype=torch.long)
            lengths[row] = len(p.known)
        features = torch.tensor([p.features for p in batch], dtype=torch.long).view(b, len(self._feature_names))
        exclude: Tensor | None = None
        if any(p.banned for p in batch):
            exclude = torch.full((b, max(len(p.banned) for p in batch)), -1, dtype=torch.long)  # (B, E)
            for row, p in enumerate(batch):
                exclude[row, : len(p.banned)] = torch.tensor(p.banned, dtype=torch.long)
        with torch.no_grad():
            items, scores = self._runner.generate(history, lengths, features, num_items, exclude)
        best_items = items[:, 0].tolist()  # (B, m) best beam
        best_scores = scores[:, 0].tolist()  # (B,)
        out: list[tuple[list[int], float]] = []
        for session, score in zip(best_items, best_scores):
            legal = [int(i) for i in session if i >= 0]
            if not legal or not np.isfinite(score):
                out.append(([], 0.0))
            else:
                out.append((legal, float(score) / num_items))
        return out
