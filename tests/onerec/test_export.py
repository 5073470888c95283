"""onerec-export: both exported programs equal the eager generator, and the artefact is checked.

The AOTInductor test compiles C++ (minutes on a small CPU): one test compiles the smallest
program (``num_items=1``, beam 4); the full artefact with its AOTInductor program is a
``slow`` test.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import torch

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.aoti_runner import GilFreeProgram, load_gil_free
from onerec.artefact import MANIFEST, ArtefactError, load_artefact
from onerec.checkpoint import BEST, build_model, save_atomic, save_run_config, session_length_of
from onerec.export import (
    DenseMoE,
    aoti_generator,
    ExportConfig,
    check_against_eager,
    compile_aoti,
    eager_generator,
    export_program,
    export_run,
    reference_histories,
    same_sessions,
    serving_generator,
)
from onerec.modules.moe import MoEArguments, dMoE
from onerec.trie import SemanticIdTrie
from tests.onerec.helpers import tiny_model, tiny_train_config

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]


def save_random_run(bundle_dir: Path, run_dir: Path, seed: int = 0) -> Path:
    """A run folder holding a randomly initialised tiny model (what onerec-train writes)."""
    cfg = tiny_train_config(bundle_dir, run_dir)
    bundle = Bundle.open(bundle_dir)
    torch.manual_seed(seed)
    model = build_model(cfg, bundle, session_length_of(cfg, bundle))
    save_run_config(cfg, run_dir)
    save_atomic({"model": model.state_dict()}, run_dir / BEST)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_run(tiny_bundle_dir, tmp_path_factory.mktemp("export_run"))


@pytest.fixture(scope="module")
def artefact_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artefact") / "art"
    export_run(ExportConfig(run_dir=str(run_dir), out_dir=str(out), beam_size=8, aoti=False))
    return out


@pytest.fixture(scope="module")
def generators(run_dir: Path):
    from onerec.checkpoint import load_run

    run = load_run(run_dir)
    bundle = run.bundle
    trie = SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes)
    codes = torch.as_tensor(bundle.codes)
    return eager_generator(run.model, trie, codes), serving_generator(run.model, trie, codes), run.session_length


def _copy(artefact_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "art"
    shutil.copytree(artefact_dir, copy)
    return copy


# -- the inference MoE -------------------------------------------------------------------


@pytest.mark.parametrize("sigmoid_gelu", [False, True])
@pytest.mark.parametrize("sparse_min_rows", [0, 1, 15, 16])
def test_dense_moe_equals_the_dropless_layer(sparse_min_rows: int, sigmoid_gelu: bool) -> None:
    """Both inference paths (dense below sparse_min_rows, per expert from it; 15 rows here),
    with either form of the GELU, eager and scripted, give the trained layer's output."""
    torch.manual_seed(0)
    layer = dMoE(MoEArguments(hidden_size=16, ffn_hidden_size=8, moe_num_experts=4, moe_top_k=2)).eval()
    torch.nn.init.normal_(layer.experts.bias)
    x = torch.randn(3, 5, 16)
    inference = DenseMoE(layer, sparse_min_rows, sigmoid_gelu).eval()
    with torch.no_grad():
        expected, _ = layer(x)
        got, loss = inference(x)
        scripted, _ = torch.jit.script(inference)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scripted, expected, rtol=1e-5, atol=1e-5)
    assert float(loss) == 0.0


def test_per_expert_moe_with_an_idle_expert() -> None:
    """An expert that no token chose gets zero rows (an empty gather and matmul), not an error."""
    torch.manual_seed(1)
    args = MoEArguments(hidden_size=16, ffn_hidden_size=8, moe_num_experts=4, moe_top_k=2, balancing="loss_free")
    layer = dMoE(args).eval()
    layer.router.selection_bias[3] = -1e9  # expert 3 is never among the top 2
    x = torch.randn(7, 16)
    with torch.no_grad():
        expected, _ = layer(x)
        got, _ = DenseMoE(layer, sparse_min_rows=1)(x)
    assert int(layer.tokens_per_expert[3]) == 0 and int(layer.tokens_per_expert.sum()) == 14
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# -- equivalence with eager --------------------------------------------------------------


