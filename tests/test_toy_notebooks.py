"""The toy notebooks run top to bottom with small parameters (CI)."""

import pytest

from notebooks import run_notebook, shows_an_image


@pytest.mark.parametrize("family, png", [("ddpm", "figure6.png"), ("flow", "figure6_flow.png")])
def test_figure6_notebook(tmp_path, family, png):
    nb = run_notebook("figure6.ipynb", tmp_path, family=family, seeds=1, steps=2, pretrain_steps=3, n_samples=50,
                      overrides={"hidden": 16, "emb_size": 8, "batch_size": 32, "n_feedback": 32,
                                 "methods": ("pretrained", "sft", "kto:kto")},
                      out_dir=str(tmp_path / "out"))
    assert (tmp_path / "out" / png).is_file()
    assert shows_an_image(nb, "plot_figure6(result)")


def test_figure9_notebook(tmp_path):
    nb = run_notebook("figure9.ipynb", tmp_path, utilities=["kto", "prospect"], lim=2.0)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "kto            U'(0) = 0.250" in text
    assert shows_an_image(nb, "plot_figure9(")
