#!/usr/bin/env python3
"""Golden NF4 fixtures from bitsandbytes (CPU backend) for tests/quant/.

Writes tests/fixtures/quant/nf4_bnb.safetensors: for every case "<name>/<field>" tensors
  input            the weight that was quantized (its own dtype)
  packed           uint8 [(n+1)//2, 1]           (bitsandbytes.functional.quantize_4bit, quant_type="nf4")
  absmax           fp32 [n_blocks] or uint8 [n_blocks] with double quantization
  nested_absmax    fp32, nested_quant_map fp32 [256], offset fp32 [1]      (double quantization only)
  absmax_f32       fp32 [n_blocks], the absmax bitsandbytes rebuilds before dequantizing
  dequant          bitsandbytes.functional.dequantize_4bit output (original dtype)
  dequant_f32      the same weight dequantized to float32
  state.<key>      QuantState.as_dict(packed=True): the checkpoint keys (`absmax`, `quant_map`, `nested_*`,
                   `quant_state.bitsandbytes__nf4`)
and a "linear/" case: a bitsandbytes.nn.Linear4bit state_dict ("linear/sd.<key>"), an input and its output.
The safetensors metadata key "cases" holds a JSON list of {name, shape, dtype, blocksize, double_quant}.

and "hf/" + "hf_orig/": a tiny Qwen2 quantized by transformers (BitsAndBytesConfig nf4 + double quant) and
saved with save_pretrained, with the bf16 weights it came from (metadata "hf_quantization_config").

Usage: .venv/bin/python scripts/make_nf4_fixtures.py   (needs scripts/requirements-fixtures.txt; CPU only)
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes wraps its reference dequantize in torch.compile

import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant", "nf4_bnb.safetensors")


def midpoint_block(dtype):
    """64 values whose block absmax is exactly 1.0, so x * (1/absmax) lands exactly on every NF4 midpoint."""
    code = F.get_4bit_type("nf4", device="cpu").float()
    mids = (code[:-1] + code[1:]) / 2
    values = torch.cat([torch.tensor([1.0, -1.0]), mids, -mids, mids * 0.5, mids * 0.25, torch.tensor([0.0, 0.25])])
    assert values.numel() == 64
    return values.to(dtype)


def make_input(name, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 0.05
    flat = x.view(-1)
    if name.startswith("zeros"):
        flat.zero_()
    elif name.startswith("single"):
        pass
    elif flat.numel() >= 192:
        flat[64:128] = 0.0                      # an all-zero block
        x = x.to(dtype)
        if dtype == torch.float32:
            x.view(-1)[128:192] = midpoint_block(dtype)  # exact-tie block
        return x
    return x.to(dtype)


CASES = [
    # name, shape, dtype, blocksize, double_quant
    ("f32_64x200_bs64_dq", (64, 200), torch.float32, 64, True),
    ("f32_64x200_bs64", (64, 200), torch.float32, 64, False),
    ("bf16_128x512_bs64_dq", (128, 512), torch.bfloat16, 64, True),
    ("bf16_48x96_bs32", (48, 96), torch.bfloat16, 32, False),
    ("f16_33x70_bs128_dq", (33, 70), torch.float16, 128, True),
    ("f32_7x9_bs32", (7, 9), torch.float32, 32, False),
    ("f32_7x9_bs32_dq", (7, 9), torch.float32, 32, True),
    ("bf16_8x4096_bs4096_dq", (8, 4096), torch.bfloat16, 4096, True),
    ("f32_16x1024_bs2048", (16, 1024), torch.float32, 2048, False),
    ("f32_24x640_bs256_dq", (24, 640), torch.float32, 256, True),
    ("f32_20x1000_bs512_dq", (20, 1000), torch.float32, 512, True),
    ("zeros_f32_4x64_bs64_dq", (4, 64), torch.float32, 64, True),
    ("single_f32_1x64_bs64_dq", (1, 64), torch.float32, 64, True),
]


def transformers_checkpoint(tensors):
    """A tiny Qwen2 (bf16) loaded with transformers' BitsAndBytesConfig (NF4, double quantization) on CPU and saved
    with save_pretrained: "hf/<key>" holds every 4-bit linear entry of its model.safetensors, "hf_orig/<weight>"
    the bf16 weight it was quantized from. Returns config.json's quantization_config."""
    import tempfile
    from safetensors import safe_open
    from transformers import BitsAndBytesConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=256)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as dst:
        model.save_pretrained(src)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        qmodel = Qwen2ForCausalLM.from_pretrained(src, quantization_config=quant, device_map="cpu", dtype=torch.bfloat16)
        qmodel.save_pretrained(dst)
        with open(os.path.join(dst, "config.json")) as f:
            config = json.load(f)["quantization_config"]
        with safe_open(os.path.join(dst, "model.safetensors"), "pt") as f:
            weights = sorted(k[: -len(".quant_state.bitsandbytes__nf4")] for k in f.keys()
                             if k.endswith(".quant_state.bitsandbytes__nf4"))
            assert weights, "transformers wrote no 4-bit weights"
            for key in f.keys():
                if any(key == w or key.startswith(w + ".") for w in weights):
                    tensors["hf/" + key] = f.get_tensor(key)
        for w in weights:
            tensors["hf_orig/" + w] = original[w]
    return config


