"""notebooks/sd_finetune.ipynb runs top to bottom on the tiny model (a 3-step LoRA run in the kernel)."""

import json

from notebooks import run_notebook, shows_an_image


def test_sd_finetune_notebook(tmp_path):
    nb = run_notebook("sd_finetune.ipynb", tmp_path, timeout=600, DEMO=True, CPU=True, MAX_STEPS=3, BATCH_SIZE=2,
                      RESOLUTION=32, MIXED_PRECISION="no", OUTPUT_DIR=str(tmp_path / "run"), TORCH_THREADS=1)
    assert shows_an_image(nb, "plot_metrics(")  # the metrics, labelled (tests/test_metrics_log.py)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_sd_finetune_notebook_trains_sdxl_by_changing_the_family(tmp_path):
    run_notebook("sd_finetune.ipynb", tmp_path, timeout=600, FAMILY="sdxl", DEMO=True, CPU=True, MAX_STEPS=2,
                 BATCH_SIZE=2, MIXED_PRECISION="no", OUTPUT_DIR=str(tmp_path / "run"), TORCH_THREADS=1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "demo" / "tiny_sdxl" / "text_encoder_2").is_dir()
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_sd_finetune_notebook_trains_sd3_by_changing_the_family(tmp_path):
    run_notebook("sd_finetune.ipynb", tmp_path, timeout=600, FAMILY="sd3", DEMO=True, CPU=True, MAX_STEPS=2,
                 BATCH_SIZE=2, MIXED_PRECISION="no", OUTPUT_DIR=str(tmp_path / "run"), TORCH_THREADS=1, LORA=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "demo" / "tiny_sd3" / "text_encoder_3").is_dir()
    assert (tmp_path / "run" / "transformer" / "config.json").is_file()  # a full fine-tune, sampled in the last cell
