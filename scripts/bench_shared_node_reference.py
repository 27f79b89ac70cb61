"""The PyTorch side of scripts/bench-shared-node.sh: the LoRA CPT steps medllm's side runs, in transformers + PEFT.

Quickstart model, fp32, LoRA r 32 alpha 64 on all seven projections, gradient checkpointing, AdamW lr 1e-4, 12 steps
of 8 x 512 random-token rows (the cost does not depend on the tokens). Prints the steps' wall seconds.
Needs torch, transformers and peft (scripts/requirements-fixtures.txt).
"""
import time

import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained("configs/quickstart/model", torch_dtype=torch.float32)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
m = get_peft_model(m, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=targets))
m.gradient_checkpointing_enable()
m.enable_input_require_grads()
m.train()
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
V = m.config.vocab_size
t0 = time.time()
for step in range(12):
    ids = torch.randint(0, V, (8, 512))
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
print("%.1f" % (time.time() - t0))
