"""Smoke test of benchmarks/sd_step.py: the tiny CPU configuration runs every configuration end to end
(the real Trainer.step and the official-like baseline) and writes well-formed results. Behaviour only:
no assertion on how fast anything is."""

import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "sd_step.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("sd_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sd_step", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """One run of all five configurations (a subprocess: the benchmark owns its accelerate state)."""
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    cmd = [sys.executable, str(SCRIPT), "--config", "tiny", "--device", "cpu", "--batch-size", "2",
           "--steps", "1", "--warmup", "0", "--threads", "1", "--out", str(out),
           "--profile", str(out.with_suffix(".profile.json")), "--profile-steps", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    data["profiles"] = json.loads(out.with_suffix(".profile.json").read_text())["profiles"]
    return data, proc.stdout


def test_batch_sizes_and_compile_choices_in_one_run(tmp_path):
    """--batch-size 1,2 and --compile none,regional: the baseline once per batch size (never compiled),
    x official against the baseline of the same batch size, compile time for compiled rows.
    The eager backend: the compile path, dynamo tracing only (quick on CPU)."""
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(SCRIPT), "--config", "tiny", "--device", "cpu", "--batch-size", "1,2",
           "--configs", "kto_full,official_like", "--compile", "none,regional", "--compile-backend",
           "eager", "--reference-point-fraction", "0.5", "--steps", "1", "--warmup", "0", "--threads", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["config"], r["batch_size"], r["compile"]) for r in rows] == [
        (c, b, k) for b in (1, 2) for c, k in (("kto_full", "none"), ("kto_full", "regional"), ("official_like", "none"))]
    for r in rows:
        official = next(o for o in rows if o["config"] == "official_like" and o["batch_size"] == r["batch_size"])
        assert r["speedup_vs_official"] == pytest.approx(r["samples_per_s"] / official["samples_per_s"])
        assert (r["compile_s"] is None) == (r["compile"] == "none") and r["first_step_s"] > 0
        assert r["reference_point_fraction"] == 0.5
    assert "| batch | compile |" in proc.stdout


def test_out_of_memory_gives_a_row_not_a_crash(monkeypatch):
    sd_step = _load_module()

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(sd_step, "measure", oom)
    args = sd_step.parse_args(["--device", "cpu", "--config", "tiny"])
    row = sd_step.run_configuration("dpo", args, {}, tempfile.mkdtemp(), 32, "none", None)
    assert row == {"config": "dpo", "batch_size": 32, "compile": "none",
                   "error": "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert "| dpo | 32 | none | out of memory" in sd_step.markdown_table([row])


def test_tiny_cpu_run_reports_every_configuration(tiny_results):
    data, stdout = tiny_results
    sd_step = _load_module()
    meta, rows = data["meta"], data["results"]
    assert meta["config"] == "tiny" and meta["device"] == "cpu" and meta["batch_sizes"] == [2]
    assert "--config tiny" in meta["command"] and meta["date"]
    assert [r["config"] for r in rows] == list(sd_step.CONFIGS)
    for r in rows:
        for key in ("step_s", "samples_per_s", "images_per_s", "tflop_per_step", "achieved_tflops", "speedup_vs_official"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["config"], key, r[key])
        assert math.isfinite(r["loss"]), r
        assert r["peak_mem_gib"] is None and r["mfu"] is None  # no GPU, no device peak
    by = {r["config"]: r for r in rows}
    assert by["official_like"]["speedup_vs_official"] == pytest.approx(1.0)
    assert by["official_like"]["cache"] is False and by["kto_full"]["cache"] is True
    assert by["dpo"]["images_per_s"] == pytest.approx(2 * by["dpo"]["samples_per_s"])
    # LoRA trains no base weights: its backward has no weight gradients of the frozen convs/linears.
    assert by["kto_lora_copy"]["tflop_per_step"] < by["kto_full"]["tflop_per_step"]
    # the baseline also encodes pixels and text every step
    assert by["official_like"]["tflop_per_step"] > by["kto_full"]["tflop_per_step"]
    assert "| kto_full |" in stdout and "x official" in stdout
    # a profile summary per row: operators ranked by self CPU time (device time on a GPU), grouped
    assert sorted(data["profiles"]) == sorted(f"{name}/batch2/compile-none" for name in sd_step.CONFIGS)
    summary = data["profiles"]["kto_lora_disabled/batch2/compile-none"]
    assert summary["ranked_by"] == "self cpu time" and summary["top_ops"][0]["ms_per_step"] > 0
    assert sum(summary["groups_ms_per_step"].values()) == pytest.approx(summary["op_ms_per_step"])


@pytest.mark.parametrize("config, extra", [("tiny_sdxl", []), ("tiny_sd3", ["--grad-checkpointing"])])
def test_tiny_family_cpu_run_with_the_official_like_baseline(tmp_path, config, extra):
    """SDXL and SD3 through the benchmark: the trainer's cached step (SD3: the flow-matching schedule, diffusers' SD3
    LoRA targets, gradient checkpointing) and the official-like step (fp32 VAE encode and every text encoder every
    step, reference swapped in from the CPU)."""
    out = tmp_path / f"{config}.json"
    cmd = [sys.executable, str(SCRIPT), "--config", config, "--device", "cpu", "--batch-size", "2", "--steps", "1",
           "--warmup", "0", "--threads", "1", "--configs", "kto_full,kto_lora_disabled,dpo,official_like",
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    by = {r["config"]: r for r in data["results"]}
    assert data["meta"]["config"] == config and set(by) == {"kto_full", "kto_lora_disabled", "dpo", "official_like"}
    assert all(math.isfinite(r["loss"]) and r["tflop_per_step"] > 0 for r in by.values())
    assert by["kto_lora_disabled"]["grad_checkpointing"] == bool(extra) and by["kto_lora_disabled"]["lora"]
    # the baseline also runs the VAE and the text encoders every step
    assert by["official_like"]["tflop_per_step"] > by["kto_full"]["tflop_per_step"]


def test_model_flops_counts_on_the_meta_device():
    import torch

    spec = importlib.util.spec_from_file_location("model_flops", REPO / "benchmarks" / "model_flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sd_step = sys.modules["sd_step"]
    out = module.count(sd_step.MODEL_SETS["tiny_sdxl"], 32)
    # backward costs about twice the forward; both text towers counted; LoRA and Adafactor state are small
    assert 2.5 < out["unet_forward_backward_tflop"] / out["unet_forward_tflop"] < 3.5
    assert out["text_encoder_tflop"] > 0 and out["text_encoder_2_tflop"] > 0
    assert out["lora_rank8_params_m"] < out["unet_params_m"] / 10
    assert out["full_adafactor_gib"] < out["full_adamw_gib"] and out["lora_disabled_adapters_gib"] < out["lora_frozen_copy_gib"]
    sd3 = module.count(sd_step.MODEL_SETS["tiny_sd3"], 32)  # the transformer, three text towers, SD3's LoRA targets
    assert sd3["text_encoder_3_tflop"] > 0 and 2.5 < sd3["unet_forward_backward_tflop"] / sd3["unet_forward_tflop"] < 3.5
    with torch.device("meta"):
        transformer = sd_step.build_denoiser(sd_step.MODEL_SETS["tiny_sd3"])
    image_stream = module.lora_params(transformer)  # the default targets: to_q/k/v/out.0 only
    assert sd3["lora_rank8_params_m"] * 1e6 > image_stream > 0


def test_peak_flops_and_mfu_use_the_override():
    sd_step = _load_module()
    assert sd_step.device_peak_tflops("cpu", "no", None) is None
    assert sd_step.device_peak_tflops("cpu", "bf16", 123.0) == 123.0


@pytest.mark.parametrize("argv, message", [
    (["--configs", "kto_full,ppo"], "unknown ['ppo']"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--resolution", "100"], "multiple of 8"),
    (["--config", "sd21"], "invalid choice"),
    (["--batch-size", "8,x"], "--batch-size must be integers"),
    (["--compile", "none,partial"], "--compile: choose from none, regional, full"),
    (["--reference-point-fraction", "0"], "--reference-point-fraction must lie in (0, 1]"),
    (["--reference-point", "batch", "--reference-point-fraction", "0.5"], "applies only to --reference-point unrelated"),
])
def test_bad_arguments_fail_before_any_model_is_built(argv, message, capsys):
    sd_step = _load_module()
    with pytest.raises(SystemExit):
        sd_step.parse_args(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_flow_beta_scale_weights_are_the_optimal_denoisers_reward():
    """benchmarks/flow_beta_scale.py's closed form: for Gaussian data N(m, 1) and the optimal denoisers of m = 0
    (reference) and m = delta (policy), E_eps[err_ref - err_policy] = w(t) delta (2 x0 - delta), with the errors
    the library's schedules define (add_noise, target): epsilon errors for DDPM, velocity errors for the flow."""
    spec = importlib.util.spec_from_file_location("flow_beta_scale", REPO / "benchmarks" / "flow_beta_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    g = torch.Generator().manual_seed(0)
    x0, delta = torch.tensor([-1.5, 0.0, 0.7, 2.0]), 0.3
    eps = torch.randn(400_000, 1, generator=g, dtype=torch.float64)
    x0 = x0.double().expand(eps.shape[0], -1)
    for name in ("sd15_epsilon", "sd3_velocity"):
        schedule, weight = module.SCHEDULES[name]
        for step in (100, 500, 900):
            t = torch.full((eps.shape[0],), step)
            x_t, target = schedule.add_noise(x0, eps, t), schedule.target(x0, eps, t)
            if name == "sd15_epsilon":
                a, b = schedule.alphas_cumprod[step].double().sqrt(), (1 - schedule.alphas_cumprod[step].double()).sqrt()
            else:
                b = torch.tensor(step / schedule.num_train_timesteps, dtype=torch.float64)
                a = 1 - b
            d = a**2 + b**2

            def optimal(m):  # E[target | x_t] for data N(m, 1)
                eps_hat = b * (x_t - a * m) / d
                return eps_hat if name == "sd15_epsilon" else eps_hat - (m + a * (x_t - a * m) / d)

            g_mean = (((optimal(0.0) - target) ** 2) - ((optimal(delta) - target) ** 2)).mean(0)
            expected = weight(schedule, torch.tensor([step])) * delta * (2 * x0[0] - delta)
            assert torch.allclose(g_mean, expected, atol=2e-3 * max(1.0, float(expected.abs().max()))), (name, step)


def test_kto_saturation_statistics_and_recording():
    """benchmarks/kto_saturation.py: the statistics of known arguments, and the recorder sees |w beta (g - z_ref)|
    of every kto_loss call while leaving the loss unchanged, and restores the original."""
    spec = importlib.util.spec_from_file_location("kto_saturation", REPO / "benchmarks" / "kto_saturation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import kto_lab.objectives as O

    stats = module.saturation_stats(np.array([0.0] * 2 + [10.0] * 14))  # 2 active samples of 16 carry ~all
    assert stats["median_abs_x"] == 10.0 and stats["share_active"] == 0.125
    assert stats["top_eighth_gradient_share"] == pytest.approx(0.25 / (0.25 + 7 * 4.54e-5), rel=1e-3)
    flat = module.saturation_stats(np.array([-1.0, 1.0] * 8))  # equal slopes: the top eighth carries an eighth
    assert flat["share_active"] == 1.0 and flat["top_eighth_gradient_share"] == pytest.approx(0.125)

    original, records = O.kto_loss, []
    restore = module.record_kto_arguments(records)
    err_p, err_r, labels = torch.tensor([0.5, 0.4]), torch.tensor([0.6, 0.3]), torch.tensor([1, 0])
    out = O.kto_loss(err_p, err_r, labels, beta=10.0, z_ref=torch.tensor(0.02))
    restore()
    assert O.kto_loss is original
    np.testing.assert_allclose(records[0], [10 * abs(0.1 - 0.02), 10 * abs(-0.1 - 0.02)], rtol=1e-5)
    assert torch.equal(out.loss, original(err_p, err_r, labels, beta=10.0, z_ref=torch.tensor(0.02)).loss)
