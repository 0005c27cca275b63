"""Losses: next-token cross-entropy on assistant tokens, SigLIP sigmoid loss."""

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
