"""Evaluation prompt sets from local files (Diffusion-KTO appendix A.2 / B.2).

The paper evaluates on the Pick-a-Pic v2 test captions, the HPS v2 benchmark (four styles:
anime, concept-art, paintings, photo) and PartiPrompts. Each loader returns a list of
:class:`Prompt` (a stable ``id``, the ``text``, and a ``style`` used for per-style breakdowns:
the HPS style, PartiPrompts' ``Category``, or ``""``).

    load_prompts("PartiPrompts.tsv")          # Prompt / Category columns
    load_prompts("hps_benchmark/")            # anime.json, concept-art.json, paintings.json, photo.json
    load_prompts("pickapic_test.parquet")     # `caption` column, de-duplicated
    load_prompts("prompts.txt")               # one prompt per line
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from kto_lab.config import ConfigError
from kto_lab.data.tables import DataError, read_text

HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
PROMPT_FORMATS = ("auto", "partiprompts", "hps", "pickapic", "text", "jsonl")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    style: str = ""

    def to_dict(self):
        return asdict(self)


def _dedupe(texts: Iterable[str]) -> List[str]:
    seen, out = set(), []
    for t in texts:
        t = t.strip()
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _require(path: Path, what: str, expected: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: {str(path)!r} does not exist; expected {expected}")
    return path


def load_partiprompts(path) -> List[Prompt]:
    """PartiPrompts TSV (columns ``Prompt``, ``Category``, ...); ``Category`` becomes the style."""
    import csv

    path = _require(Path(path), "PartiPrompts", "a TSV with columns Prompt and Category")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t")
    if not reader.fieldnames or "Prompt" not in reader.fieldnames:
        raise DataError(f"PartiPrompts: {str(path)!r} has columns {reader.fieldnames}; expected 'Prompt' (and 'Category')")
    rows = [((r["Prompt"] or "").strip(), (r.get("Category") or "").strip()) for r in reader]
    return [Prompt(f"parti-{i:05d}", text, cat) for i, (text, cat) in enumerate(rows) if text]


def load_hps_prompts(path, styles: Optional[Sequence[str]] = None) -> List[Prompt]:
    """HPS v2 benchmark prompts: a directory of per-style JSON files (each a list of strings),
    or a single such file; the file stem is the style."""
    path = _require(Path(path), "HPS v2 prompts", f"a directory with {[s + '.json' for s in HPS_STYLES]}")
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if styles is not None:
            files = [path / f"{s}.json" for s in styles]
            for f in files:
                _require(f, "HPS v2 prompts", "a JSON list of prompt strings")
        if not files:
            raise FileNotFoundError(f"HPS v2 prompts: no *.json files in {str(path)!r}; expected "
                                    f"{[s + '.json' for s in HPS_STYLES]}")
    else:
        files = [path]
    out: List[Prompt] = []
    for f in files:
        try:
            data = json.loads(read_text(f))
        except json.JSONDecodeError as exc:
            raise DataError(f"HPS v2 prompts: {str(f)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise DataError(f"HPS v2 prompts: {str(f)!r} must hold a JSON list of strings")
        out += [Prompt(f"hps-{f.stem}-{i:05d}", t.strip(), f.stem) for i, t in enumerate(data) if t.strip()]
    return out


def load_pickapic_prompts(path, column: str = "caption") -> List[Prompt]:
    """Pick-a-Pic test captions from a parquet file (``caption`` column), de-duplicated in order."""
    import pyarrow.parquet as pq

    path = _require(Path(path), "Pick-a-Pic prompts", f"a parquet file with a {column!r} column")
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:
        raise DataError(f"Pick-a-Pic prompts: {str(path)!r} is not a readable parquet file: {exc}") from None
    if column not in names:
        raise DataError(f"Pick-a-Pic prompts: {str(path)!r} has no {column!r} column (columns: {names})")
    texts = pq.read_table(path, columns=[column]).column(column).to_pylist()
    return [Prompt(f"pickapic-{i:05d}", t) for i, t in enumerate(_dedupe(t for t in texts if isinstance(t, str)))]


def load_text_prompts(path) -> List[Prompt]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    path = _require(Path(path), "text prompts", "a text file with one prompt per line")
    lines = [ln.strip() for ln in read_text(path).splitlines()]
    return [Prompt(f"text-{i:05d}", t) for i, t in enumerate(t for t in lines if t and not t.startswith("#"))]


def load_jsonl_prompts(path) -> List[Prompt]:
    """JSONL rows ``{"id"?, "text", "style"?}`` (what :func:`save_prompts` writes)."""
    path = _require(Path(path), "JSONL prompts", "a JSONL file of {text, style, id}")
    out = []
    for i, line in enumerate(read_text(path).splitlines()):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"JSONL prompts: {str(path)!r} line {i + 1} is not valid JSON: {exc}") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f"JSONL prompts: {str(path)!r} line {i + 1} has no 'text' string")
            out.append(Prompt(str(row.get("id", f"jsonl-{i:05d}")), row["text"], row.get("style", "")))
    return out


def sample_per_style(prompts: Sequence[Prompt], n: int, seed: int = 0) -> List[Prompt]:
    """``n`` prompts of each style drawn at random (without replacement, ``seed`` fixes the draw), in
    the file's order: the paper's user study "randomly sampling 100 prompts, 25 from each prompt
    style" of HPS v2 (Diffusion-KTO A.2). A style with fewer than ``n`` prompts keeps them all."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = set()
    for style in dict.fromkeys(p.style for p in prompts):
        idx = [i for i, p in enumerate(prompts) if p.style == style]
        keep.update(idx if len(idx) <= n else rng.choice(idx, size=n, replace=False).tolist())
    return [p for i, p in enumerate(prompts) if i in keep]


