"""HF config.json dicts <-> ModelConfig (both transformers-5 and older layouts)."""
import warnings

import pytest

from vinejax.model import SUPPORTED_MODEL_TYPES, ModelConfig, config_from_hf, config_to_hf
from vinejax.model.config import UnsupportedModelError

BASE = dict(
    model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
    max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def test_new_and_old_rope_layouts_agree():
    new = config_from_hf({**BASE, "rope_parameters": {"rope_theta": 5e5, **LLAMA3}, "dtype": "bfloat16"})
    old = config_from_hf({**BASE, "rope_theta": 5e5, "rope_scaling": {**LLAMA3}, "torch_dtype": "bfloat16"})
    assert new == old
    assert new.rope_theta == 5e5 and new.rope_scaling_dict == LLAMA3
    assert new.param_dtype == new.dtype == "bfloat16"
    assert new.head_dim == 16  # absent -> hidden / heads
    legacy = config_from_hf({**BASE, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert legacy.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}
    plain = config_from_hf({**BASE, "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}})
    assert plain.rope_scaling is None and plain.param_dtype == "float32"


def test_dtype_overrides_and_config_overrides():
    cfg = config_from_hf({**BASE, "dtype": "bfloat16"}, dtype="float32", remat=True)
    assert (cfg.dtype, cfg.param_dtype, cfg.remat) == ("float32", "bfloat16", True)


def test_qwen2_biases_and_tying():
    cfg = config_from_hf({**BASE, "model_type": "qwen2", "tie_word_embeddings": True,
                          "sliding_window": 4096, "use_sliding_window": False})
    assert cfg.attention_bias and cfg.tie_word_embeddings and cfg.max_position_embeddings == 256


def test_sliding_windows_read_per_family():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = config_from_hf({**BASE, "model_type": "mistral", "sliding_window": 32})
    assert cfg.layer_windows == (32, 32) and cfg.max_position_embeddings == 256
    assert config_from_hf({**BASE, "model_type": "mistral", "sliding_window": None}).sliding_window is None
    qwen = {**BASE, "model_type": "qwen2", "sliding_window": 8, "max_window_layers": 1}
    assert config_from_hf(qwen).sliding_window is None  # use_sliding_window off
    assert config_from_hf({**qwen, "use_sliding_window": True}).layer_windows == (0, 8)
    gemma2 = config_from_hf({**BASE, "model_type": "gemma2", "num_hidden_layers": 3, "sliding_window": 8})
    assert gemma2.layer_windows == (8, 0, 8)  # transformers' alternation when layer_types is absent
    gemma3 = config_from_hf({**BASE, "model_type": "gemma3_text", "num_hidden_layers": 7, "sliding_window": 8,
                             "rope_local_base_freq": 1e4, "rope_theta": 1e6})
    assert gemma3.layer_windows == (8,) * 5 + (0, 8) and gemma3.layer_ropes[4:] == ("local", "global", "local")
    assert (gemma3.rope_theta, gemma3.rope_local_theta) == (1e6, 1e4)


def test_unsupported_inputs_raise():
    with pytest.raises(ValueError, match=r"'gpt2'.*llama, mistral, qwen2"):
        config_from_hf({**BASE, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf({**BASE, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="rope_type"):
        config_from_hf({**BASE, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedModelError, match="rope_type 'longrope'"):  # Phi-3 128k / Phi-4-mini
        config_from_hf({**BASE, "model_type": "phi3", "rope_scaling": {"rope_type": "longrope", "factor": 4.0}})
    with pytest.raises(UnsupportedModelError, match="attention_bias"):  # Qwen3's biases include o_proj's
        config_from_hf({**BASE, "model_type": "qwen3", "attention_bias": True})
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        config_from_hf({**BASE, "model_type": "gemma3_text", "use_bidirectional_attention": True})


def test_list_eos_is_hashable():
    cfg = config_from_hf({**BASE, "eos_token_id": [2, 7]})
    assert cfg.eos_token_id == (2, 7)
    hash(cfg)


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_roundtrip(model_type):
    cfg = config_from_hf({**BASE, "model_type": model_type, "rope_parameters": {"rope_theta": 5e5, **LLAMA3}})
    hf = config_to_hf(cfg)
    assert hf["architectures"][0].lower().startswith(model_type.split("_")[0])
    assert config_from_hf(hf) == cfg
    assert isinstance(cfg, ModelConfig)


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_defaults_are_transformers_defaults(model_type):
    """A config.json that leaves keys out reads as transformers' own class fills them in (token
    ids aside: a checkpoint's tokenizer names them)."""
    import transformers

    sizes = {k: v for k, v in BASE.items() if k not in ("model_type", "bos_token_id", "eos_token_id")}
    full = transformers.AutoConfig.for_model(model_type, **sizes).to_dict()
    no_ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    assert config_from_hf({"model_type": model_type, **sizes}, **no_ids) == config_from_hf(full, **no_ids)
