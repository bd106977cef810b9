"""KFP component ``resolve_champion``: pointers to the champion's base model and its old corpus."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_champion(
    profile: str,
    overrides: list,
    base_model: dsl.Output[dsl.Model],
    old_dataset: dsl.Output[dsl.Dataset],
):
    """Look up what a continual run starts from (or take ``continual.base_model``/``old_dataset``).

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        base_model: Output pointer to the champion's unquantized base model.
        old_dataset: Output pointer to the corpus that model was pretrained on.
    """
    from components.champion.resolve import champion_inputs
    from components.common.config import load_config
    from components.common.stage import export

    found = champion_inputs(load_config(profile, overrides))
    export(base_model, found["base_model"])
    export(old_dataset, found["old_dataset"])
