"""What `python -m vlm_jax.main` runs, by `config.mode` (importable without absl flags)."""

from __future__ import annotations

MODES = ("train", "eval", "train_eval", "sweep", "prune_search")


def run(config, workdir: str):
    """Dispatches on `config.mode`; returns the mode's result."""
    mode = config.get("mode", "train")
    if mode == "train":
        from vlm_jax.train.trainer import train
        return train(config, workdir)
    if mode == "eval":
        from vlm_jax.eval.evaluator import evaluate_run
        return evaluate_run(config, workdir)
    if mode == "train_eval":
        from vlm_jax.scaling.sweep import run_point
        return run_point(config, workdir)
    if mode == "sweep":
        from vlm_jax.scaling.sweep import run_sweep
        return run_sweep(config, workdir)
    if mode == "prune_search":
        from vlm_jax.pruning import run as prune_run
        return prune_run(config, workdir)
    raise ValueError(f"config.mode must be one of {MODES}, got {mode!r}")
