"""The shapes world's figures, drawn from the committed results and base pipeline (figures/synthetic/)."""

from pathlib import Path

import matplotlib

from figure_checks import legend_texts, overlapping_texts
from kto_lab.synthetic.figures import make_figures, plot_curves, sample_grid

RESULTS = Path(__file__).resolve().parents[1] / "figures" / "synthetic"


def test_curves_name_every_method_and_explain_where_csft_starts(svg_backend, tmp_path):
    fig = plot_curves(RESULTS / "red")
    assert matplotlib.get_backend() == svg_backend
    texts = legend_texts(fig)
    assert 'CSFT (sampled with "good image, ")' in texts and "Diffusion-KTO (loss-averse U)" in texts
    assert not [t for t in texts if "_" in t]
    assert "never saw that prefix" in fig.get_suptitle() and "32 held-out prompts" in fig.get_suptitle()
    assert overlapping_texts(fig) == []
    assert "never saw" not in plot_curves(RESULTS / "contrast").get_suptitle()  # no CSFT in that run


def test_committed_table_is_what_the_code_writes(tmp_path):
    make_figures(RESULTS / "red", tmp_path)
    assert (tmp_path / "table.md").read_text() == (RESULTS / "red" / "table.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_sample_grid_says_what_its_counts_mean(svg_backend):
    fig = sample_grid(RESULTS / "base" / "pipeline", n=2)
    assert matplotlib.get_backend() == svg_backend
    assert [ax.get_title().splitlines()[-1].endswith("named attributes right") for ax in fig.axes[:2]] == [True, True]
    assert "the fidelity checker finds k of the n attributes the caption names" in fig.get_suptitle()
    assert overlapping_texts(fig) == []


def test_committed_sweep_figures_have_no_colliding_point_labels(svg_backend):
    """frontier.png and regimes.png as `kto-lab synthetic sweep-report --redraw` draws them from the
    committed tables (figures/kto_vs_dpo/)."""
    import pandas as pd

    from figure_checks import colliding_point_labels
    from kto_lab.synthetic.sweep_report import base_of_report, plot_frontiers, plot_regimes

    out = RESULTS.parent / "kto_vs_dpo"
    frontier = plot_frontiers(pd.read_csv(out / "frontier.csv"), base_of_report(out), "redness")
    regimes = plot_regimes(pd.read_csv(out / "regimes.csv"), "redness")
    assert colliding_point_labels(frontier) == [] and colliding_point_labels(regimes) == []
    assert overlapping_texts(frontier) == [] and overlapping_texts(regimes) == []


def test_spread_labels_parts_labels_of_one_point_and_keeps_them_in_the_axes(svg_backend):
    from figure_checks import colliding_point_labels
    from kto_lab.plotting import new_figure, spread_labels

    fig = new_figure(figsize=(3, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1, 1.001], [0, 1, 1.001], marker="o")
    for i in range(6):  # six labels on (almost) one point, two at the top-right corner of the axes
        ax.annotate(f"setting {i}", (1.0, 1.0) if i % 2 else (1.001, 1.001), xytext=(3, 3), textcoords="offset points")
    assert colliding_point_labels(fig) != []
    spread_labels(fig)
    assert colliding_point_labels(fig) == []
    area = ax.get_window_extent()
    assert all(area.x0 <= t.get_window_extent().x0 and t.get_window_extent().x1 <= area.x1 for t in ax.texts)
