"""KFP component ``report``: the run report (HTML + Markdown) and the close of the MLflow parent run."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    kfp_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    new_dataset: dsl.Input[dsl.Dataset],
    adapted: dsl.Input[dsl.Model],
    aligned: dsl.Input[dsl.Model],
    preferred: dsl.Input[dsl.Model],
    quantized: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    registration: dsl.Input[dsl.Artifact],
    page: dsl.Output[dsl.HTML],
    summary: dsl.Output[dsl.Markdown],
    pretrained: dsl.Input[dsl.Model] = None,
):
    """Collect every stage's summary into one report, log it to MLflow and close the parent run.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        kfp_run_id: The KFP run id, shown in the report.
        dataset, new_dataset, adapted, aligned, preferred, quantized, evaluation, registration:
            The outputs of every stage (``aligned``: SFT, ``preferred``: the preference step), whose
            completion summaries fill the report.
        pretrained: The pretraining output (absent in the continual pipeline, which starts from a champion).
        page: The report as self-contained HTML (rendered by the KFP UI).
        summary: The report as Markdown.
    """
    from components.common.config import load_config
    from components.report.run import write_report

    inputs = {
        "curate": dataset.path,
        "curate_continual": new_dataset.path,
        "continual": adapted.path,
        "align": aligned.path,
        "prefer": preferred.path,
        "quantize": quantized.path,
        "evaluate": evaluation.path,
        "register": registration.path,
    }
    if pretrained is not None:
        inputs["pretrain"] = pretrained.path
    html_text, md_text = write_report(load_config(profile, overrides), inputs, lineage_run_id, kfp_run_id)
    with open(page.path, "w") as f:
        f.write(html_text)
    with open(summary.path, "w") as f:
        f.write(md_text)
