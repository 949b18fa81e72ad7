"""Sweeps of the shapes world: data regimes, frontier helpers, and a tiny resumable sweep end to end."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kto_lab.eval.frontier import pareto_mask, summarize_over_seeds
from kto_lab.synthetic.regimes import REGIMES, Regime, pairs_from_labels, regime_data
from kto_lab.synthetic.shapes import make_dataset
from kto_lab.synthetic.users import get_user, label_pool

BASE = Path(__file__).resolve().parents[1] / "figures" / "synthetic" / "base" / "pipeline"


@pytest.fixture(scope="module")
def pool():
    return label_pool(make_dataset(100, renders_per_caption=2, seed=1), get_user("red"))  # 400 images


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_per_image_regime_has_the_share_and_pairs_from_its_labels(pool, share):
    data = regime_data(pool, Regime("x", desirable_share=share), pool_size=120, seed=0)
    assert data.counts()["images"] == 120 and data.labels.sum() == round(share * 120)
    seen = [i for p in data.pairs for i in p]
    assert len(seen) == len(set(seen))  # each image in at most one pair
    for w, l in data.pairs:
        assert data.captions[w] == data.captions[l] and data.labels[w] == 1 and data.labels[l] == 0
    # noise-free labels are the user's: liked images score above every disliked one
    assert data.scores[data.labels == 1].min() > data.scores[data.labels == 0].max()
    with pytest.raises(ValueError, match="needs .* images but the user's pool has"):
        regime_data(pool, Regime("x", desirable_share=share), pool_size=1000)


def test_label_noise_flips_that_share_of_labels_and_the_pairs_follow(pool):
    clean = regime_data(pool, REGIMES["balanced"], pool_size=200, seed=3)
    noisy = regime_data(pool, REGIMES["noise30"], pool_size=200, seed=3)
    assert np.array_equal(clean.scores, noisy.scores)  # the same images (same draw)
    flipped = (clean.labels != noisy.labels).mean()
    assert 0.2 < flipped < 0.4
    assert all(noisy.labels[w] == 1 and noisy.labels[l] == 0 for w, l in noisy.pairs)


def test_judgments_regime_labels_images_as_the_pickapic_conversion(pool):
    data = regime_data(pool, REGIMES["judgments"], pool_size=200, seed=0)
    assert len(data.pairs) == 100
    wins = {}
    for w, l in data.pairs:
        assert data.captions[w] == data.captions[l] and data.scores[w] > data.scores[l]  # the user's choice
        wins.setdefault(w, [0, 0])[0] += 1
        wins.setdefault(l, [0, 0])[1] += 1
    assert sorted(wins) == list(range(len(data.labels)))  # every image was compared
    assert [data.labels[i] for i in sorted(wins)] == [int(wins[i][0] >= 1) for i in sorted(wins)]  # at least once


def test_pairs_from_labels_match_within_a_caption():
    assert pairs_from_labels(np.array([0, 0, 0, 1, 1]), np.array([1, 0, 0, 1, 1])) == [(0, 1)]


def test_pareto_mask_and_summary_over_seeds():
    assert pareto_mask([1, 2, 3, 2], [3, 2, 1, 1]).tolist() == [True, True, True, False]
    assert pareto_mask([1, 2], [1, 1], maximize_x=False).tolist() == [True, False]
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"], "knob": [1.0] * 4, "seed": [0, 1, 2, 0], "m": [1.0, 2.0, 3.0, 5.0]})
    s = summarize_over_seeds(df, ["method", "knob"], ["m"]).set_index("method")
    assert s.loc["a", "n_seeds"] == 3 and s.loc["a", "m"] == 2.0
    assert s.loc["a", "m_high"] - 2.0 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t_{2, 0.975}
    assert s.loc["b", "n_seeds"] == 1 and np.isnan(s.loc["b", "m_low"])


@pytest.mark.slow
def test_tiny_sweep_runs_resumes_and_reports(tmp_path):
    """Both plans at toy size from the committed base: every cell file, the skip on a rerun, the report."""
    if not (BASE / "model_index.json").is_file():
        pytest.fail(f"the committed base pipeline is missing: {BASE}")
    from kto_lab.synthetic.sweep import SweepConfig, load_cells, run_sweep
    from kto_lab.synthetic.sweep_report import write_report

    cfg = SweepConfig(n_captions=60, pool_size=80, steps=2, eval_every=1, n_last=2, n_eval_prompts=2, batch_size=4,
                      warmup_steps=1, seeds=[0], kto_betas=[1000.0], dpo_betas=[1000.0], preference_learning_rates=[],
                      learning_rates=[1e-4], spin_iterations=1, regime_kto=[[1000.0, 1e-4]], regime_dpo=[[1000.0, 1e-4]])
    out, logs = tmp_path / "sweep", []
    run_sweep("frontier", BASE, out, cfg, log=logs.append)
    run_sweep("regimes", BASE, out, cfg, log=logs.append)
    cells = list(load_cells(out))
    assert len(cells) == 8 + 10  # frontier: 8 settings; regimes: 6 x 2, the balanced two shared
    kto = next(c for c in cells if c["name"] == "balanced_kto_beta1000_lr0.0001_s0")
    assert kto["final_steps"] == [1, 2] and set(kto["final"]) == {"score", "fidelity", "fidelity_all", "distance"}
    assert len(kto["per_image"]["2"]["score"]) == 4 and kto["final"]["distance"] > 0
    logs.clear()
    run_sweep("regimes", BASE, out, cfg, log=logs.append)
    assert logs == ["12 of 12 cells were already done in " + str(out)]
    with pytest.raises(ValueError, match="holds cells of another world"):
        run_sweep("regimes", BASE, out, SweepConfig(steps=3, eval_every=1, n_last=2))

    paths = {p.name for p in write_report(out, tmp_path / "report")}
    assert {"frontier.png", "regimes.png", "comparison.md", "regimes.md", "cells.csv"} <= paths
    regimes = pd.read_csv(tmp_path / "report" / "regimes.csv")
    assert list(regimes.regime) == list(REGIMES) and (regimes.n_seeds == 1).all()
    assert ((0 <= regimes.win_score) & (regimes.win_score <= 1)).all()
    assert "| Diffusion-KTO | 1 |" in (tmp_path / "report" / "comparison.md").read_text()
    assert json.loads((tmp_path / "report" / "world.json").read_text())["pool_size"] == 80
