"""grain pipelines over the synthetic suite: the batch contract, padding, resume, sharding."""

import numpy as np
import pytest

from vlm_jax import data
from vlm_jax.data.config import synthetic_config
from vlm_jax.data.synthetic import SyntheticConfig, generate_example
from vlm_jax.data.transforms import NORMALIZATION, mean_std, process_image

V, B, RES = 9, 8, 32


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = data.default_config()
    c.data_dir = str(tmp_path_factory.mktemp("tfds"))
    c.synthetic.resolution = RES
    c.synthetic.num_train, c.synthetic.num_validation, c.synthetic.num_test = 96, 21, 0
    c.max_text_len, c.max_question_len = 24, 16
    data.prepare_synthetic(c)
    return c


def _loader(cfg, **kw):
    args = dict(split="train", batch_size=B, num_visual_tokens=V, image_size=RES,
                normalization="clip", seed=0, shard_index=0, shard_count=1)
    args.update(kw)
    return data.make_loader(cfg, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_train_batch_contract(cfg):
    loader = _loader(cfg)
    batch = next(iter(loader))
    L = V + cfg.max_text_len
    shapes = {"images": ((B, RES, RES, 3), np.float32), "tokens": ((B, L), np.int32),
              "valid": ((B, L), np.bool_), "loss_mask": ((B, L), np.float32),
              "question": ((B, 16), np.int32), "question_valid": ((B, 16), np.bool_),
              "example_mask": ((B,), np.bool_)}
    for key, (shape, dtype) in shapes.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    for key in data.META_KEYS:
        assert batch[key].dtype == object and batch[key].shape == (B,)
    assert batch["example_mask"].all()
    arrays, meta = data.split_batch(batch)
    assert set(meta) == set(data.META_KEYS) and set(arrays) <= set(data.ARRAY_KEYS)


def test_batch_keys_are_the_model_call_arguments(cfg):
    """Train and eval batches are keyed by `VLM.__call__`'s argument names (its `positions`
    come from `valid`), plus the objective's `loss_mask` (train) and `example_mask`."""
    import inspect

    from vlm_jax import batch as batch_lib
    from vlm_jax.models.pair import ImageTextPair
    from vlm_jax.models.vlm import VLM

    def args(fn):
        return [p for p in inspect.signature(fn).parameters if p != "self"]

    model_args = [a for a in args(VLM.__call__) if a != "positions"]
    assert list(batch_lib.VLM_KEYS + batch_lib.VLM_TEXT_QUERY_KEYS) == model_args
    assert list(batch_lib.PAIR_KEYS) == args(ImageTextPair.__call__)
    for mode, extra in (("train", {"loss_mask", "example_mask"}), ("eval", {"example_mask"})):
        arrays, _ = data.split_batch(next(iter(_loader(cfg, mode=mode, split="validation"))))
        assert set(arrays) == set(model_args) | extra, mode


def test_tokens_placeholders_padding_and_loss_mask(cfg):
    """Train batches hold the whole conversation (right-padded, `loss_mask`); eval batches of
    the same records hold its generation prompt as `tokens` (left-padded)."""
    loader = _loader(cfg, mode="eval", split="validation")
    train = iter(_loader(cfg, split="validation", shuffle=False))  # same records, same order
    tok = loader.tokenizer
    img = tok.image_token_id
    for batch in loader:
        full = next(train)
        assert "loss_mask" not in batch
        for i in np.flatnonzero(batch["example_mask"]):
            assert full["id"][i] == batch["id"][i]
            toks, valid, mask = full["tokens"][i], full["valid"][i], full["loss_mask"][i]
            n = valid.sum()
            assert valid[:n].all() and not valid[n:].any()  # right-padded
            assert (toks[n:] == tok.pad_id).all()
            assert (toks == img).sum() == V and (toks[valid] == img).sum() == V
            assert not mask[~valid].any()
            # The loss covers exactly the answer and eos, predicted from the prompt.
            assert tok.decode(toks[mask == 1], skip_special=False) == f"{batch['answer'][i]}</s>"
            p, pv = batch["tokens"][i], batch["valid"][i]
            m = pv.sum()
            assert pv[-m:].all() and not pv[:-m].any()  # left-padded
            assert (p[:-m] == tok.pad_id).all() and (p == img).sum() == V
            np.testing.assert_array_equal(p[-m:], toks[:m])  # prompt = tokens before reply
            assert mask[m:].sum() == mask.sum() and not mask[:m].any()
            q = batch["question"][i][batch["question_valid"][i]]
            assert q[0] == tok.bos_id and tok.decode(q) in tok.decode(toks)


def test_images_normalised_from_the_stored_pixels(cfg):
    batch = next(iter(_loader(cfg, normalization="none", shuffle=False)))
    syn = synthetic_config(cfg)
    for i in range(B):
        split, idx = batch["id"][i].split("-")
        ref = generate_example(syn, split, int(idx))
        np.testing.assert_allclose(batch["images"][i] * 255, ref["image"], atol=1e-3)
        assert batch["answer"][i] == ref["answer"] and batch["task"][i] == ref["task"]
    clip = next(iter(_loader(cfg, normalization="clip", shuffle=False)))
    mean, std = mean_std("clip")
    np.testing.assert_allclose(clip["images"] * std + mean, batch["images"], atol=1e-5)
    big = next(iter(_loader(cfg, normalization="siglip", image_size=48)))
    assert big["images"].shape == (B, 48, 48, 3) and -1.001 <= big["images"].min()


def test_pad_aspect_uses_the_mean_colour():
    img = np.full((10, 30, 3), 200, np.uint8)
    mean, std = mean_std("clip")
    out = process_image(img, 30, "pad", mean, std)
    np.testing.assert_allclose(out[0, 0], np.round(mean * 255) / 255 / std - mean / std,
                               atol=1e-6)  # padding: the mean colour, normalised ~ 0
    np.testing.assert_allclose(out[15, 15], (200 / 255 - mean) / std, atol=1e-5)
    squashed = process_image(img, 30, "resize", *mean_std(NORMALIZATION["siglip"]))
    np.testing.assert_allclose(squashed, 200 / 255 / 0.5 - 1, atol=1e-5)


def test_checkpoint_resume_mid_epoch_gives_the_same_batches(cfg):
    it = iter(_loader(cfg))
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 14)  # 12 batches per epoch: runs into the next epoch
    resumed = iter(_loader(cfg))
    resumed.set_state(state)
    assert _same(_take(resumed, 14), expected)


