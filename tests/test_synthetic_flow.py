"""The shapes world under flow matching (SD3's architecture): the pipeline is built, samples, takes a trained
denoiser and trains DiffusionNFT and Diffusion-KTO with each flow_error; the sweep's flow plan."""

import json

import numpy as np
import pytest
import torch

from kto_lab.schedule import FLOW_ERRORS


@pytest.fixture(scope="module")
def flow_world(tmp_path_factory):
    from kto_lab.synthetic import base as B
    from kto_lab.synthetic.shapes import make_dataset

    path = B.build_skeleton(tmp_path_factory.mktemp("flow") / "pipeline", family="sd3", block_out_channels=(32, 32))
    data = make_dataset(32, seed=0)
    vae = B.train_vae(path, data, steps=2, batch_size=8, progress=False)
    return path, data, vae


def test_the_flow_world_is_an_sd3_pipeline_with_4_channel_latents_that_samples(flow_world):
    from kto_lab.sd.families import FAMILIES, resolve_family
    from kto_lab.synthetic.evaluate import denoiser, image_size_of, make_pipeline, sample

    path, _, vae = flow_world
    assert resolve_family(path) is FAMILIES["sd3"] and set(vae) == {"recon_mse", "scaling_factor", "shift_factor"}
    config = json.loads((path / "vae" / "config.json").read_text())
    assert config["shift_factor"] == pytest.approx(vae["shift_factor"]) and config["latent_channels"] == 4
    assert json.loads((path / "scheduler" / "scheduler_config.json").read_text())["shift"] == 1.0
    pipe = make_pipeline(path)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # its own sampler, not DDIM
    assert denoiser(pipe).config.in_channels == 4 and image_size_of(pipe) == 16
    images = sample(pipe, ["a red circle", "a blue square"], [0, 1], steps=2)
    assert images.shape == (2, 3, 16, 16) and np.isfinite(images).all()
    again = sample(pipe, ["a red circle"], [0], steps=2)
    np.testing.assert_allclose(images[:1], again, atol=1e-5)  # per-image seeds (batching moves the last bits)


def test_nft_and_every_flow_error_train_on_the_flow_world(flow_world, tmp_path):
    from kto_lab.sd.trainer import Trainer
    from kto_lab.synthetic import base as B
    from kto_lab.synthetic.experiment import _train_config

    path, data, _ = flow_world
    labels = (np.arange(len(data)) % 2).astype(int)
    records = B.write_image_records(data.images, data.captions, labels, tmp_path / "data")
    for objective, flow_error, beta in [("nft", None, 1.0)] + [("kto", e, 1000.0) for e in FLOW_ERRORS]:
        cfg = _train_config(str(path), tmp_path / f"{objective}_{flow_error}", records, resolution=16,
                            objective=objective, steps=2, batch_size=4, learning_rate=1e-4, warmup=0, seed=0,
                            beta=beta, flow_error=flow_error, cache=False)
        trainer = Trainer(cfg, overwrite=True)
        result = trainer.fit()
        assert result.global_step == 2 and np.isfinite(result.last_metrics["loss"])
        assert (tmp_path / f"{objective}_{flow_error}" / "transformer" / "config.json").is_file()
    # a trained transformer installs into the pipeline's transformer/
    from diffusers import SD3Transformer2DModel

    dst = B.install_unet(tmp_path / "nft_None" / "transformer", path)
    assert dst == path / "transformer" and SD3Transformer2DModel.from_pretrained(dst).config.in_channels == 4


def test_the_flow_plan_covers_each_flow_error_nft_and_sft():
    from kto_lab.synthetic.sweep import SweepConfig, plan_cells

    cfg = SweepConfig(seeds=[0])
    cells = plan_cells("flow", cfg)
    kto = {(c.beta, c.flow_error) for c in cells if c.method == "kto"}
    assert kto == {(b, e) for b in cfg.flow_kto_betas for e in FLOW_ERRORS}
    assert {(c.beta, c.flow_error) for c in cells if c.method == "nft"} == {(b, e) for b in cfg.nft_betas
                                                                           for e in FLOW_ERRORS}
    assert sorted(c.flow_error for c in cells if c.method == "sft") == sorted(FLOW_ERRORS)
    assert len({c.name for c in cells}) == len(cells)  # the flow_error is in the cell's name
    assert "_x0_" in next(c.name for c in cells if c.flow_error == "x0")
    # the DDPM plans' cells keep their names (sweep directories made before the flow plan resume)
    assert plan_cells("frontier", cfg)[0].name == "balanced_kto_beta300_lr0.0001_s0"
