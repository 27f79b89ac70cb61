#!/usr/bin/env python3
"""The reference half of `scripts/bench-nf4.sh cpu-decode`: NF4 decode on the CPU through transformers +
bitsandbytes, on the same shapes and model as bench_nf4's cpu-layers / generate modes, and the comparison table.

    bench_nf4_cpu_reference.py model DIR CONFIG_JSON            random weights (bf16) for CONFIG_JSON, saved to DIR
    bench_nf4_cpu_reference.py layers ITERS MODELS ROWS...      bnb Linear4bit at each row count on the projection
                                                                 shapes of MODELS (comma list of 0.5B, 7B, 72B;
                                                                 72B: the first row count only)
    bench_nf4_cpu_reference.py generate DIR PROMPT_LEN NEW_TOKENS THREADS fp32|bf16
    bench_nf4_cpu_reference.py report TSV                        medians of every (side, metric, shape) and ratios

Rows printed (tab-separated, as bench_nf4): side, metric, shape, value, bytes. `layers` values are milliseconds per
call (metric decode_<dtype>_r<rows>); `generate` values are tokens/s (prefill_<dtype>, decode_<dtype>). Both sides
hold the projections in NF4 with double quantization and block size 64 (bitsandbytes' defaults in transformers'
BitsAndBytesConfig with bnb_4bit_use_double_quant=True), compute in the activation dtype, and time the same way:
one warm-up call, then the median of ITERS calls (layers); generate(2) on a 16-token prompt as warm-up, then
prefill = P / t(generate 1 token), decode = (G - 1) / (t(G tokens) - t(1 token)) at batch 1 on the P-token prompt,
with t the wall time and again with t the process's CPU time (generate; rows prefill_cpu_<dtype>, decode_cpu_<dtype>).
"""
import json
import os
import statistics
import sys
import time

import torch

