"""The real backend: an exported artefact behind the HTTP contract, batching, fallbacks."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

with warnings.catch_warnings():  # starlette >= 1.x nudges TestClient users towards httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.checkpoint import BEST, build_model, save_atomic, save_run_config, session_length_of
from onerec.export import ExportConfig, export_run
from serving import InvalidRequestError, RecommendRequest, RecommendResponse, ServeConfig, SessionBackend, build_app
from serving.cli import ServeCommandConfig, server_config
from serving.in_flight import InFlight
from serving.model_backend import ArtefactBackend, _AotiRuntime
from tests.onerec.helpers import tiny_train_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def artefact_dir(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model, exported without the AOTInductor compile."""
    run_dir = tmp_path_factory.mktemp("serve_run")
    cfg = tiny_train_config(tiny_bundle_dir, run_dir)
    bundle = Bundle.open(tiny_bundle_dir)
    torch.manual_seed(1)
    model = build_model(cfg, bundle, session_length_of(cfg, bundle))
    save_run_config(cfg, run_dir)
    save_atomic({"model": model.state_dict()}, run_dir / BEST)
    out = tmp_path_factory.mktemp("serve_artefact") / "art"
    export_run(ExportConfig(run_dir=str(run_dir), out_dir=str(out), beam_size=8, aoti=False, check=False))
    return out


@pytest.fixture(scope="module", params=["torchscript", "eager"])
def backend(request: pytest.FixtureRequest, artefact_dir: Path) -> ArtefactBackend:
    return ArtefactBackend(artefact_dir, runtime=request.param)


@pytest.fixture(scope="module")
def item_ids(tiny_bundle_dir: Path) -> list[str]:
    return Bundle.open(tiny_bundle_dir).item_ids()


@pytest.fixture(scope="module")
def popular(tiny_bundle_dir: Path) -> list[int]:
    """Original ids (ints: the synthetic ids are decimal), most trained-on first."""
    items = Bundle.open(tiny_bundle_dir).items.sort(["train_count", "item_idx"], descending=[True, False])
    return [int(i) for i in items["item_id"].to_list()]


def _one(backend: ArtefactBackend, history: list[str], num_items: int = 3, **fields: object) -> RecommendResponse:
    return backend.recommend_batch([RecommendRequest(history=tuple(history), num_items=num_items, **fields)])[0]  # type: ignore[arg-type]


def _same(a: RecommendResponse, b: RecommendResponse) -> bool:
    return (
        list(a.items) == list(b.items)
        and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4) for x, y in zip(a.scores, b.scores))
        and tuple(a.unknown_items) == tuple(b.unknown_items)
        and a.fallback == b.fallback
    )


# -- the Protocol ------------------------------------------------------------------------


def test_backend_satisfies_the_protocol(backend: ArtefactBackend, artefact_dir: Path) -> None:
    assert isinstance(backend, SessionBackend)
    assert backend.max_history == 32
    assert backend.model_version == ArtefactBackend(artefact_dir, "torchscript").model_version
    assert len(backend.model_version) == 12


def test_answer_shape(backend: ArtefactBackend, item_ids: list[str]) -> None:
    answer = _one(backend, item_ids[10:20], num_items=3)
    assert len(answer.items) == 3 and len(set(answer.items)) == 3
    assert all(isinstance(i, int) for i in answer.items)  # decimal ids come back as ints
    assert {str(i) for i in answer.items} <= set(item_ids)
    assert len(answer.scores) == 3 and all(math.isfinite(s) and s <= 0 for s in answer.scores)
    assert answer.fallback is None and tuple(answer.unknown_items) == ()


def test_batched_answers_equal_single_answers(backend: ArtefactBackend, item_ids: list[str]) -> None:
    requests = [
        RecommendRequest(history=tuple(item_ids[5 : 5 + n]), num_items=m)
        for n, m in [(1, 3), (7, 3), (20, 2), (40, 3), (3, 1), (12, 2)]
    ]
    requests.append(RecommendRequest(history=("nope",), num_items=2))  # popularity, in the same batch
    requests.append(RecommendRequest(history=tuple(item_ids[50:60]), num_items=3, exclude=tuple(item_ids[:20])))
    batched = backend.recommend_batch(requests)
    assert len(batched) == len(requests)
    for request, answer in zip(requests, batched):
        assert _same(answer, backend.recommend_batch([request])[0]), request


