"""The serving artefact: a folder a server loads without the training code.

=====================  ===================================================================
file                   content
=====================  ===================================================================
manifest.json          format, model_version, versions (torch, fbgemm_gpu, onerec), the
                       generation settings (session_length, beam_size, max_history, ...),
                       which runtimes the folder holds, and the sha256 of every other file
model.ts               TorchScript (``torch.jit.script``) of the whole constrained beam search:
                       ``generate(history, lengths, user_features, num_items, beam_size,
                       exclude, constrained)`` and ``forward`` (exclude=None, constrained)
model.pt2              torch.export + AOTInductor package of the same search, one compiled
                       program per exported ``num_items`` (fixed beam size), named ``m<n>``;
                       absent when exported with ``aoti=false``
weights.pt             the model's state dict (tensors only): the eager runtime rebuilds
                       the model from it and ``config.yaml`` (this one needs the onerec code)
items.parquet          item_idx, item_id (original, str), codes (list[i64]), popularity
user_features.json     ``{"names": [...], "cardinalities": {...}}`` of the categorical
                       user features the model reads, in input order (0 = unknown)
config.yaml            the training run's resolved configuration
=====================  ===================================================================

:func:`load_artefact` checks every hash and the torch / fbgemm_gpu versions before anything
is unpickled or compiled code is loaded, and fails with :class:`ArtefactError` naming the
file or the version. The TorchScript deprecation warning of this torch is silenced here,
once (:func:`quiet_torchscript`), around the calls that emit it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from data_pipeline.bundle import sha256
from data_pipeline.cli import UserError

__all__ = [
    "ARTEFACT_FORMAT",
    "Artefact",
    "ArtefactError",
    "load_artefact",
    "quiet_torchscript",
    "runtime_versions",
    "write_manifest",
]

ARTEFACT_FORMAT = "onerec-serving-artefact"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
MODEL_TS = "model.ts"
MODEL_AOTI = "model.pt2"
WEIGHTS = "weights.pt"
ITEMS = "items.parquet"
USER_FEATURES = "user_features.json"
CONFIG = "config.yaml"

#: Files every artefact has (model.pt2 is optional).
REQUIRED_FILES = (MODEL_TS, WEIGHTS, ITEMS, USER_FEATURES, CONFIG)


class ArtefactError(UserError):
    """A serving artefact is missing, incomplete, tampered with, or built for another stack."""


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's "``torch.jit.*`` is deprecated" warnings inside the block only.

    TorchScript is what the project serves (the user asked for it), so the warning carries no
    news; it is filtered here, around ``script`` / ``save`` / ``load``, and nowhere else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        yield


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str | None]:
    """The versions an artefact is tied to: compiled code and pickles are only valid for them.

    ``fbgemm_gpu`` is the import name of both the CPU (``fbgemm-gpu-cpu``) and CUDA builds.
    """
    try:
        import fbgemm_gpu

        fbgemm: str | None = str(getattr(fbgemm_gpu, "__version__", None) or _package_version("fbgemm-gpu-cpu"))
    except ImportError:
        fbgemm = None
    return {"torch": torch.__version__, "fbgemm_gpu": fbgemm, "onerec": _package_version("onerec")}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` with the sha256 of every other file in ``out_dir``."""
    files = sorted(p for p in out_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    full = {
        "format": ARTEFACT_FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "files": {p.name: sha256(p) for p in files},
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, default=str))
    tmp.replace(out_dir / MANIFEST)
    return full


