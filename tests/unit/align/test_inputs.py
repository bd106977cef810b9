"""The data sets the align steps read: content digests in the address, MLflow inputs with digests."""

from __future__ import annotations

from components.align import inputs


def test_sft_data_edited_in_place_changes_its_digest(make_config, tmp_path):
    source = tmp_path / "sft.jsonl"
    source.write_text('{"question": "a", "answer": "b"}\n')
    cfg = make_config(f"align.source={source}")
    before = inputs.address(inputs.sft_inputs(cfg))
    source.write_text('{"question": "a", "answer": "c"}\n')
    assert inputs.address(inputs.sft_inputs(cfg)) != before


def test_sft_address_ignores_preference_keys(make_config):
    assert inputs.sft_config(make_config("align.beta=0.5")) == inputs.sft_config(make_config())
    assert inputs.sft_config(make_config("align.steps=7", "align.warmup_steps=1")) != inputs.sft_config(make_config())


def test_preference_step_reads_pairs_for_dpo_and_generated_prompts_for_expert_iteration(make_config, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    dpo = inputs.preference_inputs(make_config("align.method=dpo", f"align.preferences={pairs}"))
    ei = inputs.preference_inputs(make_config("align.method=expert_iteration"))
    assert [i.name for i in dpo] == ["preferences"] and [i.name for i in ei] == ["arithmetic"]
    assert inputs.preference_inputs(make_config()) == []


def test_online_dpo_reads_pairs_when_the_reward_model_judges_and_generated_prompts_when_the_verifier_does(
    make_config, tmp_path
):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    rm = inputs.preference_inputs(
        make_config("align.method=online_dpo", "align.judge=reward_model", f"align.preferences={pairs}")
    )
    verifier = inputs.preference_inputs(make_config("align.method=online_dpo"))
    assert [i.name for i in rm] == ["preferences"] and [i.name for i in verifier] == ["arithmetic"]


def test_sft_address_changes_with_the_number_of_workers(make_config):
    assert inputs.sft_config(make_config()) != inputs.sft_config(make_config("align.num_workers=2"))


def test_generated_prompts_digest_follows_the_generator_settings(make_config):
    base = inputs.arithmetic_input(make_config("align.method=expert_iteration"))
    same = inputs.arithmetic_input(make_config("align.method=expert_iteration", "align.beta=0.3"))
    wider = inputs.arithmetic_input(make_config("align.method=expert_iteration", "align.task_digits=[2, 3]"))
    assert base.digest == same.digest != wider.digest


def test_inputs_are_logged_to_mlflow_with_name_and_digest(make_config, tmp_path):
    import mlflow

    from components.common import lineage
    from components.common.storage import file_digest

    source = tmp_path / "sft.jsonl"
    source.write_text('{"question": "a", "answer": "b"}\n')
    cfg = make_config(f"align.source={source}", "align.arithmetic_steps=0")
    lineage.setup(cfg)
    read = inputs.sft_inputs(cfg)
    with mlflow.start_run() as run:
        inputs.log_inputs(read)
    logged = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    digest = file_digest(source)
    assert [(d.dataset.name, d.dataset.digest) for d in logged] == [("sft/sft.jsonl", digest[:36])]
    assert {t.key: t.value for t in logged[0].tags}[lineage.TAG_FULL_DIGEST] == digest
    assert {t.key: t.value for t in logged[0].tags}["mlflow.data.context"] == lineage.RAW_CONTEXT
    assert str(source) in logged[0].dataset.source


def test_sft_reads_the_generated_single_digit_additions_only_with_the_arithmetic_phase(make_config):
    assert [i.name for i in inputs.sft_inputs(make_config("align.arithmetic_steps=0"))] == ["sft"]
    assert [i.name for i in inputs.sft_inputs(make_config("align.arithmetic_steps=5"))] == ["sft", "arithmetic_sft"]
    assert inputs.sft_config(make_config("align.arithmetic_weight_decay=1.0")) != inputs.sft_config(make_config())
