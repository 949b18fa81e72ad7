"""notebooks/align_to_my_taste.ipynb top to bottom, the synthetic red user clicking the widget for the person:
two rounds of generate -> label in the widget -> train -> before / after, from the committed shapes base."""

from pathlib import Path

import pytest

from notebooks import run_notebook, shows_an_image

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "figures" / "synthetic" / "base" / "pipeline"


@pytest.mark.slow
def test_align_to_my_taste_runs_two_rounds_with_the_stand_in(tmp_path):
    pytest.importorskip("ipywidgets")
    if not (BASE / "model_index.json").is_file():
        pytest.fail(f"the committed base pipeline is missing: {BASE}")
    out = tmp_path / "taste"
    nb = run_notebook("align_to_my_taste.ipynb", tmp_path, timeout=600, BASE=str(BASE), OUT=str(out), STAND_IN=True,
                      ROUNDS=2, PROMPTS_PER_ROUND=2, IMAGES_PER_PROMPT=2, STEPS=2)
    stderr = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("name") == "stderr"]
    assert stderr == [], stderr  # the notebook prints nothing to stderr
    assert shows_an_image(nb, "plot_before_after(") and shows_an_image(nb, "plot_round_log(")
    import pandas as pd

    log = pd.read_csv(out / "round_log.csv")
    assert list(log["round"]) == [0, 1, 2] and list(log["labels_spent"]) == [0, 4, 8]
    decisions = (out / "round-02" / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 4 and all('"labeler": "me"' in d for d in decisions)  # clicked through the widget
