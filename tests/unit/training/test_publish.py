"""Publishing a WSD decay branch: the branch's model becomes the stage's model/, the main run's is kept."""

from components.common.storage import join, open_store
from components.training.publish import publish_branch


def _stage_output(root) -> tuple:
    """A stage output as the engine leaves it: the main run's model and summary, a branch's beside them."""
    out = root.as_uri()
    store = open_store(out)
    store.write_text(join(out, "model", "model.safetensors"), "main weights")
    store.write_text(join(out, "model", "generation_config.json"), "main only")
    store.write_text(join(out, "training_summary.json"), '{"steps": 12}')
    branch = join(out, "branches", "step-00000008")
    store.write_text(join(branch, "model", "model.safetensors"), "branch weights")
    store.write_text(join(branch, "training_summary.json"), '{"steps": 10}')
    return store, out, branch


def test_branch_model_replaces_the_stage_model_and_the_main_run_moves_to_final(tmp_path):
    store, out, branch = _stage_output(tmp_path)
    final = publish_branch(store, out, branch)
    assert final == join(out, "branches", "final")
    assert store.list(join(out, "model")) == [join(out, "model", "model.safetensors")]  # no main-run leftovers
    assert store.read_text(join(out, "model", "model.safetensors")) == "branch weights"
    assert store.read_text(join(final, "model", "model.safetensors")) == "main weights"
    assert store.read_text(join(final, "training_summary.json")) == '{"steps": 12}'


def test_a_retried_publish_keeps_the_main_run_model_not_the_branch(tmp_path):
    store, out, branch = _stage_output(tmp_path)
    publish_branch(store, out, branch)
    final = publish_branch(store, out, branch)  # a KFP retry of the step after the swap
    assert store.read_text(join(final, "model", "model.safetensors")) == "main weights"
    assert store.read_text(join(out, "model", "model.safetensors")) == "branch weights"