def test_torchscript_artefact_equals_eager(artefact_dir: Path, generators) -> None:
    reference, _, m = generators
    art = load_artefact(artefact_dir)
    scripted = art.load_torchscript()
    for num_items in range(1, m + 1):
        check_against_eager(
            reference,
            lambda h, l, f, e: scripted.generate(h, l, f, num_items, art.beam_size, e, True),
            num_items,
            art.beam_size,
            "model.ts",
        )
    # forward(): no exclusion, the model's beam search as a plain call
    history, lengths, features = reference_histories(reference.num_items, 0, reference.max_history)
    with torch.no_grad():
        expected = reference.generate(history, lengths, features, m, art.beam_size, None, True)
        got = scripted(history, lengths, features, m, art.beam_size)
    assert same_sessions(*got, *expected) is None


def test_eager_runtime_of_the_artefact_equals_the_run(artefact_dir: Path, generators) -> None:
    reference, _, m = generators
    rebuilt = load_artefact(artefact_dir).load_eager()
    check_against_eager(reference, lambda h, l, f, e: rebuilt.generate(h, l, f, m, 8, e, True), m, 8, "weights.pt")


def test_aoti_program_equals_eager(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """The one AOTInductor compile of the default suite: the smallest program (minutes of C++),
    with the forms the export compiles (per-expert MoE, broadcast self-attention), called through torch's loader and through the
    GIL-free runner, one call at a time and from two threads at once."""
    from torch._inductor.package import load_package

    bundle = Bundle.open(tiny_bundle_dir)
    model = tiny_model(bundle, seed=5, decoder_layers=1).eval()  # one layer: a smaller program
    trie = SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes)
    codes = torch.as_tensor(bundle.codes)
    reference = eager_generator(model, trie, codes)
    generator = aoti_generator(model, trie, codes)
    num_items, beam = 1, 4
    program = export_program(generator, num_items, beam)
    compile_aoti({"m1": program}, tmp_path / "model.pt2", options={"cpp.simdlen": 1})
    gil_free = load_gil_free(tmp_path / "model.pt2", "m1", num_runners=2)
    assert isinstance(gil_free, GilFreeProgram)
    for compiled in (load_package(str(tmp_path / "model.pt2"), model_name="m1"), gil_free):
        check_against_eager(reference, compiled, num_items, beam, "model.pt2")
    # batch of one, history of one: the dynamic dimensions at their smallest
    history, lengths = torch.tensor([[7]]), torch.tensor([1])
    features = torch.zeros(1, 0, dtype=torch.long)
    exclude = torch.full((1, 1), -1, dtype=torch.long)  # nothing excluded
    with torch.no_grad():
        expected = reference.generate(history, lengths, features, num_items, beam, None, True)
    assert same_sessions(*gil_free(history, lengths, features, exclude), *expected) is None
    # Two threads calling at once (the server's workers): each gets its own answer.
    inputs = [reference_histories(reference.num_items, 0, reference.max_history, seed=s) for s in (1, 2)]
    with torch.no_grad():
        wanted = [reference.generate(h, l, f, num_items, beam, None, True) for h, l, f in inputs]
    none = [torch.full((h.shape[0], 1), -1, dtype=torch.long) for h, _, _ in inputs]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: [gil_free(*inputs[i], none[i]) for _ in range(5)], [0, 1]))
    for i, runs in enumerate(answers):
        for got in runs:
            assert same_sessions(*got, *wanted[i]) is None


def test_gil_free_loader_declines_a_package_with_more_than_its_library(tmp_path: Path) -> None:
    """A program with a constants file (or a proxy-executor node file) is left to torch's loader."""
    package = tmp_path / "model.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("model/data/aotinductor/m1/abc.wrapper.so", b"not loaded")
        archive.writestr("model/data/aotinductor/m1/abc.wrapper.json", b"{}")
    assert load_gil_free(package, "m1") is None
    assert load_gil_free(package, "m2") is None  # no such program


