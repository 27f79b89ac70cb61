#!/usr/bin/env python3
"""The reference half of scripts/bench-nf4.sh: the measurements of bench/nf4.cpp through bitsandbytes + PEFT (and
plain torch for the bf16 baselines) on the same shapes, then one table comparing them with medllm's rows.

    bench_nf4_reference.py DEVICE ITERS TOKENS RANK MEDLLM_TSV

MEDLLM_TSV holds bench_nf4's output (rows: impl, metric, shape, ms, bytes). Speed-ups are reference time / medllm
time (> 1: medllm is faster). Both sides use bf16 activations, NF4 with double quantization and block size 64,
LoRA rank RANK with alpha 16 and fp32 adapters, and time the same number of iterations after one warm-up call.
"""
import sys
import time

import torch
import torch.nn as nn

SHAPES = [("q_o_3584x3584", 3584, 3584), ("k_v_512x3584", 512, 3584),
          ("gate_up_18944x3584", 18944, 3584), ("down_3584x18944", 3584, 18944)]


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    device, iters, tokens, rank, medllm_tsv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import peft
    from peft import LoraConfig, get_peft_model

    heavy_iters = max(1, iters // 5)
    rows = []

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn, n):
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) / n * 1e3

    def row(metric, shape, ms, nbytes=0.0):
        rows.append(("reference", metric, shape, ms, nbytes))

    def quantized_layer(weight):
        layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False, compute_dtype=torch.bfloat16,
                                  quant_type="nf4", compress_statistics=True)
        layer.load_state_dict({"weight": weight.cpu()})
        return layer.to(device)  # quantizes (Params4bit quantizes when moved to its device)

    class Holder(nn.Module):  # PEFT dispatches its bnb LoRA layer when the model says it is loaded in 4 bit
        def __init__(self, proj, four_bit):
            super().__init__()
            self.proj = proj
            self.is_loaded_in_4bit = four_bit

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    with torch.no_grad():
        src = torch.ones(1 << 30, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        row("copy", "1GiB", timed(lambda: dst.copy_(src), iters), 2.0 * src.numel())
        del src, dst

    lora = LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0, target_modules=["proj"])
    for name, out_f, in_f in SHAPES:
        weight = torch.randn(out_f, in_f, device=device, dtype=torch.bfloat16) * 0.02
        packed, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        n = out_f * in_f
        nf4_bytes = packed.numel() + state.absmax.numel() + 4 * state.state2.absmax.numel() + 4 * 16 + 4 * 256
        layer = quantized_layer(weight)
        with torch.no_grad():
            row("dequant", name, timed(lambda: F.dequantize_4bit(packed, state), iters), nf4_bytes + 2.0 * n)
            for r in (1, 4):
                x = torch.randn(r, in_f, device=device, dtype=torch.bfloat16)
                row(f"gemv{r}", name, timed(lambda: layer(x), iters), nf4_bytes + 2.0 * r * (in_f + out_f))
            xt = torch.randn(tokens, in_f, device=device, dtype=torch.bfloat16)
            row("linear", name, timed(lambda: layer(xt), heavy_iters))
            row("dense", name, timed(lambda: torch.nn.functional.linear(xt, weight), heavy_iters))

        x = torch.randn(tokens, in_f, device=device, dtype=torch.bfloat16, requires_grad=True)
        grad_out = torch.randn(tokens, out_f, device=device, dtype=torch.bfloat16)
        qlora = get_peft_model(Holder(layer, True), lora)
        dense = nn.Linear(in_f, out_f, bias=False, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            dense.weight.copy_(weight)
        dense_lora = get_peft_model(Holder(dense, False), lora)
        for model in (qlora, dense_lora):
            with torch.no_grad():
                model.base_model.model.proj.lora_B["default"].weight.normal_(0, 0.01)
        assert type(qlora.base_model.model.proj).__name__ == "Linear4bit", type(qlora.base_model.model.proj)
        row("qlora_fb", name, timed(lambda: qlora(x).backward(grad_out), heavy_iters))
        row("lora_fb", name, timed(lambda: dense_lora(x).backward(grad_out), heavy_iters))
        del layer, qlora, dense, dense_lora, packed, state, weight

    # The 72B model's NF4 + DQ bytes the way bitsandbytes holds them (all 80 layers on CUDA, one layer x 80 on CPU).
    hidden, inter, kv, layers, vocab = 8192, 29568, 1024, 80, 152064
    projections = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden),
                   (hidden, inter)]
    unquantized = 2.0 * (2 * vocab * hidden + layers * (2 * hidden + hidden + 2 * kv) + hidden)

    def quantize_layer(keep):
        for o, i in projections:
            keep.append(F.quantize_4bit(torch.randn(o, i, device=device, dtype=torch.bfloat16) * 0.02, blocksize=64,
                                        compress_statistics=True, quant_type="nf4"))

    def state_bytes(packed, state):
        return (packed.numel() + state.absmax.numel() + 4 * state.state2.absmax.numel() + 4 * state.code.numel()
                + 4 * state.state2.code.numel())

    keep = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        for _ in range(layers):
            quantize_layer(keep)
        torch.cuda.synchronize()
        row("mem72b", "Qwen2.5-72B", 0, torch.cuda.memory_allocated() - before + unquantized)
    else:
        quantize_layer(keep)
        row("mem72b", "Qwen2.5-72B", 0, layers * sum(state_bytes(p, s) for p, s in keep) + unquantized)
    del keep

    for r in rows:
        print("\t".join([r[0], r[1], r[2], f"{r[3]:.6f}", f"{r[4]:.0f}"]))
    report(device, tokens, rank, iters, medllm_tsv, rows,
           f"bitsandbytes {bnb.__version__}, peft {peft.__version__}, torch {torch.__version__}")


