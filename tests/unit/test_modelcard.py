"""registry.modelcard: a card's JSON and its generated Markdown."""

import json
from pathlib import Path
from typing import Any

import pytest

from registry.modelcard import render_markdown, write_card

SECTIONS = [
    "## Intended use",
    "## Data",
    "## Metrics per split (fp32)",
    "## Variants",
    "## Compression",
    "## Hardware profiles",
    "## Gates",
    "## Limitations",
    "## Lineage",
]


@pytest.fixture
def card() -> dict[str, Any]:
    return {
        "model": "digits-classifier",
        "version": "3",
        "created": "2025-01-02T03:04:05+00:00",
        "aliases": ["candidate"],
        "intended_use": "Classify tiny digits on the edge.",
        "data": {
            "dataset": "sklearn-digits",
            "description": "8x8 digits",
            "hash": "0123abcd.dir",
            "rows": {"train": 1078, "val": 269},
        },
        "metrics": {"train": 0.99876, "test": 0.97222},
        "variants": [
            {
                "name": "fp32",
                "size_bytes": 12800,
                "accuracy": 0.975,
                "p50_ms": 0.0123456,
                "p95_ms": 0.02,
                "sha256": "f" * 64,
            },
            {
                "name": "int8-static",
                "size_bytes": 4096,
                "accuracy": 0.97,
                "p50_ms": 0.01,
                "p95_ms": 0.015,
                "sha256": "0123456789abcdef" + "e" * 48,
            },
        ],
        "chosen_variant": "int8-static",
        "compression": {"opset": 18, "max_accuracy_drop": 0.01},
        "hardware": {
            "host-cpu": {
                "status": "passed",
                "variant": "int8-static",
                "p95_ms": 0.5,
                "accuracy": 0.97,
                "reason": "int8-static meets every budget",
            },
            "edge-small": {"status": "unavailable"},
        },
        "gates": [
            {"name": "min_test_accuracy", "passed": True, "measured": 0.97222, "threshold": 0.9},
            {"name": "hardware", "passed": False, "measured": "edge-small", "threshold": None},
        ],
        "limitations": ["Only one writer population.", "No field data."],
        "lineage": {"git_commit": "abc123", "data_hash": "0123abcd.dir"},
    }


def test_sections_in_order(card: dict[str, Any]) -> None:
    md = render_markdown(card)
    assert md.startswith("# Model card: digits-classifier v3\n")
    positions = [md.index(f"\n{section}\n") for section in SECTIONS]
    assert positions == sorted(positions)
    assert md.endswith("\n")


def test_values_from_the_card(card: dict[str, Any]) -> None:
    md = render_markdown(card)
    lines = md.splitlines()
    assert "Registered 2025-01-02T03:04:05+00:00. Aliases: candidate." in lines
    assert "Classify tiny digits on the edge." in lines
    assert "Dataset `sklearn-digits`: 8x8 digits" in lines
    assert "DVC data hash `0123abcd.dir`. Rows per split:" in lines
    assert "| train | 1078 |" in lines
    assert "| test | 0.9722 |" in lines  # floats to 4 significant digits
    # size in KB, sha256 cut to 16 characters.
    assert "| fp32 | 12.5 | 0.975 | 0.01235 | 0.02 | ffffffffffffffff |" in lines
    assert "| int8-static | 4 | 0.97 | 0.01 | 0.015 | 0123456789abcdef |" in lines
    assert "Chosen variant: `int8-static`. Latency: single thread, batch 1." in lines
    assert "- `opset`: 18" in lines
    assert "- `max_accuracy_drop`: 0.01" in lines
    assert (
        "| host-cpu | passed | int8-static | 0.5 | 0.97 | int8-static meets every budget |" in lines
    )
    assert "| edge-small | unavailable | — | — | — | — |" in lines  # missing values shown as a dash
    assert "| min_test_accuracy | True | 0.9722 | 0.9 |" in lines
    assert "| hardware | False | edge-small | — |" in lines
    assert "- Only one writer population." in lines
    assert "- No field data." in lines
    assert "- git_commit: `abc123`" in lines
    assert "- data_hash: `0123abcd.dir`" in lines


def test_table_header_and_separator(card: dict[str, Any]) -> None:
    lines = render_markdown(card).splitlines()
    header = lines.index("| variant | size (KB) | test accuracy | p50 (ms) | p95 (ms) | sha256 |")
    assert lines[header + 1] == "|---|---|---|---|---|---|"


def test_no_aliases(card: dict[str, Any]) -> None:
    card["aliases"] = []
    assert "Aliases: none." in render_markdown(card)


def test_write_card_paths_and_contents(tmp_path: Path, card: dict[str, Any]) -> None:
    cards = tmp_path / "model-cards"
    md_path, json_path = write_card(card, cards)
    assert md_path == cards / "digits-classifier" / "v3.md"
    assert json_path == cards / "digits-classifier" / "v3.json"
    assert md_path.read_text() == render_markdown(card)
    assert json.loads(json_path.read_text()) == card
    assert json_path.read_text().endswith("\n")


def test_write_card_serialises_non_json_values(tmp_path: Path, card: dict[str, Any]) -> None:
    card["lineage"]["params_file"] = Path("params.yaml")
    _, json_path = write_card(card, tmp_path)
    assert json.loads(json_path.read_text())["lineage"]["params_file"] == "params.yaml"


def test_second_version_is_a_new_file(tmp_path: Path, card: dict[str, Any]) -> None:
    first, _ = write_card(card, tmp_path)
    card["version"] = "4"
    second, _ = write_card(card, tmp_path)
    assert first != second
    assert first.is_file()
    assert "v3" in first.read_text().splitlines()[0]
    assert sorted(p.name for p in (tmp_path / "digits-classifier").iterdir()) == [
        "v3.json",
        "v3.md",
        "v4.json",
        "v4.md",
    ]
