"""Sweeps in the shapes world: every method over seeds, settings and data regimes, cell by cell.

    kto-lab synthetic sweep --plan frontier --base figures/synthetic/base/pipeline --out runs/sweeps/red
    kto-lab synthetic sweep --plan regimes  --base figures/synthetic/base/pipeline --out runs/sweeps/red
    kto-lab synthetic sweep-report --run runs/sweeps/red --out figures/kto_vs_dpo
    kto-lab synthetic sweep --plan flow --base figures/synthetic/base_flow/pipeline --out runs/sweeps/flow

A *cell* is one training run: (regime, method, beta, learning rate, seed; on a flow-matching base also the
objective's ``flow_error``). It

1. takes the regime's training data (:mod:`kto_lab.synthetic.regimes`) from the user's labelled
   pool; the pool's captions, the regime's draw and the training all follow the cell's seed;
2. fine-tunes the whole base UNet with the SD trainer (:func:`kto_lab.synthetic.experiment.align_one`,
   SPIN through :func:`~kto_lab.synthetic.experiment.align_spin`) for ``steps`` optimizer steps,
   cosine learning-rate schedule;
3. measures the model at its last ``n_last`` checkpoints (every ``eval_every`` steps) on fixed
   held-out captions and seeds (:class:`~kto_lab.synthetic.experiment.CurveRecorder`): the user's
   score, prompt fidelity, and distance from the base model. Its *final* value of each is the mean
   over those checkpoints (the curves swing from one checkpoint to the next).

Each cell's result is one JSON file, ``OUT/cells/<cell>.json``, written atomically when the cell
ends; a sweep skips the cells whose file exists, so an interruption loses at most the cell in
progress. Both plans write to the same OUT: the regimes plan reuses the frontier's balanced cells, and
both may run at once (a lock file per running cell keeps two processes off the same cell).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from ..config import ConfigError, check_choice, check_range
from ..data.tables import DataError
from ..objectives import NEEDS_REFERENCE
from ..paths import write_text_atomic
from ..schedule import FLOW_ERRORS
from . import base as B
from .experiment import AlignConfig, CurveRecorder, _method_objective, align_one, align_spin, user_feedback
from .regimes import REGIMES, get_regime, regime_data
from .users import USERS, get_user

PLANS = ("frontier", "regimes", "flow")


@dataclass
class SweepConfig:
    """One sweep's world and plan. Sized for about an hour per plan on 2 shared CPU cores."""

    user: str = "red"
    # The user's candidate pool: captions x renders, plus the red-filtered copies (4,000 images).
    n_captions: int = 1000
    renders_per_caption: int = 2
    # Images each regime trains on, drawn from the pool (the judgments regime: pool_size // 2 comparisons).
    pool_size: int = 2000
    steps: int = 120  # optimizer steps per cell (SPIN: in all, over its iterations)
    batch_size: int = 32
    warmup_steps: int = 10
    gamma: float = 0.8  # share of desirable samples (Diffusion-KTO sec. 4.2; SFT draws desirable only)
    spin_iterations: int = 3
    eval_every: int = 30  # steps between checkpoints
    n_last: int = 3  # a cell's final score = mean over its last n_last checkpoints
    n_eval_prompts: int = 64  # held-out captions, 2 images each, the same for every cell
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # >= 3 for intervals over seeds
    beta: float = 1000.0  # the default KTO/DPO beta (the comparison's, docs/synthetic.md)
    learning_rate: float = 1e-4  # the default learning rate (AdamW, no weight decay)
    # The frontier plan, on the balanced regime: KTO and DPO over beta (at the default learning rate) and
    # over the learning rate (at the default beta: with Adam, beta barely limits how far a model moves);
    # SFT, CSFT and BCE over the learning rate; KTO's other utilities and SPIN at the defaults.
    kto_betas: List[float] = field(default_factory=lambda: [300.0, 1000.0, 3000.0, 10000.0])
    dpo_betas: List[float] = field(default_factory=lambda: [1000.0, 3000.0, 10000.0, 30000.0])
    preference_learning_rates: List[float] = field(default_factory=lambda: [3e-6, 1e-5])  # KTO and DPO
    learning_rates: List[float] = field(default_factory=lambda: [3e-6, 1e-5, 1e-4])  # SFT, CSFT, BCE
    # The regimes plan: KTO and DPO at these [beta, learning rate] settings in every regime.
    regime_kto: List[List[float]] = field(default_factory=lambda: [[1000.0, 1e-4]])
    # DPO also at a learning rate where its fidelity matches KTO's default (measured on the frontier)
    regime_dpo: List[List[float]] = field(default_factory=lambda: [[1000.0, 1e-4], [1000.0, 3e-6]])
    # The flow plan (a flow-matching base, SD3's architecture): with each objective.flow_error (which error is a flow
    # model's implicit reward, docs/toy.md), Diffusion-KTO and DiffusionNFT over beta and SFT, all at the default
    # learning rate on the balanced regime.
    flow_kto_betas: List[float] = field(default_factory=lambda: [100.0, 1000.0, 10000.0])
    nft_betas: List[float] = field(default_factory=lambda: [0.3, 1.0])

    def validate(self) -> "SweepConfig":
        check_choice("sweep.user", self.user, list(USERS))
        for name in ("n_captions", "renders_per_caption", "pool_size", "steps", "batch_size", "spin_iterations",
                     "eval_every", "n_last", "n_eval_prompts"):
            check_range(f"sweep.{name}", getattr(self, name), low=1)
        if self.n_last * self.eval_every > self.steps:
            raise ConfigError(f"sweep.n_last={self.n_last} checkpoints every sweep.eval_every={self.eval_every} "
                              f"steps need sweep.steps >= {self.n_last * self.eval_every}, got {self.steps}")
        if not self.seeds:
            raise ConfigError("sweep.seeds=[] is empty; give at least one seed (>= 3 for intervals over seeds)")
        for name in ("beta", "learning_rate"):
            check_range(f"sweep.{name}", getattr(self, name), low=0.0, low_open=True)
        for name in ("kto_betas", "dpo_betas", "preference_learning_rates", "learning_rates", "flow_kto_betas",
                     "nft_betas"):
            for v in getattr(self, name):
                check_range(f"sweep.{name}[]", v, low=0.0, low_open=True)
        for name in ("regime_kto", "regime_dpo"):
            for setting in getattr(self, name):
                if len(setting) != 2:
                    raise ConfigError(f"sweep.{name}: each setting is [beta, learning_rate], got {setting!r}")
                for v in setting:
                    check_range(f"sweep.{name}[]", v, low=0.0, low_open=True)
        return self

    def checkpoints(self) -> List[int]:
        """The steps at which a (non-SPIN) cell is measured: its last ``n_last`` checkpoints."""
        return [self.steps - k * self.eval_every for k in reversed(range(self.n_last))]


