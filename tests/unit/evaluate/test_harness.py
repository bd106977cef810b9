"""lm-eval on an in-memory model with lmforge's shipped tasks, fully offline."""

from __future__ import annotations

import pytest

from components.common.errors import ConfigError
from components.evaluate import harness


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM

    from components.common.tokenizer import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval(), load_tokenizer(tiny_model)


def test_shipped_tasks_are_exactly_lmforges():
    assert harness.shipped_tasks() == [
        "lmforge_arithmetic",
        "lmforge_arithmetic_1digit",
        "lmforge_gsm8k_mini",
        "lmforge_shakespeare_cloze",
        "lmforge_shakespeare_order",
    ]


def test_cloze_task_runs_offline_and_reports_accuracy(model_and_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    metrics, table = harness.run_tasks(*model_and_tokenizer, ["lmforge_shakespeare_cloze"], limit=8, batch_size=8)
    for name in ("acc", "acc_norm"):
        assert 0.0 <= metrics[f"lmforge_shakespeare_cloze/{name}"] <= 1.0
    assert table["lmforge_shakespeare_cloze"]["samples"] == 8
    assert table["lmforge_shakespeare_cloze"]["chat_template"] is False


def test_generative_task_uses_the_chat_template_when_the_tokenizer_has_one(model_and_tokenizer):
    from components.align.chat import install_chat_template

    model, tokenizer = model_and_tokenizer
    chat_tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path, local_files_only=True)
    install_chat_template(chat_tokenizer)
    metrics, table = harness.run_tasks(model, chat_tokenizer, ["lmforge_gsm8k_mini"], limit=2, batch_size=2)
    assert table["lmforge_gsm8k_mini"]["chat_template"] is True
    assert table["lmforge_gsm8k_mini"]["num_fewshot"] == 5
    assert table["lmforge_gsm8k_mini"]["scores_without_stderr"] == []
    assert 0.0 <= metrics["lmforge_gsm8k_mini/exact_match_strict-match"] <= 1.0
    assert 0.0 <= metrics["lmforge_gsm8k_mini/exact_match_flexible-extract"] <= 1.0


def test_unknown_task_names_the_key_and_the_shipped_tasks():
    with pytest.raises(ConfigError, match=r"evaluate\.tasks.*'lmforge_shakespear_cloze'.*lmforge_shakespeare_cloze"):
        harness.check_tasks(["lmforge_arithmetic", "lmforge_shakespear_cloze"])


def test_standard_task_is_found_by_name_with_the_hub_dataset_it_reads():
    manager = harness.task_manager(["arc_easy"])
    assert "arc_easy" in manager.task_index and "lmforge_arithmetic" in manager.task_index
    assert harness.task_datasets(manager, "arc_easy") == {("allenai/ai2_arc", "ARC-Easy")}


def test_standard_task_offline_fails_before_loading_a_model_naming_key_task_reason_and_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        harness.check_tasks(["lmforge_arithmetic", "hellaswag"])
    message = str(e.value)
    for part in ("evaluate.tasks", "'hellaswag'", "'Rowan/hellaswag'", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        assert part in message
    assert ", ".join(harness.shipped_tasks()) in message


# lmforge_gsm8k_mini's scores and standard errors are checked with its chat template below (the
# same 2 examples generate 128 tokens each: one run of it is enough for the test budget)
@pytest.mark.parametrize("task", [t for t in harness.shipped_tasks() if t != "lmforge_gsm8k_mini"])
def test_every_score_of_a_shipped_task_comes_with_its_standard_error(task, model_and_tokenizer):
    metrics, table = harness.run_tasks(*model_and_tokenizer, [task], limit=2, batch_size=2)
    assert table[task]["scores_without_stderr"] == []
    scores = [k for k in metrics if "_stderr" not in k]
    assert scores and len([k for k in metrics if "_stderr" in k]) == len(scores)


@pytest.fixture(scope="module")
def gsm8k_task():
    return harness.task_manager().load_task_or_group(["lmforge_gsm8k_mini"])["lmforge_gsm8k_mini"]


def test_gsm8k_few_shot_examples_come_from_the_train_split_never_the_evaluated_one(gsm8k_task):
    evaluated = {d["question"] for d in gsm8k_task.test_docs()}
    pool = list(gsm8k_task.fewshot_docs())
    assert gsm8k_task.config.fewshot_split == "train" and gsm8k_task.config.test_split == "test"
    assert len(pool) == 50 and all(d["id"].startswith("gsm8k-train-") for d in pool)
    assert not evaluated & {d["question"] for d in pool}


def test_gsm8k_chat_prompt_gives_each_shot_as_a_user_and_assistant_turn(gsm8k_task, tiny_model):
    from components.align.chat import install_chat_template
    from components.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    install_chat_template(tokenizer)
    doc = gsm8k_task.test_docs()[0]
    gsm8k_task.set_fewshot_seed(1234)
    prompt = gsm8k_task.fewshot_context(
        doc,
        num_fewshot=5,
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        chat_template=lambda messages, add_generation_prompt=True: tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        ),
    )
    assert prompt.count("<|user|>Question:") == 6 and prompt.count("<|assistant|>") == 6
    assert prompt.count("####") == 5  # each shot's worked answer, none for the evaluated question
    assert prompt.endswith(f"<|user|>Question: {doc['question']}\nAnswer:<|end|><|assistant|>")
