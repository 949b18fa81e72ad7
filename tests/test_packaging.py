"""environment.yml (conda users) must list the same packages and torch pin as pyproject.toml;
.gitignore covers what the notebooks write."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pin(spec: str) -> str:
    return spec.strip()[len(_name(spec)):].replace(" ", "")


def _pyproject_specs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["test"])


def _environment_specs():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [s for s in pip if not s.startswith("-")]


def test_environment_lists_the_same_packages_as_pyproject():
    py = {_name(s) for s in _pyproject_specs()}
    env = {_name(s) for s in _environment_specs()}
    assert py == env, f"only in pyproject: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"


def test_torch_pin_agrees():
    py = {_name(s): _pin(s) for s in _pyproject_specs()}
    env = {_name(s): _pin(s) for s in _environment_specs()}
    assert py["torch"] and py["torch"] == env["torch"], (py["torch"], env["torch"])


def test_environment_names_python_and_installs_the_project():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert any(isinstance(d, str) and d.startswith("python") for d in env["dependencies"])
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip


def _notebook_parameters(name: str) -> dict:
    nb = json.loads((REPO / "notebooks" / name).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), {}, values)  # the parameter cells only assign literals
    return values


def test_gitignore_covers_what_the_notebooks_write():
    """Run from notebooks/ (Jupyter's working directory), the notebooks write these directories."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    written = [_notebook_parameters("evaluation.ipynb")["OUT_DIR"], _notebook_parameters("synthetic.ipynb")["RUN_DIR"],
               _notebook_parameters("sd_finetune.ipynb")["OUTPUT_DIR"], _notebook_parameters("align_to_my_taste.ipynb")["OUT"],
               "demo"]  # sd_finetune's DEMO data
    probes = [f"notebooks/{d}/x.png" for d in written]
    ignored = subprocess.run(["git", "check-ignore", *probes], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(probes), f"not ignored: {sorted(set(probes) - set(ignored))}"
