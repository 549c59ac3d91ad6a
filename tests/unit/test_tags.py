"""registry.tags: every ``edgeloop.*`` MLflow tag key is defined there and typed out nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

from registry import tags as tag

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edgeloop", "flows", "registry")
# a string literal (plain or f-string) that starts with "edgeloop.
LITERAL = re.compile(r"""(?<![\w"'])[rbf]{0,2}(["'])edgeloop\.([^"'\s]*)""")
# names of the edgeloop packages themselves (``python -m edgeloop.cli``) are module paths, not tags
MODULES = {"cli", "core"}


def _keys() -> list[str]:
    fixed = [v for k, v in vars(tag).items() if k.isupper() and not k.startswith("_")]
    made = [
        tag.gate("latency"),
        tag.variant_sha256("int8"),
        tag.variant_signature("int8"),
        tag.hw("jetson", "p95_ms"),
        tag.hw_status("jetson"),
        tag.hw_variant("jetson"),
        tag.hw_reason("jetson"),
    ]
    return fixed + made


def test_every_key_starts_with_edgeloop() -> None:
    keys = _keys()
    assert len(keys) > 20
    assert tag.PREFIX == "edgeloop."
    assert [k for k in keys if not k.startswith("edgeloop.")] == []
    assert len(set(keys)) == len(keys), "two constants name the same key"


def test_templated_keys_are_the_documented_names() -> None:
    assert tag.hw_status("rpi4") == "edgeloop.hw.rpi4.status"
    assert tag.hw_variant("rpi4") == "edgeloop.hw.rpi4.variant"
    assert tag.variant_signature("fp32") == "edgeloop.variant.fp32.signature"
    assert tag.gate("accuracy") == "edgeloop.gate.accuracy"


def test_parsers_invert_the_templates_and_refuse_other_keys() -> None:
    assert tag.signed_variant(tag.variant_signature("int8-static")) == "int8-static"
    assert tag.signed_variant(tag.variant_sha256("int8-static")) is None
    assert tag.signed_variant(tag.VARIANT) is None
    assert tag.hw_status_profile(tag.hw_status("rpi4")) == "rpi4"
    assert tag.hw_status_profile(tag.hw_variant("rpi4")) is None
    assert tag.hw_status_profile(tag.ROLLOUT_STATUS) is None


def _tag_literals(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        if "getLogger(" in line:  # logger names share the prefix, they are not tags
            continue
        for match in LITERAL.finditer(line):
            if match.group(2).split(".")[0] not in MODULES:
                found.append(line.strip())
    return found


def test_the_scan_finds_a_typed_out_key() -> None:
    assert _tag_literals('x = tags.get("edgeloop.variant")')
    assert _tag_literals("x = f'edgeloop.hw.{profile}.status'")
    assert not _tag_literals('log = logging.getLogger("edgeloop.listener")')
    assert not _tag_literals('argv = _python("edgeloop.cli", "serve")')
    assert not _tag_literals('"""The tag ``edgeloop.variant`` on a version."""')


def test_no_tag_key_is_typed_out_outside_the_tags_module() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "registry" / "tags.py" and (found := _tag_literals(path.read_text()))
    }
    assert offenders == {}, "use registry.tags instead of typing out these keys"