def test_runtimes_agree(artefact_dir: Path, item_ids: list[str]) -> None:
    scripted = ArtefactBackend(artefact_dir, "torchscript")
    eager = ArtefactBackend(artefact_dir, "eager")
    for n in (1, 9, 32):
        assert _same(_one(scripted, item_ids[:n]), _one(eager, item_ids[:n]))


def test_unknown_ids_are_dropped_and_reported(backend: ArtefactBackend, item_ids: list[str]) -> None:
    known = item_ids[3:8]
    answer = _one(backend, ["x1", known[0], "x2", *known[1:], "x1"])
    assert tuple(answer.unknown_items) == ("x1", "x2")
    base = _one(backend, known)
    assert list(answer.items) == list(base.items) and answer.fallback is None


def test_long_history_keeps_the_most_recent_known_items(backend: ArtefactBackend, item_ids: list[str]) -> None:
    long = item_ids[:80]
    assert _same(_one(backend, long), _one(backend, long[-32:]))


@pytest.mark.parametrize("history", [[], ["x", "y"]])
def test_empty_or_unknown_history_gets_popularity(backend: ArtefactBackend, popular: list[int], history: list[str]) -> None:
    answer = _one(backend, history, num_items=3, exclude=(str(popular[1]),))
    assert answer.fallback == "popularity"
    assert list(answer.items) == [popular[0], popular[2], popular[3]]
    assert list(answer.scores) == sorted(answer.scores, reverse=True)
    assert tuple(answer.unknown_items) == tuple(history)


def test_exclude_is_honoured(backend: ArtefactBackend, item_ids: list[str]) -> None:
    history = item_ids[20:30]
    first = _one(backend, history)
    again = _one(backend, history, exclude=tuple(str(i) for i in first.items) + ("not-an-item",))
    assert again.fallback is None
    assert not set(again.items) & set(first.items)


def test_num_items_beyond_the_session_length_is_a_client_error(backend: ArtefactBackend, item_ids: list[str]) -> None:
    with pytest.raises(InvalidRequestError, match="num_items=4"):
        _one(backend, item_ids[:3], num_items=4)


def test_user_features_the_model_does_not_read_are_ignored(backend: ArtefactBackend, item_ids: list[str]) -> None:
    history = item_ids[:6]
    assert _same(_one(backend, history, user_features={"age": 3}), _one(backend, history))


def test_unknown_runtime_is_refused(artefact_dir: Path) -> None:
    with pytest.raises(UserError, match="no AOTInductor program"):
        ArtefactBackend(artefact_dir, runtime="aoti")
    with pytest.raises(UserError, match="runtime='tensorrt'"):
        ArtefactBackend(artefact_dir, runtime="tensorrt")
    assert ArtefactBackend(artefact_dir, runtime="auto").runtime == "torchscript"


# -- over HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(artefact_dir: Path) -> Iterator[TestClient]:
    backend = ArtefactBackend(artefact_dir, "torchscript")
    config = server_config(ServeCommandConfig(artefact=str(artefact_dir), max_wait_ms=5.0), backend.session_length)
    with TestClient(build_app(backend, config)) as test_client:
        yield test_client


def test_http_contract(client: TestClient, item_ids: list[str]) -> None:
    r = client.post("/v1/recommend", json={"history": [int(i) for i in item_ids[:5]] + ["zz"], "num_items": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "scores", "model_version", "unknown_items", "fallback"}
    assert len(body["items"]) == 2 and len(body["scores"]) == 2
    assert body["unknown_items"] == ["zz"] and body["fallback"] is None
    assert body["model_version"] == client.get("/healthz").json()["model_version"]
    assert client.post("/v1/recommend", json={"history": []}).json()["fallback"] == "popularity"


def test_http_num_items_is_capped_at_the_session_length(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"history": [1], "num_items": 4})
    assert r.status_code == 422 and "num_items" in r.text
    schema = client.get("/openapi.json").json()
    assert "1..3" in json.dumps(schema)
    # the default (5 in serve.yaml) is capped too: 3 items
    assert len(client.post("/v1/recommend", json={"history": [1]}).json()["items"]) == 3


