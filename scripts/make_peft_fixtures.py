#!/usr/bin/env python3
"""Golden fixtures for medllm's LoRA (tests/peft/), recorded with PEFT + transformers on CPU.

    .venv/bin/python scripts/make_peft_fixtures.py            # writes tests/fixtures/peft/
    .venv/bin/python scripts/make_peft_fixtures.py --check DIR

Generate mode records:
  layer.safetensors         a PEFT lora.Linear (48 -> 40, with bias): base weight/bias, A, B, input, upstream
                            gradient, output and gradients of x, A, B; for plain LoRA (r=4, alpha=8) and rsLoRA.
  tiny-adapter/             a PEFT adapter (all seven projections, r=4, alpha=8, non-zero B) for the tiny model
                            tests/fixtures/model/qwen2-tiny-untied, saved by PeftModel.save_pretrained.
  tiny-adapter-pattern/     q/v/down only, rsLoRA, rank_pattern {down_proj: 2}, alpha_pattern {v_proj: 3}.
  tiny_logits.safetensors   input_ids and the logits of the base, adapted (both adapters) and merged models.

--check DIR verifies what medllm wrote (the `WritesPeftCheckDirectory` test, with MEDLLM_PEFT_CHECK_DIR=DIR):
  DIR/adapter/  (saved by medllm)  loads in PEFT and gives medllm's logits (DIR/medllm.safetensors: logits);
  DIR/merged/   (medllm merge)     loads in transformers and gives medllm's merged logits and, within bf16
                                   rounding, PEFT's adapted logits.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "peft")
TINY = os.path.join("tests", "fixtures", "model", "qwen2-tiny-untied")  # relative: recorded in adapter_config.json
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_base(path=TINY, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return model.eval()


def input_ids():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 512, (2, 9), generator=g)


@torch.no_grad()
def logits_of(model, ids):
    return model(input_ids=ids).logits.float()


def layer_fixture(tensors):
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(48, 40, bias=True)

        def forward(self, x):
            return self.proj(x)

    g = torch.Generator().manual_seed(11)
    weight = torch.randn(40, 48, generator=g) * 0.1
    bias = torch.randn(40, generator=g) * 0.1
    A = torch.randn(4, 48, generator=g) * 0.2
    B = torch.randn(40, 4, generator=g) * 0.2
    x = torch.randn(3, 5, 48, generator=g)
    gy = torch.randn(3, 5, 40, generator=g)
    tensors.update({"weight": weight, "bias": bias, "A": A, "B": B, "x": x, "grad_y": gy})
    for tag, rslora in (("lora", False), ("rslora", True)):
        base = One()
        base.proj.weight.data.copy_(weight)
        base.proj.bias.data.copy_(bias)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], use_rslora=rslora))
        layer = model.base_model.model.proj
        if tag == "lora":  # PEFT's own init, for the distribution check
            tensors["peft_init_A"] = layer.lora_A["default"].weight.detach().clone()
            tensors["peft_init_B"] = layer.lora_B["default"].weight.detach().clone()
        layer.lora_A["default"].weight.data.copy_(A)
        layer.lora_B["default"].weight.data.copy_(B)
        xg = x.clone().requires_grad_(True)
        y = model(xg)
        (y * gy).sum().backward()
        tensors[f"{tag}.y"] = y.detach()
        tensors[f"{tag}.grad_x"] = xg.grad
        tensors[f"{tag}.grad_A"] = layer.lora_A["default"].weight.grad
        tensors[f"{tag}.grad_B"] = layer.lora_B["default"].weight.grad
        tensors[f"{tag}.scaling"] = torch.tensor([layer.scaling["default"]], dtype=torch.float64)


def adapter_fixture(name, config, seed, ids, tensors):
    from peft import get_peft_model

    model = get_peft_model(load_base(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:  # B starts at zero; make the adapter do something
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(os.path.join(OUT, name))
    os.remove(os.path.join(OUT, name, "README.md"))  # PEFT's model card template
    tensors[f"{name}.logits"] = logits_of(model, ids)
    merged = model.merge_and_unload()
    tensors[f"{name}.merged_logits"] = logits_of(merged, ids)


def generate():
    from peft import LoraConfig

    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    layer = {}
    layer_fixture(layer)
    save_file({k: v.contiguous() for k, v in layer.items()}, os.path.join(OUT, "layer.safetensors"))

    ids = input_ids()
    logits = {"input_ids": ids, "base.logits": logits_of(load_base(), ids)}
    adapter_fixture("tiny-adapter", LoraConfig(r=4, lora_alpha=8, target_modules=ALL7, task_type="CAUSAL_LM"), 21,
                    ids, logits)
    adapter_fixture(
        "tiny-adapter-pattern",
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True,
                   rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, task_type="CAUSAL_LM"),
        22, ids, logits)
    save_file({k: v.contiguous() for k, v in logits.items()}, os.path.join(OUT, "tiny_logits.safetensors"))
    import peft
    import transformers

    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"generator": "scripts/make_peft_fixtures.py", "peft": peft.__version__,
                   "transformers": transformers.__version__, "torch": torch.__version__}, f, indent=2)
        f.write("\n")
    print("wrote", OUT)


def check(directory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ok = True

    def report(what, a, b, atol):
        nonlocal ok
        diff = (a - b).abs().max().item()
        good = diff <= atol
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {what}: max |diff| = {diff:.3g} (tolerance {atol:g})")

    medllm = load_file(os.path.join(directory, "medllm.safetensors"))
    ids = medllm["input_ids"]
    peft_model = PeftModel.from_pretrained(load_base(), os.path.join(directory, "adapter")).eval()
    peft_logits = logits_of(peft_model, ids)
    report("PEFT with medllm's adapter vs medllm", peft_logits, medllm["logits"], 1e-4)

    merged_dir = os.path.join(directory, "merged")
    cfg = json.load(open(os.path.join(merged_dir, "config.json")))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, attn_implementation="eager").eval()
    dtype = next(merged.parameters()).dtype
    print(f"transformers loaded {merged_dir}: {type(merged).__name__}, {dtype}, config dtype {cfg.get('dtype', cfg.get('torch_dtype'))}")
    if dtype != torch.bfloat16:
        print("FAIL merged checkpoint is not bf16")
        ok = False
    merged_fp32 = merged.float()
    merged_logits = logits_of(merged_fp32, ids)
    report("transformers on medllm's merged checkpoint vs medllm merged logits", merged_logits,
           medllm["merged_logits"], 1e-4)
    # PEFT's own merge of the same adapter, rounded to bf16 like medllm's: the weights agree to 1 bf16 ulp.
    ref = peft_model.merge_and_unload().to(torch.bfloat16)
    ref_sd = ref.state_dict()
    worst = 0.0
    for name, t in merged.state_dict().items():
        r = ref_sd[name]
        ulp = (r.float().abs() * 2.0**-7).clamp_min(1e-30)
        worst = max(worst, ((t.float() - r.float()).abs() / ulp).max().item())
    print(f"{'ok  ' if worst <= 1.0 else 'FAIL'} merged weights vs PEFT merge_and_unload in bf16: max diff {worst:.3g} ulp")
    ok &= worst <= 1.0
    report("merged (bf16 weights) vs PEFT adapted fp32 logits", merged_logits, peft_logits, 5e-2)
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


def main():
    os.chdir(ROOT)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="DIR", help="verify an adapter and a merged checkpoint written by medllm")
    args = ap.parse_args()
    if args.check:
        sys.exit(check(args.check))
    generate()


if __name__ == "__main__":
    main()
