"""The OCR family on a patch-aligned grid, per-split task lists, and data dirs keyed by the
generator's source."""

import numpy as np
import pytest

from vlm_jax.data import tfds_builder
from vlm_jax.data.synthetic import REASONING_TASKS, SyntheticConfig, generate_example


def test_ocr_cell_puts_one_character_in_each_cell():
    cfg = SyntheticConfig(resolution=64, tasks=("ocr",), ocr_cell=8, ocr_min_len=2,
                          ocr_max_len=3)
    lengths = set()
    for i in range(40):
        ex = generate_example(cfg, "train", i)
        img = ex["image"].astype(int)
        ink = np.abs(img - img[0, 0]).sum(-1) > 0  # the background is uniform
        cells = ink.reshape(8, 8, 8, 8).any(axis=(1, 3))  # [row, col] cells with ink
        rows, cols = np.nonzero(cells)
        assert cells.sum() == len(ex["answer"]), (i, ex["answer"])
        assert len(set(rows)) == 1 and list(cols) == list(range(cols[0], cols[0] + cells.sum()))
        # A 5x7 glyph centred in an 8-px cell leaves its first column and last row empty.
        per_cell = ink.reshape(8, 8, 8, 8)  # [cell row, y in cell, cell col, x in cell]
        assert not per_cell[:, :, :, 0].any() and not per_cell[:, 7].any()
        lengths.add(len(ex["answer"]))
    assert lengths == {2, 3}
    with pytest.raises(ValueError, match="ocr_cell = 5 px must hold a glyph"):
        SyntheticConfig(ocr_cell=5)
    with pytest.raises(ValueError, match="4 cells must fit in 32 px"):
        SyntheticConfig(resolution=32, ocr_cell=16)


def test_eval_tasks_set_the_test_split_only():
    cfg = SyntheticConfig(tasks=REASONING_TASKS + ("caption",),
                          eval_tasks=REASONING_TASKS + ("ocr", "ocr"), max_objects=3)
    train = [generate_example(cfg, "train", i)["task"] for i in range(12)]
    test = [generate_example(cfg, "test", i)["task"] for i in range(14)]
    assert train[:6] == list(cfg.tasks) and "ocr" not in train
    assert test[:7] == list(cfg.eval_tasks) and test.count("ocr") == 4
    assert "caption" not in test
    # yes/no answers stay balanced within a task listed once.
    exist = [generate_example(cfg, "test", 7 * k + 1)["answer"] for k in range(8)]
    assert exist.count("yes") == 4
    with pytest.raises(ValueError, match="eval_tasks .* unknown task"):
        SyntheticConfig(eval_tasks=("read",))


def test_data_dir_name_follows_the_generator_source(monkeypatch):
    cfg = SyntheticConfig(num_train=8)
    name = tfds_builder.config_name(cfg)
    assert tfds_builder.config_name(cfg) == name  # deterministic
    monkeypatch.setattr(tfds_builder, "generator_digest", lambda: "an older generator")
    assert tfds_builder.config_name(cfg) != name