@dataclass(frozen=True)
class Cell:
    regime: str
    method: str
    seed: int
    beta: Optional[float]  # None for methods without beta (SFT, CSFT, BCE)
    learning_rate: float
    flow_error: Optional[str] = None  # objective.flow_error (flow-matching bases; None: the default)

    @property
    def name(self) -> str:
        beta = "" if self.beta is None else f"_beta{self.beta:g}"
        error = "" if self.flow_error is None else f"_{self.flow_error}"
        return f"{self.regime}_{self.method}{beta}{error}_lr{self.learning_rate:g}_s{self.seed}"


def uses_beta(method: str) -> bool:
    return method == "spin" or NEEDS_REFERENCE[_method_objective(method)[0]]


def make_cell(regime: str, method: str, seed: int, beta: float, learning_rate: float,
              flow_error: Optional[str] = None) -> Cell:
    return Cell(regime, method, seed, float(beta) if uses_beta(method) else None, float(learning_rate), flow_error)


def plan_cells(plan: str, cfg: SweepConfig) -> List[Cell]:
    """The cells of a plan, seed by seed (a partial sweep already covers every setting once)."""
    check_choice("plan", plan, PLANS)
    cells: List[Cell] = []
    for seed in cfg.seeds:
        if plan == "frontier":
            for method, betas in (("kto", cfg.kto_betas), ("dpo", cfg.dpo_betas)):
                cells += [make_cell("balanced", method, seed, b, cfg.learning_rate) for b in betas]
                cells += [make_cell("balanced", method, seed, cfg.beta, lr) for lr in cfg.preference_learning_rates]
            cells += [make_cell("balanced", m, seed, cfg.beta, lr) for m in ("sft", "csft", "bce")
                      for lr in cfg.learning_rates]
            cells += [make_cell("balanced", m, seed, cfg.beta, cfg.learning_rate)
                      for m in ("kto_loss_averse", "kto_risk_seeking", "spin")]
        elif plan == "flow":
            for e in FLOW_ERRORS:
                cells += [make_cell("balanced", "kto", seed, b, cfg.learning_rate, e) for b in cfg.flow_kto_betas]
                cells += [make_cell("balanced", "nft", seed, b, cfg.learning_rate, e) for b in cfg.nft_betas]
                cells += [make_cell("balanced", "sft", seed, cfg.beta, cfg.learning_rate, e)]
        else:
            for regime in [r for r in REGIMES if r != "balanced"] + ["balanced"]:  # the frontier plan runs balanced too
                cells += [make_cell(regime, "kto", seed, b, lr) for b, lr in cfg.regime_kto]
                cells += [make_cell(regime, "dpo", seed, b, lr) for b, lr in cfg.regime_dpo]
    return list(dict.fromkeys(cells))  # a setting listed twice runs once


