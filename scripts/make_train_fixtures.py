#!/usr/bin/env python3
"""Golden fixtures for the trainer (tests/train/), from the reference stack (transformers 5.17, peft 0.21.2,
torch 2.11, CPU, fp32). Re-run:  .venv/bin/python scripts/make_train_fixtures.py

Writes tests/fixtures/train/:
  byte-tokenizer/   vocab.json (the 256 byte-level tokens, ids 0..255 as in Qwen2's vocabulary), an empty
                    merges.txt and <|endoftext|> = 256, so the tiny fixture model (vocab 512) can train on text
  schedules.json    per-step learning rates of transformers' get_*_schedule_with_warmup through LambdaLR
  parity/           a hand loop with HF Trainer's semantics (transformers >= 4.46 loss normalization by the step's
                    target tokens, gradient accumulation 2, clip_grad_norm_ 0.9 (below steps 2-3 norms, so clipping acts), AdamW single-tensor, warmup +
                    cosine) on tests/fixtures/model/qwen2-tiny-tied with a fixed PEFT adapter:
                      init_adapter/ (PEFT save_pretrained), batches.safetensors, reference.json (per micro-batch
                      losses, per step pre-clip grad norms and lrs), final_adapter/ after 3 optimizer steps
The hand loop is what Trainer.training_step + the inner loop of _inner_training_loop do for this setup; Trainer
itself is not used because its default optimizer (adamw_torch_fused) and dataloader shuffling would have to be
switched off one by one, and the per-micro-batch losses are not reported by it.
"""
import json
import math
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, TrainingArguments
from transformers.optimization import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                                       get_cosine_with_min_lr_schedule_with_warmup, get_linear_schedule_with_warmup)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "train")
MODEL = os.path.join(ROOT, "tests", "fixtures", "model", "qwen2-tiny-tied")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "qwen_tokenizer")


def byte_tokenizer():
    d = os.path.join(OUT, "byte-tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(SHARED, "vocab.json"), encoding="utf-8") as f:
        qwen = json.load(f)
    vocab = {tok: i for tok, i in qwen.items() if i < 256}
    assert len(vocab) == 256
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, sort_keys=True)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(d, "added_tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"<|endoftext|>": 256}, f)


def schedules():
    cases = []
    param = torch.nn.Parameter(torch.zeros(1))
    for name, total, warmup, kw in [("cosine", 37, 5, {}), ("cosine", 10, 0, {}),
                                    ("cosine_with_min_lr", 37, 5, {"min_lr_rate": 0.1}),
                                    ("linear", 37, 5, {}), ("constant_with_warmup", 20, 3, {}),
                                    ("cosine", 3, 1, {})]:
        opt = torch.optim.AdamW([param], lr=2e-4)
        fn = {"cosine": get_cosine_schedule_with_warmup, "linear": get_linear_schedule_with_warmup,
              "cosine_with_min_lr": get_cosine_with_min_lr_schedule_with_warmup}.get(name)
        if name == "constant_with_warmup":
            sched = get_constant_schedule_with_warmup(opt, warmup)
        else:
            sched = fn(opt, warmup, total, **kw)
        lrs = []
        for _ in range(total + 2):  # two past the end: the lambdas' clamping
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        cases.append({"name": name, "total_steps": total, "warmup_steps": warmup, "base_lr": 2e-4,
                      "min_lr_rate": kw.get("min_lr_rate", 0.0), "lrs": lrs})
    warmups = []
    for ratio, total in [(0.03, 1000), (0.1, 37), (0.5, 3), (0.0, 10)]:
        args = TrainingArguments(output_dir="/tmp/medllm_sched_args", warmup_steps=ratio, report_to=[])
        warmups.append({"ratio": ratio, "total_steps": total, "warmup_steps": args.get_warmup_steps(total)})
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump({"schedules": cases, "warmup_ratio": warmups}, f, indent=1)


def save_adapter(model, path):
    model.save_pretrained(path)
    os.remove(os.path.join(path, "README.md"))  # PEFT's model card template, not part of the adapter


def parity():
    d = os.path.join(OUT, "parity")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B != 0 so the first step moves A too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(model, os.path.join(d, "init_adapter"))

    steps, ga, batch, seq = 3, 2, 2, 24
    ids = torch.randint(0, 256, (steps * ga, batch, seq), generator=g)
    lengths = torch.randint(6, seq + 1, (steps * ga, batch), generator=g)
    lengths[0, 0] = seq
    mask = (torch.arange(seq).view(1, 1, seq) < lengths.unsqueeze(-1)).long()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    save_file({"input_ids": ids.int().contiguous(), "attention_mask": mask.int().contiguous(),
               "labels": labels.int().contiguous()}, os.path.join(d, "batches.safetensors"))

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, 1, steps)
    model.train()
    micro_losses, grad_norms, lrs = [], [], []
    for s in range(steps):
        mbs = range(s * ga, (s + 1) * ga)
        num_items = sum(int((labels[m][:, 1:] != -100).sum()) for m in mbs)
        for m in mbs:
            out = model(input_ids=ids[m], attention_mask=mask[m], labels=labels[m],
                        num_items_in_batch=torch.tensor(num_items))
            out.loss.backward()
            micro_losses.append(out.loss.item())
        grad_norms.append(torch.nn.utils.clip_grad_norm_(params, 0.9).item())
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        opt.zero_grad()
    save_adapter(model, os.path.join(d, "final_adapter"))
    ref = {"steps": steps, "grad_accum": ga, "batch_size": batch, "seq_len": seq, "lr": 1e-3, "warmup_steps": 1,
           "schedule": "cosine", "max_grad_norm": 0.9, "r": 4, "alpha": 8,
           "micro_losses": micro_losses, "grad_norms": grad_norms, "lrs": lrs,
           "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                        "peft": __import__("peft").__version__}}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    byte_tokenizer()
    schedules()
    parity()
    print("wrote", OUT)
