"""Cheap controls on a pre-training run: did the discriminator learn anything, and does fine-tuning get it?

1. Replaced-token detection on held-out text, with the run's own generator and masking: the discriminator's
   accuracy and AUC against the trivial rate of predicting "nothing was replaced".
2. How much the [CLS] state varies across inputs (what the sequence head reads), against random weights.
3. Loading: the discriminator read back as a classifier has every encoder weight of the saved one.

    .venv/bin/python benchmarks/rtd_controls.py runs/pretrain-long ../shared/data/sgd_dialogue_corpus/dev.txt \
        ../shared/data/clinc150/validation.jsonl
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from edge_electra.data import read_text_lines
from edge_electra.metrics import roc_auc
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train.checkpoint import load_pretrained
from edge_electra.train.model import Electra
from edge_electra.train.packing import Packer
from edge_electra.train.pretrain import ReplacedTokenDetection


@torch.no_grad()
def detection(run, held_out: str, tokenizer: Tokenizer, blocks: int, seq_len: int) -> dict:
    discriminator, _ = load_pretrained(f"{run}/discriminator")
    generator, _ = load_pretrained(f"{run}/generator")
    special = [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]
    rtd = ReplacedTokenDetection(discriminator, generator, special, tokenizer.mask_id).eval()
    torch.manual_seed(0)
    ids = torch.from_numpy(np.stack(list(itertools.islice(Packer([held_out], tokenizer, seq_len), blocks))))
    logits, replaced = [], []
    for batch in ids.split(32):
        out = rtd(batch)
        keep = ~torch.isin(batch, torch.tensor(special))
        logits.append(out["disc_logits"][keep])
        replaced.append(out["replaced"][keep])
    logits, replaced = torch.cat(logits).numpy(), torch.cat(replaced).numpy()
    return {"tokens": len(logits), "replaced_rate": float(replaced.mean()),
            "trivial_accuracy": float(1 - replaced.mean()),
            "accuracy": float(((logits > 0) == (replaced > 0.5)).mean()),
            "recall_of_replaced": float((logits[replaced > 0.5] > 0).mean()), "auc": roc_auc(logits, replaced)}


@torch.no_grad()
def cls_spread(model: Electra, tokenizer: Tokenizer, texts: list[str]) -> dict:
    enc = tokenizer(texts, max_length=32)
    cls = model.eval().encoder(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))[:, 0]
    unit = torch.nn.functional.normalize(cls, dim=-1)
    cosine = (unit @ unit.T)[~torch.eye(len(texts), dtype=torch.bool)].mean()
    return {"std_across_inputs": float(cls.std(0).mean()), "mean_pairwise_cosine": float(cosine)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a pretrain run folder (discriminator/ and generator/ inside)")
    parser.add_argument("held_out", help="held-out text, one utterance a line")
    parser.add_argument("labelled", help="utterances (JSONL or text) for the [CLS] spread")
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_pretrained(f"{args.run}/discriminator")
    print("replaced-token detection on held-out text:", detection(args.run, args.held_out, tokenizer, args.blocks,
                                                                    args.seq_len))
    texts = list(itertools.islice(read_text_lines([args.labelled]), 512))
    classifier, report = load_pretrained(f"{args.run}/discriminator", task="sequence", labels=["a", "b"])
    saved, _ = load_pretrained(f"{args.run}/discriminator")
    same = all(torch.equal(v, saved.state_dict()[k]) for k, v in classifier.state_dict().items()
               if k.startswith("encoder."))
    print(f"as a classifier: encoder identical to the saved one: {same}; newly initialised: {report['missing']}")
    torch.manual_seed(0)
    print("[CLS] spread, pre-trained:", cls_spread(classifier, tokenizer, texts))
    print("[CLS] spread, random weights:", cls_spread(Electra(classifier.config), tokenizer, texts))


if __name__ == "__main__":
    main()
