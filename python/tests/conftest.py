"""Shared fixtures of the Python package's tests. They run against the package that `import mambacpp`
finds (the build tree's python/ under ctest, see CMakeLists.txt) and the CLI named by MAMBA_CLI."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"
NEOX_TOKENIZER = SHARED / "data" / "gpt-neox-20b" / "tokenizer.json"


def cli_path():
    path = os.environ.get("MAMBA_CLI") or str(ROOT / "build" / "mambacpp")
    return path if Path(path).exists() else None


@pytest.fixture(scope="session")
def cli():
    """Runs `mambacpp ARGS...` and returns its completed process (stdout as bytes)."""
    path = cli_path()
    if path is None:
        pytest.skip("the mambacpp CLI is not built (set MAMBA_CLI)")

    def run(*args, check=True, input=None):
        return subprocess.run([path, "-t", "2", *map(str, args)], capture_output=True, check=check, input=input)

    return run


@pytest.fixture(scope="session")
def neox_tokenizer():
    if not NEOX_TOKENIZER.exists():
        pytest.skip(f"{NEOX_TOKENIZER} not present")
    return NEOX_TOKENIZER


@pytest.fixture(scope="session")
def byte_model(tmp_path_factory):
    """A small random byte-level model: text in, text out."""
    import mambacpp

    out = tmp_path_factory.mktemp("byte-model")
    mambacpp.init(out, d_model=32, n_layer=2, byte_level=True, seed=3)
    return out


@pytest.fixture(scope="session")
def texts(tmp_path_factory):
    """A folder of small text documents to train on."""
    folder = tmp_path_factory.mktemp("texts")
    words = "the people of the united states in order to form a more perfect union establish justice".split()
    for i in range(6):
        body = " ".join(words[(i + j) % len(words)] for j in range(400))
        (folder / f"doc{i}.txt").write_text(f"Address {i}. {body}\n")
    return folder
