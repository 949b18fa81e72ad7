"""Image transforms, gamma-sampled record batches, the missing-image policy, encoding helpers."""

import numpy as np
import pytest
import torch
from PIL import Image

from kto_lab.sd.data import ImageTransform, PairSource, RecordSource, image_to_tensor
from kto_lab.sd.families import FAMILIES
from sd_helpers import write_pairs, write_records

SD = FAMILIES["sd"]


def test_image_to_tensor_resizes_crops_and_normalises():
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = 255  # left half white
    t = image_to_tensor(Image.fromarray(a), 16)
    assert t.shape == (3, 16, 16) and t.min() >= -1 and t.max() <= 1
    # centre crop of a 2:1 image keeps the middle: left half of the crop white, right half black
    assert t[:, :, :7].mean() > 0.9 and t[:, :, 9:].mean() < -0.9
    flipped = image_to_tensor(Image.fromarray(a), 16, flip=True)
    assert torch.equal(flipped, t.flip(-1))


def test_crop_geometry_is_recorded():
    """Each crop records the image's original size and the window's top-left (SDXL's micro-conditioning, its
    sec. 2.2); a flip mirrors the window."""
    from kto_lab.sd.data import crop_image

    image = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # h 40, w 80 -> resized to 16 x 32
    c = crop_image(image, 16)
    assert c.original_size == (40, 80) and c.crop_top_left == (0, 8)
    g = torch.Generator().manual_seed(0)
    r = crop_image(image, 16, center_crop=False, generator=g)
    flipped = crop_image(image, 16, center_crop=False, flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flipped.pixels, r.pixels.flip(-1))
    assert flipped.crop_top_left == (0, 32 - 16 - r.crop_top_left[1])  # the window, seen in the mirrored image


@pytest.fixture(scope="module")
def tokenizer(tiny_sd_path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_sd_path, subfolder="tokenizer")


