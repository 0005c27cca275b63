"""Flagship: LLaVA-1.5-7B shape (CLIP-L/14-336 + Vicuna-7B) with QueCC at V visual tokens,
stage 2 (vision tower frozen; compressor, projector and LLM train) on a TPU pod slice.

    python launch/aot.py --config=configs/flagship_llava7b.py --topology=v5e:16x16
    python launch/tpu_pod.py --config=configs/flagship_llava7b.py:data_root=/mnt/llava \\
        --name=llava7b --zone=... --accelerator=v5litepod-256 --workdir=gs://B/runs/llava7b

arg keys: V (visual tokens, a square dividing the 24x24 grid: 1, 4, 9, 16, 36, 64, 144, 576),
compressor, batch (global), text (max_text_len), question (max_question_len), steps,
fsdp / tp (mesh: `fsdp` x `tensor`, one may be -1 = the rest), dtype (compute), remat,
data_root (LLaVA-665k json, images and the llava-hf checkpoint + tokenizer beneath it; read as
files, so on a pod a copy or a gcsfuse mount on every worker).
The LLM vocabulary is padded to 32064 rows as llava-hf does (image id 32000), so the `vocab`
axis divides the tensor axis. Weights start from `data_root/llava-1.5-7b-hf` (`init_from`);
the compressor, absent there, starts random.
"""

import ml_collections

from vlm_jax import data
from vlm_jax.config_args import parse_arg
from vlm_jax.eval import evaluator
from vlm_jax.models import presets
from vlm_jax.models.config import to_dict
from vlm_jax.train import optimizer, trainer

LLAVA_HF_VOCAB = 32064  # llava-hf/llava-1.5-7b-hf: 32000 + <image> + <pad>, padded to 64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, V=16, compressor="quecc", batch=128, text=1024, question=64, steps=5198,
                  fsdp=-1, tp=4, dtype="bfloat16", remat=True, lr=2e-5,
                  data_root="/data/llava")
    model = presets.llava("clip-l/14-336", "vicuna-7b", num_tokens=a.V, compressor=a.compressor)
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.stage = 2
    c.model = to_dict(model)
    c.model.llm.vocab_size = LLAVA_HF_VOCAB
    c.model.image_token_id = 32000
    for tower in ("llm", "vision"):
        c.model[tower].dtype = a.dtype
        c.model[tower].remat = a.remat
    c.model.compressor.feature_layers = (12, 16, 22, 23)
    c.model.compressor.heads = 16
    c.data = data.default_config()
    c.data.source = "llava"
    c.data.files.train = f"{a.data_root}/llava_v1_5_mix665k.json"
    c.data.image_folder = a.data_root
    c.data.tokenizer.kind = "hf"
    c.data.tokenizer.path = f"{a.data_root}/llava-1.5-7b-hf"
    c.data.template = "vicuna_v1"
    c.data.max_text_len = a.text
    c.data.max_question_len = a.question
    c.data.on_error = "skip"
    c.data.worker_count = 8
    c.init_from = ml_collections.ConfigDict(dict(hf=f"{a.data_root}/llava-1.5-7b-hf",
                                                 map=(("", ""),)))
    c.train = trainer.default_config()
    c.train.steps = a.steps  # one epoch of the 665k mix at batch 128
    c.train.batch_size = a.batch
    c.train.log_every = 10
    c.train.ckpt_every = 500
    c.optim = optimizer.default_config()
    c.optim.lr = a.lr
    c.optim.warmup_frac = 0.03
    c.optim.frozen = None  # stage 2 default: vision tower frozen
    c.mesh = {"fsdp": a.fsdp, "tensor": a.tp}
    c.sharding = "fsdp_tp"
    c.eval = evaluator.default_config()
    return c
