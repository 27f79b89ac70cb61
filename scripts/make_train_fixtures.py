#!/usr/bin/env python3
"""Golden fixtures for the trainer (tests/train/), from the reference stack (transformers 5.17, peft 0.21.2,
torch 2.11, CPU, fp32). Re-run:  .venv/bin/python scripts/make_train_fixtures.py

Writes tests/fixtures/train/:
  byte-tokenizer/   vocab.json (the 256 byte-level tokens, ids 0..255 as in Qwen2's vocabulary), an empty
                    merges.txt and <|endoftext|> = 256, so the tiny fixture model (vocab 512) can train on text
  schedules.json    per-step learning rates of transformers' get_*_schedule_with_warmup through LambdaLR
  parity/           transformers.Trainer + PEFT itself (its default optimizer adamw_torch_fused with HF's betas/eps
                    and weight decay 0, cosine with 1 warmup step, gradient accumulation 2 with the loss normalized by
                    the step's target tokens (transformers >= 4.46), clipping at 0.8 (below every step's norm, so it
                    acts), rows in order) on tests/fixtures/model/qwen2-tiny-tied with a fixed PEFT adapter r=4 and
                    rows packed as medllm's `packing: isolated` writes them (several documents per row, positions
                    restarting, HF's packed-sequence mask from position_ids):
                      init_adapter/ (PEFT save_pretrained), batches.safetensors (input_ids, labels, segment_ids,
                      position_ids), reference.json (per micro-batch losses recorded in Trainer.compute_loss, per
                      step pre-clip grad norms from Trainer._clip_grad_norm and the logged lrs), final_adapter/ after
                      3 optimizer steps
The same steps are also run as a hand loop (single-tensor AdamW) and must agree with Trainer (the script asserts
it and records the difference), so a Trainer default that changes under us shows up here, not in the C++ test.
"""
import json
import math
import os
import shutil
import tempfile

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


def packed_rows(g, rows, seq):
    """Rows laid out as medllm's `packing: isolated` writes them (src/data/packing.cpp): whole documents packed
    next-fit, a document longer than a row split into chunks; inside a row each piece is its own segment (1, 2, ...)
    with positions restarting at 0 and the label of its first token -100 (nothing predicts across a boundary);
    the tail is padding (id 0, label -100, segment 0, position 0)."""
    ids = torch.zeros(rows, seq, dtype=torch.long)
    labels = torch.full((rows, seq), -100, dtype=torch.long)
    seg = torch.zeros(rows, seq, dtype=torch.long)
    pos = torch.zeros(rows, seq, dtype=torch.long)
    r, at, s = 0, 0, 0
    while r < rows:
        long_doc = int(torch.randint(0, 6, (1,), generator=g)) == 0  # now and then one longer than a row
        n = int(torch.randint(seq + 1, 2 * seq, (1,), generator=g)) if long_doc else int(
            torch.randint(2, seq // 3, (1,), generator=g))
        doc = torch.randint(0, 256, (n,), generator=g)
        i = 0
        while i < n and r < rows:
            if at > 0 and at + min(n - i, seq) > seq:  # next-fit: the piece does not fit, close the row
                r, at, s = r + 1, 0, 0
                continue
            k = min(n - i, seq - at)
            s += 1
            ids[r, at:at + k] = doc[i:i + k]
            labels[r, at:at + k] = doc[i:i + k]
            labels[r, at] = -100
            seg[r, at:at + k] = s
            pos[r, at:at + k] = torch.arange(k)
            at, i = at + k, i + k
            if at == seq:
                r, at, s = r + 1, 0, 0
        if r < rows and at > 0 and int(torch.randint(0, 8, (1,), generator=g)) == 0:  # now and then padding
            r, at, s = r + 1, 0, 0
    return ids, labels, seg, pos


def lora_model(d):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, cfg)
    init = os.path.join(d, "init_adapter")
    if not os.path.exists(init):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # B != 0 so the first step moves A too
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        save_adapter(model, init)
        return model
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32), init,
                                     is_trainable=True)


STEPS, GA, BATCH, SEQ, LR, WARMUP, CLIP = 3, 2, 2, 24, 1e-3, 1, 0.8  # 0.8: below every step's norm, so clipping acts


