"""grain input pipelines: `make_loader(data_cfg, ...)`, `make_tokenizer`, `make_source`.

Batches follow `vlm_jax.batch`: numpy arrays keyed by the model call's argument names
(`L = V + data.max_text_len`, `Lq = data.max_question_len`):

| key              | dtype / shape          | meaning                                          |
|------------------|------------------------|--------------------------------------------------|
| `images`         | float32 `[B, H, W, 3]` | normalised image                                 |
| `tokens`         | int32 `[B, L]`         | train: template(prompt with V placeholders) +    |
|                  |                        | reply + end token, right-padded; eval: the       |
|                  |                        | generation prompt alone, left-padded             |
| `valid`          | bool `[B, L]`          | False on padding                                 |
| `loss_mask`      | float32 `[B, L]`       | train only: 1 where token t is part of an        |
|                  |                        | assistant reply (predicted from position t-1)    |
| `question`       | int32 `[B, Lq]`        | [bos] + the user's question alone, right-padded  |
| `question_valid` | bool `[B, Lq]`         |                                                  |
| `example_mask`   | bool `[B]`             | False on rows padding the last eval batch(es)    |
| `patch_labels`   | int32 `[B, P, 4]`      | `patch_grid` > 0 only: synthetic per-patch labels|
|                  |                        | (`synthetic.patch_labels`; P = patch_grid ** 2)  |
| `id` `task` `answer` `answers` | object `[B]` | metadata (answers: tuples of str); not for jit |

`ARRAY_KEYS` / `META_KEYS` name the two groups; `split_batch(batch)` separates them.

Train mode: shuffled per epoch from `seed` (grain IndexSampler), sharded by process, last
partial batch dropped; `iter(loader)` is grain's DataLoaderIterator (`get_state()` /
`set_state()`, or orbax via `grain.PyGrainCheckpointHandler`). Eval mode: one pass, in order,
the last batch padded with masked rows, and every shard yields the same `num_batches` (extra
fully-masked batches where a shard runs short), so multi-host loops stay in step.
With `data.worker_count > 0` each grain worker batches its own records, so the batch order
depends on the worker count (a resumed run must keep it).

CPU cost: records are read on the consumer thread (`READ_OPTIONS`: no grain prefetch threads,
whose 500-deep future buffer is scanned once per record); on a 2-core machine that is ~2x less
CPU per batch with the same batches. grain's IndexSampler builds a numpy Generator per record
(~25 us CPU each, ~0.3% of a tiny model's step) that nothing here reads.
`make_loader(read_options=...)` brings prefetch threads back for slow (remote) storage.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterator
from typing import Any

import grain.python as grain

from vlm_jax import batch as batch_lib
from vlm_jax.data import config as config_lib
from vlm_jax.data import sources as src_lib
from vlm_jax.data.templates import ChatEncoder, get_template
from vlm_jax.data.tokenizer import HFTokenizer, Tokenizer, WordTokenizer
from vlm_jax.data.transforms import Collate, DropSkipped, Prepare

ARRAY_KEYS = batch_lib.VLM_KEYS + batch_lib.VLM_TEXT_QUERY_KEYS + (batch_lib.LOSS_MASK,
                                                                   batch_lib.EXAMPLE_MASK,
                                                                   batch_lib.PATCH_LABELS)
META_KEYS = batch_lib.META_KEYS
MODES = ("train", "eval")


def split_batch(batch: dict) -> tuple[dict, dict]:
    """(arrays for the model, metadata) of a batch."""
    arrays = {k: v for k, v in batch.items() if k in ARRAY_KEYS}
    return arrays, {k: v for k, v in batch.items() if k in META_KEYS}


def make_tokenizer(data_cfg) -> Tokenizer:
    """The tokenizer `data.tokenizer` names."""
    cfg = config_lib.check_config(data_cfg).tokenizer
    if cfg.kind == "builtin":
        return WordTokenizer()
    if not cfg.path:
        raise ValueError("data.tokenizer.kind='hf' needs data.tokenizer.path (a local "
                         "tokenizer.json or its folder)")
    return HFTokenizer(os.path.expanduser(cfg.path), image_token=cfg.image_token)


def prepare_synthetic(data_cfg):
    """Generates the synthetic suite into `data.data_dir` unless there; returns the builder.

    Processes that share the directory (parallel sweep points, hosts) take turns on a lock
    file, so one generates and the others read what it wrote.
    """
    import fcntl

    from vlm_jax.data.tfds_builder import prepare_synthetic as prepare

    cfg = config_lib.check_config(data_cfg)
    data_dir = os.path.expanduser(cfg.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, ".prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return prepare(config_lib.synthetic_config(cfg), data_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_source(data_cfg, split: str):
    """The random-access source of `split` (TFDS split syntax for the synthetic suite)."""
    cfg = config_lib.check_config(data_cfg)
    if cfg.source == "synthetic":
        builder = prepare_synthetic(cfg)
        return src_lib.SyntheticSource(builder.as_data_source(split=split),
                                       f"{builder.data_dir}[{split}]")
    if split not in cfg.files or not cfg.files[split]:
        raise ValueError(f"data.files has no file for split {split!r} (source "
                         f"{cfg.source!r}); given: {dict(cfg.files)}")
    path = os.path.expanduser(cfg.files[split])
    folder = os.path.expanduser(cfg.image_folder)
    kw = {"task": cfg.task} if cfg.task else {}
    if cfg.source == "llava":
        return src_lib.LlavaConversationSource(path, folder, cfg.on_error, **kw)
    if cfg.question_suffix:
        kw["question_suffix"] = cfg.question_suffix
    if cfg.source == "vqa_eval":
        return src_lib.VQAEvalSource(path, folder, cfg.on_error, **kw)
    return src_lib.MMBenchSource(path, folder, cfg.on_error, **kw)


READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class ShardSlice:
    """Records [start, end) of a source (one eval shard); `skipped` passes through."""

    def __init__(self, source, start: int, end: int):
        self.source, self.start, self.end = source, start, end
        self.skipped = getattr(source, "skipped", collections.Counter())

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside shard of {len(self)} records")
        return self.source[self.start + index]

    def __repr__(self) -> str:
        return f"ShardSlice({self.source!r}, {self.start}, {self.end})"


class Loader:
    """Iterable of batches (see the module docstring); `skipped` counts dropped samples."""

    def __init__(self, source, data_loader: grain.DataLoader, prepare: Prepare,
                 collate: Collate, *, mode: str, batch_size: int, num_records: int,
                 num_batches: int):
        self.source, self.data_loader, self.prepare = source, data_loader, prepare
        self.collate = collate
        self.mode, self.batch_size = mode, batch_size
        self.num_records = num_records  # records in this shard
        self.num_batches = num_batches  # per epoch in train mode; the total in eval mode
        self.tokenizer = prepare.encoder.tok
        self.seq_len, self.question_len = prepare.seq_len, prepare.question_len

    @property
    def skipped(self) -> collections.Counter:
        """reason -> count of samples dropped (source checks + pipeline, this process)."""
        return getattr(self.source, "skipped", collections.Counter()) + self.prepare.skipped

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.mode == "train":
            return iter(self.data_loader)
        return self._eval_batches()

    def _eval_batches(self):
        n = 0
        for batch in self.data_loader:
            n += 1
            yield batch
        for _ in range(n, self.num_batches):
            yield self.collate([])


def make_loader(data_cfg, *, split: str, batch_size: int, num_visual_tokens: int,
                image_size: int, normalization="clip", image_token_id: int | None = None,
                seed: int = 0, shard_index: int | None = None, shard_count: int | None = None,
                num_epochs: int | None = None, shuffle: bool = True,
                mode: str = "train", read_options: grain.ReadOptions | None = None,
                patch_grid: int = 0) -> Loader:
    """A grain loader of fixed-shape batches for one process.

    normalization: "clip" | "siglip" | "none" | (mean, std). image_token_id: the model's
    placeholder id (default: the tokenizer's `<image>` id). shard_index / shard_count default
    to this JAX process among all (grain.ShardByJaxProcess). num_epochs: None repeats forever
    (train); eval mode always makes one pass. read_options: grain's record-reading threads
    (default `READ_OPTIONS`: none). patch_grid > 0: each example also gets the synthetic
    suite's `patch_labels` on a patch_grid x patch_grid grid (the tower's patches).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1 or num_visual_tokens < 0:
        raise ValueError(f"need batch_size >= 1 and num_visual_tokens >= 0, got {batch_size}, "
                         f"{num_visual_tokens}")
    cfg = config_lib.check_config(data_cfg)
    tok = make_tokenizer(cfg)
    img_id = image_token_id if image_token_id is not None else tok.image_token_id
    if img_id is None:
        raise ValueError("the tokenizer has no image token: pass image_token_id (the model's)")
    if img_id < tok.vocab_size and img_id != tok.image_token_id:
        raise ValueError(f"image_token_id {img_id} collides with text token "
                         f"{tok.decode([img_id], skip_special=False)!r} of the tokenizer")
    encoder = ChatEncoder(get_template(cfg.template, cfg.system_prompt or None), tok, img_id,
                          num_visual_tokens)
    source = make_source(cfg, split)
    eval_mode = mode == "eval"
    prepare = Prepare(encoder, image_size=image_size, aspect=cfg.aspect,
                      normalization=normalization, num_visual_tokens=num_visual_tokens,
                      max_text_len=cfg.max_text_len, max_question_len=cfg.max_question_len,
                      eval_mode=eval_mode, on_error=cfg.on_error, patch_grid=patch_grid)
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither")
    if shard_index is None:
        shard = grain.ShardByJaxProcess(drop_remainder=not eval_mode)
    else:
        shard = grain.ShardOptions(shard_index, shard_count, drop_remainder=not eval_mode)
    n = len(source)
    if eval_mode:
        # Explicit contiguous shards: grain's uneven sharding would drop a record.
        per, rem = divmod(n, shard.shard_count)
        start = shard.shard_index * per + min(shard.shard_index, rem)
        source = ShardSlice(source, start, start + per + (shard.shard_index < rem))
        num_records = len(source)
        num_batches = math.ceil(math.ceil(n / shard.shard_count) / batch_size)
        sampler = grain.IndexSampler(num_records=num_records, shard_options=grain.NoSharding(),
                                     shuffle=False, num_epochs=1, seed=seed)
    else:
        num_records = n // shard.shard_count
        num_batches = num_records // batch_size
        sampler = grain.IndexSampler(num_records=n, shard_options=shard, shuffle=shuffle,
                                     num_epochs=num_epochs, seed=seed)
    collate = Collate(batch_size, prepare.blank())
    ops = [prepare, DropSkipped(),
           grain.Batch(batch_size, drop_remainder=not eval_mode, batch_fn=collate)]
    if cfg.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (outside absl.app)
            flags.FLAGS.mark_as_parsed()
    data_loader = grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                                   worker_count=cfg.worker_count,
                                   read_options=read_options or READ_OPTIONS)
    return Loader(source, data_loader, prepare, collate, mode=mode, batch_size=batch_size,
                  num_records=num_records, num_batches=num_batches)
