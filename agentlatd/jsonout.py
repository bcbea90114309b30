"""`--json` documents of every command: one schema version, one spelling.

Every command's JSON is an object whose first key is "schema_version" (an integer,
raised when a field changes meaning or goes away; new fields do not raise it). The
same thing has the same name in every command: a knob's value as it was and as it is
are "before" and "after" (CPU sets as lists, "0-3,8"), the literal value written is
"desired", CPU sets elsewhere are CPU lists too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1


def document(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with the schema version first."""
    return {"schema_version": SCHEMA_VERSION, **body}


def dumps(body: Mapping[str, Any], indent: int = 2) -> str:
    return json.dumps(document(body), indent=indent)
