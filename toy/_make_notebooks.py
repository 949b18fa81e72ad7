"""Write notebooks/figure6.ipynb and notebooks/figure9.ipynb (no outputs): ``python -m toy._make_notebooks``.

The notebooks are thin: they call the library and draw. The cell tagged ``parameters`` holds
full-size defaults; CI injects small values below it (tests/notebooks.py).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _parameters(src: str):
    cell = new_code_cell(src)
    cell.metadata["tags"] = ["parameters"]
    return cell


def figure6() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Figure 6: the 2-D toy of Diffusion-KTO (section 6)\n\n"
            "Pretraining data N((0.5, 0.8), 0.04 I); desirable N((0.3, 0.8), 0.01 I); undesirable "
            "N((0.3, 0.6), 0.01 I). A small MLP diffusion model is pretrained, then fine-tuned with every "
            "objective through the same `kto_lab.step.objective_step` as the Stable Diffusion trainer, and "
            "3,500 points are sampled per model. Same as `kto-lab toy figure6 --out DIR --seeds 3`; "
            "`family = 'flow'` runs the toy under flow matching (`--family flow`)."),
        _parameters("family = 'ddpm'      # 'ddpm' (the paper) or 'flow' (rectified flow, as Stable Diffusion 3)\n"
                    "seeds = 3            # metrics are mean ± sd over seeds\n"
                    "steps = 600          # fine-tuning steps per method\n"
                    "pretrain_steps = 1500\n"
                    "n_samples = 3500     # sec. 6\n"
                    "overrides = {}       # any other ToyConfig field, e.g. {'beta': 10.0}\n"
                    "out_dir = None       # a directory to also write figure6.png and the metrics files"),
        new_code_cell("from toy import ToyConfig, run_figure6\n"
                      "from toy.figures import metrics_table, plot_figure6, write_figure6\n\n"
                      "cfg = ToyConfig(family=family, steps=steps, pretrain_steps=pretrain_steps, n_samples=n_samples,\n"
                      "                **overrides).validate()\n"
                      "result = run_figure6(cfg, seeds=seeds)"),
        new_code_cell("plot_figure6(result)"),
        new_code_cell("import pandas as pd\n\n"
                      "pd.DataFrame(metrics_table(result.summary, cfg)).set_index('method')"),
        new_code_cell("if out_dir is not None:\n"
                      "    print(write_figure6(result, out_dir, command='notebooks/figure6.ipynb'))"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def figure9() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Figure 9: utility functions and their first derivatives\n\n"
            "Centred so that U(0) = 0 (sec. 4.2); the offset does not change the gradient. Any utility "
            "registered with `kto_lab.objectives.register_utility` can be drawn. Same as "
            "`kto-lab toy figure9 --out DIR`."),
        _parameters("utilities = ['loss_averse', 'kto', 'risk_seeking']  # names in kto_lab.objectives.UTILITIES\n"
                    "lim = 5.0"),
        new_code_cell("from toy.figures import plot_figure9\n\nplot_figure9(None, utilities, lim)"),
        new_code_cell("import torch\nfrom kto_lab.objectives import get_utility\n\n"
                      "for name in utilities:\n"
                      "    x = torch.zeros(1, requires_grad=True)\n"
                      "    (d,) = torch.autograd.grad(get_utility(name)(x).sum(), x)\n"
                      "    print(f\"{name:14s} U'(0) = {d.item():.3f}\")"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def main():
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, nb in (("figure6.ipynb", figure6()), ("figure9.ipynb", figure9())):
        nbformat.validate(nb)
        nbformat.write(nb, NOTEBOOKS / name)
        print("wrote", NOTEBOOKS / name)


if __name__ == "__main__":
    main()
