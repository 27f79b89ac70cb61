#!/usr/bin/env python3
"""Golden fixtures for `medllm rpo` (tests/train/rpo_test.cpp) from TRL itself, CPU, fp32, eager attention.

Run it once per TRL era (both write into tests/fixtures/train/rpo/):

  # TRL 1.x (scripts/requirements-fixtures.txt pins trl 1.16.0): RPO spelled loss_type=["sigmoid","sft"],
  # loss_weights=[1, 10]
  .venv/bin/python scripts/make_rpo_fixtures.py
  # TRL 0.28 (rpo_alpha=10, the ignore_index=0 NLL), installed beside the main venv without touching it:
  .venv/bin/pip install --no-deps --target .venv-trl028 trl==0.28.0
  PYTHONPATH=.venv-trl028 .venv/bin/python scripts/make_rpo_fixtures.py

Writes tests/fixtures/train/rpo/:
  pairs.jsonl           6 preference pairs as strings (one chosen completion holds '!', token id 0 of the byte
                        tokenizer, so the v0.28 ignore_index=0 quirk changes the NLL), with pair_type
  init_adapter/         the fixed initial PEFT adapter (r 4, alpha 8, all seven projections, B != 0 so the policy
                        differs from the reference at step 0)
  trl<era>_<loss>/      for era in {028, 1x} and loss in {dpo, rpo}: reference.json (TRL's logged metrics of the
                        step, its pre-clip grad norm, the settings), grads.safetensors (the post-clip gradients of
                        every adapter tensor, medllm's names) and final_adapter/ (after one optimizer step)
  loss_vectors.json     (TRL 0.28 run only) DPOTrainer.dpo_loss on fixed log-probs: sigmoid, cDPO, hinge, ipo
  trl028_tokenized.json (TRL 0.28 run only) maybe_apply_chat_template + DPOTrainer.tokenize_row (max_prompt_length
                        16, so prompts are cut) on build-prefs' pairs files (tests/fixtures/train/
                        prefs_trl_pairs_{base,chat}.jsonl) with the Qwen2.5 tokenizer of ../shared/qwen_tokenizer and
                        its instruct chat template: the ids medllm's loader must produce

The model is tests/fixtures/model/qwen2-tiny-tied, the tokenizer tests/fixtures/train/byte-tokenizer (256 byte
tokens, no merges, <|endoftext|> = 256, so joint and separate tokenization agree and both eras see the same ids).
One optimizer step over one micro-batch of all 6 pairs (the pooled NLL depends on the micro-batch, and a single
batch makes TRL's shuffled sampler irrelevant): AdamW (torch, single tensor), lr 1e-3 constant, max_grad_norm 1.0,
beta 0.1, dropout off (TRL's disable_dropout), reference = the base with the adapter disabled.
"""
import json
import os
import shutil
import sys
import tempfile

import torch

import trl_compat  # noqa: F401,E402  (TRL 0.28 under transformers 5; before `import trl`)

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, set_peft_model_state_dict  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "train", "rpo")
MODEL = os.path.join(ROOT, "tests", "fixtures", "model", "qwen2-tiny-tied")
TOK = os.path.join(ROOT, "tests", "fixtures", "train", "byte-tokenizer")
ERA = "028" if trl.__version__.startswith("0.") else "1x"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, MAX_GRAD_NORM, BETA, ALPHA = 1e-3, 1.0, 0.1, 10.0

PAIRS = [
    {"prompt": "Q: 2+2?\nA:", "chosen": " 4, because two and two make four!", "rejected": " 5", "pair_type": "gt_chosen"},
    {"prompt": "Q: capital of Japan?\nA:", "chosen": " Tokyo", "rejected": " Kyoto, the old capital.",
     "pair_type": "gt_rejected"},
    {"prompt": "問題: 鉄欠乏?\n答え:", "chosen": " c", "rejected": " a", "pair_type": "chosen_rejected"},
    {"prompt": "Q: color of the sky?\nA:", "chosen": " blue", "rejected": " green", "pair_type": "gt_chosen"},
    {"prompt": "Explain DPO briefly.", "chosen": " It fits a policy to preferences.", "rejected": " No.",
     "pair_type": "gt_rejected"},
    {"prompt": "Q: 3*3?\nA:", "chosen": " 9", "rejected": " six", "pair_type": "chosen_rejected"},
]


