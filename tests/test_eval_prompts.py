"""Prompt sets from local files: PartiPrompts, HPS v2 per-style JSON, Pick-a-Pic parquet, text."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kto_lab.eval.prompts import HPS_STYLES, Prompt, load_prompts, save_prompts


def test_partiprompts_tsv_with_category_as_style(partiprompts_tsv):
    prompts = load_prompts(partiprompts_tsv)
    assert len(prompts) == 1632
    assert prompts[0] == Prompt("parti-00000", "bond", "Abstract")
    assert {"Animals", "Vehicles", "People"} <= {p.style for p in prompts}
    assert len({p.id for p in prompts}) == len(prompts)
    two_each = load_prompts(partiprompts_tsv, per_style=2)
    assert len(two_each) == 2 * len({p.style for p in prompts})
    assert len(load_prompts(partiprompts_tsv, limit=5)) == 5


def test_hps_directory_of_style_files(tmp_path):
    for i, style in enumerate(HPS_STYLES):
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt {j}" for j in range(i + 1)]))
    prompts = load_prompts(tmp_path)
    assert len(prompts) == 1 + 2 + 3 + 4
    assert [p.style for p in prompts if p.text == "photo prompt 3"] == ["photo"]
    assert {p.style for p in prompts} == set(HPS_STYLES)
    (tmp_path / "anime.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="anime.json.*JSON list of strings"):
        load_prompts(tmp_path)


def test_per_style_subset_is_a_seeded_random_draw_not_the_first_n(tmp_path):
    """The user study samples 25 prompts per HPS style at random (Diffusion-KTO A.2): a seeded draw, in file order."""
    for style in HPS_STYLES:
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt {j}" for j in range(40)]))
    every = load_prompts(tmp_path)
    picked = load_prompts(tmp_path, per_style=25)
    assert [sum(p.style == s for p in picked) for s in HPS_STYLES] == [25] * 4
    first = [p for s in HPS_STYLES for p in [q for q in every if q.style == s][:25]]
    assert picked != first
    assert picked == load_prompts(tmp_path, per_style=25, per_style_seed=0)
    assert picked != load_prompts(tmp_path, per_style=25, per_style_seed=1)
    assert [every.index(p) for p in picked] == sorted(every.index(p) for p in picked)  # file order kept
    assert len(load_prompts(tmp_path, per_style=50)) == 160  # a style with fewer prompts keeps them all


def test_pickapic_parquet_is_deduplicated_in_order(tmp_path):
    path = tmp_path / "test.parquet"
    pq.write_table(pa.table({"caption": ["a cat", "a dog", "a cat", " ", "a bird"], "x": [1, 2, 3, 4, 5]}), path)
    assert [p.text for p in load_prompts(path)] == ["a cat", "a dog", "a bird"]
    pq.write_table(pa.table({"prompt": ["a"]}), path)
    with pytest.raises(ValueError, match=r"no 'caption' column.*\['prompt'\]"):
        load_prompts(path)


def test_text_file_and_jsonl_round_trip(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red circle\n\n# a comment\n  a blue square  \n")
    prompts = load_prompts(path)
    assert [p.text for p in prompts] == ["a red circle", "a blue square"]
    back = load_prompts(save_prompts(prompts, tmp_path / "p.jsonl"))
    assert back == prompts


def test_missing_files_and_unknown_format_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        load_prompts(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="choose one of"):
        load_prompts(tmp_path, fmt="csv")
    with pytest.raises(FileNotFoundError, match="no \\*.json files"):
        load_prompts(tmp_path)
    (tmp_path / "bad.tsv").write_text("text\tcat\nx\ty\n")
    with pytest.raises(ValueError, match="expected 'Prompt'"):
        load_prompts(tmp_path / "bad.tsv")


def test_malformed_json_names_the_file_and_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"p.jsonl.*line 2 is not valid JSON"):
        load_prompts(tmp_path / "p.jsonl")
    (tmp_path / "q.jsonl").write_text('["a list"]\n')
    with pytest.raises(ValueError, match=r"q.jsonl.*line 1 has no 'text'"):
        load_prompts(tmp_path / "q.jsonl")
    hps = tmp_path / "hps"
    hps.mkdir()
    (hps / "photo.json").write_text("[\"a\",")
    with pytest.raises(ValueError, match=r"photo.json.*not valid JSON"):
        load_prompts(hps)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"bad.parquet.*not a readable parquet"):
        load_prompts(tmp_path / "bad.parquet")