def main():
    print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}", file=sys.stderr)
    tensors, meta = {}, []
    dyn = F.create_dynamic_map()
    tensors["dynamic_map"] = dyn.contiguous()
    tensors["nf4_code"] = F.get_4bit_type("nf4", device="cpu").float().contiguous()
    for seed, (name, shape, dtype, bs, dq) in enumerate(CASES):
        x = make_input(name, shape, dtype, 1000 + seed)
        packed, state = F.quantize_4bit(x, blocksize=bs, compress_statistics=dq, quant_type="nf4")
        deq = F.dequantize_4bit(packed, state)
        deq32 = F.dequantize_4bit(packed, state).float() if dtype == torch.float32 else None
        if dq:
            absmax_f32 = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        else:
            absmax_f32 = state.absmax
        # The CPU op indexes absmax per row on some vector paths; the flat (CUDA) semantics are the reference.
        flat = _dequantize_4bit_compute(packed.reshape(-1), absmax_f32.float(), F.get_4bit_type("nf4", device="cpu").float(),
                                        bs, shape, dtype)
        if not torch.equal(flat, deq):
            print(f"warning: {name}: bitsandbytes CPU dequantize differs from the flat reference; storing the flat one",
                  file=sys.stderr)
            deq = flat
        deq_f32 = _dequantize_4bit_compute(packed.reshape(-1), absmax_f32.float(),
                                           F.get_4bit_type("nf4", device="cpu").float(), bs, shape, torch.float32)
        p = name + "/"
        tensors[p + "input"] = x.contiguous()
        tensors[p + "packed"] = packed.contiguous()
        tensors[p + "absmax"] = state.absmax.contiguous()
        tensors[p + "absmax_f32"] = absmax_f32.float().contiguous()
        tensors[p + "dequant"] = deq.contiguous()
        tensors[p + "dequant_f32"] = deq_f32.contiguous()
        if dq:
            tensors[p + "nested_absmax"] = state.state2.absmax.contiguous()
            tensors[p + "nested_quant_map"] = state.state2.code.contiguous()
            tensors[p + "offset"] = state.offset.reshape(1).float().contiguous()
        for key, value in state.as_dict(packed=True).items():
            tensors[p + "state." + key] = value.contiguous()
        meta.append({"name": name, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                     "blocksize": bs, "double_quant": dq})

    # A Linear4bit layer as transformers saves it (Linear4bit._save_to_state_dict), with a bias like Qwen2's q/k/v.
    g = torch.Generator().manual_seed(7)
    dense = torch.nn.Linear(192, 24, bias=True)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(24, 192, generator=g) * 0.05)
        dense.bias.copy_(torch.randn(24, generator=g) * 0.1)
    layer = bnb.nn.Linear4bit(192, 24, bias=True, quant_type="nf4", compress_statistics=True,
                              compute_dtype=torch.float32)
    layer.load_state_dict(dense.state_dict())
    layer = layer.to("cpu")
    x = torch.randn(5, 192, generator=g)
    with torch.no_grad():
        y = layer(x)
    for key, value in layer.state_dict().items():
        tensors["linear/sd." + key] = value.contiguous()
    tensors["linear/x"] = x.contiguous()
    tensors["linear/y"] = y.contiguous()

    hf_config = transformers_checkpoint(tensors)

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tensors = {k: v.clone() for k, v in tensors.items()}  # safetensors refuses shared storage
    save_file(tensors, OUT, metadata={"cases": json.dumps(meta), "bitsandbytes": bnb.__version__,
                                      "torch": torch.__version__, "hf_quantization_config": json.dumps(hf_config)})
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes, {len(meta)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