def tokenizer():
    with open(os.path.join(TOK, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 256 and tok("!")["input_ids"] == [0]
    return tok


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=TARGETS)


def fixed_adapter_state(model):
    """Deterministic A (PEFT's init under seed 0) and B ~ N(0, 0.05^2), keyed as PEFT's state dict."""
    g = torch.Generator().manual_seed(3)
    state = {}
    for n, p in model.named_parameters():
        if "lora_" not in n:
            continue
        key = n.replace(".default", "")
        if "lora_B" in n:
            state[key] = torch.randn(p.shape, generator=g) * 0.05
        else:
            state[key] = (torch.rand(p.shape, generator=g) * 2 - 1) / p.shape[1] ** 0.5
    return state


def medllm_name(peft_name):
    return peft_name.replace("base_model.model.", "", 1).replace(".default", "")


class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {medllm_name(n): p.grad.detach().clone().contiguous()
                      for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def save_adapter(model, path):
    model.save_pretrained(path)
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def one_step(loss_name, tok, workdir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    kw = dict(output_dir=os.path.join(workdir, loss_name), per_device_train_batch_size=len(PAIRS),
              gradient_accumulation_steps=1, max_steps=1, learning_rate=LR, lr_scheduler_type="constant",
              warmup_steps=0, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM, optim="adamw_torch", logging_steps=1,
              beta=BETA, bf16=False, fp16=False, gradient_checkpointing=False, seed=42, report_to=[],
              use_cpu=True, save_strategy="no", max_length=1024, disable_dropout=True, dataloader_num_workers=0)
    if ERA == "028":
        kw["max_prompt_length"] = 512
        if loss_name == "rpo":
            kw["rpo_alpha"] = ALPHA
    else:
        kw["loss_type"] = ["sigmoid", "sft"] if loss_name == "rpo" else ["sigmoid"]
        if loss_name == "rpo":
            kw["loss_weights"] = [1.0, ALPHA]
    args = DPOConfig(**kw)
    ds = Dataset.from_list(PAIRS)
    capture = GradCapture()
    trainer = DPOTrainer(model=base, args=args, train_dataset=ds, processing_class=tok, peft_config=lora_config(),
                         callbacks=[capture])
    init_dir = os.path.join(OUT, "init_adapter")
    if not os.path.exists(init_dir):
        set_peft_model_state_dict(trainer.model, fixed_adapter_state(trainer.model))
        save_adapter(trainer.model, init_dir)
    else:
        from safetensors.torch import load_file
        state = load_file(os.path.join(init_dir, "adapter_model.safetensors"))
        res = set_peft_model_state_dict(trainer.model, state)
        assert not res.unexpected_keys, res.unexpected_keys
    trainer.train()
    log = next(r for r in trainer.state.log_history if "loss" in r)
    d = os.path.join(OUT, f"trl{ERA}_{loss_name}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    save_adapter(trainer.model, os.path.join(d, "final_adapter"))
    save_file(capture.grads, os.path.join(d, "grads.safetensors"))
    ref = {"trl": trl.__version__, "torch": torch.__version__,
           "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
           "loss": loss_name, "settings": {k: v for k, v in kw.items() if k != "output_dir"},
           "log": log}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
    print(loss_name, json.dumps(log, sort_keys=True))


def loss_vectors():
    """TRL 0.28's DPOTrainer.dpo_loss on fixed log-probs (the method, with just the attributes it reads)."""
    from trl.trainer.dpo_config import FDivergenceType

    class Accel:
        device = torch.device("cpu")

    def trainer(loss_type, eps):
        t = DPOTrainer.__new__(DPOTrainer)
        t.accelerator = Accel()
        t.beta, t.label_smoothing, t.reference_free = BETA, eps, False
        t.f_divergence_type, t.f_divergence_params, t.loss_type = FDivergenceType.REVERSE_KL, {}, [loss_type]
        t.use_weighting = False
        return t

    g = torch.Generator().manual_seed(5)
    cases = [
        {"name": "vector_a", "policy_chosen": [410.0, 0.1], "policy_rejected": [810.5, 0.2],
         "ref_chosen": [-610.0, -0.1], "ref_rejected": [110.6, 0.5]},
        {"name": "random", "policy_chosen": (-torch.rand(8, generator=g) * 60).tolist(),
         "policy_rejected": (-torch.rand(8, generator=g) * 60).tolist(),
         "ref_chosen": (-torch.rand(8, generator=g) * 60).tolist(),
         "ref_rejected": (-torch.rand(8, generator=g) * 60).tolist()},
    ]
    out = []
    for c in cases:
        t = {k: torch.tensor(c[k], dtype=torch.float32) for k in
             ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")}
        res = dict(c)
        for name, lt, eps in [("sigmoid", "sigmoid", 0.0), ("cdpo", "sigmoid", 0.1), ("hinge", "hinge", 0.0),
                              ("ipo", "ipo", 0.0)]:
            losses, cr, rr = trainer(lt, eps).dpo_loss(t["policy_chosen"], t["policy_rejected"], t["ref_chosen"],
                                                       t["ref_rejected"], lt)
            res[name] = {"losses": losses.tolist(), "chosen_rewards": cr.tolist(), "rejected_rewards": rr.tolist(),
                         "label_smoothing": eps}
        out.append(res)
    with open(os.path.join(OUT, "loss_vectors.json"), "w") as f:
        json.dump({"trl": trl.__version__, "beta": BETA, "cases": out}, f, indent=1)


def tokenized_pairs():
    """TRL 0.28's data path on build-prefs' pairs files: chat template (chat rows), separate tokenization, EOS on
    string completions, the prompt's last max_prompt_length tokens."""
    from trl.data_utils import maybe_apply_chat_template

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_tokenizer_fixtures import build_tokenizer  # Qwen2.5's tokenizer from ../shared (tested golden)

    sh = os.path.join(os.path.dirname(ROOT), "shared", "qwen_tokenizer")
    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    with open(os.path.join(sh, "chat_template_qwen2.5_instruct.jinja")) as f:
        tok.chat_template = f.read()
    out = {"trl": trl.__version__, "max_prompt_length": 16, "eos_token": "<|endoftext|>", "files": {}}
    for kind in ("base", "chat"):
        name = f"prefs_trl_pairs_{kind}.jsonl"
        rows = []
        with open(os.path.join(ROOT, "tests", "fixtures", "train", name), encoding="utf-8") as f:
            for line in list(f)[:4]:
                ex = maybe_apply_chat_template(json.loads(line), tok)
                ids = DPOTrainer.tokenize_row(ex, tok, max_prompt_length=16, max_completion_length=None,
                                              add_special_tokens=False, is_chat=(kind == "chat"))
                rows.append(ids)
        out["files"][name] = rows
    with open(os.path.join(OUT, "trl028_tokenized.json"), "w") as f:
        json.dump(out, f)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    with open(os.path.join(OUT, "pairs.jsonl"), "w", encoding="utf-8") as f:
        for p in PAIRS:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    tok = tokenizer()
    with tempfile.TemporaryDirectory() as work:
        for loss_name in ("dpo", "rpo"):
            one_step(loss_name, tok, work)
    if ERA == "028":
        loss_vectors()
        tokenized_pairs()
    print("wrote", OUT, "for TRL", trl.__version__, file=sys.stderr)


if __name__ == "__main__":
    main()
