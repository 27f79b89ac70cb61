#!/usr/bin/env python3
"""Reference fixtures for medllm's safetensors I/O, written by the Python `safetensors` package and HF transformers.

Generate (re-runnable; output is deterministic):
    .venv/bin/python scripts/make_io_fixtures.py
        -> tests/fixtures/io/dtypes.safetensors + dtypes.json   (every dtype, scalar, empty, metadata)
        -> tests/fixtures/io/sharded/  (tiny Qwen2 saved by transformers save_pretrained with a small
           max_shard_size: model-0000i-of-0000n.safetensors, model.safetensors.index.json, config.json)
        -> tests/fixtures/io/sharded.json  (state-dict order and per-tensor checksums)

Verify the C++ writer against the reference (after `cmake --build build --target test_io`):
    .venv/bin/python scripts/make_io_fixtures.py --verify-cpp [--test-binary build/tests/test_io]
    Runs the C++ export test, which writes a single file and re-shards the fixture checkpoint with
    medllm::io::CheckpointWriter, then loads both with `safetensors` and `transformers` and checks values, metadata,
    index text (byte-identical to the index transformers wrote) and model logits.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "io"
SHARD_LIMIT = "20KB"  # small enough to give several shards for the tiny model


def pattern(n, lo, hi, step=37):
    """Deterministic integers in [lo, hi]: spreads over the range without any RNG."""
    span = hi - lo + 1
    return [lo + (i * step) % span for i in range(n)]


def dtype_tensors():
    t = {}
    t["bf16"] = torch.tensor([v / 8 for v in pattern(15, -50, 50)], dtype=torch.bfloat16).reshape(3, 5)
    t["f16"] = torch.tensor([v / 16 for v in pattern(24, -500, 500)], dtype=torch.float16).reshape(2, 3, 4)
    t["f32"] = torch.tensor([1.5, -0.0, float("inf"), float("-inf"), 3.4e38, 1e-40, -7.25], dtype=torch.float32)
    t["f64"] = torch.tensor([math.pi, -1e300], dtype=torch.float64)
    t["u8"] = torch.tensor(pattern(16, 0, 255, 97), dtype=torch.uint8)
    t["i8"] = torch.tensor(pattern(16, -128, 127, 97), dtype=torch.int8).reshape(4, 4)
    t["i16"] = torch.tensor([-32768, 32767, 5], dtype=torch.int16)
    t["i32"] = torch.tensor([-(2**31), 2**31 - 1, 0, 7, -7], dtype=torch.int32)
    t["i64"] = torch.tensor([2**62 + 1, -(2**62), 123456789012345], dtype=torch.int64)
    t["bool"] = torch.tensor([True, False, False, True, True, False])
    t["scalar"] = torch.tensor(2.5, dtype=torch.float32)
    t["empty"] = torch.zeros(0, 3, dtype=torch.float32)
    # An odd-sized bf16 tensor sorted after a 1-byte tensor would be misaligned; safetensors orders by alignment.
    t["model.layers.0.self_attn.q_proj.weight"] = torch.tensor([0.25, -4.0, 1024.0], dtype=torch.bfloat16)
    return t


def json_value(v):
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def checksum(t):
    """float64 sum(v_i * (i % 7 + 1)) over the flattened tensor: order-sensitive, easy to recompute in C++."""
    flat = t.reshape(-1).to(torch.float64)
    weights = (torch.arange(flat.numel(), dtype=torch.float64) % 7) + 1
    return float((flat * weights).sum())


def make_dtypes():
    tensors = dtype_tensors()
    metadata = {"format": "pt", "producer": "scripts/make_io_fixtures.py"}
    save_file(tensors, OUT / "dtypes.safetensors", metadata=metadata)
    expected = {"metadata": metadata, "tensors": {}}
    for name, t in tensors.items():
        values = t.reshape(-1).tolist()
        if t.dtype.is_floating_point:
            values = [json_value(float(v)) for v in values]
        elif t.dtype == torch.bool:
            values = [int(v) for v in values]
        expected["tensors"][name] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                                     "values": values}
    (OUT / "dtypes.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2)
    torch.manual_seed(1234)
    return Qwen2ForCausalLM(config).to(torch.bfloat16).eval()


def make_sharded():
    model = tiny_qwen2()
    out = OUT / "sharded"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    model.save_pretrained(out, max_shard_size=SHARD_LIMIT)
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)
    state = model.state_dict()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    names = [n for n in state if n in index["weight_map"]]
    sums = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(out / shard, "pt") as f:
            for name in f.keys():
                sums[name] = checksum(f.get_tensor(name))
    meta = {"order": names, "checksums": sums, "max_shard_bytes": 20_000}
    (OUT / "sharded.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"sharded: {len(set(index['weight_map'].values()))} shards, {len(names)} tensors")


def logits_of(path):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[1, 5, 9, 77, 3, 120, 64]])
    with torch.no_grad():
        return model(ids).logits.float()


def verify_cpp(test_binary):
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MEDLLM_IO_EXPORT_DIR=tmp)
        subprocess.run([str(test_binary), "--gtest_filter=*ExportForPython*"], env=env, check=True)
        tmp = Path(tmp)

        # 1. Single file written by save_file(): every dtype the fixture has, same values, metadata kept.
        reference = dtype_tensors()
        with safe_open(tmp / "dtypes_cpp.safetensors", "pt") as f:
            check(f.metadata() == {"format": "pt", "writer": "medllm"}, "metadata round-trips")
            check(sorted(f.keys()) == sorted(reference), "tensor names")
            for name, want in reference.items():
                got = f.get_tensor(name)
                same = got.dtype == want.dtype and got.shape == want.shape and torch.equal(
                    got.view(-1).view(torch.uint8) if got.numel() else got, want.view(-1).view(torch.uint8)
                    if want.numel() else want)
                check(same, f"tensor {name} bit-identical ({want.dtype}, {list(want.shape)})")

        # 2. Re-sharded checkpoint: same shard files and index text as transformers wrote, and the same model.
        cpp_dir, hf_dir = tmp / "sharded_cpp", OUT / "sharded"
        hf_index = (hf_dir / "model.safetensors.index.json").read_text()
        cpp_index = (cpp_dir / "model.safetensors.index.json").read_text()
        check(json.loads(cpp_index)["weight_map"] == json.loads(hf_index)["weight_map"], "weight_map equals HF's")
        check(json.loads(cpp_index)["metadata"]["total_size"] == json.loads(hf_index)["metadata"]["total_size"],
              "metadata.total_size equals HF's")
        doc = json.loads(cpp_index)
        check(cpp_index == json.dumps(doc, indent=2, sort_keys=True) + "\n",
              "index text is json.dumps(indent=2, sort_keys=True) + newline, like transformers")
        for shard in sorted(set(doc["weight_map"].values())):
            with safe_open(cpp_dir / shard, "pt") as f, safe_open(hf_dir / shard, "pt") as g:
                check(f.metadata() == g.metadata(), f"{shard}: metadata equals HF's ({f.metadata()})")
                for name in g.keys():
                    check(torch.equal(f.get_tensor(name), g.get_tensor(name)), f"{shard}: {name} equal")
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers not installed: skipping the from_pretrained check")
        else:
            check(torch.equal(logits_of(cpp_dir), logits_of(hf_dir)),
                  "transformers loads the C++-written checkpoint; logits identical to the original")
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify-cpp", action="store_true", help="check files written by the C++ writer")
    ap.add_argument("--test-binary", default=str(ROOT / "build" / "tests" / "test_io"))
    args = ap.parse_args()
    if args.verify_cpp:
        verify_cpp(args.test_binary)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    make_dtypes()
    make_sharded()
    print(f"wrote fixtures under {OUT}")


if __name__ == "__main__":
    main()