def _atomic_dir(path: Path) -> Path:
    """A fresh ``<path>.partial-<pid>`` to write into (two sweep processes may write the same directory)."""
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def write_regime_feedback(out: Path, cfg: SweepConfig, regime: str, seed: int, image_size: int) -> Dict:
    """``OUT/feedback/<regime>-s<seed>/``: the regime's records and pairs (written once, atomically)."""
    d = out / "feedback" / f"{regime}-s{seed}"
    if not (d / "feedback.json").is_file():
        align = AlignConfig(user=cfg.user, n_captions=cfg.n_captions, renders_per_caption=cfg.renders_per_caption,
                            seed=seed)
        data = regime_data(user_feedback(align, image_size), get_regime(regime), cfg.pool_size, seed=seed)
        partial = _atomic_dir(d)
        B.write_image_records(data.images, data.captions, data.labels, partial, scores=data.scores)
        if data.pairs:  # a tiny pool may form none; a DPO cell then stops with the regime's name
            B.write_image_pairs(data.images, data.captions, data.pairs, partial)
        liked = data.scores[data.labels == 1]
        info = {"regime": dataclasses.asdict(get_regime(regime)), "counts": data.counts(),
                "mean_score": {"labelled_desirable": float(liked.mean()) if len(liked) else float("nan"),
                               "labelled_undesirable": float(data.scores[data.labels == 0].mean())}}
        (partial / "feedback.json").write_text(json.dumps(info, indent=2))
        try:
            os.replace(partial, d)
        except OSError:  # another process finished the same (deterministic) directory first
            shutil.rmtree(partial, ignore_errors=True)
    info = json.loads((d / "feedback.json").read_text())
    return {**info, "records": str(d / "records.csv"), "pairs": str(d / "pairs.csv")}


