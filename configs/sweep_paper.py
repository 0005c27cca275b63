"""The paper's sweep: Qwen-1.5 {0.5B, 1.8B, 4B, 7B} x V in {1, 4, 16, 36, 64, 144, 576}, each
point trained in LLaVA-1.5's two stages and scored on the LLaVA-1.5 benchmark suite.

    python -m vlm_jax.main --config=configs/sweep_paper.py:data_root=/mnt/llava \\
        --workdir=workdirs/paper                                   (in this process)
    python -m vlm_jax.main --config=configs/sweep_paper.py:data_root=/mnt/llava,pod=NAME,\\
        zone=us-east5-a,accelerator=v5litepod-256,remote=gs://B/paper[,dry_run=1] \\
        --workdir=workdirs/paper                                   (on one TPU slice)
    python -m vlm_jax.main --config=configs/sweep_paper.py:tiny --workdir=/tmp/paper_tiny
                                                                   (the CPU rehearsal)

Model: CLIP ViT-L/14-336 (24 x 24 patches) + QueCC at V < 576, the plain projector
(`identity`) at 576, + Qwen-1.5. Stage 1 (`align`): LLaVA-Pretrain 558k captions, compressor
and projector train (tower and LLM frozen), lr 1e-3, global batch 256, cosine with 3% warmup,
no weight decay, one epoch. Stage 2 (`tune`): the LLaVA-1.5 665k mix, everything but the tower
trains, lr 2e-5, batch 128, one epoch. bf16 compute, remat, FSDP plus tensor parallelism
(2-way, 4-way from 4B up). Evaluation: GQA, VQAv2 (val), VizWiz, ScienceQA-IMG, TextVQA, POPE,
MME, MMBench (dev), SEED-Bench (image) from their own files, official metrics; families:
`reasoning` (all but TextVQA) and `ocr` (TextVQA).

`data_root` holds (nothing is downloaded at run time):
    Qwen1.5-0.5B/ Qwen1.5-1.8B/ Qwen1.5-4B/ Qwen1.5-7B/   Hugging Face checkpoints + tokenizer
                                                           (grid names qwen-0_5b ... qwen-7b)
    clip-vit-large-patch14-336/                            the vision tower
    LLaVA-Pretrain/blip_laion_cc_sbu_558k.json, LLaVA-Pretrain/images/
    llava_v1_5_mix665k.json (image paths relative to data_root: coco/, gqa/, ocr_vqa/, ...)
    eval/...                                               vlm_jax.data.export.benchmark_layout

`tiny`: the same pipeline on CPU, sizes changed: a 32 px CLIP-style tower (8 x 8 patches,
V in {1, 16, 64}, 64 = the plain projector), two tiny Qwen2-style LLMs, a few dozen steps per
stage, the built-in word tokenizer and plain template (the tiny LLMs are not Qwen's), and
stage 2 at lr 1e-3 (random tiny LLMs, not pretrained ones). Its `data_root` is made inside
the workdir (vlm_jax.scaling.rehearsal): the synthetic suite exported in the formats above and
Hugging Face checkpoints written by `hf.save`. `smoke` shrinks it further (CI).
"""

import ml_collections

from vlm_jax import data
from vlm_jax.config_args import parse_arg
from vlm_jax.data.export import benchmark_layout, training_layout
from vlm_jax.data.synthetic import DEFAULT_TASKS
from vlm_jax.eval import evaluator
from vlm_jax.models import presets
from vlm_jax.models.config import ViTConfig, to_dict
from vlm_jax.train import optimizer, trainer

# grid name (config keys take no dots) -> (LLM preset, checkpoint directory under data_root)
LLMS = {"qwen-0_5b": ("qwen1.5-0.5b", "Qwen1.5-0.5B"), "qwen-1_8b": ("qwen1.5-1.8b", "Qwen1.5-1.8B"),
        "qwen-4b": ("qwen1.5-4b", "Qwen1.5-4B"), "qwen-7b": ("qwen1.5-7b", "Qwen1.5-7B")}
TOKENS = (1, 4, 16, 36, 64, 144, 576)
VISION_DIR = "clip-vit-large-patch14-336"
QWEN_VOCAB, QWEN_IMAGE_ID = 151936, 151646  # the first embedding row no Qwen token uses
FAMILIES = {"reasoning": ("gqa", "vqav2", "vizwiz", "scienceqa", "pope", "mme", "mmbench",
                          "seed"), "ocr": ("textvqa",)}
# Examples per epoch of each stage's data (LLaVA-1.5): one epoch each.
PRETRAIN_EXAMPLES, MIX_EXAMPLES = 558_128, 665_298

TINY_LLMS = {"qwen-tiny-s": ("s", "qwen-tiny-s"), "qwen-tiny-m": ("m", "qwen-tiny-m")}
TINY_VISION = ViTConfig("clip", 32, 4, 64, 3, 4, 256, 1e-5)


def _stages(a, data_root: str, vision_dir: str, steps: tuple[int, int], batch: tuple[int, int],
            lr2: float) -> list[dict]:
    lay = training_layout(data_root)
    init = [{"hf": f"{data_root}/{{hf_dir}}", "map": [["language_model", ""]]},
            {"hf": f"{data_root}/{vision_dir}", "map": [["vision_tower", ""]]}]
    return [
        dict(name="align", stage=1, init_from=init,
             data=dict(source="llava", files=dict(train=lay["pretrain"]),
                       image_folder=lay["pretrain_images"]),
             train=dict(steps=steps[0], batch_size=batch[0]),
             optim=dict(lr=1e-3, weight_decay=0.0, frozen=None)),
        dict(name="tune", stage=2,
             data=dict(source="llava", files=dict(train=lay["mix"]),
                       image_folder=lay["mix_images"]),
             train=dict(steps=steps[1], batch_size=batch[1]),
             optim=dict(lr=lr2, weight_decay=0.0, frozen=None)),
    ]


