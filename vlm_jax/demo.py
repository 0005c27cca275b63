"""Try a VLM on one image and prompt: `python -m vlm_jax.demo [--workdir RUN] [--question Q]`.

With `--workdir` (a training run, e.g. a tiny-sweep point) it loads that model; without, it
builds a tiny LLaVA-shaped model with random weights. The image is a scene from the built-in
synthetic suite. Prints the question, the answer, the visual-token count and the latencies.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", help="a training run directory (default: random tiny model)")
    p.add_argument("--index", type=int, default=0, help="which synthetic test scene")
    p.add_argument("--question", help="override the scene's question")
    p.add_argument("--max-new-tokens", type=int, default=8)
    args = p.parse_args(argv)

    from vlm_jax import batch as batch_lib
    from vlm_jax import data, models
    from vlm_jax.data import synthetic
    from vlm_jax.data.templates import ChatEncoder, get_template
    from vlm_jax.data.transforms import Prepare
    from vlm_jax.eval.generate import Generator
    from vlm_jax.train.checkpoint import load_run

    if args.workdir:
        config, params = load_run(args.workdir)
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
        import tiny_vlm
        config = tiny_vlm.get_config("llm=s,V=16")
        params = models.init_params(config.model, 0)
    cfg = models.from_dict(config.model)
    dcfg = data.check_config(config.data)
    example = synthetic.generate_example(data.config.synthetic_config(dcfg), "test", args.index)
    question = args.question or example["question"]
    record = {"id": f"demo-{args.index}", "file": "demo", "task": example["task"],
              "turns": [[f"{data.IMAGE_TOKEN}\n{question}", example["answer"]]],
              "question": question, "answer": example["answer"], "answers": [example["answer"]],
              "image": example["image"]}
    tok = data.make_tokenizer(dcfg)
    encoder = ChatEncoder(get_template(dcfg.template), tok, cfg.image_token_id,
                          cfg.num_visual_tokens)
    prepare = Prepare(encoder, image_size=cfg.vision.image_size, aspect=dcfg.aspect,
                      normalization="clip" if cfg.vision.family == "clip" else "siglip",
                      num_visual_tokens=cfg.num_visual_tokens, max_text_len=dcfg.max_text_len,
                      max_question_len=dcfg.max_question_len, eval_mode=True, on_error="raise")
    ex = prepare.map(record)
    inputs = {k: v[None] for k, v in batch_lib.model_inputs(ex).items()}
    gen = Generator(models.build(cfg), args.max_new_tokens, stop_ids=(tok.eos_id,),
                    pad_id=tok.pad_id)
    params = jax.device_put(params)
    gen(params, inputs)  # compile
    out = gen(params, inputs)
    answer = tok.decode(out.tokens[0, : out.lengths[0]])
    print(f"model: {'trained, ' + args.workdir if args.workdir else 'random tiny LLaVA-shaped'}")
    print(f"question: {question}\nanswer: {answer!r}  (reference: {example['answer']!r})")
    print(f"visual tokens: {cfg.num_visual_tokens} ({cfg.compressor.name}), prompt tokens: "
          f"{int(ex['valid'].sum())}, time to first token: {1e3 * out.prefill_s:.1f} ms, decode: "
          f"{1e3 * out.decode_s_per_token:.2f} ms/token")
    return {"answer": answer, "visual_tokens": cfg.num_visual_tokens, "ttft_ms": 1e3 * out.prefill_s}


if __name__ == "__main__":
    main()
