"""Every user error is one line on stderr (exit 2), with no traceback, before any model loads."""

import re

import pytest

import kto_lab.sd.models
import kto_lab.sd.trainer
from kto_lab.cli import main
from kto_lab.data.records import write_pairs as write_pair_table
from sd_helpers import write_pairs, write_records


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading any model (trainer components, an eval pipeline) or training a toy fails the test."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(kto_lab.sd.trainer, "load_components", loaded)
    monkeypatch.setattr(kto_lab.sd.models, "load_pipeline", loaded)
    import toy.run

    monkeypatch.setattr(toy.run, "run_figure6", loaded)
    monkeypatch.setattr(toy.run, "run_ablations", loaded)
    import toy.frontier

    monkeypatch.setattr(toy.frontier, "run_frontier", loaded)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tables, prompt files and a (fake) pipeline directory: the inputs of the bad invocations."""
    root = tmp_path_factory.mktemp("inputs")
    records = write_records(root / "recs")
    write_pairs(root / "recs")
    (root / "pipe").mkdir()
    (root / "pipe" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')  # passes the path and family checks
    d = root / "recs"
    (d / "empty.csv").write_text("image,caption,label\n")
    (d / "one_class.csv").write_text("image,caption,label\nred0.png,a,1\nred1.png,b,1\n")
    (d / "bad_label.csv").write_text("image,caption,label\nred0.png,a,maybe\nblue0.png,b,0\n")
    (d / "missing.csv").write_text("image,caption,label\nred0.png,a,1\nnope.png,b,0\n")
    (d / "latin1.csv").write_bytes("image,caption,label\nred0.png,caf\xe9,1\nblue0.png,b,0\n".encode("latin-1"))
    (d / "latin1.jsonl").write_bytes('{"image": "red0.png", "caption": "caf\xe9", "label": 1}\n'.encode("latin-1"))
    (d / "desirable_missing.csv").write_text("image,caption,label\ngone0.png,a,1\ngone1.png,b,1\nblue0.png,c,0\n")
    (d / "fake.parquet").write_text("image,caption,label\nred0.png,a,1\n")  # a CSV under a .parquet name
    (d / "pairs_same.csv").write_text("caption,image_w,image_l\na,red0.png,./red0.png\n")
    red = (d / "red0.png").read_bytes()  # one image given by bytes as winner and loser (issue 21, 7a)
    write_pair_table([{"caption": "a", "image_w": red, "image_l": (d / "blue0.png").read_bytes()},
                      {"caption": "b", "image_w": red, "image_l": red}], d / "pairs_same_bytes.parquet")
    (d / "scored_nan.csv").write_text("image,caption,score\nred0.png,a,7.5\nblue0.png,b,nan\n")
    (root / "badpipe").mkdir()
    (root / "badpipe" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",')  # cut short
    (root / "bad.jsonl").write_text('{"text": "a cat"}\n{oops\n')
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "empty.txt").write_text("# nothing\n")
    (root / "p.txt").write_text("a red circle\na blue square\n")
    run = root / "trainrun"  # a training run's output_dir
    run.mkdir()
    (run / "config.yaml").write_text("model: {pretrained: x}\ndata: {train: []}\nobjective: {objective: kto}\noptim: {max_steps: 1}\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (root / "eval_into_run.yaml").write_text(f"prompts: {root / 'p.txt'}\nout_dir: {run}\n"
                                             f"models: [{{name: a, pipeline: {root / 'pipe'}}}]\n")
    (root / "eval_into_file.yaml").write_text(f"prompts: {root / 'p.txt'}\nout_dir: {records}\n"
                                              f"models: [{{name: a, pipeline: {root / 'pipe'}}}]\n")
    scored = root / "scored"  # an evaluation scored with redness only
    for m in ("a", "b"):
        (scored / m).mkdir(parents=True)
        (scored / m / "scores.csv").write_text("model,prompt_id,prompt,style,k,seed,file,status,error,nsfw,redness\n"
                                               f"{m},text-00000,a red circle,,0,0,images/text-00000_0.png,ok,,,0.1\n")
    (root / "other_prompts.jsonl").write_text('{"id": "elsewhere", "text": "a cat"}\n')
    (root / "garbage.pth").write_bytes(b"not a checkpoint at all")
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    cut = len(header).to_bytes(8, "little") + header + bytes(8)  # 8 of the 16 bytes its header promises
    (root / "cut_lora.safetensors").write_bytes(cut)
    (root / "lora_in_out" / "m").mkdir(parents=True)  # a LoRA folder where eval generate --name m would write
    (root / "lora_in_out" / "m" / "pytorch_lora_weights.safetensors").write_bytes(len(b"{}").to_bytes(8, "little") + b"{}")
    (root / "cut_unet").mkdir()
    (root / "cut_unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (root / "cut_unet" / "diffusion_pytorch_model.safetensors").write_bytes(cut)
    (root / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return {"root": root, "records": records, "pairs": d / "pairs.csv", "pipe": root / "pipe", "d": d}


def train(w, table, *extra):
    return ["train", f"model.pretrained={w['pipe']}", f"output_dir={w['root'] / 'run'}", "cpu=true",
            f"data.train=[{table}]", *extra]


def generate(w, prompts, *extra):
    return ["eval", "generate", "--pipeline", str(w["pipe"]), "--name", "m", "--prompts", str(prompts),
            "--out", str(w["root"] / "eval"), *extra]


def implicit(w, *extra):
    return ["eval", "implicit", "--pipeline", str(w["pipe"]), "--records", str(w["records"]), *extra]


def label(w, fn):
    return ["data", "label", str(w["records"]), "--out", str(w["root"] / "labelled.parquet"), "--fn", fn]


CASES = {
    # train: bad record tables, checked before load_components
    "train empty table": (lambda w: train(w, w["d"] / "empty.csv"), r"empty\.csv'\]: the table has no rows"),
    "train one class": (lambda w: train(w, w["d"] / "one_class.csv"), r"no undesirable record among 2 but gamma=0\.8"),
    "train bad label": (lambda w: train(w, w["d"] / "bad_label.csv"), r"bad_label\.csv, row 0, column 'label': label 'maybe'"),
    "train missing image": (lambda w: train(w, w["d"] / "missing.csv"),
                            r"image file not found: '.*nope\.png' \(table .*missing\.csv, row 1, column 'image'\)"),
    "train not UTF-8": (lambda w: train(w, w["d"] / "latin1.csv"), r"latin1\.csv, line 2: not UTF-8 text \(byte 0xe9"),
    "train desirable all missing (skip)": (
        lambda w: train(w, w["d"] / "desirable_missing.csv", "data.on_missing_image=skip"),
        r"\(2 missing image\(s\) skipped\): no desirable record among 1"),
    "train dpo on records": (lambda w: train(w, w["records"], "objective.objective=dpo"),
                             r"objective=dpo trains on pairs, but .*records\.csv is a record table"),
    "train kto on pairs": (lambda w: train(w, w["pairs"]), r"objective=kto trains on per-image labels, but .*pairs\.csv is a pair table"),
    "train missing denoiser": (lambda w: train(w, w["records"], f"model.denoiser={w['root'] / 'no_unet'}"),
                               r"model\.denoiser='.*no_unet' is neither a denoiser directory .*: no such directory"),
    "train old key model.unet": (lambda w: train(w, w["records"], f"model.unet={w['root'] / 'no_unet'}"),  # read as
                                 r"model\.denoiser='.*no_unet' is neither a denoiser directory"),  # model.denoiser
    "train old and new key": (lambda w: train(w, w["records"], "model.unet=a", "model.denoiser=b"),
                              r"model\.unet and model\.denoiser are both set: .*keep only model\.denoiser"),
    "train parquet that is not Parquet": (lambda w: train(w, w["d"] / "fake.parquet"),
                                          r"fake\.parquet: not a readable Parquet file"),
    "train infinite max_steps": (lambda w: train(w, w["records"], "optim.max_steps=.inf"),
                                 r"optim\.max_steps must be a finite integer, got inf"),
    "train max_steps 1e400": (lambda w: train(w, w["records"], "optim.max_steps=1e400"),
                              r"optim\.max_steps must be a finite integer, got '1e400'"),
    "train unclosed list": (lambda w: train(w, "a.csv", "data.train=[a.csv"),
                            r"data\.train='\[a\.csv' is not a valid list: write \[a, b\]"),
    "train negative seed": (lambda w: train(w, w["records"], "seed=-1"), r"seed=-1 must be >= 0"),
    "train corrupt model_index.json": (lambda w: train(w, w["records"], f"model.pretrained={w['root'] / 'badpipe'}"),
                                       r"badpipe/model_index\.json is not valid JSON .*: the pipeline's download or copy is damaged"),
    "train dpo pair of one image": (lambda w: train(w, w["d"] / "pairs_same.csv", "objective.objective=dpo"),
                                    r"pairs_same\.csv, row 0: image_w and image_l are the same image \('red0\.png'\)"),
    "train dpo parquet pair of one image's bytes": (
        lambda w: train(w, w["d"] / "pairs_same_bytes.parquet", "objective.objective=dpo"),
        r"pairs_same_bytes\.parquet, row 1: image_w and image_l are the same image \(equal bytes\)"),
    # eval
    "generate bad JSONL": (lambda w: generate(w, w["root"] / "bad.jsonl"), r"bad\.jsonl' line 2 is not valid JSON"),
    "generate not UTF-8": (lambda w: generate(w, w["root"] / "latin1.txt"), r"latin1\.txt, line 1: not UTF-8 text"),
    "generate no prompts": (lambda w: generate(w, w["root"] / "empty.txt"), r"no prompts found in '.*empty\.txt'"),
    "generate missing denoiser": (lambda w: generate(w, w["root"] / "bad.jsonl", "--denoiser", str(w["root"] / "no_unet")),
                                  r"--denoiser='.*no_unet' is neither a denoiser directory"),
    "generate truncated lora": (  # issue 21, 7: a raw OSError traceback from diffusers
        lambda w: generate(w, w["root"] / "p.txt", "--lora", str(w["root"] / "cut_lora.safetensors")),
        r"--lora: .*cut_lora\.safetensors is truncated \(78 bytes; its header describes 86\); copy or download it"),
    "generate truncated denoiser": (
        lambda w: generate(w, w["root"] / "p.txt", "--denoiser", str(w["root"] / "cut_unet")),
        r"--denoiser='.*cut_unet': .*cut_unet/diffusion_pytorch_model\.safetensors is truncated"),
    "implicit no model": (lambda w: implicit(w), r"give --denoiser DIR \(a fine-tuned denoiser, .*\) or --lora PATH"),
    "implicit zero draws": (lambda w: implicit(w, "--lora", str(w["d"]), "--draws", "0"), r"draws=0 must be >= 1"),
    "implicit missing unet (old flag)": (lambda w: implicit(w, "--unet", str(w["root"] / "no_unet")),
                                         r"--denoiser='.*no_unet' is neither a denoiser directory"),
    "score weightless scorer with options": (
        lambda w: ["eval", "score", "--out", str(w["root"]), "--models", "m", "--scorer", "redness:path=x"],
        r"'redness' takes no options \(it needs no weights\); got \['path'\]"),
    "eval run out_dir is a training run": (  # issue 21, 4b: it replaced the run's config.yaml
        lambda w: ["eval", "run", "--config", str(w["root"] / "eval_into_run.yaml")],
        r"out_dir='.*trainrun' is a training run's folder \(it holds \['config\.yaml', 'metrics\.jsonl'\]\)"),
    "eval run out_dir is a file": (lambda w: ["eval", "run", "--config", str(w["root"] / "eval_into_file.yaml")],
                                   r"out_dir='.*records\.csv' is a file; give a folder"),
    "generate out is a file": (lambda w: [*generate(w, w["root"] / "p.txt")[:-1], str(w["records"])],
                               r"--out='.*records\.csv' is a file; give a folder"),
    "generate out is the pipeline": (lambda w: [*generate(w, w["root"] / "p.txt")[:-1], str(w["pipe"])],
                                     r"--out='.*pipe' is the input --pipeline="),
    "generate into its own lora": (  # --out/--name is the LoRA's folder
        lambda w: [*generate(w, w["root"] / "p.txt")[:-1], str(w["root"] / "lora_in_out"), "--lora",
                   str(w["root"] / "lora_in_out" / "m")],
        r"--out='.*lora_in_out': the input --lora='.*lora_in_out/m' would be replaced by this command's m"),
    "generate into a training run": (lambda w: [*generate(w, w["root"] / "p.txt")[:-1], str(w["root"] / "trainrun")],
                                     r"--out='.*trainrun' is a training run's folder"),
    "compare metric not scored": (
        lambda w: ["eval", "compare", "--out", str(w["root"] / "scored"), "--pair", "a:b", "--metrics", "pickscore"],
        r"--metrics \['pickscore'\] not scored in '.*scored' for \['a', 'b'\] \(scored: \['redness'\]\)"),
    "compare prompts file matching none": (
        lambda w: ["eval", "compare", "--out", str(w["root"] / "scored"), "--pair", "a:b", "--prompts-file",
                   str(w["root"] / "other_prompts.jsonl")],
        r"--prompts-file '.*other_prompts\.jsonl': none of its 1 prompt ids is among the 1 scored"),
    "compare out is a file": (lambda w: ["eval", "compare", "--out", str(w["records"]), "--pair", "a:b"],
                              r"--out='.*records\.csv' is a file"),
    "score model name leaving --out": (
        lambda w: ["eval", "score", "--out", str(w["root"] / "scored"), "--models", "../..", "--scorer", "redness"],
        r"--models='\.\./\.\.' cannot name a file or folder"),
    "score weights not a checkpoint": (
        lambda w: ["eval", "score", "--out", str(w["root"] / "scored"), "--models", "a", "--scorer",
                   f"aesthetic:path={w['root'] / 'garbage.pth'},clip_path={w['root']}"],
        r"aesthetic predictor: could not read '.*garbage\.pth' as a weights-only torch checkpoint"),
    "score weights not safetensors": (
        lambda w: ["eval", "score", "--out", str(w["root"] / "scored"), "--models", "a", "--scorer",
                   f"aesthetic:path={w['root'] / 'garbage.safetensors'},clip_path={w['root']}"],
        r"aesthetic predictor: '.*garbage\.safetensors' is not a readable safetensors file"),
    # data
    "label missing module": (lambda w: label(w, "no_such_module_xyz:fn"), r"no module named 'no_such_module_xyz'"),
    "label missing attribute": (lambda w: label(w, "json:no_such_fn"), r"--fn 'json:no_such_fn': json has no attribute 'no_such_fn'"),
    "label not callable": (lambda w: label(w, "json:__name__"), r"--fn 'json:__name__' is a str, not a function"),
    "threshold NaN score": (lambda w: ["data", "threshold", str(w["d"] / "scored_nan.csv"), "--out", str(w["root"] / "t.csv")],
                            r"scored_nan\.csv, row 1, column 'score': score 'nan' is not a finite number"),
    "threshold NaN threshold": (lambda w: ["data", "threshold", str(w["records"]), "--out", str(w["root"] / "t.csv"),
                                           "--threshold", "nan"], r"threshold=nan must be a finite number"),
    "stats not UTF-8 CSV": (lambda w: ["data", "stats", str(w["d"] / "latin1.csv")], r"latin1\.csv, line 2: not UTF-8"),
    "stats not UTF-8 JSONL": (lambda w: ["data", "stats", str(w["d"] / "latin1.jsonl")], r"latin1\.jsonl, line 1: not UTF-8"),
    # toy
    "toy override not a mapping": (lambda w: ["toy", "figure6", "--out", str(w["root"] / "toy"), "--set", "method_overrides=5"],
                                   r"method_overrides must be a mapping, got 5"),
    "toy out is a file": (lambda w: ["toy", "figure6", "--out", str(w["records"]), "--steps", "1"],
                          r"--out='.*records\.csv' is not a writable directory"),
    "toy ablations out under a file": (lambda w: ["toy", "ablations", "--out", str(w["records"] / "sub")],
                                       r"--out='.*records\.csv/sub' is not a writable directory"),
    "toy frontier out is a file": (lambda w: ["toy", "frontier", "--out", str(w["records"])],
                                   r"--out='.*records\.csv' is not a writable directory"),
    "toy figure9 unknown utility": (lambda w: ["toy", "figure9", "--out", str(w["root"] / "f9"), "--utilities", "nosuch"],
                                    r"--utilities='nosuch' is not allowed; choose one of \['kto', 'loss_averse'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_before_any_model_loads(case, world, no_model_loads, capsys):
    argv, expected = CASES[case]
    argv = argv(world)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"kto-lab {argv[0]}: error: "), err
    assert re.search(expected, err), err


def test_debug_shows_the_traceback(world, no_model_loads):
    with pytest.raises(Exception, match="no rows"):
        main(["--debug", *train(world, world["d"] / "empty.csv")])


def test_bug_is_not_hidden_as_a_user_error(monkeypatch, world):
    """Only user errors become one line: a bug (here a KeyError inside the trainer) keeps its traceback."""
    def bug(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(kto_lab.sd.trainer, "load_components", bug)
    with pytest.raises(KeyError, match="internal"):
        main(train(world, world["records"]))


def test_unreadable_image_at_draw_time_is_one_line(tiny_sd_path, tmp_path, capsys):
    """Decoding is checked when an image is drawn (not up front: a stat per image is all we pay before
    training). Under on_missing_image=error the run stops before its step, naming the file; under
    skip, a class whose every image is unreadable stops the same way."""
    from PIL import Image

    d = tmp_path / "t"
    d.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(d / "ok.png")
    (d / "garbage.png").write_bytes(b"this is not an image")
    (d / "t.csv").write_text("image,caption,label\ngarbage.png,a,1\nok.png,b,0\n")
    args = ["train", f"model.pretrained={tiny_sd_path}", "cpu=true", "data.resolution=32", "optim.max_steps=1",
            "optim.batch_size=2", "data.gamma=1", "logging.progress_bar=false", f"data.train=[{d / 't.csv'}]"]
    def error_line():  # the models loaded (their progress bars are on stderr too): the error is the last line
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return err.strip().splitlines()[-1]

    assert main([*args, f"output_dir={tmp_path / 'a'}"]) == 2
    assert re.search(r"^kto-lab train: error: cannot read image '.*garbage\.png' \(table .*t\.csv, row 0", error_line())
    assert not (tmp_path / "a" / "unet").exists()
    assert main([*args, f"output_dir={tmp_path / 'b'}", "data.on_missing_image=skip"]) == 2
    assert re.search(r"^kto-lab train: error: every desirable image .*garbage\.png", error_line())


def test_yaml_1_1_words_stay_strings(world, capsys):
    """``mixed_precision: no`` (the documented value) and ``output_dir=on`` are strings, not booleans."""
    cfg_file = world["root"] / "c.yaml"
    cfg_file.write_text("output_dir: on\noptim:\n  mixed_precision: no\nlora:\n  enabled: yes\n")
    assert main(["train", "--config", str(cfg_file), "--print-config", "data.random_flip=off"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["output_dir"] == "on" and printed["optim"]["mixed_precision"] == "no"
    assert printed["lora"]["enabled"] is True and printed["data"]["random_flip"] is False
    assert main(["train", "--print-config", "optim.mixed_precision=no", "output_dir=off"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["mixed_precision"] == "no" and printed["output_dir"] == "off"


def test_packaged_config_by_name(monkeypatch, capsys, tmp_path):
    """The README's two forms: ``--config sd15_kto_lora`` and ``kto_lab.train("sd15_kto_lora", ...)``."""
    assert main(["train", "--config", "sd15_kto_lora", "data.train=[my_records.parquet]", "output_dir=runs/first",
                 "--print-config"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lora"]["enabled"] is True and printed["data"]["train"] == ["my_records.parquet"]
    assert printed["output_dir"] == "runs/first"

    import kto_lab

    seen = {}

    class FakeTrainer:
        def __init__(self, config, overrides=(), **kwargs):
            from kto_lab.sd.config import load_train_config

            seen["cfg"] = load_train_config(config, overrides)

        def fit(self):
            return "fitted"

    monkeypatch.setattr(kto_lab.sd.trainer, "Trainer", FakeTrainer)
    assert kto_lab.train("sd15_kto_lora", data__train=["x.parquet"], output_dir=str(tmp_path / "x")) == "fitted"
    cfg = seen["cfg"]
    assert cfg.lora.enabled and cfg.data.train == ["x.parquet"] and cfg.output_dir == str(tmp_path / "x")
    assert main(["train", "--config", "sd15_nope", "--print-config"]) == 2
    assert re.search(r"'sd15_nope' does not exist \(nor is it a packaged config: \[.*'sd15_kto_lora'",
                     capsys.readouterr().err)


def test_toy_overrides_without_set(tmp_path, monkeypatch):
    """``kto-lab toy figure6 ... key=value`` (the override style of every command) and ``--set`` alike."""
    import toy.run

    class Stop(Exception):
        pass

    seen = []

    def run_figure6(cfg, seeds):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(toy.run, "run_figure6", run_figure6)
    for style in (["beta=2.5", "gamma=0.5"], ["--set", "beta=2.5", "--set", "gamma=0.5"]):
        with pytest.raises(Stop):
            main(["toy", "figure6", "--out", str(tmp_path), *style])
        assert (seen[-1].beta, seen[-1].gamma) == (2.5, 0.5)


def test_truncated_weights_and_lora_targets_matching_nothing_are_one_line(tiny_sd_path, records_dir, tmp_path, capsys,
                                                                         monkeypatch):
    """A cut denoiser file (model.pretrained or model.denoiser) stops before any model loads; LoRA targets that
    name no module of the denoiser stop once it has loaded, before training."""
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_sd_path, pipe)
    weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = ["train", "cpu=true", "data.resolution=32", "optim.max_steps=1", "logging.progress_bar=false",
            f"data.train=[{records_dir / 'records.csv'}]"]
    with monkeypatch.context() as m:
        m.setattr(kto_lab.sd.trainer, "load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        for field, value in (("model.pretrained", pipe), ("model.denoiser", pipe / "unet")):
            extra = ([f"model.pretrained={tiny_sd_path}", f"model.denoiser={value}"] if field == "model.denoiser"
                     else [f"model.pretrained={value}"])
            assert main([*args, *extra, f"output_dir={tmp_path / 'a'}"]) == 2
            err = capsys.readouterr().err.strip()
            assert "Traceback" not in err and len(err.splitlines()) == 1, err
            assert re.search(rf"error: {field}='{value}': {weights} is truncated \(\d+ bytes; its header describes \d+\); "
                             "copy or download it again", err), err

    assert main([*args, f"model.pretrained={tiny_sd_path}", f"output_dir={tmp_path / 'b'}", "lora.enabled=true",
                 "lora.target_modules=[to_q,attn_nosuch]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"error: lora.target_modules: \['attn_nosuch'\] match no module of the UNet2DConditionModel; its "
                     r"linear layers are named \[.*'to_q'", err.strip().splitlines()[-1])
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("recs")).parent


def test_an_evaluation_never_replaces_a_training_runs_config(world, no_model_loads, capsys):
    """issue 21, 4b: ``eval run`` with out_dir = a training run replaced its config.yaml (``push`` then died)."""
    before = (world["root"] / "trainrun" / "config.yaml").read_text()
    assert main(["eval", "run", "--config", str(world["root"] / "eval_into_run.yaml")]) == 2
    assert (world["root"] / "trainrun" / "config.yaml").read_text() == before
    assert sorted(p.name for p in (world["root"] / "trainrun").iterdir()) == ["config.yaml", "metrics.jsonl"]
