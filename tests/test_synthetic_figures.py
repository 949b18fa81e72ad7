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
