"""Execute a notebook top to bottom with small parameters (papermill-style, with nbclient).

The notebook's cell tagged ``parameters`` is followed by an injected cell assigning the
given values, so a notebook keeps its full-size defaults for users and runs small in CI. A notebook
that prints anything to stderr (a warning, a text progress bar) fails.
"""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def run_notebook(name: str, workdir: Path, timeout: int = 900, **parameters):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise AssertionError(f"notebook {name} has no cell tagged 'parameters'")
    src = "# injected by tests\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(src))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    noise = stderr_of(nb)
    assert not noise, f"{name} printed to stderr (a warning to fix at its cause, or to silence there): {noise}"
    return nb


def stderr_of(nb):
    """What the notebook's cells printed to stderr: warnings, or progress bars drawn as text (tqdm without
    ipywidgets says "IProgress not found"). A notebook a user runs shows none."""
    return [o["text"] for c in nb.cells for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]


def shows_an_image(nb, code: str) -> bool:
    """Whether the one code cell of ``nb`` whose source contains ``code`` output a PNG image."""
    cells = [c for c in nb.cells if c.cell_type == "code" and code in c.source]
    if len(cells) != 1:
        raise AssertionError(f"{len(cells)} code cells contain {code!r}")
    return any("image/png" in o.get("data", {}) for o in cells[0].get("outputs", []))
