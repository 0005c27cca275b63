"""Losses: next-token cross-entropy on assistant tokens, SigLIP sigmoid loss, patch labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
                    ) -> tuple[jax.Array, dict]:
    """Mean CE of predicting tokens[:, t] from position t-1, where loss_mask[:, t] = 1.

    logits `[B, L, vocab]`, tokens `[B, L]`, loss_mask `[B, L]` -> (loss, metrics).
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets, weights = tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    n = jnp.maximum(weights.sum(), 1.0)
    loss = (ce * weights).sum() / n
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    return loss, {"loss": loss, "token_accuracy": correct.sum() / n, "target_tokens": weights.sum()}


def sigmoid_pair_loss(img: jax.Array, txt: jax.Array, scale: jax.Array, bias: jax.Array
                      ) -> tuple[jax.Array, dict]:
    """SigLIP loss over all pairs of a batch: img, txt `[B, E]` (normalised)."""
    logits = scale * img @ txt.T + bias
    labels = 2.0 * jnp.eye(img.shape[0]) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / img.shape[0]
    acc = jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(img.shape[0]))
    return loss, {"loss": loss, "retrieval_accuracy": acc}


def patch_label_loss(logits: tuple[jax.Array, ...], labels: jax.Array, names: tuple[str, ...]
                     ) -> tuple[jax.Array, dict]:
    """Mean over heads of each head's class-balanced CE: half the mean over the patches with a
    label (class > 0), half over those without (class 0 = nothing there), so the few patches
    that show something are not drowned by the empty ones.

    logits: per head `[B, P, classes]`; labels int `[B, P, heads]` -> (loss, metrics with
    `<name>_accuracy` over the patches whose label is not 0).
    """
    total, metrics = 0.0, {}
    for i, (head, name) in enumerate(zip(logits, names)):
        target = labels[..., i]
        ce = optax.softmax_cross_entropy_with_integer_labels(head.astype(jnp.float32), target)
        on = (target > 0).astype(jnp.float32)
        mean_on = (ce * on).sum() / jnp.maximum(on.sum(), 1.0)
        mean_off = (ce * (1 - on)).sum() / jnp.maximum((1 - on).sum(), 1.0)
        total = total + 0.5 * (mean_on + mean_off)
        hit = (jnp.argmax(head, -1) == target) & (target > 0)
        metrics[f"{name}_accuracy"] = hit.sum() / jnp.maximum((target > 0).sum(), 1)
    loss = total / len(logits)
    return loss, {"patch_loss": loss, **metrics}
