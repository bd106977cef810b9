"""run_stage: a completed output is reused, a failing stage records a one-line reason and completes nothing."""

import pytest

from components.common.artifacts import write_pointer
from components.common.errors import DataError
from components.common.stage import run_stage


def _run(home, fn, *overrides, inputs=None):
    return run_stage(
        "curate",
        "datasets",
        profile="tiny",
        overrides=[f"run.home={home}", *overrides],
        parent_run_id="",
        input_pointer_paths=inputs or {},
        fn=fn,
        sections=("curate",),
    )


def test_second_run_with_same_config_reuses_output(tmp_path):
    calls = []

    def body(ctx):
        calls.append(1)
        (ctx.out_dir / "data.txt").write_text("payload")
        return {"metrics": {"records": 3}}

    first, _ = _run(tmp_path, body)
    second, summary = _run(tmp_path, body)
    assert first == second and len(calls) == 1 and summary["metrics"]["records"] == 3


def test_changed_versioned_field_reruns(tmp_path):
    calls = []

    def body(ctx):
        calls.append(1)
        return {"metrics": {}}

    a, _ = _run(tmp_path, body, "curate.min_chars=10")
    b, _ = _run(tmp_path, body, "curate.min_chars=11")
    assert a["uri"] != b["uri"] and len(calls) == 2


def test_failed_stage_records_reason_and_stays_incomplete(tmp_path):
    def body(ctx):
        raise DataError("corpus.txt: no records")

    with pytest.raises(DataError):
        _run(tmp_path, body)
    [error] = (tmp_path / "errors").glob("curate-*.txt")
    assert error.read_text() == "corpus.txt: no records"
    assert not list((tmp_path / "store" / "datasets").rglob("_COMPLETE.json"))


def test_inputs_are_fetched_and_logged(tmp_path):
    def producer(ctx):
        (ctx.out_dir / "x.txt").write_text("hello")
        return {}

    pointer, _ = _run(tmp_path, producer)
    write_pointer(tmp_path / "ptr.json", pointer)
    seen = {}

    def consumer(ctx):
        seen["text"] = (ctx.inputs["upstream"] / "x.txt").read_text()
        return {}

    _run(tmp_path, consumer, "curate.min_chars=5", inputs={"upstream": str(tmp_path / "ptr.json")})
    assert seen["text"] == "hello"


def test_outputs_publish_to_and_inputs_fetch_from_s3(tmp_path, s3_server):
    s3 = ["storage.uri=s3://lmforge-stage-test/run", f"storage.s3_endpoint={s3_server}", "storage.s3_secure=false"]

    def producer(ctx):
        (ctx.out_dir / "shard.bin").write_bytes(b"\x01\x02")
        return {"metrics": {"tokens": 1}}

    pointer, _ = _run(tmp_path, producer, *s3)
    assert pointer["uri"].startswith("s3://lmforge-stage-test/run/datasets/")
    write_pointer(tmp_path / "ptr.json", pointer)
    seen = {}

    def consumer(ctx):
        seen["bytes"] = (ctx.inputs["upstream"] / "shard.bin").read_bytes()
        return {}

    _run(tmp_path, consumer, *s3, "curate.min_chars=5", inputs={"upstream": str(tmp_path / "ptr.json")})
    assert seen["bytes"] == b"\x01\x02"


def test_hashed_config_takes_a_whole_section_or_one_dotted_field():
    from components.common.config import load_config, versioned_dict
    from components.common.stage import hashed_config

    cfg = load_config("tiny", ["evaluate.heldout_max_tokens=1234"])
    hashed = hashed_config(cfg, ("model", "evaluate.heldout_max_tokens"))
    assert hashed == {"model": versioned_dict(cfg.model), "evaluate.heldout_max_tokens": 1234, "seed": cfg.run.seed}
