"""Per-patch labels of the synthetic suite (stage-0 dense supervision of the vision tower)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.data import glyphs, scenes
from vlm_jax.data.synthetic import PATCH_HEADS, SyntheticConfig, generate_example, patch_labels
from vlm_jax.train.losses import patch_label_loss


def _scene(*objs: scenes.Obj) -> str:
    return json.dumps(scenes.to_json(list(objs)))


def test_scene_object_labels_the_patches_it_overlaps():
    red = scenes.Obj("circle", "red", "small", row=0, col=2, x=0.8, y=0.2)
    blue = scenes.Obj("diamond", "blue", "large", row=2, col=0, x=0.15, y=0.85)
    labels = patch_labels(_scene(red, blue), grid=3).reshape(3, 3, -1)
    # colours 1-based in COLORS order (red 1, blue 3), shapes (circle 1, diamond 4), sizes
    assert labels[0, 2].tolist() == [1, 1, 1, 0]
    assert labels[2, 0].tolist() == [3, 4, 2, 0]
    assert int(np.count_nonzero(labels.sum(-1))) == 2
    # 6 x 6 patches of 1/6: red's square [0.727, 0.873] x [0.127, 0.273] widened by half a
    # patch reaches the centres 0.75, 0.917 (columns 4, 5) and 0.083, 0.25 (rows 0, 1)
    fine = patch_labels(_scene(red), grid=6).reshape(6, 6, -1)
    assert (fine[:2, 4:, 0] == 1).all() and fine[..., 0].sum() == 4


@pytest.mark.parametrize("cell", [8, 0])
def test_ocr_boxes_hold_exactly_their_glyph_pixels(cell):
    cfg = SyntheticConfig(resolution=64, tasks=("ocr",), ocr_cell=cell, ocr_min_len=2,
                          ocr_max_len=3)
    for i in range(5):
        ex = generate_example(cfg, "train", i)
        items = json.loads(ex["scene"])
        assert "".join(it["char"] for it in items) == ex["answer"]
        dark = ex["image"].max(-1) < 100  # foreground is drawn below 70, background above 200
        inside = np.zeros_like(dark)
        for it in items:
            x0, y0, x1, y1 = (round(v * 64) for v in it["box"])
            box = dark[y0:y1, x0:x1]
            assert box.any() and (box == glyphs.GLYPHS[it["char"]]).all()
            inside[y0:y1, x0:x1] = True
        assert not (dark & ~inside).any()


def test_ocr_on_the_patch_grid_labels_one_patch_per_character():
    cfg = SyntheticConfig(resolution=64, tasks=("ocr",), ocr_cell=8, ocr_max_len=3)
    ex = generate_example(cfg, "train", 3)
    labels = patch_labels(ex["scene"], grid=8).reshape(8, 8, -1)
    rows, cols = np.nonzero(labels[..., 3])
    assert len(set(rows.tolist())) == 1 and np.diff(cols).tolist() == [1] * (len(cols) - 1)
    read = "".join(glyphs.ALPHABET[k - 1] for k in labels[rows, cols, 3])
    assert read == ex["answer"] and not labels[..., :3].any()


def test_patch_label_loss_by_hand():
    labels = jnp.array([[[1, 0], [0, 2]]])  # [B=1, P=2, heads=2]
    exact = (jnp.array([[[0.0, 50, 0], [50, 0, 0]]]), jnp.array([[[50.0, 0, 0], [0, 0, 50]]]))
    loss, m = patch_label_loss(exact, labels, ("a", "b"))
    assert float(loss) < 1e-6 and float(m["a_accuracy"]) == 1 and float(m["b_accuracy"]) == 1
    flat = (jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)))
    loss, m = patch_label_loss(flat, labels, ("a", "b"))
    assert float(loss) == pytest.approx(np.log(3), rel=1e-6)
    # balanced: the one labelled patch weighs as much as the three empty ones together
    many = jnp.array([[[1], [0], [0], [0]]])
    wrong_on = (jnp.array([[[9.0, 0, 0], [9, 0, 0], [9, 0, 0], [9, 0, 0]]]),)
    loss, _ = patch_label_loss(wrong_on, many, ("a",))
    ce_on = float(jnp.log(jnp.exp(9.0) + 2) - 0.0)
    ce_off = float(jnp.log(jnp.exp(9.0) + 2) - 9.0)
    assert float(loss) == pytest.approx(0.5 * ce_on + 0.5 * ce_off, rel=1e-5)
    # argmax of all-equal logits is class 0, never a counted (non-zero) label
    assert float(m["a_accuracy"]) == 0


def test_loader_gives_each_example_the_labels_of_its_scene(tmp_path):
    from vlm_jax import data

    cfg = data.default_config()
    cfg.data_dir = str(tmp_path)
    cfg.synthetic.update(resolution=32, num_train=16, num_validation=4, num_test=4,
                         tasks=("caption", "ocr"), ocr_cell=8, ocr_max_len=3, max_objects=3)
    cfg.max_text_len = 24
    loader = data.make_loader(cfg, split="train", batch_size=4, num_visual_tokens=0,
                              image_size=32, shuffle=False, patch_grid=4)
    batch = next(iter(loader))
    assert batch["patch_labels"].shape == (4, 16, len(PATCH_HEADS))
    source = data.make_source(cfg, "train")
    by_id = {source[i]["id"]: source[i]["scene"] for i in range(len(source))}
    for ex_id, labels in zip(batch["id"], batch["patch_labels"]):
        np.testing.assert_array_equal(labels, patch_labels(by_id[ex_id], 4))
