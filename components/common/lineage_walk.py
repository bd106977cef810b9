"""Walk a model's lineage back to the raw files, through MLflow alone: the one lineage walker.

Every step records what it consumed as MLflow dataset inputs (``components.common.lineage``):
an artifact another step produced (context ``input``: its source URI is that step's output URI,
which the producing run carries as the tag ``lmforge.output_uri``), or a file that entered the
platform from outside (context ``raw``: a corpus file, the SFT pairs, with its sha256). So from a
registered version the walk is:

    version ──tag lmforge.source_run / source URI──▶ the run that wrote the model
      run ──each ``input``──▶ the run whose lmforge.output_uri is that input's URI ──▶ … ──▶ ``raw`` files

:func:`walk` returns that as a tree of :class:`LineageNode`; ``corpora()`` and ``raw_files()``
collect what tools usually want (a retrain replaying every ancestor corpus, a data audit). It reads
nothing but the tracking server (the local SQLite store or a remote server, with whatever
credentials MLflow is configured with), so it works where the object store is out of reach.

A walk never returns a silently empty tree: an input whose producing run was deleted (or never
logged) becomes a node with ``broken`` set to the reason, and :meth:`LineageNode.broken_nodes`
lists them. A step that reused a completed output (``lmforge.skipped``) logged its inputs but did
not read raw data; the walk prefers the run that actually produced the output.

An artifact consumed along two paths (the pretraining corpus feeds pretraining and quantization's
calibration) is expanded once: each occurrence is its own node, named as its consumer named it, but
all share one ``children`` list, and the text and JSON views mark the later ones ``(see above)``
instead of repeating the subtree.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from components.common.errors import LmforgeError
from components.common.lineage import INPUT_CONTEXT, RAW_CONTEXT, TAG_FULL_DIGEST, TAG_KFP_RUN, TAG_STAGE

TAG_OUTPUT_URI = "lmforge.output_uri"
TAG_SKIPPED = "lmforge.skipped"
#: Tags ``register`` puts on a model version: the step run that wrote the model and its output URI
#: (the version's ``source`` is the loadable HF directory inside that output).
TAG_SOURCE_RUN = "lmforge.source_run"
TAG_SOURCE_ARTIFACT = "lmforge.source_artifact"
CONTEXT_TAG = "mlflow.data.context"


@dataclass(eq=False)
class LineageNode:
    """One thing in a model's history: a model version, an artifact with the run that produced it, or a raw file.

    ``kind`` is ``version``, ``run`` (a run given directly), ``artifact`` or ``raw``; ``name`` is what the
    consumer called it (``datasets/dataset``, ``corpus/tinyshakespeare.txt``); ``uri`` and ``digest``
    identify its content; ``run_id``/``stage`` the MLflow run that produced it (artifacts) or that it
    is (runs, versions: the run that registered it); ``broken`` why the walk could not go on ('' = fine).
    """

    kind: str
    name: str
    uri: str = ""
    digest: str = ""
    run_id: str = ""
    stage: str = ""
    broken: str = ""
    links: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    children: list[LineageNode] = field(default_factory=list)

    def iter(self) -> Iterator[LineageNode]:
        """Every node, depth first; a shared subtree is descended into the first time it is met only."""
        expanded: set[int] = set()
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node.children and id(node.children) not in expanded:
                expanded.add(id(node.children))
                stack.extend(reversed(node.children))

    def raw_files(self) -> list[LineageNode]:
        """The raw files the model was built from (corpus files, SFT data, ...), each (uri, digest) once."""
        found: dict[tuple[str, str], LineageNode] = {}
        for node in self.iter():
            if node.kind == "raw":
                found.setdefault((node.uri, node.digest), node)
        return list(found.values())

    def corpora(self) -> list[LineageNode]:
        """The curated corpora in the model's history (outputs of ``curate`` runs), each URI once."""
        found: dict[str, LineageNode] = {}
        for node in self.iter():
            if node.kind == "artifact" and node.stage == "curate":
                found.setdefault(node.uri, node)
        return list(found.values())

    def broken_nodes(self) -> list[LineageNode]:
        """Where the walk had to stop (a producing run deleted or missing), each artifact once."""
        found: dict[tuple[str, str], LineageNode] = {}
        for node in self.iter():
            if node.broken:
                found.setdefault((node.uri, node.run_id), node)
        return list(found.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready tree; a subtree met again is ``{"same_as": <run id>, ...}`` without children."""
        seen: set[int] = set()

        def conv(node: LineageNode) -> dict[str, Any]:
            d: dict[str, Any] = {"kind": node.kind, "name": node.name}
            for key in ("uri", "digest", "run_id", "stage", "broken"):
                if getattr(node, key):
                    d[key] = getattr(node, key)
            if node.links:
                d["links"] = node.links
            if node.details:
                d["details"] = node.details
            if node.children:
                if id(node.children) in seen:
                    d["same_as_above"] = True
                else:
                    seen.add(id(node.children))
                    d["children"] = [conv(c) for c in node.children]
            return d

        return conv(self)

    def render(self) -> str:
        """The tree as indented text, one line per node, digests shortened to 12 characters."""
        lines: list[str] = []
        seen: set[int] = set()

        def label(node: LineageNode) -> str:
            parts = [node.name]
            if node.kind == "artifact" and node.stage:
                parts.append(f"← {node.stage} run {node.run_id[:12]}")
            elif node.kind == "version" and node.run_id:
                parts.append(f"registered by run {node.run_id[:12]}")
            elif node.kind == "run" and node.run_id:
                parts.append(f"run {node.run_id[:12]}")
            if node.digest:
                parts.append(f"sha {node.digest[:12]}")
            if node.uri:
                parts.append(node.uri)
            text = "  ".join(parts)
            if node.broken:
                text += f"  BROKEN: {node.broken}"
            for name, value in (*node.details.items(), *node.links.items()):
                text += f"\n{{indent}}    {name}: {value}"
            return text

        def visit(node: LineageNode, prefix: str, last: bool, root: bool) -> None:
            branch = "" if root else ("└─ " if last else "├─ ")
            again = bool(node.children) and id(node.children) in seen
            text = label(node) + ("  (see above)" if again else "")
            first, *rest = text.split("\n")
            lines.append(prefix + branch + first)
            child_prefix = prefix + ("" if root else ("   " if last else "│  "))
            lines.extend(r.replace("{indent}", child_prefix) for r in rest)
            if again:
                return
            seen.add(id(node.children))
            for i, child in enumerate(node.children):
                visit(child, child_prefix, i == len(node.children) - 1, False)

        visit(self, "", True, True)
        return "\n".join(lines)


@dataclass
class _Walker:
    client: Any
    ui_url: str = ""
    kfp_ui_url: str = ""
    _by_run: dict[str, list[LineageNode]] = field(default_factory=dict)
    _by_uri: dict[str, LineageNode] = field(default_factory=dict)
    _experiments: list[str] | None = None

    def experiment_ids(self) -> list[str]:
        if self._experiments is None:
            from mlflow.entities import ViewType

            exps = self.client.search_experiments(view_type=ViewType.ALL)
            self._experiments = [e.experiment_id for e in exps]
        return self._experiments

    def links(self, run) -> dict[str, str]:
        out = {}
        if self.ui_url:
            out["mlflow"] = f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        kfp_run = run.data.tags.get(TAG_KFP_RUN, "")
        if self.kfp_ui_url and kfp_run:
            out["kubeflow"] = f"{self.kfp_ui_url.rstrip('/')}/#/runs/details/{kfp_run}"
        return out

    def producers(self, uri: str, deleted: bool = False) -> list:
        from mlflow.entities import ViewType

        view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
        quoted = uri.replace("'", "\\'")
        return self.client.search_runs(
            self.experiment_ids(), filter_string=f"tags.`{TAG_OUTPUT_URI}` = '{quoted}'", run_view_type=view
        )

    def artifact(self, name: str, uri: str, digest: str, run=None) -> LineageNode:
        """The node for artifact ``uri``, with the run that produced it and that run's inputs below it
        (memoised by URI: an artifact consumed twice is one node)."""
        if uri in self._by_uri:  # met before: a node of its own (the consumer's name), the same subtree
            return dataclasses.replace(self._by_uri[uri], name=name, digest=digest or self._by_uri[uri].digest)
        node = LineageNode("artifact", name, uri=uri, digest=digest)
        if uri:
            self._by_uri[uri] = node
        if run is None:
            runs = self.producers(uri)
            made = [r for r in runs if r.data.tags.get(TAG_SKIPPED) != "true"]
            if not made:
                gone = [r for r in self.producers(uri, deleted=True) if r.data.tags.get(TAG_SKIPPED) != "true"]
                if gone:
                    node.broken = f"the run that produced it ({gone[0].info.run_id}) was deleted"
                    node.run_id = gone[0].info.run_id
                    return node
            if not runs:
                node.broken = "no MLflow run records this output (its run was deleted or never logged)"
                return node
            run = (made or runs)[0]
        elif run.info.lifecycle_stage == "deleted":
            node.run_id = run.info.run_id
            node.broken = f"the run that produced it ({run.info.run_id}) was deleted"
            return node
        node.run_id = run.info.run_id
        node.stage = run.data.tags.get(TAG_STAGE, run.info.run_name or "")
        node.links = self.links(run)
        if run.data.tags.get(TAG_SKIPPED) == "true":
            node.details["skipped"] = "reused an earlier output; that run's raw inputs are not recorded here"
        node.children = self.inputs(run)
        return node

    def inputs(self, run) -> list[LineageNode]:
        """One child per dataset input of ``run`` (memoised: a run consumed twice is expanded once)."""
        if run.info.run_id in self._by_run:
            return self._by_run[run.info.run_id]
        children: list[LineageNode] = []
        self._by_run[run.info.run_id] = children  # before recursing: a cycle would end here
        for inp in run.inputs.dataset_inputs if run.inputs else []:
            tags = {t.key: t.value for t in inp.tags}
            ds = inp.dataset
            uri = _source_uri(ds.source)
            digest = tags.get(TAG_FULL_DIGEST, ds.digest)
            if tags.get(CONTEXT_TAG) == RAW_CONTEXT:
                children.append(LineageNode("raw", ds.name, uri=uri, digest=digest))
            elif tags.get(CONTEXT_TAG, INPUT_CONTEXT) == INPUT_CONTEXT:
                children.append(self.artifact(ds.name, uri, digest))
        return children


def producer_run_id(client, uri: str) -> str:
    """The id of the run that produced output ``uri`` (not one that merely reused it); '' if none is recorded."""
    runs = _Walker(client).producers(uri)
    made = [r for r in runs if r.data.tags.get(TAG_SKIPPED) != "true"]
    return (made or runs)[0].info.run_id if runs else ""


def _source_uri(source: str) -> str:
    """The URI inside an MLflow dataset source (a JSON object such as ``{"uri": "file:///…"}``)."""
    try:
        parsed = json.loads(source)
    except (TypeError, ValueError):
        return str(source)
    return str(parsed.get("uri") or parsed.get("url") or source) if isinstance(parsed, dict) else str(source)


def resolve_version(client, ref: str, model_name: str = ""):
    """The model version ``ref`` names: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a version
    number of ``model_name``; None when ``ref`` is none of these (then it is a run id)."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.startswith("models:/"):
            body = ref.removeprefix("models:/")
            if "@" in body:
                name, alias = body.split("@", 1)
                return client.get_model_version_by_alias(name, alias)
            name, _, version = body.partition("/")
            if not version.isdigit():
                raise LmforgeError(f"{ref}: write models:/NAME@ALIAS or models:/NAME/VERSION")
            return client.get_model_version(name, version)
        if ref.isdigit():
            return client.get_model_version(model_name, ref)
    except MlflowException as e:
        raise LmforgeError(f"{ref}: no such model version in the registry ({e.message})") from e
    return None


def walk(client, ref: str, *, model_name: str = "", ui_url: str = "", kfp_ui_url: str = "") -> LineageNode:
    """The lineage tree of ``ref``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a version number of
    ``model_name``, or an MLflow run id (a step's run, or a pipeline's parent run).

    Args:
        client: an ``mlflow.MlflowClient`` pointed at the tracking server to read.
        ref: what to start from (see above).
        model_name: the registered model a bare version number refers to.
        ui_url: base URL of the MLflow UI; each run node gets a ``links["mlflow"]`` page ('' = none).
        kfp_ui_url: base URL of the Kubeflow Pipelines UI; run nodes get ``links["kubeflow"]`` ('' = none).

    Raises:
        LmforgeError: ``ref`` names no version and no run.
    """
    from mlflow.exceptions import MlflowException

    walker = _Walker(client, ui_url=ui_url, kfp_ui_url=kfp_ui_url)
    version = resolve_version(client, ref, model_name)
    if version is None:
        try:
            run = client.get_run(ref)
        except MlflowException as e:
            raise LmforgeError(
                f"{ref}: neither a model version (models:/NAME@ALIAS, models:/NAME/VERSION, a number) nor a run id"
            ) from e
        root = walker.artifact(run.info.run_name or ref, run.data.tags.get(TAG_OUTPUT_URI, ""), "", run=run)
        root.kind = "run"
        return root
    return _version_node(walker, version)


def _version_node(walker: _Walker, version) -> LineageNode:
    """A version's node: below it the inputs of the run that registered it (the model first, then the
    evaluation that decided its alias and the data it names), else the model's producer alone."""
    from mlflow.exceptions import MlflowException

    aliases = ", ".join(getattr(version, "aliases", []) or [])
    root = LineageNode(
        "version",
        f"models:/{version.name}/{version.version}" + (f" ({aliases})" if aliases else ""),
        uri=version.source,
        run_id=version.run_id or "",
    )
    if walker.ui_url:
        root.links["mlflow"] = f"{walker.ui_url.rstrip('/')}/#/models/{version.name}/versions/{version.version}"
    tags = version.tags or {}
    if decision := tags.get("lmforge.register.decision"):
        root.details["decision"] = decision
    # Versions registered before the source tags: the source is the model directory inside an output.
    artifact_uri = tags.get(TAG_SOURCE_ARTIFACT) or version.source.rstrip("/").rsplit("/", 1)[0]
    producer = None
    if run_id := tags.get(TAG_SOURCE_RUN):
        try:
            producer = walker.client.get_run(run_id)
        except MlflowException:
            reason = f"the run that produced the model ({run_id}) is not in the tracking store"
            root.children.append(LineageNode("artifact", "model", uri=artifact_uri, run_id=run_id, broken=reason))
            return root
    digest = tags.get("lmforge.input.model", "").rpartition("@")[2]  # register tags each input <uri>@<digest>
    model = walker.artifact("model", artifact_uri, digest, run=producer)
    root.children.append(model)
    if version.run_id and version.run_id != model.run_id:
        try:
            registrar = walker.client.get_run(version.run_id)
        except MlflowException:
            registrar = None
        if registrar is None or registrar.info.lifecycle_stage == "deleted":
            root.children.append(
                LineageNode(
                    "run", "registered by", run_id=version.run_id, broken=f"its run ({version.run_id}) was deleted"
                )
            )
        else:
            root.children.extend(c for c in walker.inputs(registrar) if c.uri != model.uri)
    return root
