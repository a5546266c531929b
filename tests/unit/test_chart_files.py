"""The Helm chart's own files read as data, no Helm needed: values.schema.json agrees with the
code's enums, values.yaml documents every key, the Dockerfile builds what the chart expects.

Everything rendered by `helm template` is checked in tests/tools/test_helm_chart.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from fixtures.chart import CHART, REPO

from ingest import settings as settings_module

Manifest = dict[str, Any]


class TestValuesSchema:
    """values.schema.json and values.yaml agree with the code and document themselves."""

    def test_schema_enums_match_the_code(self) -> None:
        schema = json.loads((CHART / "values.schema.json").read_text())
        cumi = schema["properties"]["cumi"]["properties"]
        kafka = schema["properties"]["kafka"]["properties"]
        provider = cumi["credentials"]["properties"]["provider"]
        pairs = [
            (provider, settings_module.CredentialsProviderKind),
            (kafka["securityProtocol"], settings_module.SecurityProtocol),
            (kafka["sasl"]["properties"]["mechanism"], settings_module.SaslMechanism),
        ]
        for node, enum_type in pairs:
            assert set(node["enum"]) == {m.value for m in enum_type}, enum_type
        transports = {v for v in cumi["cometTransport"]["enum"] if v is not None}
        assert transports == {m.value for m in settings_module.CometTransport}
        sources = set(cumi["mailboxes"]["properties"]["source"]["enum"])
        assert sources == {m.value for m in settings_module.MailboxSource}

    def test_values_file_is_documented(self) -> None:
        """The schema modeline opens values.yaml; every chart-defined key has a comment above it.

        Keys inside pass-through Kubernetes objects (resources, securityContext, …) are covered
        by their parent's comment; the schema tells which objects are the chart's own.
        """
        schema = json.loads((CHART / "values.schema.json").read_text())
        lines = (CHART / "values.yaml").read_text().splitlines()
        assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
        stack: list[tuple[int, str]] = []
        checked = 0
        for number, line in enumerate(lines):
            match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
            if not match:
                continue
            indent, key = len(match[1]), match[2]
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = schema_node(schema, [k for _, k in stack])
            stack.append((indent, key))
            if parent is None or parent.get("additionalProperties") is not False:
                continue  # inside a pass-through object
            checked += 1
            assert lines[number - 1].lstrip().startswith("#"), f"values.yaml:{number + 1} {key}"
        assert checked > 100, checked


def schema_node(schema: Manifest, path: list[str]) -> Manifest | None:
    """The chart's own schema object for the values at `path`.

    None inside a Kubernetes-shaped value ($defs: resources, probes, strategy, labels, …),
    whose keys are the Kubernetes API's and documented by the parent's comment.
    """
    node: Manifest = schema
    for key in path:
        if key not in node.get("properties", {}):
            return None
        node = node["properties"][key]
        if "$ref" in node:
            return None
    return node


class TestImage:
    """The Dockerfile builds what the chart expects: a non-root UID, the `ingest` entry point."""

    def test_dockerfile(self) -> None:
        text = (REPO / "Dockerfile").read_text()
        stages = re.findall(r"(?im)^FROM\s+\S+(?:\s+AS\s+(\S+))?", text)
        assert len(stages) >= 2, "multi-stage build"
        user = re.findall(r"(?m)^USER\s+(\S+)", text)[-1]
        uid = int(user.split(":")[0])
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        assert uid == values["podSecurityContext"]["runAsUser"] == values["securityContext"][
            "runAsUser"]  # fmt: skip
        assert uid != 0
        assert re.search(r'(?m)^ENTRYPOINT \["ingest"\]', text)
        assert not re.search(r"(?im)^(ARG|ENV)\s+\S*(PASSWORD|TOKEN|SECRET)", text)
        assert re.search(r"(?m)^RUN pip wheel ", text), "the build stage makes a wheel"
        assert re.search(r"pip install --no-index", text), "the runtime installs only those wheels"

    def test_dockerignore_keeps_the_build_context_small_and_clean(self) -> None:
        ignored = {
            line.strip()
            for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        assert {".git", ".venv"} <= ignored
        for needed in ("ingest", "schemas", "pyproject.toml", "README.md"):
            assert needed not in ignored and f"{needed}/" not in ignored
