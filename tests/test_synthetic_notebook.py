"""notebooks/synthetic.ipynb top to bottom, running a tiny comparison (every code path of
``kto-lab synthetic compare``: feedback, KTO and SPIN through the trainer, curves, harness, figures)."""

from pathlib import Path

import pytest

from notebooks import run_notebook, shows_an_image

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "figures" / "synthetic" / "base" / "pipeline"


@pytest.mark.slow
def test_synthetic_notebook_runs_a_tiny_comparison(tmp_path):
    if not (BASE / "model_index.json").is_file():
        pytest.fail(f"the committed base pipeline is missing: {BASE}")
    run_dir = tmp_path / "run"
    align = {"methods": ["kto", "csft", "spin"], "n_captions": 24, "renders_per_caption": 2, "steps": 4,
             "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "n_curve_prompts": 2, "n_eval_prompts": 4, "n_per_prompt": 2,
             "spin_iterations": 2}
    nb = run_notebook("synthetic.ipynb", tmp_path, timeout=600, BASE=str(BASE), RUN_EXPERIMENT=True,
                      RUN_DIR=str(run_dir), ALIGN=align)
    assert shows_an_image(nb, "sample_grid(") and shows_an_image(nb, "plot_curves(")
    for name in ("curves.csv", "win_rates.csv", "mean_scores.csv", "summary.json", "figures/curves.png",
                 "figures/table.md"):
        assert (run_dir / name).is_file(), name
    import pandas as pd

    wins = pd.read_csv(run_dir / "win_rates.csv")
    assert set(wins["model_a"]) == {"kto", "csft", "spin"} and set(wins["metric"]) == {"redness", "fidelity"}
    curves = pd.read_csv(run_dir / "curves.csv")
    assert sorted(curves[curves.method == "kto"]["step"]) == [0, 2, 4]
    assert sorted(curves[curves.method == "spin"]["step"]) == [0, 2, 4]  # 2 steps per iteration
