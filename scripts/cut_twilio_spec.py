"""Cut Twilio's pinned OpenAPI description (twilio-oai 2.6.7, twilio_api_v2010.json) down to a few paths, with
every component they reference, for the conformance tests (tests/data/):

    python scripts/cut_twilio_spec.py FULL.json OUT.json PATH [PATH ...]
"""

from __future__ import annotations

import json
import sys
from typing import Any


def references(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(references(value) for value in node))
    return set()


def cut(document: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    kept = {path: document["paths"][path] for path in paths}
    wanted, schemas = references(kept), {}
    while wanted:
        name = wanted.pop().removeprefix("#/components/schemas/")
        if name not in schemas:
            schemas[name] = document["components"]["schemas"][name]
            wanted |= references(schemas[name])
    components = {
        "schemas": dict(sorted(schemas.items())),
        "securitySchemes": document["components"]["securitySchemes"],
    }
    rest = {key: document[key] for key in ("info", "openapi", "servers", "tags", "security")}
    return {**rest, "paths": kept, "components": components}


if __name__ == "__main__":
    full, out, *chosen = sys.argv[1:]
    with open(full, encoding="utf-8") as source, open(out, "w", encoding="utf-8") as target:
        json.dump(cut(json.load(source), chosen), target, indent=1)
        target.write("\n")
