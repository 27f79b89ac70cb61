#!/usr/bin/env python3
"""The HF transformers side of the generation and evaluation benchmarks (bench-generate.sh, bench-eval.sh), run in
its own process so its peak memory is its own. Prints one JSON line per result.

  bench_hf.py generate MODEL PROMPTS_JSONL --batch B --new-tokens G --dtype fp32|bf16 --repeats R --device cpu|cuda
      The prompts (prompt_ids) as consecutive generate() calls of B prompts (left-padded, as HF batches), greedy,
      no EOS. Times come from a logits processor that notes when each token's scores arrive: prefill = until the
      first, decode = from the first to the last; prefill_cpu and decode_cpu divide by the process CPU time of the
      same spans. prefill tok/s counts real prompt tokens (not padding).
  bench_hf.py eval MODEL PROMPTS_JSON --loop batch1|sorted --batch B --max-new-tokens G --dtype fp32|bf16
      The rendered prompts (a JSON list of strings) through greedy generate() as a user's evaluation loop would:
      one at a time (batch1), or sorted by length and in batches of B (sorted; left-padded). Stops at the model's
      EOS ids and at max_new_tokens, as `medllm eval` does. Wall and CPU time of the loop (model load excluded); with
      --expect FILE (a JSON list of texts) the number of outputs equal to them ("agree").
"""
import argparse
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench_setup as bs  # noqa: E402


class StepClock(LogitsProcessor):
    """Notes the time each step's scores arrive (after the forward that produced them; on CUDA after a
    synchronize, so the time is the computation's and not its launch's)."""

    def __init__(self, device):
        self.times = []
        self.cpu = []
        self.device = device

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return scores


def load(model_dir, dtype, device="cpu"):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    return model.to(device).eval()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def left_pad(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def cmd_generate(a):
    model = load(a.model, a.dtype, a.device)
    prompts = [json.loads(line)["prompt_ids"] for line in open(a.prompts) if line.strip()]
    real = sum(len(p) for p in prompts)

    def run(new_tokens):
        prefill = decode = prefill_cpu = decode_cpu = 0.0
        for first in range(0, len(prompts), a.batch):
            ids, mask = left_pad(prompts[first:first + a.batch], 0)
            clock = StepClock(a.device)
            ids, mask = ids.to(a.device), mask.to(a.device)
            sync(a.device)
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, eos_token_id=None, pad_token_id=0,
                               logits_processor=LogitsProcessorList([clock]))
            prefill += clock.times[0] - t0
            decode += clock.times[-1] - clock.times[0]
            prefill_cpu += clock.cpu[0] - c0
            decode_cpu += clock.cpu[-1] - clock.cpu[0]
        return prefill, decode, prefill_cpu, decode_cpu

    run(2)  # warm-up
    for rep in range(a.repeats):
        prefill, decode, prefill_cpu, decode_cpu = run(a.new_tokens)
        decoded = len(prompts) * (a.new_tokens - 1)
        print(json.dumps({"rep": rep, "batch": a.batch, "prefill": real / prefill, "decode": decoded / decode,
                          "prefill_cpu": real / prefill_cpu, "decode_cpu": decoded / decode_cpu,
                          "prompt_tokens": real}), flush=True)


def cmd_eval(a):
    model = load(a.model, a.dtype)
    tok = bs.tokenizer(a.model)
    texts = json.load(open(a.prompts))
    eos = model.generation_config.eos_token_id
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = list(range(len(rows)))
    batch = 1
    if a.loop == "sorted":
        order.sort(key=lambda i: len(rows[i]))
        batch = a.batch
    generated = 0
    texts_out = [None] * len(rows)
    t0, c0 = time.perf_counter(), time.process_time()
    for first in range(0, len(order), batch):
        chunk = order[first:first + batch]
        ids, mask = left_pad([rows[i] for i in chunk], tok.pad_token_id)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=a.max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id)
        new = out[:, ids.shape[1]:]
        generated += int((new != tok.pad_token_id).sum())
        for k, i in enumerate(chunk):
            texts_out[i] = tok.decode(new[k], skip_special_tokens=True)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    result = {"loop": a.loop, "batch": batch, "seconds": seconds, "cpu_seconds": cpu_seconds, "questions": len(rows),
              "prompt_tokens": sum(map(len, rows)), "generated_tokens": generated}
    if a.expect:  # what the other stack wrote for the same prompts, in the same order
        expected = json.load(open(a.expect))
        result["agree"] = sum(x == y for x, y in zip(texts_out, expected))
    print(json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("model")
    g.add_argument("prompts")
    g.add_argument("--batch", type=int, required=True)
    g.add_argument("--new-tokens", type=int, required=True)
    g.add_argument("--dtype", default="fp32")
    g.add_argument("--repeats", type=int, default=1)
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e = sub.add_parser("eval")
    e.add_argument("model")
    e.add_argument("prompts")
    e.add_argument("--loop", choices=["batch1", "sorted"], required=True)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--max-new-tokens", type=int, required=True)
    e.add_argument("--dtype", default="fp32")
    e.add_argument("--expect", help="JSON list of the outputs to compare with (counted in 'agree')")
    a = ap.parse_args()
    torch.manual_seed(0)
    {"generate": cmd_generate, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
