"""Is the generator's early plateau ours? Train edge-electra's generator and Hugging Face's ElectraForMaskedLM.

Both get the same shape (`preset(...).generator(ratio)`), the same packed blocks with the same masked
positions, and the same optimizer and schedule; the script prints both masked-LM losses and top-1
accuracies as they train, next to the corpus's unigram entropy under the tokenizer, which is where a
generator that ignores the context ends up.

    .venv/bin/python benchmarks/generator_plateau.py ../shared/data/sgd_dialogue_corpus/train.txt \
        --tokenizer runs/pretrain-scratch/trained-tokenizer --num-layers 2 --steps 800
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from edge_electra.train.config import preset
from edge_electra.train.model import Electra
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train.optim import adamw, warmup_linear
from edge_electra.train.packing import Packer, batches
from edge_electra.train.pretrain import choose_masked

from pretrain_speed import hf_config


def unigram_entropy(blocks: list[torch.Tensor], special: torch.Tensor, vocab_size: int) -> tuple[float, float]:
    """(entropy in nats, frequency of the most frequent token) over the non-special tokens of `blocks`."""
    ids = torch.cat([b.flatten() for b in blocks])
    counts = np.bincount(ids[~torch.isin(ids, special)].numpy(), minlength=vocab_size).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum()), float(p.max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="+")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--generator-ratio", type=float, default=0.25)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--mask-prob", type=float, default=0.15)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import transformers
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    shape = preset(args.preset, vocab_size=tokenizer.vocab_size,
                   **({"num_layers": args.num_layers} if args.num_layers else {}))
    generator_cfg = shape.generator(args.generator_ratio)
    models = {"edge-electra": Electra(generator_cfg),
              "transformers": transformers.ElectraForMaskedLM(hf_config(generator_cfg))}
    optimizers = {name: adamw(m, args.lr, 0.01) for name, m in models.items()}
    schedules = {name: warmup_linear(o, args.steps // 10, args.steps) for name, o in optimizers.items()}
    special = torch.tensor([tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])

    seen, window = [], {name: [] for name in models}
    print(f"generator: {sum(p.numel() for p in models['edge-electra'].parameters()):,} params; "
          f"{args.steps} steps of {args.batch}×{args.seq} tokens")
    for step, (ids, _) in enumerate(batches(Packer(args.corpus, tokenizer, args.seq), args.batch), start=1):
        if step > args.steps:
            break
        seen.append(ids)
        positions, _ = choose_masked(ids, special, args.mask_prob)
        targets = ids.gather(1, positions)
        masked = ids.scatter(1, positions, tokenizer.mask_id)
        for name, model in models.items():
            logits = model(masked) if name == "edge-electra" else model(input_ids=masked).logits
            at_masked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))
            loss = F.cross_entropy(at_masked.transpose(1, 2), targets)
            optimizers[name].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            schedules[name].step()
            window[name].append((loss.item(), (at_masked.argmax(-1) == targets).float().mean().item()))
        if step % args.log_every == 0:
            print(f"step {step:5d}  " + "  ".join(
                f"{name}: loss {np.mean([l for l, _ in w]):.3f} top-1 {np.mean([a for _, a in w]):.3f}"
                for name, w in window.items()), flush=True)
            window = {name: [] for name in models}
    entropy, top = unigram_entropy(seen, special, tokenizer.vocab_size)
    print(f"unigram entropy of the {len(seen) * args.batch * args.seq:,} tokens seen: {entropy:.3f} nats; "
          f"most frequent token {top:.3f}")


if __name__ == "__main__":
    main()