def run_cell(cell: Cell, cfg: SweepConfig, base_dir: Path, out: Path, image_size: int = 16,
             progress: bool = False) -> Dict:
    """Train and measure one cell; write ``OUT/cells/<cell>.json``; return its result."""
    t0 = time.time()
    feedback = write_regime_feedback(out, cfg, cell.regime, cell.seed, image_size)
    if cell.method == "dpo" and not feedback["counts"]["pairs"]:
        raise ValueError(f"regime {cell.regime!r}, seed {cell.seed}: the pool forms no pair for DPO; "
                         "raise sweep.pool_size or sweep.n_captions")
    align = AlignConfig(
        user=cfg.user, methods=[cell.method], steps=cfg.steps, batch_size=cfg.batch_size,
        learning_rate=cell.learning_rate, warmup_steps=cfg.warmup_steps, lr_scheduler="cosine",
        beta=cfg.beta if cell.beta is None else cell.beta, gamma=cfg.gamma, spin_iterations=cfg.spin_iterations,
        eval_every=cfg.eval_every, seed=cell.seed, flow_error=cell.flow_error,
    ).validate()
    spin = cell.method == "spin"
    curve = CurveRecorder(base_dir, get_user(cfg.user), cfg.n_eval_prompts, image_size,
                          steps=None if spin else set(cfg.checkpoints()))
    work = out / "work" / cell.name
    shutil.rmtree(work, ignore_errors=True)
    if spin:
        align_spin(base_dir, work, feedback, align, curve, image_size, progress)
    else:
        align_one(cell.method, base_dir, work, feedback, align, curve, image_size, progress)
    last = [r for r in curve.rows if r["step"] > 0][-cfg.n_last:]
    keys = ("score", "fidelity", "fidelity_all", "distance")
    result = {
        "cell": dataclasses.asdict(cell), "name": cell.name, "feedback": {k: feedback[k] for k in ("counts", "mean_score")},
        "final": {k: float(np.mean([r[k] for r in last])) for k in keys},
        "final_steps": [r["step"] for r in last], "curve": curve.rows,
        "per_image": {str(r["step"]): {k: curve.per_image[(cell.method, r["step"])][k].tolist() for k in keys}
                      for r in last},
        "base": {k: float(v) for k, v in _base_means(curve).items()},
        "seconds": round(time.time() - t0, 1),
    }
    path = out / "cells" / f"{cell.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result), tmp=path.with_suffix(".json.partial"))
    shutil.rmtree(work, ignore_errors=True)  # the trained UNet and cache: not needed once measured
    return result


def _base_means(curve: CurveRecorder) -> Dict[str, float]:
    from .evaluate import per_image_scores

    return {k: float(v.mean()) for k, v in per_image_scores(curve.base_images, curve.caps, curve.user).items()}


def run_sweep(plan: str, base_dir: str | Path, out: str | Path, cfg: Optional[SweepConfig] = None, *,
              progress: bool = False, log=print) -> List[Path]:
    """Run every cell of ``plan`` not yet done in ``out``; returns the cell files of the plan."""
    cfg = (cfg or SweepConfig()).validate()
    base_dir, out = Path(base_dir), Path(out)
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"--base {str(base_dir)!r} is not a pipeline directory (no model_index.json)")
    image_size = int(json.loads((base_dir / "shapes_world.json").read_text())["config"]["image_size"]) \
        if (base_dir / "shapes_world.json").is_file() else 16
    out.mkdir(parents=True, exist_ok=True)
    _check_same_world(out, cfg, base_dir, log)
    cells = plan_cells(plan, cfg)
    (out / "plans").mkdir(exist_ok=True)  # what each plan asked for: the report shows those settings
    (out / "plans" / f"{plan}.json").write_text(json.dumps([dataclasses.asdict(c) for c in cells]))
    done = 0
    for k, cell in enumerate(cells):
        path = out / "cells" / f"{cell.name}.json"
        if path.is_file():
            if read_cell(path, strict=False) is not None:
                done += 1
                continue
            log(f"[{k + 1}/{len(cells)}] {cell.name}: {path} is truncated or not a cell's result; running it again")
        if not _claim(out, cell):
            log(f"[{k + 1}/{len(cells)}] {cell.name}: another sweep process is running it; skipped")
            continue
        t = time.time()
        try:
            result = run_cell(cell, cfg, base_dir, out, image_size, progress)
        finally:
            _lock(out, cell).unlink(missing_ok=True)
        f = result["final"]
        log(f"[{k + 1}/{len(cells)}] {cell.name}: score {f['score']:.3f} fidelity {f['fidelity']:.3f} "
            f"distance {f['distance']:.3f} ({time.time() - t:.0f} s)")
    if done:
        log(f"{done} of {len(cells)} cells were already done in {out}")
    return [out / "cells" / f"{c.name}.json" for c in cells]


