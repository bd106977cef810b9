"""Content addressing of stage outputs: what changes the address, what does not, completion last."""

from components.common.artifacts import (
    content_hash,
    is_complete,
    open_run_store,
    plan_output,
    publish,
    read_pointer,
    write_pointer,
)
from components.common.config import load_config, versioned_dict


def _address(*overrides):
    cfg = load_config("tiny", list(overrides))
    return content_hash("pretrain", versioned_dict(cfg.pretrain), {"dataset": "abc"})


def test_output_address_changes_with_a_versioned_field():
    assert _address("pretrain.steps=50") != _address("pretrain.steps=60")


def test_output_address_ignores_log_every():
    assert _address("pretrain.log_every=1") == _address("pretrain.log_every=100")


def test_output_address_changes_with_input_digest():
    cfg = versioned_dict(load_config("tiny").pretrain)
    assert content_hash("pretrain", cfg, {"dataset": "a"}) != content_hash("pretrain", cfg, {"dataset": "b"})


def test_output_is_complete_only_after_publish(make_config):
    cfg = make_config()
    store = open_run_store(cfg)
    out = plan_output(cfg, "models", "pretrain", {"x": 1}, {})
    out.local.mkdir(parents=True)
    (out.local / "weights.bin").write_bytes(b"123")
    assert not is_complete(store, out)
    publish(store, out, {"metrics": {"loss": 1.0}})
    assert is_complete(store, out)


def test_pointer_round_trips(tmp_path, make_config):
    out = plan_output(make_config(), "datasets", "curate", {}, {})
    write_pointer(tmp_path / "p.json", out)
    assert read_pointer(tmp_path / "p.json") == out.pointer()
