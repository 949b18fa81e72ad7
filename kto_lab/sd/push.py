"""``kto-lab push RUN_DIR REPO_ID [--private] [--token T] [--dry-run]``: upload a finished run to the Hugging Face Hub.

Uploads an allow-list, what a user needs to load and understand the model: the final weights
(``pytorch_lora_weights.safetensors``, or the denoiser folder's configs and safetensors: ``unet/``, ``transformer/``),
the model card ``README.md``, ``config.yaml``, ``metrics.jsonl``/``metrics.csv`` and the validation images the card
shows; ``--include GLOB`` adds more. Everything else stays local (checkpoints, tracker logs, the lock, data
files, a ``.env``) and the list is printed before anything is sent. A file that looks like a secret (by name:
``.env``, keys, credentials; or by content: a Hub, GitHub, AWS or OpenAI token) is refused unless
``--allow-secrets``. The card is uploaded with its usage snippet pointed at REPO_ID; the local ``README.md`` is
never changed, and a failed upload (no network, a bad token) is one line that leaves the run as it was.
The token defaults to the one saved by the Hub login.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from ..config import ConfigError, UserError
from .components import LORA_WEIGHTS
from .families import DENOISER_FOLDERS
from .run_dir import final_weights

# What a pushed model holds (globs relative to the run; "validation" is added: the card's images).
ALLOW = ("README.md", "config.yaml", "metrics.jsonl", "metrics.csv", LORA_WEIGHTS,
         *(f"{d}/*.{ext}" for d in DENOISER_FOLDERS for ext in ("json", "safetensors")))
SECRET_NAMES = (".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "id_rsa*", "id_ed25519*", ".netrc", ".npmrc",
                ".pypirc", ".git-credentials", "credentials*", "*secret*", "token", "token.*", "*.token", "*_token",
                "*_token.txt", "*api_key*", "*apikey*")
SECRET_TEXT = re.compile(r"hf_[A-Za-z0-9]{30,}|ghp_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|AKIA[0-9A-Z]{16}"
                         r"|sk-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}")
TEXT_SCAN_BYTES = 1 << 20  # text files up to this size are searched for tokens


class PushError(UserError):
    """The Hub could not be reached or refused the upload (one line; nothing local changed)."""


def upload_list(run: Path, include: Sequence[str] = ()) -> List[str]:
    """The files of ``run`` that a push uploads (relative posix paths, sorted): :data:`ALLOW`, the validation
    images the card shows, and ``include`` globs."""
    from .model_card import validation_images

    files = [p for p in sorted(run.rglob("*")) if p.is_file()]
    rel = {p.relative_to(run).as_posix(): p for p in files}
    shown = {path for _, path in validation_images(run, [])[1]}
    chosen = [r for r in rel if r in shown or any(fnmatch.fnmatchcase(r, g) for g in (*ALLOW, *include))]
    return sorted(chosen)


def secret_reason(path: Path) -> Optional[str]:
    """Why ``path`` looks like a secret (its name, or a token in its text), or None."""
    if any(fnmatch.fnmatch(path.name.lower(), g) for g in SECRET_NAMES):
        return "its name looks like a secret's"
    if path.stat().st_size <= TEXT_SCAN_BYTES and path.suffix not in (".safetensors", ".png", ".bin"):
        match = SECRET_TEXT.search(path.read_bytes().decode("utf-8", errors="ignore"))
        if match:
            return f"it holds what looks like a token ({match.group()[:6]}...)"
    return None


def pushed_card(run: Path, repo_id: str) -> str:
    """The model card as uploaded: the run's ``README.md`` (a new one from config.yaml and metrics.jsonl, for the family of the
    run's pipeline, if it has none) with its usage snippet loading the weights from ``repo_id``. Nothing is written locally."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    card = run / "README.md"
    if card.is_file():
        return card.read_text().replace(f'"{Path(config["output_dir"])}"', f'"{repo_id}"')
    from ..config import renamed_keys
    from .config import ModelConfig
    from .families import resolve_family
    from .model_card import model_card

    config["model"] = renamed_keys(ModelConfig, config["model"], "model.")  # a run's config.yaml of an older kto_lab
    family = resolve_family(config["model"]["pretrained"], config["model"].get("family", "auto"),
                            field=f"{run / 'config.yaml'}: model.pretrained")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    return model_card(run, config, metrics=rows[-1] if rows else {}, counts={}, family=family, repo_id=repo_id)


def _hub_failure(exc: BaseException) -> bool:
    """An error of the network or the Hub (not a bug of ours): OSError, or raised by the HTTP/Hub libraries."""
    libraries = ("httpx", "httpx2", "requests", "urllib3", "huggingface_hub")
    return isinstance(exc, OSError) or any(c.__module__.split(".")[0] in libraries for c in type(exc).__mro__)


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, token: Optional[str] = None,
             include: Sequence[str] = (), allow_secrets: bool = False, dry_run: bool = False, log=print) -> str:
    """Upload the finished run in ``run_dir`` to the model repo ``repo_id`` (module docstring); returns the
    repo URL (``dry_run``: list the files only, return "")."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a kto_lab run directory (no config.yaml)")
    if final_weights(run) is None:
        raise FileNotFoundError(f"{run} has no final weights (its denoiser folder, e.g. unet/, or "
                                f"pytorch_lora_weights.safetensors): "
                                f"only a finished run can be pushed")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ConfigError(f"REPO_ID {repo_id!r} must look like name or user/name")
    files = upload_list(run, include)
    secrets = {f: why for f in files if (why := secret_reason(run / f))}
    if secrets and not allow_secrets:
        f, why = next(iter(secrets.items()))
        raise ConfigError(f"{run / f} would be uploaded but {why}; remove it from the run (or from --include), or "
                          "pass --allow-secrets if it is not one")
    card = pushed_card(run, repo_id)
    sizes: Dict[str, int] = {f: (run / f).stat().st_size for f in files if f != "README.md"}
    sizes["README.md"] = len(card.encode())
    left = sum(1 for p in run.rglob("*") if p.is_file()) - len(files)
    log(f"{'would upload' if dry_run else 'uploading'} {len(sizes)} files ({sum(sizes.values()) / 1e6:.1f} MB) "
        f"to {repo_id}; {left} other files in {run} stay local:")
    for f in sorted(sizes):
        log(f"  {f} ({sizes[f]:,} bytes)")
    if dry_run:
        return ""
    try:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(run / f)) for f in files if f != "README.md"]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        api.create_commit(repo_id=repo_id, operations=ops, commit_message=f"kto_lab run {run.name}")
    except Exception as exc:
        if not _hub_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PushError(f"push to {repo_id!r} failed ({type(exc).__name__}: {first}); {run} is unchanged") from None
    return str(url)


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output_dir")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repository, user/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private (default: public)")
    p.add_argument("--token", default=None, help="a Hub token with write access (default: the saved login)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="also upload the run's files matching GLOB (relative to RUN_DIR; repeatable)")
    p.add_argument("--allow-secrets", action="store_true",
                   help="upload files that look like secrets (a .env, a key, a token in a text file)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    url = push_run(args.run_dir, args.repo_id, private=args.private, token=args.token, include=args.include,
                   allow_secrets=args.allow_secrets, dry_run=args.dry_run)
    if url:
        print(f"pushed {args.run_dir} to {url}")
    return 0
