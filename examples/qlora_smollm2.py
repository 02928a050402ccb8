"""QLoRA on SmolLM2-135M: bf16 LoRA adapters trained with optax on a frozen NF4
(double-quantized) base, then merged into a re-quantized NF4 model.

    python examples/qlora_smollm2.py [--steps 20] [--rank 16] [--alpha 32] [--layers N]
"""

import argparse

import jax
import optax

import jaxquant as jq
from jaxquant.evaluation import read_text
from jaxquant.evaluation.perplexity import perplexity
from jaxquant.evaluation.text import CALIB_TEXT
from jaxquant.models import load_model
from jaxquant.qat.lora import LoraConfig, init_adapters, lora_apply, merge_adapters
from jaxquant.qat.train import lm_loss, make_step, token_batches, train, tree_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--layers", type=int, default=None,
                   help="keep the first N decoder blocks (a quick run; default: all 30)")
    args = p.parse_args()

    model = load_model("smollm2-135m", n_layers=args.layers)
    base = jq.quantize(model.params, "nf4")  # stays quantized and frozen
    cfg = LoraConfig(rank=args.rank, alpha=args.alpha)
    adapters = init_adapters(jax.random.key(0), base, cfg)
    opt = optax.adam(2e-4)

    def loss_fn(adapters, tokens, base):
        return lm_loss(lora_apply(model.module, base, adapters, cfg, tokens)[0], tokens)

    batches = token_batches(model.tokenizer.encode(read_text(None, default=CALIB_TEXT)[0]),
                            args.seq_len, args.batch_size)
    adapters, opt_state, losses = train(make_step(loss_fn, opt, base), adapters,
                                        opt.init(adapters), batches, args.steps)
    print("loss curve:", " ".join(f"{x:.3f}" for x in losses))
    print(f"training state: NF4 base {tree_bytes(base):,} B, adapters {tree_bytes(adapters):,} B,"
          f" Adam {tree_bytes(opt_state):,} B (float32 model: {tree_bytes(model.params):,} B)")

    eval_ids = model.tokenizer.encode(read_text(None)[0])
    kw = dict(max_tokens=args.eval_tokens, progress=False)
    sep = perplexity(lambda a, t: lora_apply(model.module, base, a, cfg, t)[0], adapters,
                     eval_ids, **kw)
    merged = merge_adapters(base, adapters, cfg, "nf4")

    def run(params, tokens):
        with jq.intercept():
            return model.module.apply(params, tokens)[0]

    print(f"perplexity: NF4 base {perplexity(run, base, eval_ids, **kw).ppl:.3f}, "
          f"base + adapters {sep.ppl:.3f}, merged and re-quantized "
          f"{perplexity(run, merged, eval_ids, **kw).ppl:.3f}")


if __name__ == "__main__":
    main()
