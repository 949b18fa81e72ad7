"""What the model-family tests share (tests/test_sdxl.py, tests/test_sd3.py): a short run config, and checks every
family passes the same way on its tiny pipeline: exact resume, a trained LoRA in diffusers' own pipeline, a
2-process run, the evaluation commands."""

from pathlib import Path

import torch

from test_sd_distributed import run_two_workers
from test_sd_trainer import config as sd_config


def short_config(pretrained, table, out, **sections):
    """tests/test_sd_trainer.py's run config, shorter (2 steps, no checkpoints unless asked); ``sections`` update
    it section by section."""
    cfg = sd_config(pretrained, table, out, optim={"max_steps": 2, "warmup_steps": 0}, checkpoint={"every": 0})
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def check_exact_resume(cfg, tmp_path):
    """A run interrupted after step 3 (``cfg(out)``: checkpoints every 2 of 4 steps) and resumed equals the
    uninterrupted one: losses and z_ref bit for bit. Returns both runs' results (uninterrupted, resumed)."""
    from kto_lab.sd.metrics_log import read_metrics
    from kto_lab.sd.trainer import Trainer

    full = Trainer(cfg(tmp_path / "a")).fit()
    first = Trainer(cfg(tmp_path / "b")).fit(stop_at=3)
    assert first.global_step == 3
    resumed = Trainer(cfg(tmp_path / "b"), overrides=["checkpoint.resume=latest"])
    assert resumed.global_step == 2
    result = resumed.fit()
    a, b = read_metrics(full.metrics_path), read_metrics(result.metrics_path)
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len({r["loss"] for r in a}) > 1
    assert [r["z_ref"] for r in a] == [r["z_ref"] for r in b]
    return full, result


def check_lora_loads_and_changes_images(pipe, lora_run):
    """A run's LoRA file loads with diffusers' own ``pipe.load_lora_weights`` and changes the 32 px images; the run
    also rendered its validation image."""
    assert lora_run.weights.endswith("pytorch_lora_weights.safetensors")
    assert (Path(lora_run.output_dir) / "validation" / "step-0000002" / "00.png").is_file()
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = draw()
    pipe.load_lora_weights(lora_run.output_dir)
    after = draw()
    assert after.shape == (32, 32, 3) and not (before == after).all()
    return pipe


def check_two_process_run(cfg: dict, tmp_path):
    """2 CPU processes agree on z_ref (averaged before the clamp) while their own errors differ, and DDP keeps
    their parameters identical; returns both ranks' reports."""
    r0, r1 = run_two_workers(cfg, tmp_path)
    z0, z1 = [r["z_ref"] for r in r0["rows"]], [r["z_ref"] for r in r1["rows"]]
    assert z0 == z1 and any(z > 0 for z in z0)
    assert [r["err/policy"] for r in r0["rows"]] != [r["err/policy"] for r in r1["rows"]]
    assert torch.equal(torch.load(tmp_path / "params0.pt"), torch.load(tmp_path / "params1.pt"))
    return r0, r1


def check_eval_generate_and_implicit_accuracy(pipeline, records, lora_weights, tmp_path):
    """`kto-lab eval generate` of the base pipeline and with the LoRA (the same per-prompt seeds), and the LoRA's
    implicit-reward accuracy on ``records`` (6 images); returns the accuracy result."""
    from kto_lab.cli import main
    from kto_lab.eval.generate import read_manifest
    from kto_lab.eval.implicit import evaluate_implicit_accuracy

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    for name, extra in (("base", []), ("lora", ["--lora", lora_weights])):
        assert main(["eval", "generate", "--pipeline", str(pipeline), "--name", name, "--prompts", str(prompts),
                     "--out", str(tmp_path / "eval"), "-n", "2", "--steps", "2", "--device", "cpu", *extra]) == 0
        rows = read_manifest(tmp_path / "eval" / name)
        assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    base = {r["seed"] for r in read_manifest(tmp_path / "eval" / "base")}
    assert base == {r["seed"] for r in read_manifest(tmp_path / "eval" / "lora")}  # the shared-seed protocol

    res = evaluate_implicit_accuracy(pipeline, records, lora_path=lora_weights, n_draws=1, resolution=32,
                                     progress=False)
    assert res.n == 6 and 0.0 <= res.accuracy <= 1.0
    return res
