"""SFT → VinePPO → evaluate at toy size from a Qwen3 and a Gemma 3 folder (bf16 checkpoints built
by transformers, with sliding layers, a generation config and a chat template): every stage
trains the family's own weights, every export keeps the checkpoint's dtype (or `export.dtype`),
its generation_config.json and its chat template, and transformers reads the final policy with
the logits vinejax computes."""
import importlib.util
import json
import os

import helpers_hf as H
import jax
import numpy as np
import pytest
from safetensors import safe_open
from test_train_loop import reward_odd_length, tiny_config

from vinejax.model import forward, load_hf_model
from vinejax.tasks import arithmetic
from vinejax.tasks.arithmetic import ALPHABET
from vinejax.tasks.char_tokenizer import build_char_tokenizer
from vinejax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def bf16_folder(path, variant):
    """A tiny random `variant` (helpers_hf) over the arithmetic characters, saved in bf16 with its
    tokenizer (chat template included) and a generation config."""
    import torch
    from transformers import GenerationConfig

    tok = build_char_tokenizer(ALPHABET)
    tok.chat_template = CHAT_TEMPLATE
    model_type, kwargs = H.VARIANTS[variant]
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = H.tiny_model(model_type, std=0.05, **{**kwargs, "vocab_size": len(tok), "max_position_embeddings": 64,
                                                 **ids})
    model.to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, **ids).save_pretrained(path)
    return path


def weight_dtypes(folder) -> set:
    with safe_open(os.path.join(folder, "model.safetensors"), framework="numpy") as f:
        return {f.get_slice(name).get_dtype() for name in f.keys()}


def check_export(folder, source, dtype):
    """The export kept `source`'s generation config and chat template and holds `dtype` weights."""
    from transformers import AutoTokenizer

    assert weight_dtypes(folder) == {dtype}
    assert json.load(open(os.path.join(folder, "config.json")))["dtype"] == {"BF16": "bfloat16", "F32": "float32"}[dtype]
    kept = lambda f: json.load(open(os.path.join(f, "generation_config.json")))
    assert kept(folder) == kept(source)
    assert AutoTokenizer.from_pretrained(folder).chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("variant, export_dtype", [("qwen3_window", ""), ("gemma3", "float32")])
def test_sft_vineppo_evaluate(tmp_path, variant, export_dtype, monkeypatch):
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)  # a reward a random model earns
    source = str(bf16_folder(tmp_path / "base", variant))
    fp32 = {"model.dtype": "float32", "model.param_dtype": "float32"}  # trained in fp32 whatever came in
    sft = tiny_config(tmp_path, "sft", **fp32, **{"model.hf_path": source, "sft.epochs": 1, "sft.batch_size": 16,
                                                   "sft.micro_batch": 16})
    loop.run(sft)
    sft_hf = os.path.join(sft.output_dir, "hf")
    check_export(sft_hf, source, "BF16")  # bf16 in, bf16 out
    cfg0, base = load_hf_model(source)
    cfg1, tuned = load_hf_model(sft_hf)
    assert cfg1.replace(export_dtype=None) == cfg0.replace(export_dtype=None) and cfg1.sliding_window == H.WINDOW
    moved = {k: float(np.abs(np.asarray(tuned["layers"][k], np.float32) - np.asarray(v, np.float32)).max())
             for k, v in base["layers"].items()}
    assert min(moved.values()) > 0, moved  # every layer leaf trained, the q/k norms included

    rl = tiny_config(tmp_path, "vineppo", iterations=1, **fp32, **{
        "model.init_from": sft.output_dir, "export.dtype": export_dtype, "ppo.epochs": 1})
    loop.run(rl)
    rl_hf = os.path.join(rl.output_dir, "hf")
    check_export(rl_hf, source, "F32" if export_dtype == "float32" else "BF16")
    record = json.loads(open(os.path.join(rl.output_dir, "metrics.jsonl")).readline())
    assert record["mc/num_states"] >= 8 and np.isfinite(record["kl"])

    spec = importlib.util.spec_from_file_location("evaluate_cli", os.path.join(ROOT, "experiments", "evaluate.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "eval"
    assert cli.main(["--model", rl.output_dir, "--split", "test", "--samples", "2", "--num-problems", "4",
                     "--out", str(out)]) == 0
    summary = json.load(open(out / "test" / "hf.json"))
    assert summary["problems"] == 4 and 0 <= summary["metrics"]["accuracy"] <= 1

    cfg, params = load_hf_model(rl_hf, dtype="float32", param_dtype="float32")
    tokens = H.random_tokens(2, 20, vocab=cfg.vocab_size)
    ours, _ = jax.jit(forward, static_argnums=1)(params, cfg, tokens)
    np.testing.assert_allclose(np.asarray(ours), H.torch_logits(H.load_torch(rl_hf), tokens), atol=1e-4, rtol=0)
