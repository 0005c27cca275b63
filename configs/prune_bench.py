"""The pruning benchmark model: a VLM whose LLM prefill is dominated by 144 visual tokens.

    python -m vlm_jax.main --config=configs/prune_bench.py --workdir=workdirs/prune_bench

`python -m vlm_jax.bench.pruning` with no arguments trains this once (into
`workdirs/prune_bench`) and reuses it. In-LLM token pruning can only pay where the LLM's work
on visual tokens is most of the prefill, so unlike configs/tiny_vlm.py there is no compressor:
a small CLIP-style tower (2 of its 3 layers run, width 32) turns a 96 px image into a 12 x 12
grid of patches and all 144 go to the LLM (Qwen2-style, width 96, 4 layers, 0.42M
parameters). At ~12 text tokens the decoder layers carry 90% of the prefill FLOPs
(`vlm_jax.models.flops.vlm_flops`: 164 of 182 MFLOPs; tower 14, projector 3.5).

arg keys: width, depth, heads, kv_heads (the LLM), vis_width (the tower), res (px; the patch
is res / 12), steps, batch, lr, data_dir. The step count and batch are sized for a CPU shared
by several jobs (1000 steps of 16). The training recipe is tiny_vlm's (fan-in init, AdamW at
1e-3, the five reasoning tasks with captions mixed in, scenes of at most 3 objects, no OCR).
"""

import ml_collections

from vlm_jax import data
from vlm_jax.config_args import parse_arg
from vlm_jax.data.synthetic import REASONING_TASKS
from vlm_jax.eval import evaluator
from vlm_jax.models.config import CompressorConfig, LLMConfig, ViTConfig, VLMConfig, to_dict
from vlm_jax.train import optimizer, trainer

GRID = 12  # 144 visual tokens


def model_config(a: ml_collections.ConfigDict, vocab_size: int, image_token_id: int) -> VLMConfig:
    """The benchmark VLM for parsed args `a` (see the module docstring)."""
    if a.res % GRID:
        raise ValueError(f"res={a.res} must be a multiple of {GRID} (a {GRID}x{GRID} patch grid)")
    vision = ViTConfig("clip", a.res, a.res // GRID, a.vis_width, 3, 4, 4 * a.vis_width, 1e-5)
    llm = LLMConfig(family="qwen2", vocab_size=vocab_size, width=a.width, depth=a.depth,
                    heads=a.heads, kv_heads=a.kv_heads, mlp_dim=a.width * 8 // 3 // 8 * 8,
                    rope_theta=1e4, qkv_bias=True, tie_embeddings=True, max_len=512)
    return VLMConfig(vision=vision, llm=llm, compressor=CompressorConfig(name="identity"),
                     image_token_id=image_token_id)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, vis_width=32, width=96, depth=4, heads=4, kv_heads=2, res=96, steps=1000,
                  batch=16, lr=1e-3, data_dir="~/vlm_jax_data/tfds")
    tok = data.WordTokenizer()
    c = ml_collections.ConfigDict()
    c.mode = "train_eval"
    c.stage = 2
    c.model = to_dict(model_config(a, tok.vocab_size, tok.image_token_id))
    c.data = data.default_config()
    c.data.data_dir = a.data_dir
    c.data.synthetic.resolution = a.res
    c.data.synthetic.num_train = 8000
    c.data.synthetic.max_objects = 3
    c.data.synthetic.num_validation = 1000
    c.data.synthetic.num_test = 1000
    c.data.synthetic.tasks = REASONING_TASKS + ("caption",)
    c.data.max_text_len = 32  # captions of 3 objects
    c.data.max_question_len = 16
    c.train = trainer.default_config()
    c.train.steps = a.steps
    c.train.batch_size = a.batch
    c.train.log_every = 50
    c.train.ckpt_every = 100
    c.optim = optimizer.default_config()
    c.optim.lr = a.lr
    c.optim.weight_decay = 0.01
    c.optim.frozen = ""  # all train: nothing here is pretrained
    c.mesh = {"data": -1}
    c.sharding = "dp"
    c.eval = evaluator.default_config()
    c.eval.num_examples = -1  # the whole test split
    return c
