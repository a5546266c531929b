"""docs/deploy.md's install walk through the real Helm CLI: its values files lint and render, its
`helm upgrade --install` and `helm test` would act on what the chart renders, its `kubectl`
Secrets are the ones the rendered pods mount, and its steps agree with each other (brokers,
release, namespace, job names). The `ingest` steps run in
tests/integration/test_deploy_walk_kafka.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.chart import CHART, REPO
from fixtures.deploy_walk import DEPLOY_MD, Command, read_walk
from fixtures.tools import tool

from ingest.settings import SettingsSource, load_kafka

pytestmark = pytest.mark.tools

WALK = read_walk()
KNOWN = {"export", "ingest", "kubectl", "helm"}
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("walk")
    for name, text in WALK.files.items():
        (root / name).write_text(text)
    return root


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


def install() -> Command:
    (command,) = [c for c in WALK.program("helm") if c.argv[1:3] == ["upgrade", "--install"]]
    return command


def option(argv: list[str], *names: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in names]


def render(helm: str, files: Path, *extra: str) -> list[Manifest]:
    argv = install().argv
    release, chart = argv[3], argv[4]
    (namespace,) = option(argv, "-n", "--namespace")
    values = [a for f in option(argv, "-f", "--values") for a in ("-f", str(files / f))]
    result = run(
        helm,
        "template",
        release,
        chart,
        "-n",
        namespace,
        "--kube-version",
        "1.31.0",
        *values,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def env_of(docs: list[Manifest], component: str) -> dict[str, str]:
    (deployment,) = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


class TestWalk:
    def test_only_commands_the_tests_follow(self) -> None:
        assert {c.argv[0] for c in WALK.commands} == KNOWN
        assert {c.argv[1] for c in WALK.program("kubectl")} == {"create", "-n"}

    def test_lint_with_the_walks_values(self, helm: str, files: Path) -> None:
        for extra in ([], ["registry-values.yaml"]):
            values = ["my-values.yaml", *extra]
            flags = [a for f in values for a in ("-f", str(files / f))]
            result = run(helm, "lint", "--strict", str(CHART), *flags)
            assert result.returncode == 0, result.stdout + result.stderr

    def test_chart_path_is_the_repositorys(self) -> None:
        assert (REPO / install().argv[4]).resolve() == CHART.resolve()

    def test_brokers_as_exported_in_step_1(self, helm: str, files: Path) -> None:
        docs = render(helm, files)
        bootstrap = WALK.exports()["KAFKA_BOOTSTRAP_SERVERS"]
        assert env_of(docs, "worker")["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap
        (job,) = [d for d in docs if d["kind"] == "Job"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["args"][:2] == ["topics", "apply"]
        assert {e["name"]: e["value"] for e in container["env"]}[
            "KAFKA_BOOTSTRAP_SERVERS"
        ] == bootstrap
        assert f"logs job/{job['metadata']['name']}" in DEPLOY_MD.read_text()

    def test_namespace_and_secret_exist_before_the_install(self, helm: str, files: Path) -> None:
        (namespace,) = option(install().argv, "-n", "--namespace")
        kubectl = [c.argv for c in WALK.program("kubectl")]
        assert ["kubectl", "create", "namespace", namespace] in kubectl
        (secret,) = [a for a in kubectl if "secret" in a]
        assert option(secret, "-n") == [namespace]
        name = secret[secret.index("generic") + 1]
        (key,) = [w.removeprefix("--from-file=") for w in secret if w.startswith("--from-file=")]
        docs = render(helm, files)
        (deployment,) = [
            d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker")
        ]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert name in [v.get("secret", {}).get("secretName") for v in volumes]
        assert env_of(docs, "worker")["CUMI_CREDENTIALS_FILE"].endswith("/" + key)
        assert key == "credentials.json"

    def test_helm_test_names_the_installed_release(self, helm: str, files: Path) -> None:
        argv = install().argv
        (test,) = [c.argv for c in WALK.program("helm") if c.argv[1] == "test"]
        assert test[2] == argv[3] and option(test, "-n") == option(argv, "-n")
        pods = [d for d in render(helm, files) if d["kind"] == "Pod"]
        assert [p["metadata"]["annotations"]["helm.sh/hook"] for p in pods] == ["test"]

    def test_mailboxes_go_to_the_registry_the_workers_read(self, helm: str, files: Path) -> None:
        env = env_of(render(helm, files), "worker")
        assert env["CUMI_MAILBOX_SOURCE"] == "registry"
        (imports,) = [
            c.argv for c in WALK.program("ingest") if c.argv[1:3] == ["mailboxes", "import"]
        ]
        assert option(imports, "--server") == [env["CUMI_SERVER_NAME"]]
        assert imports[3] in WALK.files

    def test_dashboard_and_its_job(self, helm: str, files: Path) -> None:
        docs = render(helm, files)
        (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
        (board,) = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
        dashboard = json.loads(next(iter(board["data"].values())))
        (job,) = [v for v in dashboard["templating"]["list"] if v["name"] == "job"]
        # the dashboard's default job is the one the ServiceMonitor gives every target
        assert monitor["spec"]["jobLabel"]
        assert job["current"]["value"] == ["cumi-pipeline"]

    def test_registry_mode_values_load(self, helm: str, files: Path, tmp_path: Path) -> None:
        docs = render(helm, files, "-f", str(files / "registry-values.yaml"))
        env = env_of(docs, "projector")
        url = yaml.safe_load(WALK.files["registry-values.yaml"])["kafka"]["schemaRegistry"]["url"]
        assert env["KAFKA_SCHEMA_REGISTRY_URL"] == url
        kafka = load_kafka(SettingsSource.load(env))
        assert kafka.schema_registry is not None
