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
def tiny_sd_path(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline (random weights) saved once per session; load it with
    ``kto_lab.sd.models.load_pipeline(path)`` like a real one. Treat it as read-only."""
    from kto_lab.sd.models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"), words=TINY_WORDS)


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline (random weights; two text towers, text_time UNet), saved once per session."""
    from kto_lab.sd.models import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"), words=TINY_WORDS)


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory) -> Path:
    """A tiny SD3 pipeline (random weights; MMDiT transformer, two CLIP towers and a T5 encoder, 16-channel VAE
    with a shift factor, flow-matching scheduler), saved once per session."""
    from kto_lab.sd.models import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"), words=TINY_WORDS)


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
