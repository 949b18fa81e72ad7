"""Scorers: programmatic ones against known values; model scorers' loading code on tiny models
built from config, saved locally and loaded back through the same code as the real weights."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kto_lab.eval.scorers import (
    FunctionScorer, Scorer, brightness, contrast, get_scorer, known_scorers, redness, register_scorer, saturation,
    to_float_array,
)


WORDS = ("a", "red", "circle", "blue", "square")


def solid(rgb, size=4):
    return np.tile(np.array(rgb, dtype=np.uint8), (size, size, 1))


# --- programmatic scorers -------------------------------------------------------------------


def test_redness_is_red_mean_minus_channel_mean():
    images = np.stack([solid((255, 0, 0)), solid((0, 255, 0)), solid((128, 128, 128))])
    np.testing.assert_allclose(redness(images), [2 / 3, -1 / 3, 0.0], atol=1e-12)


def test_saturation_brightness_contrast_known_values():
    red, grey, black = solid((255, 0, 0)), solid((51, 51, 51)), solid((0, 0, 0))
    np.testing.assert_allclose(saturation(np.stack([red, grey, black])), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(brightness(np.stack([red, grey])), [0.299, 0.2])
    half = np.zeros((4, 4, 3), np.uint8)
    half[:2] = 255  # top half white, bottom black: luma 1 and 0 -> std 0.5
    np.testing.assert_allclose(contrast(np.stack([half, grey])), [0.5, 0.0])


def test_inputs_pil_uint8_and_float_agree():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    pil = [Image.fromarray(a) for a in arr]
    for fn in (redness, saturation, brightness, contrast):
        ref = fn(arr)
        assert ref.dtype == np.float64 and ref.shape == (3,)
        np.testing.assert_allclose(fn(pil), ref)
        np.testing.assert_allclose(fn(arr / 255.0), ref)
        np.testing.assert_allclose(fn(torch.from_numpy(arr / 255.0)), ref)


def test_bad_images_give_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        to_float_array(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_float_array(np.full((1, 2, 2, 3), 200.0))
    with pytest.raises(ValueError, match="share a size"):
        to_float_array([Image.new("RGB", (2, 2)), Image.new("RGB", (3, 3))])


def test_registry_lists_known_names_and_accepts_new_scorers():
    s = get_scorer("redness")
    assert isinstance(s, Scorer) and s.score(solid((255, 0, 0))[None], ["x"]).tolist() == pytest.approx([2 / 3])
    with pytest.raises(KeyError, match="pickscore"):
        get_scorer("pick_score")
    register_scorer("test_blueness", lambda: FunctionScorer("test_blueness", lambda im: to_float_array(im)[..., 2].mean((1, 2))))
    assert "test_blueness" in known_scorers()
    assert get_scorer("test_blueness").score(solid((0, 0, 255))[None]).tolist() == [1.0]
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("redness", lambda: None)
    with pytest.raises(ValueError, match="2 prompts"):
        s.score(np.zeros((1, 2, 2, 3), np.uint8), ["a", "b"])


# --- model scorers on tiny local weights ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from kto_lab.eval.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", words=WORDS)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(a) for a in rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)]


PROMPTS = ["a red circle", "a blue square", "a " + "long " * 40 + "prompt"]  # the last one is truncated


def reference_cosines(clip_dir, images, prompts):
    """Cosine similarities computed directly with transformers (the scorers must reproduce them)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    px = CLIPImageProcessor.from_pretrained(clip_dir)(images=images, return_tensors="pt")["pixel_values"]
    tok = CLIPTokenizer.from_pretrained(clip_dir)(prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=px)
    img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    return (img * txt).sum(-1).double().numpy(), float(model.logit_scale.detach().exp()), img


def test_pickscore_and_clip_score_from_a_local_clip(tiny_clip, images):
    cos, scale, _ = reference_cosines(tiny_clip, images, PROMPTS)
    pick = get_scorer("pickscore", path=tiny_clip, processor_path=tiny_clip, batch_size=2)
    clip = get_scorer("clip", path=str(tiny_clip))
    p, c = pick.score(images, PROMPTS), clip.score(np.stack([np.asarray(i) for i in images]), PROMPTS)
    assert p.dtype == np.float64 and p.shape == (3,)
    np.testing.assert_allclose(p, scale * cos, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, 100 * cos, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prompts"):
        pick.score(images)


def test_aesthetic_predictor_mlp_on_normalised_clip_embeddings(tiny_clip, images, tmp_path):
    from kto_lab.eval.model_scorers import AestheticMLP
    from kto_lab.eval.tiny import build_tiny_aesthetic

    weights = build_tiny_aesthetic(tmp_path / "sac+logos+ava1-l14-linearMSE.pth", input_size=16)
    assert sorted(torch.load(weights, weights_only=True)) == sorted(
        f"layers.{i}.{w}" for i in (0, 2, 4, 6, 7) for w in ("weight", "bias"))
    scores = get_scorer("aesthetic", path=weights, clip_path=tiny_clip).score(images)
    _, _, img = reference_cosines(tiny_clip, images, PROMPTS)
    mlp = AestheticMLP(16)
    mlp.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        expected = mlp.eval()(img).squeeze(-1).double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1, 16)}, bad)
    with pytest.raises(ValueError, match="layers.0.weight"):
        get_scorer("aesthetic", path=bad, clip_path=tiny_clip)
    wrong_dim = build_tiny_aesthetic(tmp_path / "d8.pth", input_size=8)
    with pytest.raises(ValueError, match="16-d"):
        get_scorer("aesthetic", path=wrong_dim, clip_path=tiny_clip)


