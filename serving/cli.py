"""``onerec-serve``: serve an exported artefact over HTTP.

    onerec-serve artefact=ARTEFACT [host=127.0.0.1] [port=8000] [runtime=auto|aoti|torchscript|eager]

Loads the artefact (hashes and torch/fbgemm versions checked) into an
:class:`~serving.model_backend.ArtefactBackend` and runs :func:`serving.server.run`. Every
:class:`~serving.server.ServeConfig` key (``max_batch_size``, ``max_wait_ms``, ``num_workers``
...) is a top-level key of ``conf/serve.yaml``. ``max_num_items`` is capped at the model's
session length, so the OpenAPI schema shows what the model can really generate.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass

from serving.server import ServeConfig


@dataclass
class ServeCommandConfig(ServeConfig):
    """``onerec-serve``: the server's settings plus the model's.

    Attributes:
        artefact: a folder written by ``onerec-export``.
        runtime: ``auto`` (the runtime measured fastest, see serving.model_backend.AUTO_ORDER),
            ``aoti``, ``torchscript`` or ``eager``.
        threads: torch intra-op threads (0: torch's default, one per core).
        aoti_max_batch: with the AOTInductor runtime, batches of more requests run on
            TorchScript (0: never).
        verify: check every artefact file's sha256 at start-up.
        malloc_keep_mb: glibc malloc keeps up to this much freed memory for the next model
            call instead of returning it to the OS (fewer page faults per call, see
            serving.allocator); 0: the C library's defaults.
    """

    artefact: str = "???"
    runtime: str = "auto"
    threads: int = 0
    aoti_max_batch: int = 0
    verify: bool = True
    malloc_keep_mb: int = 1024


def server_config(cfg: ServeCommandConfig, session_length: int) -> ServeConfig:
    """The plain :class:`ServeConfig` of ``cfg``, ``num_items`` bounds capped at ``session_length``."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ServeConfig)}
    values["max_num_items"] = min(cfg.max_num_items, session_length)
    values["default_num_items"] = min(cfg.default_num_items, values["max_num_items"])
    return ServeConfig(**values)


def serve(command: ServeCommandConfig) -> None:
    """Load the artefact and serve it until interrupted."""
    from serving.allocator import keep_freed_memory
    from serving.model_backend import ArtefactBackend
    from serving.server import run

    keep_freed_memory(command.malloc_keep_mb)
    backend = ArtefactBackend(
        command.artefact,
        command.runtime,
        threads=command.threads,
        num_runners=command.num_workers,
        aoti_max_batch=command.aoti_max_batch,
        verify=command.verify,
    )
    config = server_config(command, backend.session_length)
    # Everything loaded so far (torch, the model, the web stack: ~260k objects) lives as long
    # as the server: take it out of the cyclic GC's view, or every full collection walks it
    # (0.29 s once measured on a busy 2-core CPU, landing on whichever request triggers it).
    gc.collect()
    gc.freeze()
    print(
        f"onerec-serve: {command.artefact} model_version={backend.model_version} runtime={backend.runtime} "
        f"on http://{config.host}:{config.port}",
        flush=True,
    )
    run(config, backend)


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("serve", "onerec-serve", serve)


if __name__ == "__main__":
    main()