SHAPES = [("0.5B", "q_o", 896, 896), ("0.5B", "k_v", 128, 896), ("0.5B", "gate_up", 4864, 896),
          ("0.5B", "down", 896, 4864), ("7B", "q_o", 3584, 3584), ("7B", "k_v", 512, 3584),
          ("7B", "gate_up", 18944, 3584), ("7B", "down", 3584, 18944), ("72B", "q_o", 8192, 8192),
          ("72B", "k_v", 1024, 8192), ("72B", "gate_up", 29568, 8192), ("72B", "down", 8192, 29568)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def emit(metric, shape, value):
    print(f"reference\t{metric}\t{shape}\t{value:.6f}\t0", flush=True)


def make_model(out_dir, config_json):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    with open(config_json) as f:
        cfg = Qwen2Config(**{k: v for k, v in json.load(f).items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    generation_config = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(generation_config):
        os.remove(generation_config)


def layers(iters, models, rows):
    import bitsandbytes as bnb
    # CLOCK=cpu: the process's CPU time, as bench_nf4 (meaningful at one thread on a shared machine).
    clock = time.process_time if os.environ.get("CLOCK") == "cpu" else time.perf_counter
    torch.manual_seed(0)
    with torch.no_grad():
        for model, name, out_f, in_f in SHAPES:
            if model not in models.split(","):
                continue
            weight = torch.randn(out_f, in_f, dtype=torch.bfloat16) * 0.02
            shape = f"{model}.{name}_{out_f}x{in_f}"
            for dt, dtype in DTYPES.items():
                layer = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=dtype, quant_type="nf4",
                                          compress_statistics=True, device="meta")
                # Stored bf16 as medllm's (and a bf16 checkpoint's): Params4bit quantizes on the move to a device.
                layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True).to("cpu")
                assert layer.weight.bnb_quantized and layer.weight.quant_state.dtype == torch.bfloat16
                for r in rows:
                    x = torch.randn(r, in_f, dtype=dtype)
                    layer(x)
                    times = []
                    for _ in range(iters):
                        start = clock()
                        layer(x)
                        times.append(clock() - start)
                    emit(f"decode_{dt}_r{r}", shape, statistics.median(times) * 1e3)
                    if model == "72B":
                        break
                del layer


def generate(model_dir, prompt_len, new_tokens, threads, dt):
    from transformers import BitsAndBytesConfig, Qwen2ForCausalLM
    torch.set_num_threads(threads)
    dtype = DTYPES[dt]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = Qwen2ForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype, device_map="cpu")
    model.eval()
    n4 = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    if n4 != 7 * model.config.num_hidden_layers:
        sys.exit(f"bench_nf4_cpu_reference: expected {7 * model.config.num_hidden_layers} Linear4bit, found {n4}")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len), generator=g)
    mask = torch.ones_like(ids)

    def run(new, length):  # (wall, process CPU) seconds
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model.generate(ids[:, :length], attention_mask=mask[:, :length], max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
        return time.perf_counter() - start, time.process_time() - cpu

    run(2, min(prompt_len, 16))
    t1 = run(1, prompt_len)
    tg = run(new_tokens, prompt_len)
    emit(f"prefill_{dt}", "Qwen2.5-0.5B", prompt_len / t1[0])
    emit(f"decode_{dt}", "Qwen2.5-0.5B", (new_tokens - 1) / max(tg[0] - t1[0], 1e-9))
    emit(f"prefill_cpu_{dt}", "Qwen2.5-0.5B", prompt_len / t1[1])
    emit(f"decode_cpu_{dt}", "Qwen2.5-0.5B", (new_tokens - 1) / max(tg[1] - t1[1], 1e-9))


def report(tsv):
    values = {}
    with open(tsv) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 5 and parts[0] in ("medllm", "reference"):
                values.setdefault((parts[0], parts[1], parts[2]), []).append(float(parts[3]))
    med = {k: statistics.median(v) for k, v in values.items()}
    reps = max((len(v) for v in values.values()), default=0)

    def get(side, metric, shape):
        return med.get((side, metric, shape))

    import bitsandbytes as bnb
    import transformers
    print(f"\n== NF4 decode on the CPU, medians of {reps} repeats; reference: transformers {transformers.__version__}, "
          f"bitsandbytes {bnb.__version__}, torch {torch.__version__}")
    print("\nQwen2.5-0.5B (random weights, vocabulary 151,936) generate at batch 1, tokens/s "
          "(> 1: medllm faster)")
    print("(prefill/decode: wall clock; *_cpu: tokens per CPU-second of the process, the load-independent figure at "
          "one thread)")
    print(f"{'dtype':6s} {'phase':12s} {'medllm':>9s} {'bnb':>9s} {'ratio':>7s}")
    for dt in DTYPES:
        for phase in ("prefill", "decode", "prefill_cpu", "decode_cpu"):
            ours, theirs = get("medllm", f"{phase}_{dt}", "Qwen2.5-0.5B"), get("reference", f"{phase}_{dt}", "Qwen2.5-0.5B")
            if ours and theirs:
                print(f"{dt:6s} {phase:12s} {ours:9.2f} {theirs:9.2f} {ours / theirs:6.2f}x")

    rows = sorted({int(k[1].rsplit("_r", 1)[1]) for k in med if k[1].startswith("fused_")})
    print("\nPer projection, ms per call (fused = nf4_gemv_cpu, dqmm = dequantize + GEMM, bnb = Linear4bit); "
          "speed-up = bnb / fused")
    print(f"{'shape':28s} {'dtype':5s} {'rows':>4s} {'fused':>9s} {'dqmm':>9s} {'bnb':>9s} {'vs bnb':>7s} "
          f"{'vs dqmm':>7s} {'GB/s':>6s}")
    for model, name, out_f, in_f in SHAPES:
        shape = f"{model}.{name}_{out_f}x{in_f}"
        for dt in DTYPES:
            for r in rows:
                fused = get("medllm", f"fused_{dt}_r{r}", shape)
                if fused is None:
                    continue
                dqmm = get("medllm", f"dqmm_{dt}_r{r}", shape)
                ref = get("reference", f"decode_{dt}_r{r}", shape)
                nbytes = statistics.median(
                    [float(l.split("\t")[4]) for l in open(tsv) if l.startswith(f"medllm\tfused_{dt}_r{r}\t{shape}\t")])
                print(f"{shape:28s} {dt:5s} {r:4d} {fused:9.3f} {dqmm or float('nan'):9.3f} "
                      f"{ref if ref is not None else float('nan'):9.3f} "
                      f"{(ref / fused) if ref else float('nan'):6.2f}x {(dqmm / fused) if dqmm else float('nan'):6.2f}x "
                      f"{nbytes / fused / 1e6:6.1f}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "model" and len(args) == 2:
        make_model(args[0], args[1])
    elif cmd == "layers" and len(args) >= 3:
        layers(int(args[0]), args[1], [int(r) for r in args[2:]])
    elif cmd == "generate" and len(args) == 5 and args[4] in DTYPES:
        generate(args[0], int(args[1]), int(args[2]), int(args[3]), args[4])
    elif cmd == "report" and len(args) == 1:
        report(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