def weights_version(state: dict[str, torch.Tensor]) -> str:
    """A short, deterministic hash of a state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:12]


@dataclass
class Artefact:
    """A verified artefact folder.

    Attributes:
        path: the folder.
        manifest: ``manifest.json``.

    Example::

        art = load_artefact("runs/artefact")
        generator = art.load_torchscript()
        items, scores = generator.generate(history, lengths, features, 5, art.beam_size, None, True)
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def session_length(self) -> int:
        return int(self.manifest["session_length"])

    @property
    def beam_size(self) -> int:
        return int(self.manifest["beam_size"])

    @property
    def max_history(self) -> int:
        return int(self.manifest["max_history"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def aoti_num_items(self) -> list[int]:
        """The ``num_items`` values with a compiled AOTInductor program (empty: no model.pt2)."""
        aoti = self.manifest.get("runtimes", {}).get("aoti")
        return [int(m) for m in aoti["num_items"]] if aoti else []

    @cached_property
    def items(self) -> pl.DataFrame:
        """``item_idx, item_id, codes, popularity``, sorted by item_idx."""
        return pl.read_parquet(self.path / ITEMS).sort("item_idx")

    @cached_property
    def codes(self) -> np.ndarray:
        return np.stack(self.items["codes"].to_numpy()).astype(np.int64)

    @cached_property
    def user_features(self) -> dict[str, Any]:
        return json.loads((self.path / USER_FEATURES).read_text())

    @property
    def user_feature_names(self) -> list[str]:
        return list(self.user_features["names"])

    @property
    def user_feature_cardinalities(self) -> list[int]:
        cards = self.user_features["cardinalities"]
        return [int(cards[name]) for name in self.user_feature_names]

    def load_torchscript(self) -> torch.jit.ScriptModule:
        """The scripted :class:`~onerec.generate.SessionGenerator` (eval mode, CPU)."""
        with quiet_torchscript():
            module = torch.jit.load(str(self.path / MODEL_TS), map_location="cpu")
        return module.eval()

    def load_aoti(self, num_items: int, num_runners: int = 1, gil_free: bool = True) -> Any:
        """The AOTInductor program for sessions of ``num_items`` (a callable
        ``(history, lengths, user_features, exclude) -> (items, scores)``).

        Args:
            num_runners: programs that may run at once (one per serving thread).
            gil_free: call the program through :mod:`onerec.aoti_runner`, which releases the
                GIL while it computes (torch's loader keeps it); torch's loader is the
                fallback for a package that needs more than the program's library.
        """
        if num_items not in self.aoti_num_items:
            raise ArtefactError(
                f"{self.path}: no AOTInductor program for num_items={num_items} "
                f"(compiled: {self.aoti_num_items or 'none'}); re-export with aoti_num_items=[...]"
            )
        if gil_free:
            from onerec.aoti_runner import load_gil_free

            program = load_gil_free(self.path / MODEL_AOTI, f"m{num_items}", num_runners)
            if program is not None:
                return program
        from torch._inductor.package import load_package

        return load_package(str(self.path / MODEL_AOTI), model_name=f"m{num_items}", num_runners=num_runners)

    def load_eager(self) -> torch.nn.Module:
        """The plain-PyTorch :class:`~onerec.generate.SessionGenerator` rebuilt from
        ``weights.pt`` and ``config.yaml`` (needs the onerec package; the reference runtime)."""
        from omegaconf import OmegaConf

        from onerec.config import TrainConfig
        from onerec.generate import SessionGenerator
        from onerec.model import OneRec
        from onerec.trie import SemanticIdTrie

        loaded = OmegaConf.load(self.path / CONFIG)
        known = {k: loaded[k] for k in loaded if k in TrainConfig.__dataclass_fields__}
        cfg: TrainConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), known))  # type: ignore[assignment]
        sizes = [int(k) for k in self.manifest["codebook_sizes"]]
        model = OneRec(
            cfg.model,
            cfg.moe,
            sizes,
            self.num_items,
            self.session_length,
            dict(zip(self.user_feature_names, self.user_feature_cardinalities)),
        )
        model.load_state_dict(torch.load(self.path / WEIGHTS, map_location="cpu", weights_only=True))
        model.eval()
        trie = SemanticIdTrie.from_codes(self.codes, sizes)
        generator = SessionGenerator(model, trie, torch.as_tensor(self.codes)).eval()
        for parameter in generator.parameters():
            parameter.requires_grad_(False)
        return generator


def _check_versions(path: Path, manifest: dict[str, Any]) -> None:
    built = manifest.get("versions", {})
    here = runtime_versions()
    for name in ("torch", "fbgemm_gpu"):
        if built.get(name) != here[name]:
            raise ArtefactError(
                f"{path}: built with {name} {built.get(name)}, but this environment has {name} "
                f"{here[name]}; compiled programs and TorchScript are only valid for the versions "
                f"they were made with: re-export with this environment (onerec-export run_dir=RUN "
                f"out_dir={path})"
            )


def load_artefact(path: str | Path, verify: bool = True) -> Artefact:
    """Open an artefact folder, checking its format, versions and (``verify``) every hash.

    Raises:
        ArtefactError: naming the missing or tampered file, or the mismatched version.
    """
    root = Path(path).expanduser()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtefactError(f"{root} is not a serving artefact (no {MANIFEST}); make one with onerec-export out_dir={root}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtefactError(f"{manifest_path} is not valid JSON: {err}") from None
    if manifest.get("format") != ARTEFACT_FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(
            f"{root}: format {manifest.get('format')!r} v{manifest.get('format_version')}, expected "
            f"{ARTEFACT_FORMAT!r} v{FORMAT_VERSION}; re-export it with onerec-export"
        )
    _check_versions(root, manifest)
    files: dict[str, str] = manifest.get("files", {})
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtefactError(f"{root}: the manifest lists no {name}; the artefact is incomplete")
    if manifest.get("runtimes", {}).get("aoti") and MODEL_AOTI not in files:
        raise ArtefactError(f"{root}: the manifest declares an AOTInductor program but lists no {MODEL_AOTI}")
    for name, expected in files.items():
        file = root / name
        if not file.is_file():
            raise ArtefactError(f"{root}: {name} listed in the manifest is missing")
        if verify and sha256(file) != expected:
            raise ArtefactError(
                f"{root}: {name} does not match its sha256 in {MANIFEST} (modified or corrupted); "
                "re-export the artefact"
            )
    return Artefact(path=root, manifest=manifest)
