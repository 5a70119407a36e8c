"""Shared helpers: where the built binaries are, and how to run them."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROFILE = os.environ.get("BITNET_PROFILE_DIR", "debug")


def binary(name: str) -> Path:
    path = TARGET / PROFILE / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build with `cargo build --workspace --examples` first")
    return path


def run_cli(*args, check=True, env=None):
    """Runs bitnet-cli (with `env` added to the environment); returns the
    CompletedProcess."""
    proc = subprocess.run([str(binary("bitnet-cli")), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env} if env else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"bitnet-cli {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def info_json(path) -> dict:
    return json.loads(run_cli("info", path, "--json").stdout)


def dump(path, tensor: str, tmp_path: Path):
    import numpy as np

    out = tmp_path / f"{tensor}.f32"
    run_cli("dump", "-m", path, "--tensor", tensor, "-o", out)
    return np.fromfile(out, dtype="<f4")
