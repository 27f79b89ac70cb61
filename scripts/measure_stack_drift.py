#!/usr/bin/env python3
"""How far rounds of merge-and-re-quantize drift from a stack of frozen adapters (docs/rpo.md, "Stacked or merged").

    python scripts/measure_stack_drift.py [--rounds 3] [--rel-delta 0.01] [--seed 0]

(python: one with torch and bitsandbytes from scripts/requirements-fixtures.txt; CPU is enough.)

One decoder layer's seven projections at Qwen2.5-0.5B's shapes (hidden 896, intermediate 4864, 2 KV heads of 64),
base weights W0 = bf16(N(0, 0.02)) as a bf16 checkpoint holds them, and per round k a LoRA delta
D_k = (alpha / r)·B·A (r 64, alpha 16, A as PEFT initialises it, B random) scaled so that |D_k|_F = rel_delta·|W0|_F.
The quantizer is bitsandbytes' NF4 (blocksize 64, double quantization), which medllm reproduces bit for bit.
After k rounds, against the unquantized merge U_k = W0 + D_1 + ... + D_k (fp32):

  stacked           NF4(W0) + D_1 + ... + D_k: the adapters kept frozen under the next one (medllm rpo with
                    lora.merge_init_adapter: false); the only error is the base's one quantization.
  merged, bf16 base M_k = bf16(M_{k-1} + D_k), trained on as NF4(M_k): lora.merge_init_adapter: true with a bf16
                    model.path, each round's merged checkpoint the next round's base.
  merged, 4-bit     Q_k = NF4(bf16(dequant(Q_{k-1}) + D_k)): a 4-bit checkpoint dequantized, merged and
                    re-quantized each round.

and "vs stacked" is each merged weight against the stacked one: how far the model the next round starts from is
from the model the previous rounds trained (the adapters were trained on NF4(W0) + D_1 + ...), beside the size of
the update itself, mean |D_1 + ... + D_k|. Prints a Markdown table of max |diff| / mean |diff| over all seven
weights.
"""
import argparse
import math

import torch

SHAPES = {  # [out, in] of Qwen2.5-0.5B's projections
    "q_proj": (896, 896), "k_proj": (128, 896), "v_proj": (128, 896), "o_proj": (896, 896),
    "gate_proj": (4864, 896), "up_proj": (4864, 896), "down_proj": (896, 4864),
}


def nf4(w):
    """The weight a QLoRA model computes with: bitsandbytes NF4 (blocksize 64, double quant) of w, dequantized."""
    import bitsandbytes.functional as F

    w16 = w.to(torch.bfloat16)
    q, state = F.quantize_4bit(w16, blocksize=64, quant_type="nf4", compress_statistics=True)
    return F.dequantize_4bit(q, state).float()


def lora_delta(out_f, in_f, target_norm, g, r=64, alpha=16):
    bound = 1.0 / math.sqrt(in_f)  # PEFT's kaiming_uniform_(a=sqrt(5)) on [r, in]
    A = (torch.rand(r, in_f, generator=g) * 2 - 1) * bound
    B = torch.randn(out_f, r, generator=g)
    d = (alpha / r) * (B @ A)
    return d * (target_norm / d.norm())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rel-delta", type=float, default=0.01, help="|D_k|_F / |W0|_F per round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    W0 = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16).float() for n, s in SHAPES.items()}
    U = {n: w.clone() for n, w in W0.items()}
    S = {n: nf4(w) for n, w in W0.items()}  # stacked: NF4 of the base, plus fp32 adapters
    M = {n: w.clone() for n, w in W0.items()}  # merged bf16 checkpoints
    Q = {n: nf4(w) for n, w in W0.items()}  # 4-bit checkpoint (dequantized value)

    def stats(a, b):
        diffs = [(a[n] - b[n]).abs() for n in SHAPES]
        total = sum(d.numel() for d in diffs)
        return max(d.max().item() for d in diffs), sum(d.sum().item() for d in diffs) / total

    print(f"rel_delta {args.rel_delta} (|D_k|_F / |W0|_F), seed {args.seed}; "
          f"mean |W0| = {sum(w.abs().sum().item() for w in W0.values()) / sum(w.numel() for w in W0.values()):.3g}")
    print()
    print("| round | mean \\|ΣD\\| | stacked vs U (max / mean) | merged bf16 base vs U | merged 4-bit vs U | "
          "merged bf16 base vs stacked | merged 4-bit vs stacked |")
    print("|---|---|---|---|---|---|---|")
    for k in range(1, args.rounds + 1):
        for n, (o, i) in SHAPES.items():
            d = lora_delta(o, i, args.rel_delta * W0[n].norm().item(), g)
            U[n] = U[n] + d
            S[n] = S[n] + d
            M[n] = (M[n] + d).to(torch.bfloat16).float()
            Q[n] = nf4((Q[n] + d).to(torch.bfloat16).float())
        EM = {n: nf4(M[n]) for n in SHAPES}  # what the next round trains on
        cells = [stats(S, U), stats(EM, U), stats(Q, U), stats(EM, S), stats(Q, S)]
        update = stats(U, W0)[1]
        print(f"| {k} | {update:.2e} | " + " | ".join(f"{mx:.2e} / {mean:.2e}" for mx, mean in cells) + " |")


if __name__ == "__main__":
    main()