def test_openclip_key_conversion_round_trips(tiny_clip):
    from transformers import CLIPModel

    from kto_lab.eval.model_scorers import hf_to_openclip, openclip_to_hf

    hf = {k: v for k, v in CLIPModel.from_pretrained(tiny_clip).state_dict().items() if not k.endswith("position_ids")}
    oc = hf_to_openclip(hf)
    # open_clip layout: fused in_proj, transposed projections, its own names
    assert oc["transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert oc["visual.proj"].shape == (32, 16) and oc["text_projection"].shape == (32, 16)
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" in oc and "visual.conv1.weight" in oc
    back = openclip_to_hf({"module." + k: v for k, v in oc.items()})
    assert back.keys() == hf.keys()
    for k in hf:
        torch.testing.assert_close(back[k], hf[k])
    with pytest.raises(KeyError, match="unexpected open_clip key"):
        openclip_to_hf({"visual.head.weight": torch.zeros(1)})


def test_hpsv2_loads_an_openclip_checkpoint_into_clip(tiny_clip, images, tmp_path):
    from kto_lab.eval.tiny import build_tiny_hps

    ckpt = build_tiny_hps(tmp_path / "HPS_v2_compressed.pt", tiny_clip)
    scores = get_scorer("hpsv2", path=ckpt, clip_path=tiny_clip).score(images, PROMPTS)
    cos, _, _ = reference_cosines(tiny_clip, images, PROMPTS)
    np.testing.assert_allclose(scores, cos, rtol=1e-4, atol=1e-6)  # HPS = plain cosine, as HPSv2's img_score


def test_missing_or_wrong_directories_name_the_path(tiny_clip, tiny_sd_path, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"nope.*not a directory.*CLIP"):
        get_scorer("pickscore", path=missing)
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        get_scorer("clip", path=tiny_sd_path)  # an SD pipeline dir is not a CLIP dir
    with pytest.raises(ValueError, match=r"model_type='clip_text_model'.*expected a CLIP"):
        get_scorer("clip", path=tiny_sd_path / "text_encoder")
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config.json"):
        get_scorer("pickscore", path=tiny_clip, processor_path=tiny_sd_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match=r"HPS_v2_compressed.pt"):
        get_scorer("hpsv2", path=missing / "HPS_v2_compressed.pt", clip_path=tiny_clip)
    with pytest.raises(FileNotFoundError, match=r"sac\+logos"):
        get_scorer("aesthetic", path=missing / "x.pth", clip_path=tiny_clip)
    empty = tmp_path / "weightless"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        get_scorer("clip", path=empty)


def test_imagereward_without_its_package_says_how_to_install():
    try:  # the package is deliberately not installed here
        import ImageReward  # noqa: F401
    except Exception:
        with pytest.raises(ImportError, match="pip install image-reward"):
            get_scorer("imagereward", path="ImageReward.pt")
    else:
        pytest.skip("ImageReward is installed; the install hint is not shown")


def _openclip_forward(sd, pixel_values, input_ids, heads=4):
    """open_clip's CLIP forward (VisionTransformer + text transformer), written from its definition,
    so the key conversion is checked against what the names MEAN, not only against its inverse."""
    F = torch.nn.functional

    def block(x, prefix, mask=None):
        w = x.shape[-1]
        attn = torch.nn.MultiheadAttention(w, heads, batch_first=True)
        attn.load_state_dict({k.split("attn.")[1]: v for k, v in sd.items() if k.startswith(prefix + "attn.")})
        h = F.layer_norm(x, (w,), sd[prefix + "ln_1.weight"], sd[prefix + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (w,), sd[prefix + "ln_2.weight"], sd[prefix + "ln_2.bias"])
        h = F.gelu(F.linear(h, sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"]))
        return x + F.linear(h, sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"])

    def layers(prefix):
        return sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})

    x = F.conv2d(pixel_values, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    w = x.shape[-1]
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, w), x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (w,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in layers("visual.transformer.resblocks."):
        x = block(x, f"visual.transformer.resblocks.{i}.")
    image = F.layer_norm(x[:, 0], (w,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]

    L = input_ids.shape[1]
    t = sd["token_embedding.weight"][input_ids] + sd["positional_embedding"][:L]
    causal = torch.full((L, L), float("-inf")).triu(1)
    for i in layers("transformer.resblocks."):
        t = block(t, f"transformer.resblocks.{i}.", causal)
    t = F.layer_norm(t, (t.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"])
    text = t[torch.arange(t.shape[0]), input_ids.argmax(-1)] @ sd["text_projection"]
    return image, text


def test_hpsv2_conversion_matches_an_openclip_forward(tiny_clip, tmp_path):
    from transformers import CLIPTokenizer

    from kto_lab.eval.model_scorers import features
    from kto_lab.eval.tiny import build_tiny_hps

    ckpt = build_tiny_hps(tmp_path / "hps.pt", tiny_clip)
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    scorer = get_scorer("hpsv2", path=ckpt, clip_path=tiny_clip)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = CLIPTokenizer.from_pretrained(tiny_clip)(["a red circle", "blue"], padding="max_length",
                                                   max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref_img, ref_txt = _openclip_forward(sd, px, ids)
        img = features(scorer.model.get_image_features(pixel_values=px))
        txt = features(scorer.model.get_text_features(input_ids=ids))
    torch.testing.assert_close(img, ref_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(txt, ref_txt, rtol=1e-4, atol=1e-5)