def _benchmarks(data_root: str, limit: int) -> dict:
    family = {b: f for f, bs in FAMILIES.items() for b in bs}
    return {name: dict(spec, family=family[name], limit=limit)
            for name, spec in benchmark_layout(data_root).items()}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, tiny=False, smoke=False, data_root="/data/llava", pod="", zone="",
                  accelerator="v5litepod-256", remote="", dry_run=False, spot=False, limit=-1)
    tiny = a.tiny or a.smoke
    data_root = "{workdir}/data" if tiny else a.data_root
    c = ml_collections.ConfigDict()
    c.mode = "sweep"
    c.executor = "inprocess"
    if a.pod:
        c.executor = (f"tpu_pod:name={a.pod},zone={a.zone},accelerator={a.accelerator},"
                      f"mode=queued,remote={a.remote},dry_run={int(a.dry_run)},spot={int(a.spot)}")

    p = ml_collections.ConfigDict()
    p.stage = 2
    if tiny:
        llms = {k: to_dict(presets.tiny_sweep_llm(v, data.WordTokenizer().vocab_size))
                for k, (v, _) in TINY_LLMS.items()}
        if a.smoke:
            llms = dict(list(llms.items())[:1])
        tok = data.WordTokenizer()
        model = presets.llava("clip-tiny", "qwen2-tiny", 16, "quecc")
        p.model = to_dict(model)
        p.model.vision = to_dict(TINY_VISION)
        p.model.image_token_id = tok.image_token_id
        p.model.compressor.update(feature_layers=(1, 2, 3), heads=4)
        tokens = (1, 64) if a.smoke else (1, 16, 64)
        steps, batch, lr2 = ((2, 2) if a.smoke else (30, 40)), (16, 16), 1e-3
        vision_dir = "clip-tiny"
    else:
        llms = {k: dict(to_dict(presets.LLM[v]), vocab_size=QWEN_VOCAB) for k, (v, _) in LLMS.items()}
        model = presets.llava("clip-l/14-336", "qwen1.5-0.5b", 16, "quecc")
        p.model = to_dict(model)
        p.model.image_token_id = QWEN_IMAGE_ID
        p.model.compressor.update(feature_layers=(12, 16, 22, 23), heads=8)
        tokens = TOKENS
        steps = (PRETRAIN_EXAMPLES // 256, MIX_EXAMPLES // 128)
        batch, lr2, vision_dir = (256, 128), 2e-5, VISION_DIR
        for llm in llms.values():
            llm.update(dtype="bfloat16", remat=True)
        p.model.vision.update(dtype="bfloat16", remat=True)

    p.data = data.default_config()
    if tiny:
        p.data.max_text_len, p.data.max_question_len = 64, 48
    else:
        p.data.tokenizer.update(kind="hf", path=f"{data_root}/{{hf_dir}}")
        p.data.template = "qwen_chat"
        p.data.max_text_len, p.data.max_question_len = 2048, 64
        p.data.on_error = "skip"
        p.data.worker_count = 8
    p.train = trainer.default_config()
    p.train.update(log_every=10 if tiny else 50, ckpt_every=20 if tiny else 500,
                   async_ckpt=not tiny)
    p.optim = optimizer.default_config()
    p.optim.warmup_frac, p.optim.schedule = 0.03, "cosine"
    p.mesh, p.sharding = ({"data": -1}, "dp") if tiny else ({"fsdp": -1}, "fsdp")
    p.eval = evaluator.default_config()
    p.eval.batch_size = 16 if tiny else 64
    p.eval.max_new_tokens = 4 if tiny else 16
    p.eval.benchmarks = _benchmarks(data_root, 2 if a.smoke else a.limit)
    p.stages = _stages(a, data_root, vision_dir, steps, batch, lr2)
    c.point = p

    grid = ml_collections.ConfigDict()
    grid.llm = llms
    grid.num_tokens = tokens
    grid.compressor = ("quecc",)
    grid.compressor_at = {str(tokens[-1]): "identity"}  # every patch: the plain projector
    grid.llm_vars = {k: {"hf_dir": d} for k, (_, d) in (TINY_LLMS if tiny else LLMS).items()}
    if not tiny:  # tensor parallelism: 2-way (stage 2's batch of 128 must split over the
        # data axes of 256 chips), 4-way from 4B up (launch/README.md: the AOT table)
        grid.llm_point = {k: dict(mesh={"fsdp": -1, "tensor": tp}, sharding="fsdp_tp")
                          for k, tp in (("qwen-0_5b", 2), ("qwen-1_8b", 2), ("qwen-4b", 4),
                                        ("qwen-7b", 4))}
    c.sweep = ml_collections.ConfigDict(dict(grid=grid, families=tuple(FAMILIES),
                                             text_tokens=0))
    if tiny:
        c.assets = ml_collections.ConfigDict(dict(
            root=data_root, num_pretrain=64 if a.smoke else 480,
            num_mix=64 if a.smoke else 640, per_benchmark=2 if a.smoke else 12,
            synthetic=dict(resolution=32, num_train=1000, num_validation=8,
                           num_test=120 if a.smoke else 400, seed=0,
                           tasks=DEFAULT_TASKS + ("caption",), max_objects=3, ocr_min_len=2,
                           ocr_max_len=3, ocr_scale=0),
            llms={d: llms[k] for k, (_, d) in TINY_LLMS.items() if k in llms},
            vision=dict(name=vision_dir, config=to_dict(TINY_VISION))))
    return c
