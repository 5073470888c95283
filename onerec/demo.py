"""``onerec-demo``: the whole flow on the embedded synthetic log, as a user would run it.

    onerec-demo [out_dir=DIR]

Each stage runs as its own command, exactly as written in the README's command
contract, and the demo prints every command before running it, so the output doubles
as a walk-through.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    """Attributes:
        out_dir: everything the demo writes goes here.
        train_steps: NTP training steps of the tiny model.
        ipa_iterations / r_dpo: Iterative Preference Alignment settings.
        simulate_users: held-out users in the simulation report.
    """

    out_dir: str = "demo_out"
    train_steps: int = 600
    ipa_iterations: int = 2
    r_dpo: float = 0.1
    simulate_users: int = 1000


def _run(command: list[str]) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"onerec-demo: step failed with exit status {result.returncode}: {shlex.join(command)}", file=sys.stderr)
        sys.exit(result.returncode)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def run_demo(cfg: DemoConfig) -> Path:
    out = Path(cfg.out_dir).resolve()
    bundle, ntp, reward, ipa = out / "bundle", out / "ntp", out / "reward", out / "ipa"
    report, artefact = out / "report", out / "artefact"
    bin_dir = Path(sys.executable).parent

    def cmd(name: str, *args: str) -> list[str]:
        return [str(bin_dir / name), *args]

    # A second `make demo` starts afresh: the stages refuse to overwrite finished runs, so the
    # demo removes its own outputs (only those: out_dir may hold other things).
    previous = [p for p in (bundle, ntp, reward, ipa, report, artefact, out / "test_predictions.jsonl") if p.exists()]
    if previous:
        print(f"onerec-demo: replacing the previous demo results in {out}", flush=True)
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    quiet = "show_progress=false"
    _run(cmd("onerec-prep", "data=synthetic", f"out_dir={bundle}", quiet))
    _run(
        cmd(
            "onerec-train", f"data_dir={bundle}", f"run_dir={ntp}", "model=tiny", f"trainer.max_steps={cfg.train_steps}",
            "trainer.eval_every=200", "trainer.batch_size=64", "trainer.show_progress=false",
        )
    )
    _run(cmd("onerec-eval", f"run_dir={ntp}", "split=test", f"predictions_out={out / 'test_predictions.jsonl'}", "baselines=[popularity]", quiet))
    _run(cmd("onerec-reward", f"data_dir={bundle}", f"run_dir={reward}", quiet))
    _run(
        cmd(
            "onerec-align", f"data_dir={bundle}", f"init_run={ntp}", f"reward_run={reward}", f"run_dir={ipa}",
            f"iterations={cfg.ipa_iterations}", f"r_dpo={cfg.r_dpo}", "eval_users=0", quiet,
        )
    )
    _run(
        cmd(
            "onerec-simulate", f"data_dir={bundle}", f"runs=[{ntp},{ipa}]", f"out_dir={report}", f"reward_run={reward}",
            f"users={cfg.simulate_users}", quiet,
        )
    )
    # TorchScript only: the AOTInductor build (faster to serve) takes minutes of C++
    # compilation on a small CPU; `onerec-export` without `aoti=false` adds it.
    _run(cmd("onerec-export", f"run_dir={ipa}", f"out_dir={artefact}", "aoti=false"))
    serve_once(bin_dir, artefact, bundle)
    print(f"\nDone. Results are in {out}:")
    print(f"  bundle             {bundle}  (manifest.json, rejects.csv, items.parquet ...)")
    print(f"  NTP model          {ntp}  (best.pt, metrics.jsonl, tb/)")
    print(f"  test predictions   {out / 'test_predictions.jsonl'}")
    print(f"  reward model       {reward}")
    print(f"  aligned model      {ipa}  (iter_0 .. iter_{cfg.ipa_iterations})")
    print(f"  simulation report  {report / 'report.md'}  (report.json, *.png)")
    print(f"  serving artefact   {artefact}")
    return out


def serve_once(bin_dir: Path, artefact: Path, bundle: Path) -> None:
    """Start ``onerec-serve`` on a free loopback port, send one request, print the answer."""
    import json
    import socket
    import urllib.request

    import polars as pl

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(bin_dir / "onerec-serve"), f"artefact={artefact}", "host=127.0.0.1", f"port={port}"]
    print(f"\n$ {shlex.join(command)} &", flush=True)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        test = pl.read_parquet(bundle / "test.parquet").head(1)
        item_ids = pl.read_parquet(bundle / "items.parquet").sort("item_idx")["item_id"].to_list()
        history = [item_ids[i] for i in test["history"][0].to_list()[-20:]]
        body = json.dumps({"history": history, "num_items": 5}).encode()
        print(f"$ curl -s {url}/v1/recommend -H 'content-type: application/json' -d '{body.decode()}'")
        request = urllib.request.Request(f"{url}/v1/recommend", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            print(json.dumps(json.loads(response.read()), indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("demo", "onerec-demo", run_demo)


if __name__ == "__main__":
    main()