def test_orbax_style_checkpoint_handler(cfg, tmp_path):
    import grain.python as grain
    from etils import epath

    it = iter(_loader(cfg))
    _take(it, 5)
    grain.PyGrainCheckpointHandler().save(epath.Path(tmp_path), it)
    expected = _take(it, 2)
    restored = grain.PyGrainCheckpointHandler().restore(epath.Path(tmp_path),
                                                        iter(_loader(cfg)))
    assert _same(_take(restored, 2), expected)


def test_shuffle_per_epoch_and_by_seed(cfg):
    def ids(seed, n=24):
        return [i for b in _take(iter(_loader(cfg, seed=seed)), n) for i in b["id"]]

    a = ids(0)
    epoch1, epoch2 = a[:96], a[96:192]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2
    assert len(set(epoch1)) == 96
    assert ids(0) == a and ids(1) != a
    ordered = [i for b in _take(iter(_loader(cfg, shuffle=False)), 2) for i in b["id"]]
    assert ordered == [i for b in _take(iter(_loader(cfg, shuffle=False)), 2) for i in b["id"]]


def test_process_shards_are_disjoint(cfg):
    shards = []
    for k in range(3):
        loader = _loader(cfg, shard_index=k, shard_count=3, num_epochs=1)
        shards.append({i for b in loader for i in b["id"]})
        assert loader.num_records == 32 and loader.num_batches == 4
    assert all(len(s) == 32 for s in shards)
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2])
    assert not (shards[0] & shards[2])


def test_eval_shards_pad_to_equal_batch_counts(cfg):
    seen = []
    for k in range(2):  # 21 examples: 11 + 10 -> 2 batches of 8 per shard
        loader = _loader(cfg, split="validation", mode="eval", shard_index=k, shard_count=2)
        batches = list(loader)
        assert len(batches) == loader.num_batches == 2
        for b in batches:
            assert b["tokens"].shape == (B, V + cfg.max_text_len)
            seen += [i for i, m in zip(b["id"], b["example_mask"]) if m]
    assert sorted(seen) == sorted(f"validation-{i:07d}" for i in range(21))
    loader = _loader(cfg, split="validation", mode="eval", batch_size=8, shard_index=0,
                     shard_count=4)  # 6 records: one batch
    assert [int(b["example_mask"].sum()) for b in loader] == [6]
    lone = _loader(cfg, split="validation[:3]", mode="eval", shard_index=1, shard_count=2,
                   batch_size=2)  # shards of 2 and 1 records: one batch each
    assert [int(b["example_mask"].sum()) for b in lone] == [1]


def test_too_long_samples_raise_or_skip(cfg):
    short = cfg.copy_and_resolve_references()
    short.max_text_len = 12  # prompt + answer exceed this for most questions
    with pytest.raises(data.DataError, match=r"sample 'train-\d+' in .*max_text_len 12"):
        next(iter(_loader(short)))
    short.on_error = "skip"
    loader = _loader(short, mode="eval", split="validation")
    kept = sum(int(b["example_mask"].sum()) for b in loader)
    assert kept + loader.skipped["too_long"] == 21 and loader.skipped["too_long"] > 0


def test_image_token_id_override(cfg):
    batch = next(iter(_loader(cfg, image_token_id=200)))
    assert ((batch["tokens"] == 200).sum(axis=1) == V).all()
    with pytest.raises(ValueError, match="collides"):
        _loader(cfg, image_token_id=5)