def report(device, tokens, rank, iters, medllm_tsv, reference_rows, versions):
    ours = {}
    with open(medllm_tsv) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 5 and parts[0] == "medllm":
                ours[(parts[1], parts[2])] = (float(parts[3]), float(parts[4]))
    theirs = {(r[1], r[2]): (r[3], r[4]) for r in reference_rows}
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n== NF4 / QLoRA on {gpu}: tokens={tokens}, LoRA rank={rank}, iters={iters}; reference: {versions}")
    copy_ours = ours[("copy", "1GiB")][1] / ours[("copy", "1GiB")][0] / 1e6
    copy_ref = theirs[("copy", "1GiB")][1] / theirs[("copy", "1GiB")][0] / 1e6
    print(f"copy bandwidth (1 GiB, read + write): medllm {copy_ours:.1f} GB/s, torch {copy_ref:.1f} GB/s")
    print(f"{'shape':20s} {'measurement':34s} {'medllm ms':>10s} {'ref ms':>10s} {'speed-up':>8s}  notes")

    def line(shape, label, metric, ref_metric=None, note=""):
        ms, nbytes = ours[(metric, shape)]
        ref_ms = theirs[(ref_metric or metric, shape)][0]
        print(f"{shape:20s} {label:34s} {ms:10.4f} {ref_ms:10.4f} {ref_ms / ms:7.2f}x  {note}")

    for shape, _, _ in SHAPES:
        ms, nbytes = ours[("dequant", shape)]
        gbs = nbytes / ms / 1e6
        line(shape, "dequantize NF4+DQ -> bf16", "dequant", note=f"{gbs:.1f} GB/s = {100 * gbs / copy_ours:.1f}% of copy")
        for r in (1, 4):
            ms, nbytes = ours[(f"gemv{r}", shape)]
            bound = nbytes / (copy_ours * 1e6)
            line(shape, f"GEMV {r} row{'s' if r > 1 else ''} (bnb Linear4bit)", f"gemv{r}",
                 note=f"bandwidth bound {bound:.4f} ms = {100 * bound / ms:.1f}% of it")
        line(shape, f"NF4 linear, {tokens} tokens", "linear",
             note=f"bf16 at::linear {ours[('dense', shape)][0]:.4f} ms")
        line(shape, "QLoRA fwd+bwd vs bnb+PEFT", "qlora_fb")
        line(shape, "QLoRA fwd+bwd vs bf16 Linear+PEFT", "qlora_fb", "lora_fb")
        line(shape, "bf16 LoRA fwd+bwd vs bf16 Linear+PEFT", "lora_fb")
    gib = 1 << 30
    mem_ours, mem_ref = ours[("mem72b", "Qwen2.5-72B")][1], theirs[("mem72b", "Qwen2.5-72B")][1]
    how = "all 80 layers quantized on the GPU" if device == "cuda" else "one layer quantized, x 80"
    print(f"Qwen2.5-72B in NF4+DQ (bf16 embeddings, lm_head, norms, biases; {how}): "
          f"medllm {mem_ours / gib:.2f} GiB, bitsandbytes {mem_ref / gib:.2f} GiB")


if __name__ == "__main__":
    main()
