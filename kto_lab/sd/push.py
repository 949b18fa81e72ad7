"""``kto-lab push RUN_DIR REPO_ID [--private] [--token T]``: upload a finished run to the Hugging Face Hub.

Creates the model repository if needed and uploads the run's final weights, model card,
config.yaml, metrics and validation images (checkpoints with their optimizer states, tracker
logs and the lock stay local). The model card's usage snippet is pointed at REPO_ID first.
The token defaults to the one saved by the Hub login.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import yaml

from ..config import ConfigError
from .run_dir import LOCK, final_weights

KEEP_LOCAL = ["checkpoints/**", "**/.tmp-*", ".tmp-*", "logs/**", LOCK]


def point_card_at(run_dir: Path, repo_id: str) -> Path:
    """``run_dir/README.md`` loading the weights from ``repo_id`` (written anew if missing, for the family of the
    run's pipeline)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    card = run_dir / "README.md"
    if card.is_file():
        card.write_text(card.read_text().replace(f'"{Path(config["output_dir"])}"', f'"{repo_id}"'))
        return card
    from ..config import renamed_keys
    from .config import ModelConfig
    from .families import resolve_family
    from .model_card import write_model_card

    config["model"] = renamed_keys(ModelConfig, config["model"], "model.")  # a run's config.yaml of an older kto_lab
    family = resolve_family(config["model"]["pretrained"], config["model"].get("family", "auto"),
                            field=f"{run_dir / 'config.yaml'}: model.pretrained")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    return write_model_card(run_dir, config, metrics=rows[-1] if rows else {}, counts={}, family=family,
                            repo_id=repo_id)


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, token: Optional[str] = None) -> str:
    """Upload the finished run in ``run_dir`` to the model repo ``repo_id``; returns the repo URL."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a kto_lab run directory (no config.yaml)")
    if final_weights(run) is None:
        raise FileNotFoundError(f"{run} has no final weights (its denoiser folder, e.g. unet/, or "
                                f"pytorch_lora_weights.safetensors): "
                                f"only a finished run can be pushed")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ConfigError(f"REPO_ID {repo_id!r} must look like name or user/name")
    point_card_at(run, repo_id)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(run), ignore_patterns=KEEP_LOCAL,
                      commit_message=f"kto_lab run {run.name}")
    return str(url)


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output_dir")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repository, user/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private (default: public)")
    p.add_argument("--token", default=None, help="a Hub token with write access (default: the saved login)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    url = push_run(args.run_dir, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.run_dir} to {url}")
    return 0