def load_prompts(path, fmt: str = "auto", limit: Optional[int] = None, per_style: Optional[int] = None,
                 per_style_seed: int = 0) -> List[Prompt]:
    """Load a prompt set; ``fmt="auto"`` picks the loader from the path (directory -> HPS, .tsv ->
    PartiPrompts, .parquet -> Pick-a-Pic, .json -> HPS file, .jsonl -> JSONL, else text).
    ``per_style`` keeps n prompts of each style drawn at random with ``per_style_seed``
    (:func:`sample_per_style`; the paper's user study: 25 per HPS style); ``limit`` keeps the first n overall."""
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"prompt format {fmt!r} is not known; choose one of {list(PROMPT_FORMATS)}")
    p = Path(path)
    if fmt == "auto":
        suffix = p.suffix.lower()
        fmt = ("hps" if p.is_dir() or suffix == ".json" else "partiprompts" if suffix == ".tsv"
               else "pickapic" if suffix == ".parquet" else "jsonl" if suffix == ".jsonl" else "text")
    loader = {"partiprompts": load_partiprompts, "hps": load_hps_prompts, "pickapic": load_pickapic_prompts,
              "text": load_text_prompts, "jsonl": load_jsonl_prompts}[fmt]
    prompts = loader(p)
    if per_style is not None:
        prompts = sample_per_style(prompts, per_style, per_style_seed)
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise DataError(f"no prompts found in {str(p)!r} (format {fmt})")
    check_unique_ids(prompts, str(p))
    return prompts


def check_unique_ids(prompts: Sequence[Prompt], where: str = "the prompts") -> None:
    """Prompt ids name the image files and key the resume: each must be unique, and a plain name
    (:func:`kto_lab.paths.safe_name`: an id such as ``../../x`` would write outside the image folder)."""
    from collections import Counter

    from kto_lab.paths import safe_name

    dupes = sorted(i for i, c in Counter(pr.id for pr in prompts).items() if c > 1)
    if dupes:
        raise DataError(f"{where}: prompt ids must be unique (they name the image files); repeated: {dupes[:10]}")
    for pr in prompts:
        safe_name(pr.id, f"{where}: prompt id")


def save_prompts(prompts: Sequence[Prompt], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts), encoding="utf-8")
    return path
