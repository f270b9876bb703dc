"""task.chat_template: prompts are the tokenizer's chat template of one user message (token for
token what `apply_chat_template` gives), generation ends at the template's end-of-turn token,
the SFT target is the assistant turn; without the option a tokenizer with a template is noted."""
import dataclasses

import helpers_tokenizers
import pytest

from vinejax.config import base_config
from vinejax.tasks import arithmetic, get_task
from vinejax.train import encode
from vinejax.train.context import build_context, chat_setup, task_of
from vinejax.train.episodes import encode_prompts

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TEMPLATES = {"chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
             "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>")}


def chat_tokenizer(kind):
    template, specials, _ = TEMPLATES[kind]
    problems = arithmetic.load_split("train", num_problems=50)
    tok = helpers_tokenizers.byte_level_bpe([p.problem + "\n" + p.solution for p in problems] + ["user assistant"])
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    return tok


def chat_task():
    task = get_task("arithmetic", num_operations=3, prompt_template="Solve: {problem}")
    return dataclasses.replace(task, chat_template=True)


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_prompts_equal_apply_chat_template_token_for_token(kind):
    tok, task = chat_tokenizer(kind), chat_task()
    problems = arithmetic.load_split("validation", num_problems=6, num_operations=3)
    ours = encode_prompts(tok, task, problems)
    for ids, p in zip(ours, problems):
        ref = tok.apply_chat_template([{"role": "user", "content": f"Solve: {p.problem}"}],
                                      add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == list(ref)
    if kind == "llama3":  # the template writes BOS itself: no second one
        assert ours[0][0] == tok.bos_token_id and ours[0][1] != tok.bos_token_id


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_generation_ends_at_the_end_of_turn_and_sft_trains_the_assistant_turn(kind):
    tok, task = chat_tokenizer(kind), chat_task()
    end = TEMPLATES[kind][2]
    assert encode.end_of_turn(tok) == end
    notes = chat_setup(tok, True)
    assert tok.eos_token == end and end in notes[0]
    problem = arithmetic.load_split("validation", num_problems=1, num_operations=3)[0]
    ids, mask = encode.task_sft(tok, task, problem.problem, problem.solution)
    conversation = [{"role": "user", "content": f"Solve: {problem.problem}"},
                    {"role": "assistant", "content": problem.solution}]
    full = list(tok.apply_chat_template(conversation, tokenize=True, return_dict=False))
    prompt = encode.task_prompt(tok, task, problem.problem)
    assert ids == full[: len(ids)] and ids[: len(prompt)] == prompt  # the conversation, cut after the turn
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(trained) == problem.solution + end and trained[-1] == tok.eos_token_id
    assert not any(mask[: len(prompt)])


def test_the_run_uses_or_notes_the_chat_template(tmp_path):
    tok = chat_tokenizer("chatml")
    tok.save_pretrained(tmp_path / "tok")
    c = base_config()
    c.model.tokenizer_path = str(tmp_path / "tok")
    c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = 32, 1, 2, 1
    c.model.intermediate_size, c.model.max_position_embeddings = 64, 128
    c.task.options.num_operations, c.task.max_prompt_tokens = 2, 64
    c.sampling.max_new_tokens, c.mesh.shape = 16, (1, 1, 1)
    ctx, params, _ = build_context(c)
    assert any("chat template" in n and "task.chat_template=true" in n for n in ctx.notes)
    assert ctx.rollout(params).scfg.eos_ids == (tok.eos_token_id,)  # the raw prompts of the paper
    c.task.chat_template = True
    ctx, params, _ = build_context(c)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ctx.rollout(params).scfg.eos_ids == (end,) and ctx.rollout(params, evaluation=True).scfg.eos_ids == (end,)
    assert task_of(c).chat_template
    first = encode_prompts(ctx.tokenizer, ctx.task, ctx.task.load_split("test")[:1])[0]
    assert first[0] == tok.convert_tokens_to_ids("<|im_start|>")