def _lock(out: Path, cell: Cell) -> Path:
    return out / "locks" / f"{cell.name}.lock"


def _claim(out: Path, cell: Cell) -> bool:
    """Take the cell for this process (two sweeps may share OUT, e.g. both plans at once). A lock left
    by a process that no longer runs is taken over."""
    path = _lock(out, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # its process is alive
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # stale: the process is gone
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


# Fields that change what a cell means: a sweep directory holds cells of one world only.
_WORLD_FIELDS = ("user", "n_captions", "renders_per_caption", "pool_size", "steps", "batch_size", "warmup_steps",
                 "gamma", "spin_iterations", "eval_every", "n_last", "n_eval_prompts")


def _check_same_world(out: Path, cfg: SweepConfig, base_dir: Path, log=print) -> None:
    """``OUT/world.json`` records the world (the fields above and the base model: its path and the content
    fingerprint of its files, :mod:`kto_lab.fingerprint`); a sweep resumed with another world or another base
    is refused in one line. A world.json of an older kto_lab, without the base, gets this one (said so)."""
    from ..fingerprint import fingerprint

    world = {k: getattr(cfg, k) for k in _WORLD_FIELDS}
    world["base"] = fingerprint(base_dir)[0]
    path = out / "world.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise DataError(f"{path} is not valid JSON (truncated?): it records what this sweep's cells were made "
                            "with; restore it, or use another --out") from None
        if "base" not in saved:
            log(f"{path} does not record the base model (an earlier kto_lab); recording --base {str(base_dir)!r}")
            saved.update(base=world["base"], base_path=str(base_dir))
            path.write_text(json.dumps(saved, indent=2))
        diff = {k: (saved.get(k), v) for k, v in world.items() if saved.get(k) != v}
        if "base" in diff:
            diff["base"] = (f"{saved.get('base_path')} ({saved['base'][:12]})", f"{base_dir} ({world['base'][:12]})")
        if diff:
            raise ConfigError(f"{out} holds cells of another world ({', '.join(f'{k}: {a!r} there, {b!r} here' for k, (a, b) in diff.items())}); "
                              "use another --out")
    else:
        path.write_text(json.dumps({**world, "base_path": str(base_dir)}, indent=2))


def plan_settings(out: str | Path, plan: str) -> Optional[set]:
    """The (regime, method, beta, learning_rate) settings a plan asked for in ``out`` (None if never run)."""
    path = Path(out) / "plans" / f"{plan}.json"
    if not path.is_file():
        return None
    return {(c["regime"], c["method"], c["beta"], c["learning_rate"]) for c in json.loads(path.read_text())}


def read_cell(path: Path, strict: bool = True) -> Optional[Dict]:
    """A cell's result file; a truncated or foreign one is a DataError naming it (None if not ``strict``)."""
    try:
        cell = json.loads(Path(path).read_text())
        if isinstance(cell, dict) and {"cell", "final", "per_image"} <= set(cell):
            return cell
    except ValueError:
        pass
    if strict:
        raise DataError(f"{path} is truncated or not a sweep cell's result; delete it and run the sweep again "
                        "to redo that cell")
    return None


def load_cells(out: str | Path) -> Iterator[Dict]:
    """Every finished cell's result in ``out`` (any plan)."""
    for path in sorted((Path(out) / "cells").glob("*.json")):
        yield read_cell(path)
