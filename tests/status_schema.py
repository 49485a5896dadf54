"""What the API server keeps of a status patch under the CRDs' structural schemas, without an API server.

A field the operator writes that the schema does not declare is pruned on write: silently gone, and with
it whatever a restart needed (an intent, a budget). A value of the wrong type, or outside an enum, pattern
or length, makes the API server refuse the whole patch. The fake Kubernetes layer of the controller tests
runs every status patch through `problems`; `tests/test_e2e_status_schema.py` checks that the API server
agrees with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parents[1] / "crds"


@functools.cache
def status_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"certsync.io_{plural}.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]  # type: ignore[no-any-return]


def problems(schema: Mapping[str, Any], value: Any, where: str = "status") -> list[str]:
    """Every place of `value` the API server would prune or refuse; a null deletes (merge patch) and is fine."""
    if value is None:
        return []
    kind = schema.get("type")
    found: list[str] = []
    if kind == "object":
        if not isinstance(value, Mapping):
            return [f"{where}: an object expected, got {type(value).__name__}"]
        declared = schema.get("properties") or {}
        for key, item in value.items():
            if key in declared:
                found += problems(declared[key], item, f"{where}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{where}.{key}: not declared in the CRD: the API server prunes it")
        found += [f"{where}.{key}: required" for key in schema.get("required", []) if value.get(key) is None]
        return found
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: an array expected, got {type(value).__name__}"]
        return [p for n, item in enumerate(value) for p in problems(schema.get("items") or {}, item, f"{where}[{n}]")]
    expected = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}.get(str(kind))
    if expected is None:
        return [f"{where}: the schema gives no type"]
    if not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool)):
        return [f"{where}: {kind} expected, got {type(value).__name__} {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} is none of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            found.append(f"{where}: length {len(value)} outside the schema's bounds")
    if isinstance(value, int) and value < schema.get("minimum", value):
        found.append(f"{where}: {value} is below the minimum")
    return found