def test_http_concurrent_requests_batch_and_match_single_answers(client: TestClient, item_ids: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    histories = [[int(i) for i in item_ids[k : k + 1 + k % 13]] for k in range(24)]
    single = [client.post("/v1/recommend", json={"history": h, "num_items": 3}).json() for h in histories]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda h: client.post("/v1/recommend", json={"history": h, "num_items": 3}).json(), histories))
    for a, b in zip(single, concurrent):
        assert a["items"] == b["items"]
        assert all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4) for x, y in zip(a["scores"], b["scores"]))


def test_serve_config_composes(artefact_dir: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from data_pipeline.cli import CONF_DIR

    ConfigStore.instance().store(name="serve_schema", node=ServeCommandConfig)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("serve", overrides=[f"artefact={artefact_dir}", "port=8123"])
    command = OmegaConf.to_object(cfg)
    assert isinstance(command, ServeCommandConfig) and isinstance(command, ServeConfig)
    assert (command.artefact, command.host, command.port) == (str(artefact_dir), "127.0.0.1", 8123)
    plain = server_config(command, session_length=3)
    assert type(plain) is ServeConfig and plain.max_num_items == 3 and plain.default_num_items == 3


def test_aoti_runtime_sends_large_batches_and_other_lengths_to_torchscript() -> None:
    """Batches of more than ``max_batch`` requests and lengths without a program use
    TorchScript; a program that holds the GIL also yields to TorchScript while another call
    runs, a GIL-free one never does."""
    calls: list[tuple[str, int, int]] = []

    def recorder(name: str):
        def run(history, lengths, features, *rest):
            num_items = rest[0] if name == "torchscript" else 5
            calls.append((name, history.shape[0], num_items))
            return torch.zeros(history.shape[0], 1, num_items, dtype=torch.long), torch.zeros(history.shape[0], 1)
        return run

    fallback = SimpleNamespace(generate=recorder("torchscript"))
    runtime = _AotiRuntime.__new__(_AotiRuntime)  # the routing alone: no compiled program needed
    runtime.programs, runtime.max_history, runtime.max_batch, runtime.fallback = {5: recorder("aoti")}, 50, 1, fallback
    runtime.in_flight, runtime.holds_gil = InFlight(), True
    features = torch.zeros(3, 0, dtype=torch.long)
    for batch, num_items in [(1, 5), (3, 5), (1, 4)]:
        history = torch.zeros(batch, 10, dtype=torch.long)
        runtime.generate(history, torch.full((batch,), 10), features[:batch], num_items, None)
    assert calls == [("aoti", 1, 5), ("torchscript", 3, 5), ("torchscript", 1, 4)]
    # A lone request while another worker's call is still running: TorchScript, which lets the
    # two run side by side; once that call is over, AOTInductor again.
    one = (torch.zeros(1, 10, dtype=torch.long), torch.full((1,), 10), features[:1], 5, None)
    with runtime.in_flight:
        runtime.generate(*one)
    runtime.generate(*one)
    assert calls[-2:] == [("torchscript", 1, 5), ("aoti", 1, 5)]
    runtime.holds_gil = False  # the GIL-free runner: busy or not, AOTInductor
    with runtime.in_flight:
        runtime.generate(*one)
    assert calls[-1] == ("aoti", 1, 5)
    runtime.max_batch = 0  # no limit: every call of an exported length, busy or not
    runtime.holds_gil = True
    runtime.generate(torch.zeros(3, 10, dtype=torch.long), torch.full((3,), 10), features, 5, None)
    with runtime.in_flight:
        runtime.generate(*one)
    assert calls[-2:] == [("aoti", 3, 5), ("aoti", 1, 5)]