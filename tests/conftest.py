"""Shared fixtures. No test touches the network: HF_HUB_OFFLINE is forced here too."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tiny models run 10-40x faster on one thread than on two contended ones (2-core CI machine).
# Set before torch is imported, so notebook kernels and torchrun workers inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
# The project's shared public data (PartiPrompts, ...), next to the checkout; KTO_LAB_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("KTO_LAB_SHARED_DATA", REPO.parent / "shared" / "data"))

TINY_WORDS = ("a", "red", "green", "blue", "circle", "square", "small", "large", "on", "background", "good", "bad", "image")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """``tiny_pipeline(family)``: the path of a tiny pipeline of that model family (its ``build_tiny``: random
    weights, the tests' vocabulary), built once per session; load it with ``kto_lab.sd.models.load_pipeline(path)``
    like a real one. Treat it as read-only."""
    from kto_lab.sd.families import FAMILIES

    built = {}

    def path(family: str) -> Path:
        if family not in built:
            built[family] = FAMILIES[family].build_tiny(tmp_path_factory.mktemp(f"tiny_{family}"), words=TINY_WORDS)
        return built[family]

    return path


@pytest.fixture(scope="session")
def tiny_sd_path(tiny_pipeline) -> Path:
    """The tiny Stable Diffusion 1.x pipeline (UNet, one CLIP tower, DDPM)."""
    return tiny_pipeline("sd")


@pytest.fixture(scope="session")
def tiny_sdxl_path(tiny_pipeline) -> Path:
    """The tiny SDXL pipeline (two text towers, text_time UNet)."""
    return tiny_pipeline("sdxl")


@pytest.fixture(scope="session")
def tiny_sd3_path(tiny_pipeline) -> Path:
    """The tiny SD3 pipeline (MMDiT transformer, two CLIP towers and a T5 encoder, 16-channel VAE with a shift
    factor, flow-matching scheduler)."""
    return tiny_pipeline("sd3")


@pytest.fixture(scope="session")
def partiprompts_tsv() -> Path:
    path = SHARED_DATA / "prompts" / "PartiPrompts.tsv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def svg_backend():
    """matplotlib on a backend other than Agg for one test, as a notebook is on its inline one:
    a plotting function must draw on it and leave it selected."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)
