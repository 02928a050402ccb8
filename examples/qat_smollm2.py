"""Quantization-aware fine-tuning of SmolLM2-135M with optax, then export of real quantized
weights whose forward is the training forward.

    python examples/qat_smollm2.py [--bits 3] [--steps 30] [--learn-scales] [--layers N] [--out DIR]

Trains on the bundled Persuasion slice, evaluates on the bundled Emma slice (never overlapping).
"""

import argparse

import jax
import numpy as np

import jaxquant as jq
from jaxquant import checkpoint
from jaxquant.evaluation import read_text
from jaxquant.evaluation.perplexity import perplexity
from jaxquant.evaluation.text import CALIB_TEXT
from jaxquant.models import load_model
from jaxquant.qat import convert, materialize, prepare_qat, qat_apply
from jaxquant.qat.optim import qat_optimizer
from jaxquant.qat.train import lm_loss, make_step, token_batches, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--layers", type=int, default=None,
                   help="keep the first N decoder blocks (a quick run; default: all 30)")
    p.add_argument("--learn-scales", action="store_true")
    p.add_argument("--out", default=None, help="save the quantized model here")
    args = p.parse_args()

    model = load_model("smollm2-135m", n_layers=args.layers)
    recipe = jq.Recipe((jq.Rule(("re:kernel$",), jq.WeightScheme(
        f"int{args.bits}", group_size=128, ragged_groups=True)),), name=f"int{args.bits}-g128")
    qat = prepare_qat(model.params, recipe, learn_scales=args.learn_scales)  # starts at RTN

    def loss_fn(trainable, tokens):
        return lm_loss(qat_apply(model.module, trainable, tokens)[0], tokens)

    opt = qat_optimizer(5e-5, 1e-3)
    train_ids = model.tokenizer.encode(read_text(None, default=CALIB_TEXT)[0])
    batches = token_batches(train_ids, args.seq_len, args.batch_size)
    qat, _, losses = train(make_step(loss_fn, opt), qat, opt.init(qat), batches, args.steps)
    print(f"training loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    qparams = convert(qat)  # real QArrays: dequantize(qparams) == the trained fake-quant weights
    eval_ids = model.tokenizer.encode(read_text(None)[0])

    def run(params, tokens):
        with jq.intercept():
            return model.module.apply(params, tokens)[0]

    for name, params in (("round to nearest", jq.quantize(model.params, recipe)),
                         ("after QAT", qparams)):
        r = perplexity(run, params, eval_ids, max_tokens=args.eval_tokens, progress=False)
        print(f"{name}: perplexity {r.ppl:.3f} on {r.n_tokens} tokens")
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(a, b)), jax.jit(jq.dequantize)(qparams),
        jax.jit(materialize)(qat)))
    print(f"converted weights equal the fake-quant weights bit for bit: {same}")
    if args.out:
        checkpoint.save(args.out, qparams, recipe, overwrite=True, extra={"model": "smollm2-135m"})
        print(f"saved; run: jaxquant eval --model {args.out}")


if __name__ == "__main__":
    main()
