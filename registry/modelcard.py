"""Model cards: one JSON document per registered version, rendered to Markdown for people.

The JSON is the source of truth (tools read it); the Markdown is generated from it, never edited.
Cards live in ``model-cards/<model>/v<version>.md|.json`` and are logged with the version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "—" if value is None else str(value)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def _contract_lines(contract: dict[str, Any]) -> list[str]:
    """The model contract (``fleet.shared.modelspec.ModelSpec`` as JSON) as a short section."""
    lines = [f"Task: {contract['task']}.", ""]
    lines += _table(
        ["input", "dtype", "shape", "layout", "value range"],
        [
            [
                i["name"],
                i.get("dtype", "float32"),
                "[N, " + ", ".join(map(str, i["shape"])) + "]",
                i.get("layout") or "-",
                i.get("value_range") or "-",
            ]
            for i in contract["inputs"]
        ],
    )
    lines += [
        "",
        *_table(
            ["output", "meaning", "values per sample"],
            [[o["name"], o["kind"], o.get("width", 1)] for o in contract["outputs"]],
        ),
    ]
    if contract.get("class_names"):
        lines += ["", "Classes: " + ", ".join(f"`{c}`" for c in contract["class_names"]) + "."]
    if contract.get("preprocessing"):
        lines += ["", f"Preprocessing: {contract['preprocessing']}."]
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['model']} v{card['version']}", ""]
    lines += [f"Registered {card['created']}. Aliases: {', '.join(card['aliases']) or 'none'}.", ""]
    lines += ["## Intended use", "", card["intended_use"], ""]
    if card.get("contract"):
        lines += ["## Model contract", "", *_contract_lines(card["contract"]), ""]
    data = card["data"]
    lines += ["## Data", "", f"Dataset `{data['dataset']}`: {data['description']}", ""]
    lines += [f"DVC data hash `{data['hash']}`. Rows per split:", ""]
    lines += _table(["split", "rows"], [[k, v] for k, v in data["rows"].items()])
    lines += ["", "## Metrics per split (fp32)", ""]
    metric = card.get("metric", "accuracy")
    label = "MAE" if metric == "mae" else "accuracy"
    lines += _table(["split", label], [[k, v] for k, v in card["metrics"].items()])
    lines += ["", "## Variants", ""]
    lines += _table(
        ["variant", "size (KB)", f"test {label}", "p50 (ms)", "p95 (ms)", "sha256"],
        [
            [
                v["name"],
                v["size_bytes"] / 1024,
                v.get(metric),
                v["p50_ms"],
                v["p95_ms"],
                v["sha256"][:16],
            ]
            for v in card["variants"]
        ],
    )
    lines += [
        "",
        f"Chosen variant: `{card['chosen_variant']}`. Latency: single thread, batch 1.",
        "",
    ]
    lines += ["## Compression", ""] + [f"- `{k}`: {v}" for k, v in card["compression"].items()]
    lines += ["", "## Hardware profiles", ""]
    lines += _table(
        ["profile", "status", "variant", "p95 (ms)", "accuracy", "why"],
        [
            [p, r["status"], r.get("variant"), r.get("p95_ms"), r.get("accuracy"), r.get("reason")]
            for p, r in card["hardware"].items()
        ],
    )
    if card.get("pareto"):
        lines += ["", f"## Pareto front (size, {label}, p95 on the build host)", ""]
        lines += _table(
            ["variant", "size (KB)", f"test {label}", "p95 (ms)", "Pareto-optimal"],
            [
                [
                    r["name"],
                    r["size_bytes"] / 1024,
                    r.get(metric),
                    r["p95_ms"],
                    "yes" if r["pareto"] else "no",
                ]
                for r in card["pareto"]
            ],
        )
        lines += ["", "Plot: MLflow run artifact `plots/pareto.png`."]
    lines += ["", "## Gates", ""]
    lines += _table(
        ["gate", "passed", "measured", "threshold"],
        [[g["name"], g["passed"], g["measured"], g["threshold"]] for g in card["gates"]],
    )
    if card.get("comparison"):
        comparison = card["comparison"]
        verdict = "passed" if comparison["passed"] else "failed"
        lines += ["", f"## Against production v{comparison['production']}", ""]
        lines += [f"Gate `{comparison['gate']}` {verdict}: {comparison['reason']}.", ""]
        lines += _table(
            ["measured on", f"this version ({comparison['metric']})", "production"],
            [[k, m["candidate"], m["production"]] for k, m in comparison["measured"].items()],
        )
    if card.get("rollouts"):
        lines += ["", "## Rollouts", ""]
        lines += _table(
            ["at", "outcome", "stable version", "reason"],
            [
                [r["at"], r["outcome"], r.get("stable_version"), r["reason"]]
                for r in card["rollouts"]
            ],
        )
    lines += ["", "## Limitations", ""] + [f"- {item}" for item in card["limitations"]]
    lines += ["", "## Lineage", ""] + [f"- {k}: `{v}`" for k, v in card["lineage"].items()]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], cards_dir: Path) -> tuple[Path, Path]:
    folder = cards_dir / card["model"]
    folder.mkdir(parents=True, exist_ok=True)
    md_path = folder / f"v{card['version']}.md"
    json_path = folder / f"v{card['version']}.json"
    json_path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    md_path.write_text(render_markdown(card))
    return md_path, json_path


def update_card(cards_dir: Path, model: str, version: str, key: str, value: Any) -> bool:
    """Set ``key`` of a version's card to ``value`` and render it again; False when the card was
    written elsewhere (another checkout): the version's tags carry the same."""
    json_path = cards_dir / model / f"v{version}.json"
    if not json_path.is_file():
        return False
    card = json.loads(json_path.read_text())
    card[key] = value
    json_path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    json_path.with_suffix(".md").write_text(render_markdown(card))
    return True
