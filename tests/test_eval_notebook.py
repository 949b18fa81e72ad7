"""The evaluation notebook runs top to bottom on a tiny pipeline with programmatic scorers."""

from notebooks import run_notebook, shows_an_image


def test_evaluation_notebook_runs(tmp_path):
    nb = run_notebook("evaluation.ipynb", tmp_path, timeout=600, LIMIT=3, N_PER_PROMPT=2, STEPS=2, TORCH_THREADS=1,
                      OUT_DIR=str(tmp_path / "out"))
    assert (tmp_path / "out" / "eval" / "report.md").is_file()
    assert (tmp_path / "out" / "eval" / "win_rates.png").is_file()
    # printed text and cell values (with ipywidgets installed, tqdm's bars are widgets and print no text)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "tuned" in text and "tuned" in (tmp_path / "out" / "eval" / "report.md").read_text()
    # inline figures: the report's plotting functions return theirs, and the median-of-N cell draws with pyplot
    # after run_evaluation (which must not have switched the kernel to a file-only backend)
    assert shows_an_image(nb, "plot_win_rates(") and shows_an_image(nb, "median_index")