def test_config_validation(cfg):
    bad = data.default_config()
    bad.unknown_key = 1
    with pytest.raises(ValueError, match="unknown data config key.*unknown_key"):
        data.check_config(bad)
    nested = data.default_config().to_dict()
    nested["tokenizer"]["vocab"] = "x"
    with pytest.raises(ValueError, match=r"tokenizer\.vocab"):
        data.check_config(nested)
    for key, value, msg in [("source", "coco", "data.source"), ("aspect", "crop", "aspect"),
                            ("on_error", "ignore", "on_error")]:
        c = data.default_config()
        c[key] = value
        with pytest.raises(ValueError, match=msg):
            data.check_config(c)
    full = data.check_config({"template": "vicuna_v1", "synthetic": {"resolution": 48}})
    assert full.synthetic.resolution == 48 and full.synthetic.num_train == 4000
    assert full.template == "vicuna_v1"
    with pytest.raises(ValueError, match="mode"):
        _loader(cfg, mode="test")


def test_make_tokenizer_kinds(tmp_path):
    from test_data_tokenizer import make_hf_tokenizer

    assert isinstance(data.make_tokenizer(data.default_config()), data.WordTokenizer)
    c = data.default_config()
    c.tokenizer.kind = "hf"
    with pytest.raises(ValueError, match="tokenizer.path"):
        data.make_tokenizer(c)
    c.tokenizer.path = make_hf_tokenizer(tmp_path / "tok")
    assert isinstance(data.make_tokenizer(c), data.HFTokenizer)


def test_different_resolutions_share_scenes(cfg, tmp_path):
    c = cfg.copy_and_resolve_references()
    c.data_dir = str(tmp_path)
    c.synthetic.resolution = 48
    c.synthetic.num_train, c.synthetic.num_validation = 8, 0
    batch = next(iter(_loader(c, image_size=48, shuffle=False)))
    syn = SyntheticConfig(**c.synthetic.to_dict())
    assert set(batch["id"]) == {f"train-{i:07d}" for i in range(8)}
    first = generate_example(syn, "train", int(batch["id"][0].split("-")[1]))
    assert first["image"].shape == (48, 48, 3)


# The cheap paths (direct record decode, table normalisation, no per-record rng) against the
# straightforward ones they replaced: the batches must be bit-identical.

def _reference_image(image, size, aspect, mean, std):
    """The former process_image: always through PIL, then float math."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, np.uint8))
    if aspect == "pad" and img.width != img.height:
        side = max(img.width, img.height)
        square = Image.new("RGB", (side, side), tuple(int(round(float(m) * 255)) for m in mean))
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = square
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return (np.asarray(img, np.float32) / 255.0 - mean) / std


def test_table_normalisation_is_bit_identical_to_the_float_math():
    r, c = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    every = np.stack([r, c, 255 - r], -1).astype(np.uint8)  # [256, 256, 3]: each value, channel
    rng = np.random.default_rng(0)
    for norm in ("clip", "siglip", "none", ((0.1, 0.2, 0.3), (0.7, 0.8, 0.9))):
        mean, std = mean_std(norm)
        for image, size, aspect in [(every, 256, "pad"), (every, 64, "resize"),
                                    (rng.integers(0, 256, (20, 36, 3), np.uint8), 24, "pad"),
                                    (rng.integers(0, 256, (20, 36, 3), np.uint8), 36, "pad"),
                                    (rng.integers(0, 256, (20, 36, 3), np.uint8), 24, "resize")]:
            out = process_image(image, size, aspect, mean, std)
            ref = _reference_image(image, size, aspect, mean, std)
            assert out.dtype == np.float32 and out.shape == (size, size, 3)
            np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match=r"RGB image.*\(8, 8\)"):
        process_image(np.zeros((8, 8), np.uint8), 8, "pad", mean, std)
    with pytest.raises(ValueError, match="aspect"):
        process_image(every, 256, "crop", mean, std)


def test_synthetic_records_equal_the_tfds_decode(cfg):
    for split in ("train", "validation"):
        source = data.make_source(cfg, split)
        assert source._records is not None  # the direct path is the one in use
        for i in range(len(source)):
            fast, ref = source[i], source._from_tfds(i)
            assert fast.keys() == ref.keys()
            for key in fast:
                if key == "image":
                    assert fast[key].dtype == ref[key].dtype == np.uint8
                    np.testing.assert_array_equal(fast[key], ref[key])
                else:
                    assert fast[key] == ref[key], (split, i, key)
    import pickle  # grain workers (data.worker_count > 0) receive the source pickled

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[3]["image"],
                                  source[3]["image"])


def test_batches_equal_the_reference_pipeline(cfg):
    """Batch images = the former path (TFDS decode, PIL, float math) on the same records."""
    for size, norm in ((RES, "clip"), (48, "siglip")):
        batch = next(iter(_loader(cfg, shuffle=False, image_size=size, normalization=norm)))
        source = data.make_source(cfg, "train")
        mean, std = mean_std(norm)
        for i in range(B):
            rec = source._from_tfds(i)
            assert batch["id"][i] == rec["id"]
            np.testing.assert_array_equal(batch["images"][i],
                                          _reference_image(rec["image"], size, "pad", mean, std))
