#!/usr/bin/env python3
"""QLoRA reference for `generate --load-in-4bit` with an adapter that covers only some projections (CPU).

    .venv/bin/python scripts/make_qlora_fixtures.py        # writes tests/fixtures/peft/

transformers + bitsandbytes quantize every nn.Linear of the model but lm_head to NF4 when loading in 4-bit, so a
QLoRA adapter is trained against an NF4 base in every projection, adapted or not. This script records:
  tiny-adapter-partial/      a PEFT adapter on tests/fixtures/model/qwen2-tiny-untied with target_modules
                             q_proj, v_proj, up_proj and layers_to_transform [1] (r=4, alpha=8, non-zero B):
                             3 of the 14 projections adapted, 11 left as the base.
  qlora_logits.safetensors   input_ids [2, 9]; `partial.nf4_logits`: the logits of the tiny model loaded by
                             transformers with BitsAndBytesConfig(load_in_4bit, nf4, double quant, fp32 compute)
                             plus the adapter (PeftModel.from_pretrained); `partial.dense_logits`: the same adapter
                             on the dense fp32 base (to show the quantization matters at the test's tolerance).
bitsandbytes >= 0.49 runs NF4 on CPU, so no GPU is needed.
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes wraps its reference dequantize in torch.compile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "peft")
TINY = os.path.join("tests", "fixtures", "model", "qwen2-tiny-untied")  # relative: recorded in adapter_config.json
ADAPTER = "tiny-adapter-partial"


def input_ids():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 512, (2, 9), generator=g)


@torch.no_grad()
def logits_of(model, ids):
    return model(input_ids=ids).logits.float()


def main():
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    import peft
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    os.chdir(ROOT)
    torch.manual_seed(0)
    ids = input_ids()

    # The adapter, made on the dense base (PEFT saves only lora_A/lora_B, so the base it was made on does not matter).
    dense = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32, attn_implementation="eager").eval()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], layers_to_transform=[1],
                        task_type="CAUSAL_LM")
    model = get_peft_model(dense, config)
    g = torch.Generator().manual_seed(23)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter do something
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    adapter_dir = os.path.join(OUT, ADAPTER)
    model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's model card template
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(config_path) as f:  # PEFT writes target_modules from a set, in hash order: sort for a stable file
        saved = json.load(f)
    saved["target_modules"] = sorted(saved["target_modules"])
    with open(config_path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")
    tensors = {"input_ids": ids, "partial.dense_logits": logits_of(model.eval(), ids)}

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    base4 = AutoModelForCausalLM.from_pretrained(TINY, quantization_config=quant, device_map="cpu",
                                                 dtype=torch.float32, attn_implementation="eager").eval()
    linear4 = {n: m for n, m in base4.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(linear4) == 14, f"expected the 14 projections in 4-bit, got {sorted(linear4)}"  # lm_head stays dense
    # The base GEMM of every Linear4bit is linear(x, dequant(W), bias) with bitsandbytes' flat dequantization (its
    # CUDA semantics, the base a QLoRA run on a GPU trains against). bitsandbytes' CPU kernels index absmax per row,
    # which is wrong when in_features is not a multiple of the blocksize (down_proj here: 160 inputs), and its
    # AVX512-BF16 repacking refuses that shape outright; the NF4 bytes and statistics are bitsandbytes' own.
    code = F.get_4bit_type("nf4", device="cpu").float()
    cpu_differs = []
    for name, m in linear4.items():
        state = m.weight.quant_state
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
        flat = _dequantize_4bit_compute(m.weight.data.reshape(-1), absmax.float(), code, state.blocksize, state.shape,
                                        torch.float32)
        if not torch.equal(F.dequantize_4bit(m.weight.data, state).float(), flat):
            cpu_differs.append(name)
        m.forward = lambda x, w=flat, b=m.bias: torch.nn.functional.linear(x, w, b)
    print("bitsandbytes' CPU dequantize differs from the flat one in", cpu_differs, file=sys.stderr)
    qlora = PeftModel.from_pretrained(base4, adapter_dir).eval()
    adapted = sorted(n for n, m in qlora.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert len(adapted) == 3, adapted
    tensors["partial.nf4_logits"] = logits_of(qlora, ids)
    diff = (tensors["partial.nf4_logits"] - tensors["partial.dense_logits"]).abs().max().item()
    print(f"NF4 base vs dense base, same adapter: max |logit diff| = {diff:.3g}", file=sys.stderr)

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "qlora_logits.safetensors"),
              metadata={"generator": "scripts/make_qlora_fixtures.py", "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__,
                        "bitsandbytes": bnb.__version__, "adapted": json.dumps(adapted),
                        "cpu_dequantize_differs": json.dumps(cpu_differs)})
    print("wrote", adapter_dir, "and", os.path.join(OUT, "qlora_logits.safetensors"))


if __name__ == "__main__":
    main()
