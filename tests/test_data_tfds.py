"""The synthetic suite as a TFDS array_record dataset: build, read back, idempotent, bytes."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlm_jax.data.synthetic import SyntheticConfig, generate_example
from vlm_jax.data.tfds_builder import config_name, prepare_synthetic

CFG = SyntheticConfig(resolution=32, num_train=60, num_validation=12, num_test=6, seed=3)


def _digests(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return prepare_synthetic(CFG, data_dir), data_dir


def test_build_and_read_back(built):
    builder, _ = built
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(builder.data_dir))
    splits = builder.info.splits
    assert (splits["train"].num_examples, splits["validation"].num_examples,
            splits["test"].num_examples) == (60, 12, 6)
    source = builder.as_data_source(split="validation")
    assert len(source) == 12
    by_id = {}
    for i in range(len(source)):
        ex = source[i]
        by_id[ex["id"].decode()] = ex
    for i in range(12):
        ref = generate_example(CFG, "validation", i)
        ex = by_id[ref["id"]]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(ex["image"], ref["image"])  # PNG: lossless
        for key in ("question", "answer", "task", "caption", "scene"):
            assert ex[key].decode() == ref[key]
        assert [a.decode() for a in ex["answers"]] == ref["answers"]


def test_tfds_data_source_by_name(built):
    builder, data_dir = built
    ds = tfds.data_source(f"synthetic_vqa/{config_name(CFG)}", split="train[:10]",
                          data_dir=data_dir)
    assert len(ds) == 10 and ds[0]["image"].shape == (32, 32, 3)


def test_prepare_is_idempotent(built):
    builder, data_dir = built
    before = {f: os.path.getmtime(os.path.join(builder.data_dir, f))
              for f in os.listdir(builder.data_dir)}
    again = prepare_synthetic(CFG, data_dir)
    assert again.data_dir == builder.data_dir
    assert before == {f: os.path.getmtime(os.path.join(builder.data_dir, f))
                      for f in os.listdir(builder.data_dir)}


def test_other_settings_get_their_own_directory():
    other = SyntheticConfig(resolution=32, num_train=60, num_validation=12, num_test=6, seed=4)
    assert config_name(other) != config_name(CFG)
    assert config_name(SyntheticConfig(resolution=32, num_train=60, num_validation=12,
                                       num_test=6, seed=3, max_objects=5)) != config_name(CFG)


def test_regeneration_in_a_new_process_writes_identical_bytes(built, tmp_path):
    builder, data_dir = built
    code = ("import sys; from vlm_jax.data.synthetic import SyntheticConfig; "
            "from vlm_jax.data.tfds_builder import prepare_synthetic; "
            f"prepare_synthetic(SyntheticConfig(**{CFG.__dict__!r}), sys.argv[1])")
    env = dict(os.environ, PYTHONHASHSEED="123", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env,
                   capture_output=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert _digests(data_dir) == _digests(str(tmp_path))


def test_predefined_config_can_be_prepared_by_value(tmp_path):
    """A SyntheticConfig equal to one of the builder's predefined configs (the defaults at 32
    px) is accepted, not refused as a clashing custom config."""
    from vlm_jax.data.synthetic import SyntheticConfig
    from vlm_jax.data.tfds_builder import prepare_synthetic
    cfg = SyntheticConfig(resolution=32, num_train=4000, num_validation=500, num_test=500)
    builder = prepare_synthetic(cfg, str(tmp_path))
    assert builder.builder_config.synthetic == cfg
    assert len(builder.as_data_source(split="test")) == 500
