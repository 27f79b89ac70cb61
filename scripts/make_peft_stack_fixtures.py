#!/usr/bin/env python3
"""Golden fixtures for medllm's adapter stacks (tests/peft/stack_test.cpp), recorded with PEFT + transformers on CPU.

    python scripts/make_peft_stack_fixtures.py            # writes tests/fixtures/peft/tiny-stack*
    python scripts/make_peft_stack_fixtures.py --check DIR

(python: one with scripts/requirements-fixtures.txt installed, e.g. .venv/bin/python after
 .venv/bin/pip install -r scripts/requirements-fixtures.txt.)

Generate mode records, for the tiny model tests/fixtures/model/qwen2-tiny-untied:
  tiny-stack/                 a PEFT model with two LoRA adapters saved by PeftModel.save_pretrained: "default"
                              (q/k/v/o, r=4, alpha=8) in the folder itself and "rpo" (q/v/gate/down, r=2, alpha=4,
                              rsLoRA) in tiny-stack/rpo/, as PEFT lays out several adapters. PEFT records nowhere
                              which adapters a folder holds; medllm's adapter_stack.json (["default", "rpo"], bottom
                              first) is added beside PEFT's files, which PEFT ignores.
  tiny_stack_logits.safetensors
                              input_ids; the logits of the base, of "default" alone, of both adapters active
                              (set_adapter(["default", "rpo"])), and of merge_and_unload() with both active (fp32).

--check DIR verifies what medllm wrote (the `StackPeftCheck` test, with MEDLLM_PEFT_STACK_CHECK_DIR=DIR):
  DIR/stack/  (saved by medllm, adapter_stack.json names the adapters)  loads in PEFT (from_pretrained for
              "default", load_adapter for each other one, all set active) and gives medllm's stacked logits
              (DIR/medllm.safetensors: logits), and with only the adapters below the top active, medllm's reference
              logits (reference_logits).
  DIR/merged/ (medllm merge of the stack)  loads in transformers and gives medllm's merged logits.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

from make_peft_fixtures import OUT, ROOT, load_base, logits_of  # the tiny model, fp32, eager attention


def input_ids():
    g = torch.Generator().manual_seed(17)
    return torch.randint(0, 512, (2, 11), generator=g)


def load_stack(directory):
    """A PEFT model with every adapter adapter_stack.json names, all active (bottom first)."""
    from peft import PeftModel

    names = json.load(open(os.path.join(directory, "adapter_stack.json")))["adapters"]
    model = PeftModel.from_pretrained(load_base(), directory, adapter_name="default")
    for name in names:
        if name != "default":
            model.load_adapter(os.path.join(directory, name), adapter_name=name)
    model.base_model.set_adapter(names)
    return model.eval(), names


def generate():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ids = input_ids()
    out = os.path.join(OUT, "tiny-stack")
    shutil.rmtree(out, ignore_errors=True)
    model = get_peft_model(
        load_base(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    model.add_adapter("rpo", LoraConfig(r=2, lora_alpha=4, use_rslora=True,
                                        target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                                        task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:  # B starts at zero; make every adapter do something
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    tensors = {"input_ids": ids, "base.logits": logits_of(load_base(), ids)}
    model.base_model.set_adapter("default")
    tensors["default.logits"] = logits_of(model, ids)
    model.base_model.set_adapter(["default", "rpo"])
    tensors["stack.logits"] = logits_of(model, ids)
    model.save_pretrained(out)  # default -> out/, rpo -> out/rpo/
    os.remove(os.path.join(out, "README.md"))  # PEFT's model card template
    with open(os.path.join(out, "adapter_stack.json"), "w") as f:
        json.dump({"adapters": ["default", "rpo"]}, f, indent=2)
        f.write("\n")
    # What PEFT reads back from the folder gives the same logits (the layout round-trips).
    reloaded, _ = load_stack(out)
    diff = (logits_of(reloaded, ids) - tensors["stack.logits"]).abs().max().item()
    assert diff == 0.0, f"reloaded stack differs by {diff}"
    merged = model.merge_and_unload()  # merges the active adapters
    tensors["stack.merged_logits"] = logits_of(merged, ids)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "tiny_stack_logits.safetensors"))
    import peft
    import transformers

    with open(os.path.join(OUT, "tiny-stack-reference.json"), "w") as f:
        json.dump({"generator": "scripts/make_peft_stack_fixtures.py", "peft": peft.__version__,
                   "transformers": transformers.__version__, "torch": torch.__version__}, f, indent=2)
        f.write("\n")
    print("wrote", out)


def check(directory):
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
    model, names = load_stack(os.path.join(directory, "stack"))
    print(f"PEFT loaded the stack {names}")
    # fp32 on both sides, the same adapters summed in the same order: rounding of ~100-term sums.
    report("PEFT with medllm's stack (all active) vs medllm", logits_of(model, ids), medllm["logits"], 1e-4)
    model.base_model.set_adapter(names[:-1])
    report("PEFT with the adapters below the top vs medllm's reference pass", logits_of(model, ids),
           medllm["reference_logits"], 1e-4)
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(directory, "merged"),
                                                  attn_implementation="eager").eval()
    report("transformers on medllm's merged stack vs medllm merged logits", logits_of(merged.float(), ids),
           medllm["merged_logits"], 1e-4)
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


def main():
    os.chdir(ROOT)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="DIR", help="verify a stack and a merged checkpoint written by medllm")
    args = ap.parse_args()
    if args.check:
        sys.exit(check(args.check))
    generate()


if __name__ == "__main__":
    main()
