"""Replaced-token-detection training steps/s: edge-electra's step vs. the same step built from HF transformers.

Both sides train the same shapes (generator = `cfg.generator(ratio)`, all embeddings shared, λ=50) with
AdamW, on the same random token blocks, one after the other in one process. Prints a JSON report.

FLOPs per step (the useful work of the algorithm, the same number for both sides; forward+backward = 3×forward):
    per token, forward, each of generator (g) and discriminator (d):
        2·(L·(4H² + 2H·I) + E·H [if E≠H])   matmuls of the encoder
      + 4·L·S·H                              attention scores and weighted sum (QKᵀ and A·V)
    + 2·H_d² (discriminator head) per token, + 2·(H_g·E + E·V) (generator head) per MASKED token
    step = 3 · tokens · that.
MFU = FLOPs per step × steps/s ÷ peak. Peak: --peak-tflops, else 989 TFLOP/s for H100/H200 (dense bf16),
else the fp32 matmul throughput measured on this CPU (so CPU MFU is relative to what matmuls reach here).
The ELECTRA paper (Table 1/8) gives 1.4e18 train FLOPs for ELECTRA-Small: 1M steps of 128×128 tokens,
i.e. 1.4e12 FLOPs per step; `paper_flops_per_step` scales that to the batch measured.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from edge_electra.train.config import preset
from edge_electra.train.model import Electra
from edge_electra.train.pretrain import ReplacedTokenDetection, choose_masked

PAPER_SMALL_FLOPS_PER_STEP = 1.4e18 / 1_000_000  # at batch 128 × seq 128
SPECIAL = [0, 2, 3]  # [PAD] [CLS] [SEP] in the BERT vocabulary layout
MASK_ID = 103


def forward_flops_per_token(cfg, seq: int) -> float:
    matmuls = cfg.num_layers * (4 * cfg.hidden_size ** 2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    if cfg.embedding_size != cfg.hidden_size:
        matmuls += cfg.embedding_size * cfg.hidden_size
    return 2 * matmuls + 4 * cfg.num_layers * seq * cfg.hidden_size


def step_flops(disc_cfg, gen_cfg, batch: int, seq: int, mask_prob: float) -> float:
    tokens = batch * seq
    masked = batch * max(1, round(mask_prob * seq))
    forward = tokens * (forward_flops_per_token(disc_cfg, seq) + forward_flops_per_token(gen_cfg, seq)
                        + 2 * disc_cfg.hidden_size ** 2)
    forward += masked * 2 * (gen_cfg.hidden_size * gen_cfg.embedding_size + gen_cfg.embedding_size * gen_cfg.vocab_size)
    return 3 * forward


def hf_config(c):
    """Our ElectraConfig's shape as a transformers.ElectraConfig."""
    import transformers
    return transformers.ElectraConfig(
        vocab_size=c.vocab_size, embedding_size=c.embedding_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position, layer_norm_eps=c.layer_norm_eps)


def hf_step_module(disc_cfg, gen_cfg, mask_prob: float, rtd_weight: float = 50.0, special=SPECIAL, mask_id=MASK_ID):
    """The same RTD step written with ElectraForMaskedLM + ElectraForPreTraining (shared embeddings)."""
    import transformers

    class HFReplacedTokenDetection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = transformers.ElectraForMaskedLM(hf_config(gen_cfg))
            self.discriminator = transformers.ElectraForPreTraining(hf_config(disc_cfg))
            self.generator.electra.embeddings = self.discriminator.electra.embeddings
            self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight

        def forward(self, input_ids):
            positions, _ = choose_masked(input_ids, torch.tensor(special, device=input_ids.device), mask_prob)
            is_masked = torch.zeros_like(input_ids, dtype=torch.bool).scatter(1, positions, True)
            labels = input_ids.masked_fill(~is_masked, -100)
            gen = self.generator(input_ids=input_ids.masked_fill(is_masked, mask_id), labels=labels)
            with torch.no_grad():
                probs = torch.softmax(gen.logits.float()[is_masked], -1)
                corrupted = input_ids.clone()
                corrupted[is_masked] = torch.multinomial(probs, 1).squeeze(-1)
            disc = self.discriminator(input_ids=corrupted, labels=(corrupted != input_ids).long())
            return {"loss": gen.loss + rtd_weight * disc.loss}

    return HFReplacedTokenDetection()


def measure(model, blocks, steps: int, warmup: int, device, precision: str) -> float:
    """Seconds per training step (forward, backward, AdamW), after `warmup` untimed steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    elapsed = 0.0
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = model(blocks[i % len(blocks)])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            elapsed += time.perf_counter() - start
    return elapsed / steps


def peak_flops(device, given_tflops: float | None) -> tuple[float, str]:
    if given_tflops:
        return given_tflops * 1e12, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name or "H200" in name:
            return 989.4e12, f"{name} dense bf16 spec"
        raise SystemExit(f"no built-in peak for {name}; pass --peak-tflops")
    a = torch.randn(1024, 1024)
    a @ a
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ a
    return reps * 2 * 1024 ** 3 / (time.perf_counter() - start), "measured fp32 1024² matmul on this CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--generator-ratio", type=float, default=0.25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile our step too (reported separately)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    disc_cfg = preset(args.preset, task="discriminator", max_position=max(512, args.seq))
    gen_cfg = disc_cfg.generator(args.generator_ratio)
    torch.manual_seed(0)
    blocks = [torch.randint(1000, disc_cfg.vocab_size, (args.batch, args.seq), device=device) for _ in range(4)]
    for b in blocks:
        b[:, 0], b[:, -1] = 2, 3
    flops = step_flops(disc_cfg, gen_cfg, args.batch, args.seq, 0.15)
    peak, peak_source = peak_flops(device, args.peak_tflops)

    def ours():
        return ReplacedTokenDetection(Electra(disc_cfg), Electra(gen_cfg), SPECIAL, MASK_ID).to(device).train()

    candidates = {"edge_electra": ours}
    if args.compile:
        candidates["edge_electra_compiled"] = lambda: torch.compile(ours())
    if not args.skip_hf:
        candidates["hf_transformers"] = lambda: hf_step_module(disc_cfg, gen_cfg, 0.15).to(device).train()
    results = {}
    for name, build in candidates.items():
        seconds = measure(build(), blocks, args.steps, args.warmup, device, precision)
        results[name] = {"steps_per_s": round(1 / seconds, 4), "tokens_per_s": round(args.batch * args.seq / seconds, 1),
                         "achieved_tflops": round(flops / seconds / 1e12, 4), "mfu": round(flops / seconds / peak, 5)}
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset, "batch": args.batch, "seq": args.seq, "precision": precision, "steps": args.steps,
        "flops_per_step": flops,
        "paper_flops_per_step": PAPER_SMALL_FLOPS_PER_STEP * args.batch * args.seq / (128 * 128),
        "peak_tflops": round(peak / 1e12, 3), "peak_source": peak_source,
        "torch": torch.__version__, "results": results}
    if "hf_transformers" in results:
        report["speedup_vs_hf"] = round(results["edge_electra"]["steps_per_s"] / results["hf_transformers"]["steps_per_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
