#!/usr/bin/env python3
"""Golden fixtures for the Qwen2 model tests, produced by HF transformers on CPU.

Builds two small random Qwen2 models (one with tied embeddings, one untied; 2 layers, GQA with n_rep = 2,
q/k/v biases), saves them with save_pretrained (safetensors), and records for a fixed batch with left
padding: fp32 logits, every hidden state, the causal-LM loss, gradients of a few parameters, bf16 logits
of the unpadded batch, and greedy generate() ids. Output: tests/fixtures/model/<name>/{config.json,
model.safetensors, reference.safetensors, reference.json}.

    .venv/bin/pip install -r scripts/requirements-fixtures.txt
    .venv/bin/python scripts/make_reference_fixtures.py              # writes the fixtures
    .venv/bin/python scripts/make_reference_fixtures.py --check DIR  # DIR written by medllm loads in HF
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "model")

MODELS = {
    "qwen2-tiny-tied": dict(tie_word_embeddings=True, rms_norm_eps=1e-6, seed=1),
    "qwen2-tiny-untied": dict(tie_word_embeddings=False, rms_norm_eps=1e-5, seed=2),
}

GRAD_PARAMS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.norm.weight",
]


def make_config(tie_word_embeddings, rms_norm_eps):
    return Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=tie_word_embeddings, initializer_range=0.08, bos_token_id=1, eos_token_id=2,
        use_sliding_window=False, attention_dropout=0.0,
    )


def fixed_batch():
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, 512, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0  # left padding in row 1
    ids[1, :3] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    return ids, mask, labels


def build(name, spec):
    torch.manual_seed(spec["seed"])
    cfg = make_config(spec["tie_word_embeddings"], spec["rms_norm_eps"])
    model = Qwen2ForCausalLM(cfg).float().eval()
    # Norm weights are ones at init; perturb them so the tests notice a skipped weight multiply.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    out_dir = os.path.join(ROOT, name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for extra in ("generation_config.json",):
        path = os.path.join(out_dir, extra)
        if os.path.exists(path):
            os.remove(path)

    ids, mask, labels = fixed_batch()
    ref = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # fp32 forward with padding mask, hidden states, loss and gradients.
    model.train()  # dropout is 0; train mode only enables autograd-friendly paths
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    out.loss.backward()
    ref["logits"] = out.logits.detach().float()
    ref["loss"] = out.loss.detach().reshape(1)
    for i, h in enumerate(out.hidden_states):
        ref[f"hidden_states.{i}"] = h.detach()
    params = dict(model.named_parameters())
    grad_names = GRAD_PARAMS + ([] if spec["tie_word_embeddings"] else ["lm_head.weight"])
    for n in grad_names:
        ref[f"grad.{n}"] = params[n].grad.detach().clone()
    model.eval()

    # bf16: the unpadded row, weights loaded in bf16 as from_pretrained(dtype=bfloat16) does.
    bf16 = Qwen2ForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        ref["bf16_logits"] = bf16(input_ids=ids[:1]).logits.float()

    # Greedy decoding, one prompt at a time (for the generation engine's parity tests).
    gen_ids = {}
    with torch.no_grad():
        for row in range(2):
            prompt = ids[row : row + 1, 3:]  # row 1 without its padding
            g = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
            ref[f"greedy.{row}"] = g[0, prompt.shape[1]:].clone()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out_dir, "reference.safetensors"))
    meta = {
        "generator": "scripts/make_reference_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": model.config._attn_implementation,
        "num_hidden_states": len(out.hidden_states),
        "grad_params": grad_names,
        "loss": out.loss.item(),
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"{name}: loss {out.loss.item():.6f}, {len(out.hidden_states)} hidden states -> {out_dir}")


def check(dir_written_by_medllm, name):
    """A checkpoint written by medllm loads in transformers and gives the fixture's logits."""
    ref_dir = os.path.join(ROOT, name)
    from safetensors.torch import load_file
    ref = load_file(os.path.join(ref_dir, "reference.safetensors"))
    model = Qwen2ForCausalLM.from_pretrained(dir_written_by_medllm, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    diff = (logits - ref["logits"]).abs().max().item()
    print(f"{dir_written_by_medllm}: max |logits - reference| = {diff:.3g}")
    assert diff < 1e-5, "medllm-written checkpoint does not reproduce the reference logits"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="DIR", help="verify a checkpoint written by medllm instead of writing fixtures")
    ap.add_argument("--name", default="qwen2-tiny-untied", help="which fixture --check compares against")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.check:
        check(args.check, args.name)
    else:
        for name, spec in MODELS.items():
            build(name, spec)
