"""A refactor's proof of "no behaviour change": the first optimizer steps of every tiny model family, printed exactly.

    python tests/family_losses.py > before.txt        # on the commit before the change
    python tests/family_losses.py > after.txt         # after it
    python tests/family_losses.py --compare before.txt after.txt

For each tiny family (built from config, random weights, the tests' vocabulary) and each objective (kto, dpo,
sft, csft, bce), full fine-tune and LoRA, it trains 3 optimizer steps with a fixed seed on CPU (one thread) and
prints each step's loss and z_ref as ``float.hex`` (bit for bit) with a digest of the final weights (every tensor's
bytes, by key: LoRA key names and the full fine-tune's folder are part of it). Also: KTO from the latent cache, a
one-sample KTO batch with gradient accumulation (the unrelated captions of the previous micro-batch), a LoRA DPO
run's validation image, and the implicit-reward evaluation (records and pairs, LoRA and full fine-tune).
``--compare`` prints the lines that differ and the largest absolute difference of their numbers.

It lives beside the tests (their small image tables, ``sd_helpers``; their vocabulary, ``conftest``) because it
checks the trainer, not the speed of anything; it is run by hand around a refactor, not by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: E402  (HF_HUB_OFFLINE, one thread; the tests' vocabulary)
import torch  # noqa: E402
from sd_helpers import write_pairs, write_records  # noqa: E402

FAMILY_NAMES = ("sd", "sdxl", "sd3")
OBJECTIVES = ("kto", "dpo", "sft", "csft", "bce")


def build_tiny(family: str, path: Path) -> Path:
    from kto_lab.sd.families import FAMILIES

    return FAMILIES[family].build_tiny(path, words=conftest.TINY_WORDS)


def run_config(pipeline, table, out, objective: str, lora: bool, **sections):
    cfg = {
        "output_dir": str(out), "cpu": True, "seed": 0,
        "model": {"pretrained": str(pipeline)},
        "data": {"train": [str(table)], "resolution": 32},
        "objective": {"objective": objective, "beta": 50.0},
        "optim": {"max_steps": 3, "batch_size": 2, "learning_rate": 3e-2 if lora else 1e-3, "warmup_steps": 0},
        "lora": {"enabled": lora, "rank": 4},
        "logging": {"log_every": 1, "progress_bar": False},
        "checkpoint": {"every": 0},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def weights_digest(path: str) -> str:
    """sha256 over the saved tensors (key, dtype, shape, bytes), in key order: what a model loads, not file metadata."""
    from safetensors.torch import load_file

    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
    h = hashlib.sha256(p.name.encode())
    for f in files:
        state = load_file(str(f))
        for k in sorted(state):
            t = state[k].contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def hexes(values) -> str:
    return " ".join(float(v).hex() for v in values)


def train(label: str, cfg) -> "object":
    from kto_lab.sd.metrics_log import read_metrics
    from kto_lab.sd.trainer import Trainer

    result = Trainer(cfg).fit()
    rows = read_metrics(result.metrics_path)
    print(f"{label} loss {hexes(r['loss'] for r in rows)}")
    if "z_ref" in rows[0]:
        print(f"{label} z_ref {hexes(r['z_ref'] for r in rows)}")
    print(f"{label} weights {Path(result.weights).name} {weights_digest(result.weights)}")
    return result


def family_lines(family: str, tmp: Path) -> None:
    pipe = build_tiny(family, tmp / f"tiny_{family}")
    records, pairs = write_records(tmp / "records"), write_pairs(tmp / "pairs")
    runs = {}
    for objective in OBJECTIVES:
        for lora in (False, True):
            label = f"{family} {objective} {'lora' if lora else 'full'}"
            cfg = run_config(pipe, pairs if objective == "dpo" else records, tmp / label.replace(" ", "_"), objective,
                             lora)
            runs[objective, lora] = train(label, cfg)
    train(f"{family} kto cached", run_config(pipe, records, tmp / f"{family}_cached", "kto", False,
                                             data={"cache_dir": str(tmp / f"{family}_cache")}))
    train(f"{family} kto batch1", run_config(pipe, records, tmp / f"{family}_b1", "kto", True,
                                             optim={"batch_size": 1, "gradient_accumulation_steps": 2},
                                             data={"caption_dropout": 0.5, "center_crop": False}))
    validated = run_config(pipe, pairs, tmp / f"{family}_val", "dpo", True, optim={"max_steps": 1},
                           logging={"validation_prompts": ["a red square"], "validation_every": 1,
                                    "validation_inference_steps": 2})
    out = train(f"{family} dpo validation", validated)
    png = Path(out.output_dir) / "validation" / "step-0000001" / "00.png"
    from PIL import Image

    print(f"{family} validation image {hashlib.sha256(Image.open(png).tobytes()).hexdigest()[:16]}")

    from kto_lab.eval.implicit import evaluate_implicit_accuracy

    lora, full = runs["kto", True], runs["kto", False]
    for name, kwargs in (("lora records", {"records_path": records, "lora_path": lora.weights}),
                         ("lora pairs", {"pairs_path": pairs, "lora_path": lora.weights}),
                         ("full records", {"records_path": records, "denoiser_path": full.weights})):
        res = evaluate_implicit_accuracy(pipe, n_draws=2, resolution=32, progress=False, beta=50.0, **kwargs)
        rewards = res.rewards if hasattr(res, "rewards") else list(res.rewards_winner) + list(res.rewards_loser)
        print(f"{family} implicit {name} {hexes(rewards)}")


def compare(before: Path, after: Path) -> int:
    a, b = before.read_text().splitlines(), after.read_text().splitlines()
    worst, differ = 0.0, 0
    for la, lb in zip(a, b):
        if la == lb:
            continue
        differ += 1
        print(f"- {la}\n+ {lb}")
        for x, y in zip(la.split(), lb.split()):
            try:
                worst = max(worst, abs(float.fromhex(x) - float.fromhex(y)))
            except ValueError:
                pass
    if len(a) != len(b):
        print(f"{len(a)} lines before, {len(b)} after")
        differ += 1
    print(f"{len(a)} lines compared, {differ} differ; largest absolute difference of a number: {worst:g}")
    return 1 if differ else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILY_NAMES))
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    import warnings

    warnings.filterwarnings("ignore")
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory(prefix=f"family_losses_{family}_") as tmp:
            family_lines(family, Path(tmp))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