@pytest.mark.slow
@pytest.mark.timeout(1800)  # an AOTInductor compile of the whole search: minutes on 2 cores
def test_full_artefact_with_aoti(run_dir: Path, tmp_path: Path) -> None:
    """The whole command: both programs are checked against eager before the manifest is written."""
    art = export_run(ExportConfig(run_dir=str(run_dir), out_dir=str(tmp_path / "art"), beam_size=8, aoti=True))
    assert art.aoti_num_items == [art.session_length]
    assert (art.path / "model.pt2").is_file()
    assert art.manifest["timings"]["aoti_compile_s"] > 0


# -- the artefact folder -----------------------------------------------------------------


def test_artefact_layout(artefact_dir: Path, tiny_bundle_dir: Path) -> None:
    art = load_artefact(artefact_dir)
    names = {p.name for p in artefact_dir.iterdir()}
    assert names == {"manifest.json", "model.ts", "weights.pt", "items.parquet", "user_features.json", "config.yaml"}
    manifest = art.manifest
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["fbgemm_gpu"]
    assert len(manifest["model_version"]) == 12
    assert (manifest["session_length"], manifest["beam_size"], manifest["max_history"]) == (3, 8, 32)
    assert manifest["runtimes"]["aoti"] is None
    bundle = Bundle.open(tiny_bundle_dir)
    items = art.items
    assert items.columns == ["item_idx", "item_id", "codes", "popularity"]
    assert items["item_id"].to_list() == bundle.item_ids()
    assert items["popularity"].to_list() == bundle.items.sort("item_idx")["train_count"].to_list()
    assert (art.codes == bundle.codes).all()
    assert art.user_feature_names == bundle.user_feature_names


def test_model_version_is_a_hash_of_the_weights(run_dir: Path, artefact_dir: Path, tmp_path: Path) -> None:
    again = export_run(ExportConfig(run_dir=str(run_dir), out_dir=str(tmp_path / "again"), beam_size=8, aoti=False, check=False))
    assert again.model_version == load_artefact(artefact_dir).model_version


def test_tampered_file_is_refused(artefact_dir: Path, tmp_path: Path) -> None:
    art = _copy(artefact_dir, tmp_path)
    items = pl.read_parquet(art / "items.parquet")
    items.with_columns(pl.col("popularity").reverse()).write_parquet(art / "items.parquet")
    with pytest.raises(ArtefactError, match=r"items\.parquet does not match its sha256"):
        load_artefact(art)


def test_missing_file_is_refused(artefact_dir: Path, tmp_path: Path) -> None:
    art = _copy(artefact_dir, tmp_path)
    (art / "model.ts").unlink()
    with pytest.raises(ArtefactError, match=r"model\.ts listed in the manifest is missing"):
        load_artefact(art)


@pytest.mark.parametrize("package", ["torch", "fbgemm_gpu"])
def test_version_mismatch_is_refused(artefact_dir: Path, tmp_path: Path, package: str) -> None:
    art = _copy(artefact_dir, tmp_path)
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["versions"][package] = "0.0.1"
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match=rf"built with {package} 0\.0\.1, but this environment has {package}"):
        load_artefact(art)


def test_not_an_artefact(tmp_path: Path) -> None:
    with pytest.raises(ArtefactError, match="is not a serving artefact"):
        load_artefact(tmp_path)


def test_export_refuses_a_non_empty_out_dir(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty"):
        export_run(ExportConfig(run_dir=str(run_dir), out_dir=str(tmp_path), aoti=False))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_export_config_composes() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from data_pipeline.cli import CONF_DIR

    ConfigStore.instance().store(name="export_schema", node=ExportConfig)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("export", overrides=["run_dir=RUN", "out_dir=ART"])
    export_cfg = OmegaConf.to_object(cfg)
    assert isinstance(export_cfg, ExportConfig)
    assert (export_cfg.run_dir, export_cfg.out_dir, export_cfg.beam_size, export_cfg.aoti) == ("RUN", "ART", 16, True)
