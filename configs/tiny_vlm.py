"""A tiny VLM trained and evaluated on the built-in synthetic suite on CPU in ~8 minutes.

    python -m vlm_jax.main --config=configs/tiny_vlm.py:llm=m,V=16 --workdir=/tmp/tiny

arg keys: llm (s | m | l: the tiny LLM sizes of the sweep), V (visual tokens: 1, 4, 16, 64),
compressor (quecc | avgpool | resampler | tokenpacker | identity), steps, batch, res (px).
Everything trains (there is no pretrained tower or LLM at this size) unless `init_from` says
otherwise, as the sweep does for the vision tower.

Recipe (measured, README "Results"): scenes of at most 3 objects, the five reasoning tasks
with the caption task mixed in (captions need the image for every token, which keeps gradients
flowing into the tower while the LLM learns the questions' answer priors; without them the
visual pathway's gradients fall ~1000x within 100 steps and every question stays at its prior),
no OCR (64 px is too coarse for its glyphs), AdamW at 1e-3 (3e-3 collapses the visual pathway
the same way), 3000 steps: the yes/no questions (exist, spatial, compare) have answers that
neither the question nor the image predicts alone, and stay at chance for the first ~1000
steps before the loss leaves that plateau.
"""

import ml_collections

from vlm_jax import data
from vlm_jax.config_args import parse_arg
from vlm_jax.data.synthetic import REASONING_TASKS
from vlm_jax.eval import evaluator
from vlm_jax.models.config import CompressorConfig, VLMConfig, to_dict
from vlm_jax.models.presets import tiny_sweep_llm, tiny_sweep_vision
from vlm_jax.train import optimizer, trainer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, llm="m", V=16, compressor="quecc", steps=3000, batch=32, res=64,
                  data_dir="~/vlm_jax_data/tfds")
    tok = data.WordTokenizer()
    c = ml_collections.ConfigDict()
    c.mode = "train_eval"
    c.stage = 2
    model = VLMConfig(
        vision=tiny_sweep_vision(a.res), llm=tiny_sweep_llm(a.llm, tok.vocab_size),
        compressor=CompressorConfig(name=a.compressor, num_tokens=a.V, feature_layers=(1, 2, 3),
                                    heads=4),
        image_token_id=tok.image_token_id)
    c.model = to_dict(model)
    c.data = data.default_config()
    c.data.data_dir = a.data_dir
    c.data.synthetic.resolution = a.res
    c.data.synthetic.num_train = 8000
    c.data.synthetic.max_objects = 3
    c.data.synthetic.num_test = 1000
    c.data.synthetic.tasks = REASONING_TASKS + ("caption",)
    c.data.max_text_len = 32  # captions of 3 objects
    c.data.max_question_len = 16
    c.train = trainer.default_config()
    c.train.steps = a.steps
    c.train.batch_size = a.batch
    c.train.log_every = 50
    c.train.ckpt_every = 200
    c.optim = optimizer.default_config()
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.frozen = ""  # all train: nothing here is pretrained
    c.mesh = {"data": -1}
    c.sharding = "dp"
    c.eval = evaluator.default_config()
    c.eval.num_examples = -1  # the whole test split
    return c
