"""Model cards, rendered from the templates in `mp_hub/model_cards/` on every save."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import MetaPerturbConfig

TEMPLATES = Path(__file__).parent / "model_cards"
PHI_TAGS = ["metaperturb", "regularization", "image-classification", "mp_hub"]
_NOT_ROWS = {"results", "license", "license_note", "datasets"}


def eval_results(results: list[dict[str, Any]], model_name: str) -> list[EvalResult]:
    """`results` rows {dataset_name, dataset_type, metric_type, metric_value, [metric_name, dataset_split]}."""
    return [
        EvalResult(
            task_type=row.get("task_type", "image-classification"),
            dataset_type=row["dataset_type"],
            dataset_name=row["dataset_name"],
            dataset_split=row.get("dataset_split"),
            metric_type=row["metric_type"],
            metric_name=row.get("metric_name"),
            metric_value=row["metric_value"],
        )
        for row in results
    ]


def results_markdown(results: list[dict[str, Any]]) -> str:
    if not results:
        return ""
    lines = ["| dataset | metric | value |", "|---|---|---|"]
    lines += [
        f"| {r['dataset_name']} | {r.get('metric_name') or r['metric_type']} | {r['metric_value']} |" for r in results
    ]
    return "\n".join(lines)


def table_cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def render_phi_card(
    config: MetaPerturbConfig,
    num_parameters: int,
    *,
    repo_id: str = "path/to/this/folder",
    title: str | None = None,
    images: list[str] | None = None,
    reproduction: str | None = None,
    extra_markdown: str | None = None,
) -> str:
    prov = config.provenance
    results = prov.get("results", [])
    datasets = prov.get("datasets") or ([prov["source_dataset_id"]] if prov.get("source_dataset_id") else None)
    name = title or f"MetaPerturb φ ({prov.get('source_dataset', 'unknown source')})"
    card_data = ModelCardData(
        library_name="mp_hub",
        tags=list(PHI_TAGS),
        license=prov.get("license", "apache-2.0"),
        datasets=datasets,
        model_name=name,
        eval_results=eval_results(results, name) or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "phi_card.md"),
        title=name,
        repo_id=repo_id,
        num_parameters=num_parameters,
        mp_hub_version=config.mp_hub_version or "",
        provenance_rows=[(k, table_cell(v)) for k, v in sorted(prov.items()) if k not in _NOT_ROWS]
        or [("source", "not recorded")],
        license_note=prov.get("license_note"),
        config=config,
        results_table=results_markdown(results),
        images=images or [],
        reproduction=reproduction,
        extra_markdown=extra_markdown,
    )
    return str(card)
