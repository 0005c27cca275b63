"""Calibration sets and the metrics schedule searches maximise: `metric_fn(keep) -> float`.

A calibration set is a dict of numpy arrays: `images [N, H, W, 3]`, `tokens [N, L]` (prompts
holding V image placeholders, left-padded), `valid [N, L]` bool, `answers [N, T]` int32, and
optionally `question`/`question_valid` (compressors with a text query). Metrics (higher is
better): `accuracy` = fraction of examples whose greedy T-token answer equals `answers`;
`loglik` = mean answer log-likelihood (teacher forcing, pruning ranked by the prompt's query
set so it matches cached generation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import batch as batch_lib
from vlm_jax.eval.generate import Generator
from vlm_jax.models.config import VLMConfig
from vlm_jax.models.llm import default_positions
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning.forward import PruneSpec, query_rows

METRICS = ("accuracy", "loglik")


def random_calibration(cfg: VLMConfig, num: int, prompt_len: int = 8, answer_len: int = 4,
                       max_pad: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic calibration set (random images and prompts, left-padded to different
    lengths); `answers` are zeros until `with_model_answers` fills them."""
    rng = np.random.default_rng(seed)
    v, vocab, img = cfg.num_visual_tokens, cfg.llm.vocab_size, cfg.vision.image_size
    text_ids = np.array([i for i in range(1, vocab) if i != cfg.image_token_id])
    length = 2 + v + prompt_len
    tokens = np.zeros((num, length), np.int32)
    valid = np.zeros((num, length), bool)
    for i in range(num):
        pad = int(rng.integers(0, max_pad + 1)) if max_pad else 0
        q = rng.choice(text_ids, prompt_len - pad)
        row = np.concatenate([rng.choice(text_ids, 2), np.full(v, cfg.image_token_id), q])
        tokens[i, pad:] = row
        valid[i, pad:] = True
    batch = {"images": rng.standard_normal((num, img, img, 3)).astype(np.float32),
             "tokens": tokens, "valid": valid,
             "answers": np.zeros((num, answer_len), np.int32)}
    if cfg.uses_text_query:
        batch["question"], batch["question_valid"] = tokens[:, -prompt_len:], valid[:, -prompt_len:]
    return batch


def batches(calib: dict[str, np.ndarray], batch_size: int):
    """Fixed-size slices of a calibration set (the last one padded by repetition: static shapes)
    with a `weight` [b] marking real rows."""
    n = len(calib["tokens"])
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        weight = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        yield {k: v[idx] for k, v in calib.items()}, weight


def greedy_answers(cfg: VLMConfig, params, calib: dict, spec: PruneSpec | None, steps: int,
                   batch_size: int) -> np.ndarray:
    """`[N, steps]` greedy tokens under `spec` (None: unpruned)."""
    gen, out = Generator(VLM(cfg), steps, prune=spec), []
    for batch, weight in batches(calib, batch_size):
        out.append(np.asarray(gen.tokens(params, model_inputs(batch)))[weight > 0])
    return np.concatenate(out)


def with_model_answers(cfg: VLMConfig, params, calib: dict, batch_size: int = 8) -> dict:
    """The calibration set with `answers` = the unpruned model's greedy answers (agreement
    with the unpruned model is then the accuracy)."""
    steps = calib["answers"].shape[1]
    return {**calib, "answers": greedy_answers(cfg, params, calib, None, steps, batch_size)
            .astype(np.int32)}


def model_inputs(batch: dict) -> dict:
    """A calibration batch's model inputs (`vlm_jax.batch` keys, no `answers`) as jax arrays:
    what `VLM.__call__` and `vlm_jax.eval.generate` read."""
    return {k: jnp.asarray(v) for k, v in batch_lib.model_inputs(batch).items()}


@functools.lru_cache(maxsize=64)
def _loglik_fn(cfg: VLMConfig, spec: PruneSpec):
    module = VLM(cfg)

    def fn(params, images, tokens, valid, answers, question=None, question_valid=None):
        t = answers.shape[1]
        visual = tokens == cfg.image_token_id
        query = query_rows(spec.query, visual, valid)
        pad = jnp.zeros(answers.shape, bool)
        full_tokens = jnp.concatenate([tokens, answers], axis=1)
        full_valid = jnp.concatenate([valid, ~pad], axis=1)
        out = module.apply({"params": params}, images, full_tokens, full_valid,
                           default_positions(full_valid), question, question_valid,
                           prune=spec, query=jnp.concatenate([query, pad], axis=1),
                           method="forward")
        logp = jax.nn.log_softmax(out.logits[:, -t - 1:-1], axis=-1)
        return jnp.take_along_axis(logp, answers[..., None], axis=-1)[..., 0].sum(-1)

    return jax.jit(fn)


def answer_loglik(cfg: VLMConfig, params, calib: dict, spec: PruneSpec, batch_size: int
                  ) -> float:
    """Mean over examples of the summed answer-token log-probabilities under `spec`."""
    total, count = 0.0, 0.0
    fn = _loglik_fn(cfg, spec)
    for batch, weight in batches(calib, batch_size):
        inp = model_inputs(batch)
        ll = fn(params, inp["images"], inp["tokens"], inp["valid"], jnp.asarray(batch["answers"]),
                inp.get("question"), inp.get("question_valid"))
        total += float(np.sum(np.asarray(ll) * weight))
        count += float(weight.sum())
    return total / count


def make_metric(cfg: VLMConfig, params, calib: dict, metric: str = "accuracy",
                query: str = "last", impl: str = "xla", batch_size: int = 8
                ) -> Callable[[Sequence[int]], float]:
    """`metric_fn(keep) -> float` on the calibration set (higher is better)."""
    if metric not in METRICS:
        raise ValueError(f"unknown pruning metric {metric!r}; known: {list(METRICS)}")

    def metric_fn(keep: Sequence[int]) -> float:
        spec = PruneSpec(tuple(int(k) for k in keep), query=query, impl=impl)
        if metric == "loglik":
            return answer_loglik(cfg, params, calib, spec, batch_size)
        answers = calib["answers"]
        got = greedy_answers(cfg, params, calib, spec, answers.shape[1], batch_size)
        return float(np.mean(np.all(got == answers, axis=1)))

    return metric_fn