def hand_loop(d, rows):
    """What Trainer.training_step and _inner_training_loop do for this setup, written out (the cross-check)."""
    model = lora_model(d)
    ids, labels, pos = rows["input_ids"], rows["labels"], rows["position_ids"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    model.train()
    micro, norms, lrs = [], [], []
    for s in range(STEPS):
        mbs = [slice((s * GA + j) * BATCH, (s * GA + j + 1) * BATCH) for j in range(GA)]
        num_items = sum(int((labels[m][:, 1:] != -100).sum()) for m in mbs)
        for m in mbs:
            # use_cache=False as Trainer runs it: with a cache object HF's mask ignores the packed positions
            out = model(input_ids=ids[m], position_ids=pos[m], labels=labels[m], use_cache=False,
                        num_items_in_batch=torch.tensor(num_items))
            out.loss.backward()
            micro.append(out.loss.item())
        norms.append(torch.nn.utils.clip_grad_norm_(params, CLIP).item())
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, micro, norms, lrs


class RowDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i):  # no attention_mask: HF then finds the documents from position_ids (packed format)
        return {k: self.rows[k][i] for k in ("input_ids", "labels", "position_ids")}


def hf_trainer(d, rows):
    """transformers.Trainer itself, defaults except what the fixture fixes: its default optimizer (adamw_torch_fused,
    HF's betas/eps, weight decay 0), cosine with 1 warmup step, accumulation 2 (loss = token-loss sum / the step's
    target tokens counted over labels[..., 1:]), clipping at 0.9, rows in order. Per micro-batch losses, pre-clip
    grad norms and lrs are recorded from inside Trainer (compute_loss, _clip_grad_norm, the logged learning_rate)."""
    from transformers import Trainer, TrainerCallback, default_data_collator

    rec = {"micro": [], "norms": [], "lrs": [], "num_items": []}

    class Recording(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            rec["micro"].append(loss.item())
            rec["num_items"].append(int(num_items_in_batch))
            return loss

        def _clip_grad_norm(self, model):
            norm = super()._clip_grad_norm(model)
            rec["norms"].append(float(norm))
            return norm

    class Lrs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "learning_rate" in logs and "loss" in logs:
                rec["lrs"].append(logs["learning_rate"])

    model = lora_model(d)
    tmp = tempfile.mkdtemp(prefix="medllm_trainer_fixture_")
    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, gradient_accumulation_steps=GA,
                             max_steps=STEPS, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP,
                             max_grad_norm=CLIP, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             train_sampling_strategy="sequential", remove_unused_columns=False,
                             dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = Recording(model=model, args=args, train_dataset=RowDataset(rows), data_collator=default_data_collator,
                        callbacks=[Lrs()])
    trainer.train()
    shutil.rmtree(tmp, ignore_errors=True)
    optim = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    return model, rec, args.optim, [{k: grp.get(k) for k in ("betas", "eps", "weight_decay", "fused")}
                                       for grp in optim.param_groups]


def adapter_diff(a, b):
    pa = {n: p for n, p in a.named_parameters() if p.requires_grad}
    pb = {n: p for n, p in b.named_parameters() if p.requires_grad}
    assert pa.keys() == pb.keys()
    return max((pa[n] - pb[n]).abs().max().item() for n in pa)


def parity():
    d = os.path.join(OUT, "parity")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    lora_model(d)  # writes init_adapter/
    g = torch.Generator().manual_seed(2)
    ids, labels, seg, pos = packed_rows(g, STEPS * GA * BATCH, SEQ)
    rows = {"input_ids": ids, "labels": labels, "segment_ids": seg, "position_ids": pos}
    save_file({k: v.int().contiguous() for k, v in rows.items()}, os.path.join(d, "batches.safetensors"))

    hf, rec, optim_name, optim_class = hf_trainer(d, rows)
    hand, micro, norms, lrs = hand_loop(d, rows)
    assert all(n > CLIP for n in rec["norms"]), rec["norms"]
    assert len(rec["micro"]) == STEPS * GA and len(rec["norms"]) == STEPS and len(rec["lrs"]) == STEPS, rec
    cross = {"adapter": adapter_diff(hf, hand),
             "micro_loss_rel": max(abs(a - b) / abs(b) for a, b in zip(rec["micro"], micro)),
             "grad_norm_rel": max(abs(a - b) / b for a, b in zip(rec["norms"], norms)),
             "lrs_equal": rec["lrs"] == lrs}
    print("Trainer vs hand loop:", cross)
    assert cross["adapter"] < 1e-6 and cross["micro_loss_rel"] < 1e-6 and cross["lrs_equal"], cross
    save_adapter(hf, os.path.join(d, "final_adapter"))
    ref = {"reference": "transformers.Trainer + PEFT (scripts/make_train_fixtures.py)", "optim": optim_name,
           "optimizer_param_groups": optim_class, "steps": STEPS, "grad_accum": GA, "batch_size": BATCH, "seq_len": SEQ,
           "lr": LR, "warmup_steps": WARMUP, "schedule": "cosine", "max_grad_norm": CLIP, "r": 4, "alpha": 8,
           "micro_losses": rec["micro"], "num_items_in_batch": rec["num_items"][::GA], "grad_norms": rec["norms"],
           "lrs": rec["lrs"], "hand_loop_difference": cross,
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