def test_record_source_gamma_and_csft_prefix(tmp_path, tokenizer):
    from kto_lab.data.records import load_records

    table = load_records(write_records(tmp_path))
    src = RecordSource(table, tokenizer, ImageTransform(16), family=SD, batch_size=200, gamma=0.8, seed=0, csft=True)
    batch = src.next_batch()
    assert batch["pixel_values"].shape == (200, 3, 16, 16)
    assert 0.7 < batch["labels"].float().mean() < 0.9  # gamma = 0.8 desirable
    good = tokenizer(["good image, a red square"], padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids[0]
    i = int(torch.nonzero(batch["labels"] == 1)[0])
    assert torch.equal(batch["input_ids"][i], good)
    # state round trip: the same next batch
    state = src.state_dict()
    a = src.next_batch()
    src.load_state_dict(state)
    assert torch.equal(src.next_batch()["labels"], a["labels"])


def test_missing_image_skip_counts_and_replaces_error_names_file(tmp_path, tokenizer):
    from kto_lab.data.records import ImageLoadError, load_records

    path = write_records(tmp_path, missing=("red0.png",))
    skip = RecordSource(load_records(path, on_missing_image="skip"), tokenizer, ImageTransform(8), family=SD,
                        batch_size=50, gamma=1.0, seed=0)
    batch = skip.next_batch()
    assert skip.skipped == 1 and batch["labels"].eq(1).all()  # replaced by the other red image
    strict = RecordSource(load_records(path), tokenizer, ImageTransform(8), family=SD, batch_size=50, gamma=1.0, seed=0)
    with pytest.raises(ImageLoadError, match="red0.png"):
        strict.next_batch()


def test_empty_undesirable_set_with_gamma_below_one_is_an_error(tmp_path, tokenizer):
    from kto_lab.data.records import load_records

    table = load_records(write_records(tmp_path, desirable=("red", "green", "blue")))
    with pytest.raises(ValueError, match="undesirable"):
        RecordSource(table, tokenizer, ImageTransform(8), family=SD, batch_size=2, gamma=0.8)
    RecordSource(table, tokenizer, ImageTransform(8), family=SD, batch_size=2, gamma=1.0)  # fine: only desirable wanted


def test_pair_source_same_transform_for_winner_and_loser(tmp_path, tokenizer):
    from kto_lab.data.records import load_pairs

    src = PairSource(load_pairs(write_pairs(tmp_path)), tokenizer, ImageTransform(16, random_flip=True), family=SD,
                     batch_size=4, seed=0)
    b = src.next_batch()
    assert b["pixel_values"].shape == b["pixel_values_l"].shape == (4, 3, 16, 16)
    assert (b["pixel_values"][:, 0].mean((1, 2)) > 0.5).all()  # winners are red


def test_encoding_helpers(tiny_sd_path):
    from peft import LoraConfig

    from kto_lab.sd.encoding import encode_images, reference_denoiser
    from kto_lab.sd.models import load_pipeline

    pipe = load_pipeline(tiny_sd_path)
    h = SD.encode_captions(pipe, ["a red square", "blue"])["encoder_hidden_states"]
    assert h.shape == (2, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    lat = encode_images(pipe.vae, x, mode="mode")
    expected = pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor
    assert torch.allclose(lat, expected)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(encode_images(pipe.vae, x, generator=g1), encode_images(pipe.vae, x, generator=g2))

    unet = pipe.unet
    base = SD.denoiser(unet)
    t = torch.tensor([10, 500])
    before = base(lat, t, h).detach()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    policy_out = base(lat, t, h).detach()
    assert not torch.allclose(policy_out, before)  # the adapters change the output ...
    assert torch.allclose(reference_denoiser(unet, base)(lat, t, h), before, atol=1e-6)  # ... disabled: the base
    assert torch.allclose(base(lat, t, h), policy_out)  # and are back on afterwards


@pytest.mark.parametrize("cached", [False, True])
def test_sft_draws_desirable_records_only(tmp_path, tokenizer, cached):
    """SFT trains on the desirable set (Diffusion-KTO sec. 5): gamma does not apply to it, in the
    table source and in the latent-cache source alike; other objectives keep gamma."""
    from safetensors.torch import save_file

    from kto_lab.sd.cache import CACHE_VERSION, cache_kind
    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.source import make_source

    records = write_records(tmp_path / "records")  # 2 of 6 records desirable
    data = {"train": [str(records)], "resolution": 8, "gamma": 0.5}
    if cached:  # a hand-written cache: 1 desirable row, 3 undesirable
        cache = tmp_path / "cache"
        cache.mkdir()
        save_file({"latent_moments": torch.zeros(4, 8, 1, 1), "encoder_hidden_states": torch.zeros(4, 2, 3),
                   "labels": torch.tensor([1, 0, 0, 0]), "index": torch.arange(4)}, str(cache / "s.safetensors"))
        data["cache_dir"] = str(cache)
    for objective, all_desirable in (("sft", True), ("kto", False), ("bce", False)):
        cfg = load_train_config({"model": {"pretrained": "tiny"}, "data": data, "objective": {"objective": objective},
                                 "optim": {"batch_size": 64}})
        if cached:
            manifest = {"kind": cache_kind(objective), "pretrained": "tiny", "resolution": 8, "center_crop": True,
                        "dtype": "float32", "vae_dtype": "fp32", "version": CACHE_VERSION, "shards": [{"file": "s.safetensors", "count": 4}]}
            (cache / "cache.json").write_text(__import__("json").dumps(manifest))
        labels = make_source(cfg, tokenizer, family=SD).next_batch()["labels"]
        assert bool(labels.eq(1).all()) == all_desirable, objective


def test_caption_dropout_empties_captions_from_the_source_generator(tmp_path, tokenizer):
    from kto_lab.data.records import load_records, load_pairs

    table = load_records(write_records(tmp_path))
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids[0]
    always = RecordSource(table, tokenizer, ImageTransform(8), family=SD, batch_size=16, gamma=0.8, caption_dropout=1.0)
    assert (always.next_batch()["input_ids"] == empty).all()
    some = RecordSource(table, tokenizer, ImageTransform(8), family=SD, batch_size=200, gamma=0.8, caption_dropout=0.2)
    state = some.state_dict()
    ids = some.next_batch()["input_ids"]
    dropped = (ids == empty).all(dim=1).float().mean()
    assert 0.1 < dropped < 0.3
    some.load_state_dict(state)
    assert torch.equal(some.next_batch()["input_ids"], ids)  # a resumed run drops the same captions
    pairs = PairSource(load_pairs(write_pairs(tmp_path)), tokenizer, ImageTransform(8), family=SD, batch_size=8, caption_dropout=1.0)
    assert (pairs.next_batch()["input_ids"] == empty).all()
