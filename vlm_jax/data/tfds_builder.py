"""TFDS builder of the synthetic suite (array_record files), and `prepare_synthetic`.

    builder = prepare_synthetic(SyntheticConfig(resolution=64), data_dir)  # idempotent
    source = builder.as_data_source(split="train")  # random access, for grain

The builder config's name encodes every generation parameter and a hash of the generator's
source, so different settings, or a changed generator, never share a directory. Features:
image uint8 `[R, R, 3]` (PNG), id, question, answer, answers (list), task, caption, scene
(JSON of the objects). Examples are serialized with sorted
feature keys, so regenerating with the same config writes identical bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from unittest import mock

import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from vlm_jax.data import glyphs, questions, scenes, synthetic
from vlm_jax.data.synthetic import SyntheticConfig, generate_example

VERSION = "1.0.0"


@dataclasses.dataclass(eq=False)
class SyntheticVqaConfig(tfds.core.BuilderConfig):
    """A TFDS builder config holding a SyntheticConfig."""

    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


def generator_digest() -> str:
    """A hash of the generator's source (synthetic, questions, scenes, glyphs): a data dir written
    by an older generator is never mistaken for this one's."""
    h = hashlib.sha256()
    for module in (synthetic, questions, scenes, glyphs):
        h.update(pathlib.Path(module.__file__).read_bytes())
    return h.hexdigest()


def config_name(cfg: SyntheticConfig) -> str:
    """e.g. 'r64_n4000-500-500_s0_1a2b3c4d' (the hash covers every field and the generator)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    digest.update(generator_digest().encode())
    return (f"r{cfg.resolution}_n{cfg.num_train}-{cfg.num_validation}-{cfg.num_test}"
            f"_s{cfg.seed}_{digest.hexdigest()[:8]}")


def builder_config(cfg: SyntheticConfig) -> SyntheticVqaConfig:
    return SyntheticVqaConfig(name=config_name(cfg), version=VERSION, synthetic=cfg,
                              description=json.dumps(dataclasses.asdict(cfg), sort_keys=True))


class SyntheticVqa(tfds.core.GeneratorBasedBuilder):
    """The built-in synthetic VQA suite (see vlm_jax/data/synthetic.py)."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [builder_config(SyntheticConfig(resolution=r)) for r in (32, 64, 336)]

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.synthetic.resolution
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic VQA: count / exist / attribute / spatial / compare / ocr / "
                        "caption over rendered scenes, deterministic from a seed.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(r, r, 3)),
                "id": text, "question": text, "answer": text, "task": text, "caption": text,
                "answers": tfds.features.Sequence(tfds.features.Text()),
                "scene": text,
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config.synthetic
        return {split: self._generate_examples(split, cfg.num_examples(split))
                for split in ("train", "validation", "test") if cfg.num_examples(split) > 0}

    def _generate_examples(self, split: str, num: int):
        cfg = self.builder_config.synthetic
        for i in range(num):
            yield i, generate_example(cfg, split, i)


class _SortedSerializer(example_serializer.ExampleSerializer):
    """tf.Example with deterministic (sorted) map order: byte-identical regeneration."""

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)


def prepare_synthetic(cfg: SyntheticConfig, data_dir: str) -> SyntheticVqa:
    """Generates the suite into `data_dir` unless already there; returns the builder."""
    config = builder_config(cfg)
    if config.name in {c.name for c in SyntheticVqa.BUILDER_CONFIGS}:
        config = config.name  # TFDS refuses a new object named like a predefined config
    builder = SyntheticVqa(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        # TFDS offers no serializer hook; swap its class in for this call only.
        with mock.patch.object(example_serializer, "ExampleSerializer", _SortedSerializer):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder
