"""The shapes world: captions, drawing, the fidelity checker and the synthetic users (no models)."""

import numpy as np
import pytest

from kto_lab.synthetic.fidelity import FOREGROUND_DISTANCE, check, describe, fidelity
from kto_lab.synthetic.shapes import (
    COLORS, POSITIONS, SHAPES, SIZES, VOCABULARY, Scene, eval_captions, make_dataset, parse_caption,
    render, scene_from_caption, shape_mask,
)
from kto_lab.synthetic.users import USERS, get_user, label_pool, red_filter


def test_caption_round_trip_and_vocabulary():
    s = Scene("circle", "red", "blue", "small", "left")
    assert s.caption == "a small red circle on a blue background at the left"
    assert parse_caption(s.caption) == {"size": "small", "color": "red", "shape": "circle", "background": "blue",
                                        "position": "left"}
    assert parse_caption("a green square") == {"color": "green", "shape": "square"}
    assert set(s.caption.split()) <= set(VOCABULARY)


@pytest.mark.parametrize("bad", ["a red dog", "two red circles", "a purple circle", "a red circle on a red background"])
def test_bad_captions_are_rejected_with_the_caption_named(bad):
    with pytest.raises(ValueError, match="circle|dog|purple|colour"):
        scene_from_caption(bad, np.random.default_rng(0))


def test_dataset_has_variety_and_fills_unnamed_attributes_at_random():
    ds = make_dataset(400, renders_per_caption=2, seed=0)
    assert ds.images.shape == (800, 3, 16, 16) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    for attr, values in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("position", POSITIONS)):
        assert {getattr(s, attr) for s in ds.scenes} == set(values)
    assert len(set(ds.captions)) > 200  # captions vary
    # a caption that leaves the background out gets different backgrounds across renders
    open_bg = [i for i, s in enumerate(ds.scenes) if "background" not in s.mentioned]
    assert len({ds.scenes[i].background for i in open_bg}) > 1
    # renders of one caption agree on what the caption names
    for g in range(20):
        a, b = np.nonzero(ds.group == g)[0]
        assert ds.scenes[a].requested() == ds.scenes[b].requested()


def test_fidelity_is_perfect_on_clean_renders_and_low_on_wrong_captions():
    ds = make_dataset(600, seed=3, mention={"size": 1, "background": 1, "position": 1})
    for img, s in zip(ds.images[:300], ds.scenes[:300]):
        d = describe(img)
        assert (d["shape"], d["color"], d["background"], d["size"], d["position"]) == \
            (s.shape, s.color, s.background, s.size, s.position)
    f = fidelity(ds.images, ds.captions)
    assert f["score"].min() == 1.0 and f["all"].mean() == 1.0
    wrong = fidelity(ds.images, list(np.roll(ds.captions, 1)))
    assert wrong["score"].mean() < 0.45 and wrong["all"].mean() < 0.05


def test_fidelity_survives_mild_noise_and_fails_blank_images():
    ds = make_dataset(200, seed=4)
    noisy = np.clip(ds.images + np.random.default_rng(0).normal(0, 0.08, ds.images.shape), 0, 1)
    assert fidelity(noisy, ds.captions)["score"].mean() > 0.97
    blank = np.full((3, 16, 16), 0.5, dtype=np.float32)
    assert describe(blank)["shape"] == "none"
    assert check(blank, "a red circle") == {"color": False, "shape": False}


def test_red_filter_raises_redness_and_can_cost_fidelity():
    ds = make_dataset(300, seed=5)
    user = get_user("red")
    tinted = red_filter(ds.images, 0.5)
    assert (user.score(tinted) >= user.score(ds.images) - 1e-9).all()
    assert user.score(tinted).mean() > user.score(ds.images).mean() + 0.1
    # green turns yellowish, black reddish: the preference competes with the caption
    assert fidelity(tinted, ds.captions)["score"].mean() < 0.99


def test_red_filter_on_one_image_tints_only_its_red_channel():
    img = render(Scene("circle", "green", "blue", "small", "left"))
    one = red_filter(img, 0.5)
    assert one.shape == img.shape
    np.testing.assert_array_equal(one, red_filter(img[None], 0.5)[0])
    np.testing.assert_array_equal(one[1:], img[1:])  # G and B untouched
    assert (one[0] > img[0]).all()
    with pytest.raises(ValueError, match=r"got shape \(16, 16\)"):
        red_filter(img[0])


@pytest.mark.parametrize("args, match", [
    (("hexagon", "small", "center"), "unknown shape 'hexagon'"),
    (("circle", "medium", "center"), "unknown size 'medium'"),
    (("circle", "small", "corner"), "unknown position 'corner'"),
])
def test_shape_mask_names_a_bad_attribute(args, match):
    with pytest.raises(ValueError, match=match):
        shape_mask(*args)


@pytest.mark.parametrize("name", sorted(USERS))
def test_users_label_pools_into_both_classes_and_same_caption_pairs(name):
    ds = make_dataset(200, renders_per_caption=2, seed=6)
    fb = label_pool(ds, get_user(name))
    c = fb.counts()
    assert c["desirable"] > 0 and c["undesirable"] > 0 and c["pairs"] > 0
    assert (fb.scores[fb.labels == 1] > fb.threshold).all() and (fb.scores[fb.labels == 0] <= fb.threshold).all()
    for w, l in fb.pairs:
        assert fb.captions[w] == fb.captions[l] and fb.scores[w] > fb.scores[l]
    if name == "contrast":  # low-contrast captions only ever get dislikes: competes with the caption
        low = [g for g in np.unique(fb.group) if fb.labels[fb.group == g].sum() == 0]
        assert low


def test_unknown_user_is_named():
    with pytest.raises(ValueError, match="unknown synthetic user 'blue'.*red"):
        get_user("blue")


def test_eval_captions_are_distinct_and_fixed():
    a, b = eval_captions(50), eval_captions(50)
    assert a == b and len(set(a)) == 50
    for c in a:
        parse_caption(c)


def test_foreground_threshold_separates_every_palette_pair():
    cols = np.asarray(list(COLORS.values()))
    d = np.sqrt(((cols[:, None] - cols[None]) ** 2).sum(-1))
    assert d[~np.eye(len(cols), dtype=bool)].min() > FOREGROUND_DISTANCE


def test_every_caption_word_and_csft_prefix_is_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from kto_lab.objectives import csft_caption
    from kto_lab.sd.tiny import write_clip_tokenizer
    from kto_lab.synthetic.shapes import MAX_TOKENS

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, VOCABULARY, MAX_TOKENS))
    assert [w for w in VOCABULARY if len(tok(w).input_ids) != 3] == []
    longest = csft_caption(Scene("triangle", "yellow", "black", "large", "bottom").caption, False)
    assert len(tok(longest).input_ids) <= MAX_TOKENS
