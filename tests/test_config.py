"""kto_lab.config: dataclasses <- YAML <- key=value overrides, with clear errors."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest

from kto_lab.config import (ConfigError, check_choice, check_positive, check_range, from_dict, load_config,
                            parse_overrides, to_dict)
from kto_lab.step import ObjectiveConfig


@dataclass
class Inner:
    rank: int = 4
    alpha: float = 1.0


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    lr: float = 1e-4
    flag: bool = False
    tags: List[str] = field(default_factory=list)
    shape: Tuple[int, ...] = (1, 2)
    maybe: Optional[float] = None
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        check_positive("lr", self.lr)
        return self


def test_parse_overrides_builds_nested_typed_values():
    assert parse_overrides(["a.b=1", "a.c=x", "d=2.5", "e=true", "f=[1, 2]"]) == {
        "a": {"b": 1, "c": "x"}, "d": 2.5, "e": True, "f": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["nonsense"])


def test_load_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\nsteps: 20\ninner:\n  rank: 8\n")
    cfg = load_config(Outer, path, ["inner.alpha=2", "flag=yes", "tags=a,b", "shape=[3, 4]", "maybe=none"])
    assert (cfg.name, cfg.steps, cfg.inner.rank, cfg.inner.alpha, cfg.flag) == ("run", 20, 8, 2.0, True)
    assert cfg.tags == ["a", "b"] and cfg.shape == (3, 4) and cfg.maybe is None
    assert to_dict(cfg)["inner"] == {"rank": 8, "alpha": 2.0}
    assert load_config(Outer, overrides={"steps": "30"}).steps == 30


def test_unknown_keys_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['stepz'\].*'steps'"):
        from_dict(Outer, {"stepz": 3})
    with pytest.raises(ConfigError, match=r"\['inner.rnk'\].*'rank'"):
        load_config(Outer, overrides=["inner.rnk=3"])


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="steps must be an integer, got 2.5"):
        load_config(Outer, overrides=["steps=2.5"])
    with pytest.raises(ConfigError, match="lr must be a number"):
        load_config(Outer, overrides=["lr=fast"])
    with pytest.raises(ConfigError, match="flag must be true or false"):
        load_config(Outer, overrides=["flag=maybe"])
    with pytest.raises(ConfigError, match="lr=-1"):
        load_config(Outer, overrides=["lr=-1"])  # validate() runs


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(Outer, bad)
    bad.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_checks():
    check_choice("x", "a", ["a", "b"])
    with pytest.raises(ConfigError, match=r"x='c' is not allowed; choose one of \['a', 'b'\]"):
        check_choice("x", "c", ["a", "b"])
    check_range("gamma", 1.0, low=0.0, high=1.0, low_open=True)
    with pytest.raises(ConfigError, match="gamma=0 must be > 0"):
        check_range("gamma", 0, low=0.0, low_open=True)
    with pytest.raises(ConfigError, match="must be <= 1"):
        check_range("gamma", 1.5, high=1.0)
    for bad in (float("nan"), "3", True, None):
        with pytest.raises(ConfigError, match="finite number"):
            check_positive("beta", bad)


def test_objective_config_loads_and_validates():
    cfg = load_config(ObjectiveConfig, overrides=["objective=dpo", "beta=2500"])
    assert cfg.objective == "dpo" and cfg.beta == 2500.0
    assert ObjectiveConfig().beta == 5000.0 and ObjectiveConfig().reference_point == "unrelated"
    with pytest.raises(ValueError, match="known utilities"):
        load_config(ObjectiveConfig, overrides=["utility=nope"])


@dataclass
class WithMaps:
    # A comment line above the field,
    # and a second one.
    per_method: Dict[str, Dict[str, float]] = field(default_factory=lambda: {"dpo": {"beta": 3.0}})  # and a trailing one
    mode: str = "no"  # a string field
    on: bool = False

    # --- a heading, not help ---
    count: int = 1


def test_yaml_1_1_booleans_stay_strings_where_the_field_is_a_string(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mode: no\non: yes\n")
    cfg = load_config(WithMaps, path)
    assert cfg.mode == "no" and cfg.on is True  # YAML 1.1 would give mode=False
    for word, value in (("on", True), ("off", False), ("yes", True), ("n", False)):
        assert load_config(WithMaps, overrides=[f"on={word}"]).on is value
        assert load_config(WithMaps, overrides=[f"mode={word}"]).mode == word
    assert load_config(WithMaps, overrides=["on=TRUE"]).on is True
    assert parse_overrides(["a=no", "b=true", "c=False"]) == {"a": "no", "b": True, "c": False}


def test_dict_fields_are_converted_and_checked():
    cfg = load_config(WithMaps, overrides=["per_method={kto: {beta: '2'}}"])
    assert cfg.per_method == {"kto": {"beta": 2.0}}
    with pytest.raises(ConfigError, match="per_method must be a mapping, got 5"):
        load_config(WithMaps, overrides=["per_method=5"])
    with pytest.raises(ConfigError, match=r"per_method\['dpo'\]\['beta'\] must be a number, got 'high'"):
        load_config(WithMaps, overrides=["per_method={dpo: {beta: high}}"])


def test_packaged_config_names():
    from kto_lab.config import CONFIG_DIR, config_path

    assert config_path("sd15_kto_lora") == config_path("sd15_kto_lora.yaml") == CONFIG_DIR / "sd15_kto_lora.yaml"
    with pytest.raises(ConfigError, match=r"'nope' does not exist \(nor is it a packaged config: \[.*'tiny_kto'"):
        config_path("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        config_path("some/dir/sd15_kto_lora")  # a path is a path, not a packaged name


def test_help_comes_from_the_comments():
    from kto_lab.config import config_help, field_comments

    assert field_comments(WithMaps) == {
        "per_method": "A comment line above the field, and a second one. and a trailing one",
        "mode": "a string field", "on": "", "count": ""}
    text = config_help(WithMaps)
    assert "  per_method={dpo: {beta: 3.0}}\n      A comment line above" in text and "  mode=no\n      a string field" in text


def test_duplicate_yaml_keys_are_refused_naming_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  rank: 8\nsteps: 3\ninner:\n  rank: 2\n")  # two sections: the first was lost
    with pytest.raises(ConfigError, match=r"not valid YAML: found duplicate key 'inner' \(first on line 2\)") as err:
        load_config(Outer, path)
    assert "line 5" in str(err.value)
    path.write_text("base: &b {rank: 8, alpha: 2.0}\ninner:\n  <<: *b\n  rank: 3\n")  # a merge may be overridden
    from kto_lab.config import load_yaml

    assert load_yaml(path.read_text())["inner"] == {"rank": 3, "alpha": 2.0}


def test_unclosed_list_infinite_integer_and_empty_string_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"tags='\[a.csv' is not a valid list: write \[a, b\]"):
        load_config(Outer, overrides=["tags=[a.csv"])
    for value in (".inf", "1e400", "-.inf"):
        with pytest.raises(ConfigError, match=f"steps must be a finite integer, got"):
            load_config(Outer, overrides=[f"steps={value}"])
    path = tmp_path / "c.yaml"
    path.write_text("name:\n")  # a string field left empty in YAML (it became the string 'None')
    with pytest.raises(ConfigError, match="name is empty; give it a value"):
        load_config(Outer, path)
    assert load_config(Outer, overrides=["maybe=null"]).maybe is None  # Optional fields still take null


def test_train_config_expands_home_and_checks_seeds(monkeypatch, tmp_path):
    from kto_lab.sd.config import load_train_config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_train_config(None, ["output_dir=~/runs/x", "data.train=[~/r.csv]", "model.denoiser=~/u"])
    assert cfg.output_dir == str(tmp_path / "runs" / "x") and cfg.data.train == [str(tmp_path / "r.csv")]
    assert cfg.model.denoiser == str(tmp_path / "u")
    with pytest.raises(ConfigError, match=r"seed=-1 must be >= 0"):
        load_train_config(None, ["seed=-1"])
    with pytest.raises(ConfigError, match=r"data.seed=4294967296 must be <= 4294967295"):
        load_train_config(None, ["data.seed=4294967296"])
    with pytest.raises(ConfigError, match="optim.max_steps must be a finite integer"):
        load_train_config(None, ["optim.max_steps=.inf"])
