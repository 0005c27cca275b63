"""A two-size sweep on a toy problem whose answer depends on size: the per-point statistics the
sweep reports (score, standard error, image-blind prior) must show the effect above noise."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax.eval.families import family_stats

KEYS, CLASSES, DIM = 48, 8, 16


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):  # [B, DIM] -> [B, CLASSES]
        return nn.Dense(CLASSES)(nn.gelu(nn.Dense(self.width)(x)))


def _train_and_eval(width: int, images, labels, questions: int, seed: int) -> dict:
    """One 'point': train an MLP of `width` to name each image's class, then score it on
    `questions` sampled images as a sweep point is scored (records -> family_stats)."""
    model = MLP(width)
    params = model.init(jax.random.PRNGKey(seed), images[:1])
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, images), labels).mean()
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    pred = np.asarray(jnp.argmax(model.apply(params, images), -1))
    idx = np.random.default_rng(seed + 1).integers(0, KEYS, questions)
    records = [{"task": "name", "family": "toy", "score": float(pred[i] == labels[i]),
                "question": "which class is this image?", "answer": f"c{labels[i]}"}
               for i in idx]
    return family_stats(records, {"name": "exact_match"})


def test_two_size_sweep_shows_the_size_effect_above_noise():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(KEYS, DIM)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, CLASSES, KEYS))
    small = _train_and_eval(1, images, labels, 600, seed=0)  # too narrow to memorise 48 labels
    large = _train_and_eval(64, images, labels, 600, seed=0)
    noise = np.hypot(small["stderr_toy"], large["stderr_toy"])
    assert 0 < noise < 0.03
    assert large["score_toy"] - small["score_toy"] > 3 * noise, (small, large)
    # The blind prior (the most frequent class) is the same for both and far below the large.
    assert small["blind_toy"] == large["blind_toy"] < 0.35
    assert large["score_toy"] > large["blind_toy"] + 3 * large["stderr_toy"]
    # Same size, another seed: no effect above noise (the statistics do not invent one).
    again = _train_and_eval(64, images, labels, 600, seed=1)
    assert abs(again["score_toy"] - large["score_toy"]) < 3 * np.hypot(
        again["stderr_toy"], large["stderr_toy"]) + 0.02
