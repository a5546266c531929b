"""The Helm chart, rendered by the real Helm CLI, checked against Kubernetes schemas and the code.

Every scenario (default values and each `ci/*-values.yaml`) is linted with `helm lint --strict`,
rendered once per session with `helm template`, validated offline with `kubernetes-validate`, and
its environment is loaded by the real settings code. Helm and promtool come from `make tools`
($CUMI_CACHE_DIR/bin); a missing binary fails the suite instead of skipping it. The chart files
read without Helm (schema enums, values comments, Dockerfile) are checked in
tests/unit/test_chart_files.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fixtures.chart import ALERT_RULES, CHART
from fixtures.tools import tool

from ingest import settings as settings_module
from ingest.kpis.consumer import KpiSettings
from ingest.mailboxes.mailbox_file import watched_aliases
from ingest.ops.http import OpsServer
from ingest.projector import ProjectorSettings
from ingest.settings import SettingsSource

pytestmark = pytest.mark.tools

KUBE_VERSION = "1.31.0"
RELEASE = "rel"
SCENARIOS = ["default", *sorted(p.name.removesuffix("-values.yaml") for p in CHART.glob("ci/*"))]
SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}
MOUNT_ROOT = "/etc/cumi-pipeline/"
# Settings deliberately not reachable from values, with the reason.
NOT_IN_CHART = {
    "CUMI_READ_API_HOST": "the Service needs the read API on every interface of the pod",
    "KUBERNETES_SERVICE_HOST": "set by the kubelet in every pod (the processes' binding default)",
    "CUMI_PROJECTOR_GROUP_INSTANCE_ID": "static membership needs a stable name per instance "
    "(a StatefulSet); a Deployment's pod names change with every rollout",
}

Manifest = dict[str, Any]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def values_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]


def template(
    helm: str, *args: str, chart: Path = CHART, kube: str = KUBE_VERSION
) -> list[Manifest]:
    result = run(helm, "template", RELEASE, str(chart), "--kube-version", kube, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(helm: str, *args: str) -> str:
    """The error of a render that must fail."""
    result = run(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert result.returncode != 0, "the render should have been refused"
    return result.stderr


@dataclass(frozen=True, slots=True)
class Container:
    owner: str
    """kind/name of the manifest the container belongs to."""
    pod: Manifest
    """The pod spec."""
    spec: Manifest

    @property
    def env(self) -> dict[str, str]:
        entries = self.spec.get("env", [])
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"{self.owner}: duplicate env {names}"
        return {e["name"]: e["value"] for e in entries}


def pod_spec(doc: Manifest) -> Manifest | None:
    if doc["kind"] == "Pod":
        return doc["spec"]  # type: ignore[no-any-return]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def containers(docs: list[Manifest]) -> Iterator[Container]:
    for doc in docs:
        pod = pod_spec(doc)
        if pod is None:
            continue
        for spec in pod.get("initContainers", []) + pod["containers"]:
            yield Container(f"{doc['kind']}/{doc['metadata']['name']}", pod, spec)


def one(docs: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (component is None or labels(d).get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]


def labels(doc: Manifest) -> dict[str, str]:
    return doc["metadata"].get("labels", {})  # type: ignore[no-any-return]


def workload(docs: list[Manifest], component: str) -> Container:
    deployment = one(docs, "Deployment", component)
    (container,) = containers([deployment])
    return container


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[Manifest]]:
    """Every scenario rendered once for the whole module."""
    return {scenario: template(helm, *values_args(scenario)) for scenario in SCENARIOS}


@dataclass(frozen=True, slots=True)
class CodeSettings:
    """The setting names each process reads."""

    worker: frozenset[str]
    projector: frozenset[str]
    kpis: frozenset[str]

    def of(self, component: str) -> frozenset[str]:
        found: frozenset[str] = getattr(self, component)
        return found

    @property
    def all(self) -> frozenset[str]:
        return self.worker | self.projector | self.kpis


@pytest.fixture(scope="module")
def code_settings(tmp_path_factory: pytest.TempPathFactory) -> CodeSettings:
    """Every setting name each process reads, recorded while it loads a complete configuration.

    All typed getters of SettingsSource go through `raw()`, so noting its argument while the real
    entry points (`Settings.load`, `ProjectorSettings.load`) run lists exactly the names they look
    up — no list kept by hand that could drift from the code.
    """
    a_file = tmp_path_factory.mktemp("settings") / "file"
    a_file.write_text("x\n")
    env = {
        "CUMI_SERVER_URL": "https://cuc.example.com",
        "CUMI_MAILBOXES_FILE": str(a_file),
        "CUMI_CREDENTIALS_FILE": str(a_file),
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    }
    original = SettingsSource.raw

    def record(load: Callable[..., object]) -> frozenset[str]:
        seen: set[str] = set()

        def raw(self: SettingsSource, name: str) -> Any:
            seen.add(name)
            return original(self, name)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SettingsSource, "raw", raw)
            load(env=env)
        assert len(seen) > 10, f"{load} read too few settings: has SettingsSource changed?"
        return frozenset(seen)

    return CodeSettings(
        worker=record(settings_module.Settings.load),
        projector=record(ProjectorSettings.load),
        kpis=record(KpiSettings.load),
    )


def materialise(env: dict[str, str], root: Path) -> dict[str, str]:
    """The container's env with mounted paths moved under `root`, the files created.

    Stands in for the Secret and ConfigMap volumes so the real settings code can check them.
    """
    local = dict(env)
    for name, value in env.items():
        if not value.startswith(MOUNT_ROOT):
            continue
        path = root / value.removeprefix(MOUNT_ROOT)
        if name.endswith("_DIR"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            content = "{}" if path.suffix == ".json" else "alice"
            if name.endswith("TOKEN_FILE"):
                content = "a-token-of-at-least-16-characters"
            path.write_text(content + "\n")
        local[name] = str(path)
    return local


class TestHelmCli:
    """`helm lint --strict` and `helm template` accept every scenario."""

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_lint_strict(self, helm: str, scenario: str) -> None:
        result = run(
            helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
            *values_args(scenario),
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout

    def test_every_ci_scenario_renders(self, rendered: dict[str, list[Manifest]]) -> None:
        assert len(SCENARIOS) >= 5, SCENARIOS
        for scenario, docs in rendered.items():
            assert {"Deployment", "Service", "Pod"} <= {d["kind"] for d in docs}, scenario


class TestKubernetesSchemas:
    """Rendered manifests validate offline against the Kubernetes OpenAPI schemas (strict)."""

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_core_resources_validate(
        self, rendered: dict[str, list[Manifest]], scenario: str
    ) -> None:
        for doc in rendered[scenario]:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # CRDs: see TestMonitoring
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    @pytest.mark.parametrize("kube", ["1.25.0", kubernetes_validate.latest_version()])
    def test_oldest_and_newest_kubernetes(self, helm: str, kube: str) -> None:
        """kubeVersion in Chart.yaml is >=1.25; the newest bundled schema must hold too."""
        args = values_args("all-features-on")
        for doc in template(helm, *args, kube=kube):
            if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
                kubernetes_validate.validate(doc, kube, strict=True)

    def test_validator_rejects_an_unknown_field(self, rendered: dict[str, list[Manifest]]) -> None:
        """Guards the check above: strict validation must notice a misspelt field."""
        deployment = json.loads(json.dumps(one(rendered["default"], "Deployment", "worker")))
        deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


class TestSettingsContract:
    """The chart sets exactly settings the code reads, and enough of them for the code to start."""

    @pytest.mark.parametrize("scenario", SCENARIOS)
    @pytest.mark.parametrize("component", ["worker", "projector", "kpis"])
    def test_every_env_var_is_a_setting_the_process_reads(
        self,
        rendered: dict[str, list[Manifest]],
        code_settings: CodeSettings,
        scenario: str,
        component: str,
    ) -> None:
        container = workload(rendered[scenario], component)
        unknown = set(container.env) - code_settings.of(component)
        assert not unknown, f"{container.owner} sets {sorted(unknown)}, unread by `{component}`"

    def test_the_test_pod_gets_no_settings(self, rendered: dict[str, list[Manifest]]) -> None:
        assert "env" not in one(rendered["all-features-on"], "Pod")["spec"]["containers"][0]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_worker_env_loads_with_the_real_settings(
        self, rendered: dict[str, list[Manifest]], scenario: str, tmp_path: Path
    ) -> None:
        """Settings.load succeeds: every required setting is set and every value is valid."""
        env = workload(rendered[scenario], "worker").env
        loaded = settings_module.Settings.load(env=materialise(env, tmp_path))
        assert loaded.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert loaded.worker.metrics_port == int(env["CUMI_METRICS_PORT"])
        assert loaded.credentials.provider.value == env["CUMI_CREDENTIALS_PROVIDER"]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_projector_env_loads_with_the_real_settings(
        self, rendered: dict[str, list[Manifest]], scenario: str, tmp_path: Path
    ) -> None:
        env = materialise(workload(rendered[scenario], "projector").env, tmp_path)
        loaded = ProjectorSettings.load(env=env)
        assert loaded.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert loaded.http_port == int(env["CUMI_METRICS_PORT"])

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_kpis_env_loads_with_the_real_settings(
        self, rendered: dict[str, list[Manifest]], scenario: str, tmp_path: Path
    ) -> None:
        env = materialise(workload(rendered[scenario], "kpis").env, tmp_path)
        loaded = KpiSettings.load(env=env)
        assert loaded.kafka.events_topic.endswith(env.get("KAFKA_EVENTS_TOPIC", "mailbox-events"))
        assert loaded.http_port == int(env["CUMI_METRICS_PORT"])

    def test_projector_gets_no_connection_settings(
        self, rendered: dict[str, list[Manifest]]
    ) -> None:
        """The projector never sees CUMI credentials or the Connection server."""
        env = workload(rendered["all-features-on"], "projector").env
        assert not {n for n in env if n.startswith(("CUMI_SERVER", "CUMI_CREDENTIALS"))}
        assert not {n for n in env if "DELEGATE" in n}

    def test_every_setting_is_reachable_from_values(
        self, helm: str, rendered: dict[str, list[Manifest]], code_settings: CodeSettings
    ) -> None:
        """A setting the code gains must get a values key, a `settings` entry or a reason."""
        schema = json.loads((CHART / "values.schema.json").read_text())
        free_form: set[str] = set()
        for component in ("worker", "projector", "kpis"):
            names = set(schema["$defs"][f"{component}Settings"]["propertyNames"]["enum"])
            unread = names - code_settings.of(component)
            assert not unread, f"{component}.settings allows {sorted(unread)}, unread by it"
            free_form |= names
        rendered_names = {
            name for docs in rendered.values() for c in containers(docs) for name in c.env
        }
        delegate_token = template(
            helm,
            "--set", "cumi.credentials.provider=delegate",
            "--set", "cumi.credentials.delegateTokenKey=token",
        )  # fmt: skip
        rendered_names |= set(workload(delegate_token, "worker").env)
        missing = code_settings.all - free_form - rendered_names - NOT_IN_CHART.keys()
        assert not missing, f"settings the chart cannot set: {sorted(missing)}"
        # a name with a dedicated values key must not be settable a second way
        used_free_form = {
            name
            for path in CHART.glob("ci/*-values.yaml")
            for component in ("worker", "projector", "kpis")
            for name in (yaml.safe_load(path.read_text()).get(component) or {}).get("settings", {})
        }
        dedicated = rendered_names - used_free_form
        assert not dedicated & free_form, sorted(dedicated & free_form)

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_file_settings_point_into_mounted_volumes(
        self, rendered: dict[str, list[Manifest]], scenario: str
    ) -> None:
        """Each *_FILE / *_DIR path is inside a mount, and the projected key is that file."""
        for container in containers(rendered[scenario]):
            volumes = {v["name"]: v for v in container.pod.get("volumes", [])}
            for name, value in container.env.items():
                if not name.endswith(("_FILE", "_DIR")):
                    continue
                mounts = [
                    m
                    for m in container.spec.get("volumeMounts", [])
                    if value == m["mountPath"] or value.startswith(m["mountPath"] + "/")
                ]
                assert len(mounts) == 1, f"{container.owner}: {name}={value} is not mounted"
                source = volumes[mounts[0]["name"]]
                projected = (source.get("secret") or source.get("configMap") or {}).get("items")
                if projected and not name.endswith("_DIR"):
                    relative = value.removeprefix(mounts[0]["mountPath"] + "/")
                    assert relative in {i["path"] for i in projected}, (container.owner, name)


class TestSelectors:
    """Selectors use name/instance/component only and survive chart and app upgrades."""

    @staticmethod
    def selectors(docs: list[Manifest]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for doc in docs:
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            spec = doc.get("spec", {})
            if doc["kind"] in ("Deployment", "PodDisruptionBudget", "ServiceMonitor"):
                found[key] = spec["selector"]["matchLabels"]
            elif doc["kind"] == "Service":
                found[key] = spec["selector"]
            elif doc["kind"] == "NetworkPolicy":
                found[key] = spec["podSelector"]["matchLabels"]
        return found

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_selector_labels(self, rendered: dict[str, list[Manifest]], scenario: str) -> None:
        selectors = self.selectors(rendered[scenario])
        assert selectors
        for key, selector in selectors.items():
            assert set(selector) <= SELECTOR_KEYS, (key, selector)
            assert selector["app.kubernetes.io/instance"] == RELEASE

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_selectors_match_their_pods(
        self, rendered: dict[str, list[Manifest]], scenario: str
    ) -> None:
        docs = rendered[scenario]
        for component in ("worker", "projector"):
            deployment = one(docs, "Deployment", component)
            selector = deployment["spec"]["selector"]["matchLabels"]
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= pod_labels.items()
            assert one(docs, "Service", component)["spec"]["selector"] == selector
            pdb = one(docs, "PodDisruptionBudget", component)
            assert pdb["spec"]["selector"]["matchLabels"] == selector
        worker_selector = one(docs, "Deployment", "worker")["spec"]["selector"]["matchLabels"]
        projector_pods = one(docs, "Deployment", "projector")["spec"]["template"]["metadata"]
        assert not worker_selector.items() <= projector_pods["labels"].items()

    def test_selectors_stable_across_upgrades(
        self, helm: str, rendered: dict[str, list[Manifest]], tmp_path: Path
    ) -> None:
        """A new chart version and appVersion must not touch an (immutable) selector."""
        upgraded = tmp_path / "cumi-pipeline"
        shutil.copytree(CHART, upgraded)
        chart_yaml = upgraded / "Chart.yaml"
        text = chart_yaml.read_text()
        text = re.sub(r"(?m)^version: .*$", "version: 9.8.7", text)
        text = re.sub(r"(?m)^appVersion: .*$", 'appVersion: "9.9.9"', text)
        chart_yaml.write_text(text)
        args = values_args("all-features-on")
        after = template(helm, *args, chart=upgraded)
        deployment = one(after, "Deployment", "worker")
        assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "9.9.9"
        assert self.selectors(after) == self.selectors(rendered["all-features-on"])


class TestSecurityContext:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp — on every container."""

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_container(self, rendered: dict[str, list[Manifest]], scenario: str) -> None:
        all_containers = list(containers(rendered[scenario]))
        owners = {c.owner.split("/")[0] for c in all_containers}
        # the helm test pod and the topics hook Job are included
        assert owners == {"Deployment", "Pod", "Job"}, owners
        for c in all_containers:
            pod_sc, sc = c.pod.get("securityContext", {}), c.spec.get("securityContext", {})

            def effective(key: str, pod_sc: Manifest = pod_sc, sc: Manifest = sc) -> Any:
                return sc.get(key, pod_sc.get(key))

            assert effective("runAsNonRoot") is True, c.owner
            assert effective("runAsUser") not in (None, 0), c.owner
            assert sc.get("readOnlyRootFilesystem") is True, c.owner
            assert sc.get("allowPrivilegeEscalation") is False, c.owner
            assert sc.get("privileged", False) is False, c.owner
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), c.owner
            assert not sc.get("capabilities", {}).get("add"), c.owner
            assert effective("seccompProfile") == {"type": "RuntimeDefault"}, c.owner
            assert c.pod.get("automountServiceAccountToken") is False, c.owner
            tmp = [m for m in c.spec["volumeMounts"] if m["mountPath"] == "/tmp"]
            volumes = {v["name"]: v for v in c.pod["volumes"]}
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], c.owner

    def test_schema_refuses_weakening(self, helm: str) -> None:
        for flag in (
            "securityContext.readOnlyRootFilesystem=false",
            "securityContext.allowPrivilegeEscalation=true",
            "podSecurityContext.runAsNonRoot=false",
            "securityContext.runAsUser=0",
        ):
            assert "schema" in template_error(helm, "--set", flag), flag

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_no_secret_material_in_manifests(
        self, rendered: dict[str, list[Manifest]], scenario: str
    ) -> None:
        """Credentials come from existing Secrets, mounted as files; the chart renders none."""
        docs = rendered[scenario]
        assert "Secret" not in {d["kind"] for d in docs}
        for c in containers(docs):
            leaks = [n for n in c.env if re.search(r"PASSWORD|TOKEN|SECRET", n)]
            assert all(n.endswith("_FILE") for n in leaks), (c.owner, leaks)
            assert not any("valueFrom" in e for e in c.spec.get("env", [])), c.owner


class TestWorkloads:
    """Probes on the health endpoints, resources, PDBs, the config checksum."""

    def test_probed_paths_are_routes_of_the_ops_server(
        self, rendered: dict[str, list[Manifest]]
    ) -> None:
        """Probes, the helm test pod and the ServiceMonitor only ask for paths the code serves."""
        docs = rendered["all-features-on"]
        paths = {
            c.spec[probe]["httpGet"]["path"]
            for c in containers(docs)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
            if probe in c.spec
        }
        paths |= {
            "/" + url.split("/", 3)[3]
            for url in one(docs, "Pod")["spec"]["containers"][0]["args"][1:]
        }
        paths |= {e["path"] for e in one(docs, "ServiceMonitor")["spec"]["endpoints"]}
        routes = {r.resource.canonical for r in OpsServer().app.router.routes() if r.resource}
        assert paths == {"/healthz/live", "/healthz/ready", "/metrics"}
        assert paths <= routes

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_probes_and_port(self, rendered: dict[str, list[Manifest]], scenario: str) -> None:
        for component in ("worker", "projector", "kpis"):
            c = workload(rendered[scenario], component)
            ports = {p["name"]: p["containerPort"] for p in c.spec["ports"]}
            expected_ports = {"http": int(c.env["CUMI_METRICS_PORT"])}
            if component == "projector":
                expected_ports["read-api"] = int(c.env["CUMI_READ_API_PORT"])
            assert ports == expected_ports
            assert c.env["CUMI_METRICS_HOST"] == "0.0.0.0"  # not the loopback default
            for probe, path in (
                ("startupProbe", "/healthz/live"),
                ("livenessProbe", "/healthz/live"),
                ("readinessProbe", "/healthz/ready"),
            ):
                expected = {"path": path, "port": "http"}
                assert c.spec[probe]["httpGet"] == expected, (component, probe)
            assert c.spec["resources"]["requests"] and c.spec["resources"]["limits"]
            assert c.spec["args"] == [component]

    def test_replicas(self, rendered: dict[str, list[Manifest]]) -> None:
        docs = rendered["several-workers"]
        assert one(docs, "Deployment", "kpis")["spec"]["replicas"] == 1  # never two sets of KPIs
        assert one(docs, "Deployment", "worker")["spec"]["replicas"] == 4
        assert one(docs, "Deployment", "projector")["spec"]["replicas"] == 2
        pdb = one(docs, "PodDisruptionBudget", "worker")
        assert pdb["spec"]["maxUnavailable"] == "25%"

    def test_config_checksum_follows_the_mailbox_list(self, helm: str) -> None:
        def checksum(*args: str) -> str:
            pod = one(template(helm, *args), "Deployment", "worker")["spec"]["template"]
            return pod["metadata"]["annotations"]["checksum/config"]  # type: ignore[no-any-return]

        first = checksum("--set", "cumi.mailboxes.list={alice,bob}")
        assert re.fullmatch(r"[0-9a-f]{64}", first)
        assert checksum("--set", "cumi.mailboxes.list={alice,bob}") == first
        assert checksum("--set", "cumi.mailboxes.list={alice,carol}") != first

    @pytest.mark.parametrize("key", ["mailboxes.txt", "mailboxes.json"])
    def test_mailbox_list_file_reads_with_the_worker(
        self, helm: str, key: str, tmp_path: Path
    ) -> None:
        aliases = ["alice", "bob.smith", "carol_1"]
        docs = template(
            helm,
            "--set", f"cumi.mailboxes.list={{{','.join(aliases)}}}",
            "--set", f"cumi.mailboxes.key={key}",
        )  # fmt: skip
        configmap = one(docs, "ConfigMap", "worker")
        path = tmp_path / key
        path.write_text(configmap["data"][key])
        assert watched_aliases(path) == aliases
        env = workload(docs, "worker").env
        assert env["CUMI_MAILBOXES_FILE"].endswith("/" + key)  # same suffix, same format

    def test_mailbox_list_from_an_existing_configmap(
        self, rendered: dict[str, list[Manifest]]
    ) -> None:
        # with an existing ConfigMap the chart renders none of its own
        existing = rendered["existing-secret"]
        assert not [d for d in existing if d["kind"] == "ConfigMap"]
        volumes = workload(existing, "worker").pod["volumes"]
        (mailboxes,) = [v for v in volumes if v["name"] == "mailboxes"]
        assert mailboxes["configMap"]["name"] == "voicemail-mailboxes"

    def test_helm_test_pod_hits_every_health_endpoint(
        self, rendered: dict[str, list[Manifest]]
    ) -> None:
        docs = rendered["default"]
        pod = one(docs, "Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        urls = set(pod["spec"]["containers"][0]["args"][1:])
        expected = {
            f"http://{one(docs, 'Service', component)['metadata']['name']}:"
            f"{one(docs, 'Service', component)['spec']['ports'][0]['port']}{path}"
            for component in ("worker", "projector", "kpis")
            for path in ("/healthz/live", "/healthz/ready", "/metrics")
        }
        assert urls == expected
        compile(pod["spec"]["containers"][0]["args"][0], "helm-test", "exec")

    def test_components_can_be_disabled(self, helm: str) -> None:
        docs = template(helm, "--set", "projector.enabled=false")
        assert {labels(d).get("app.kubernetes.io/component") for d in docs} >= {"worker"}
        assert not [d for d in docs if labels(d).get("app.kubernetes.io/component") == "projector"]
        urls = one(docs, "Pod")["spec"]["containers"][0]["args"][1:]
        assert urls and not [u for u in urls if "projector" in u]


class TestMailboxSource:
    """cumi.mailboxes.source: the list file (one worker) or the registry a worker group shares."""

    @staticmethod
    def mailbox_objects(docs: list[Manifest]) -> dict[str, Any]:
        """Everything the chart renders for the mailbox list file."""
        deployment = one(docs, "Deployment", "worker")
        worker = workload(docs, "worker")
        return {
            "configmaps": [d for d in docs if d["kind"] == "ConfigMap"],
            "volumes": [v for v in worker.pod["volumes"] if v["name"] == "mailboxes"],
            "mounts": [m for m in worker.spec["volumeMounts"] if m["name"] == "mailboxes"],
            "checksum": (deployment["spec"]["template"]["metadata"].get("annotations") or {}).get(
                "checksum/config"
            ),
            "env": {n for n in worker.env if n == "CUMI_MAILBOXES_FILE"},
        }

    def test_registry_renders_the_source_and_group_env(
        self, rendered: dict[str, list[Manifest]], tmp_path: Path
    ) -> None:
        docs = rendered["several-workers"]
        env = workload(docs, "worker").env
        assert env["CUMI_MAILBOX_SOURCE"] == "registry"
        assert env["KAFKA_WORKER_GROUP"] == "cuc1-workers"
        assert env["KAFKA_WORKER_SESSION_TIMEOUT_MS"] == "15000"
        assert env["KAFKA_WORKER_HEARTBEAT_INTERVAL_MS"] == "3000"
        loaded = settings_module.Settings.load(env=materialise(env, tmp_path))
        assert loaded.cumi.mailbox_source is settings_module.MailboxSource.REGISTRY
        assert loaded.cumi.mailboxes_file is None
        assert loaded.cumi.server_name == "cuc1"  # the entries' `server` this group watches
        assert (loaded.worker.group_id, loaded.worker.group_session_timeout_ms) == (
            "cuc1-workers",
            15000,
        )
        assert loaded.worker.group_heartbeat_interval_ms == 3000
        assert one(docs, "Deployment", "worker")["spec"]["replicas"] == 4

    def test_registry_renders_no_mailbox_list(self, rendered: dict[str, list[Manifest]]) -> None:
        objects = self.mailbox_objects(rendered["several-workers"])
        assert objects == {
            "configmaps": [], "volumes": [], "mounts": [], "checksum": None, "env": set(),
        }  # fmt: skip

    def test_registry_group_nulls_keep_the_code_defaults(self, helm: str) -> None:
        docs = template(helm, "--set", "cumi.mailboxes.source=registry")
        deployment = one(docs, "Deployment", "worker")
        assert "annotations" not in deployment["spec"]["template"]["metadata"]
        env = workload(docs, "worker").env
        assert env["CUMI_MAILBOX_SOURCE"] == "registry"
        assert not {n for n in env if n.startswith("KAFKA_WORKER_")}
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)

    def test_file_source_is_unchanged(self, helm: str, rendered: dict[str, list[Manifest]]) -> None:
        """The default: the list file from the chart's ConfigMap, no group env even if set."""
        explicit = template(
            helm,
            "--set", "cumi.mailboxes.source=file",
            "--set", "worker.group.id=unused",
            "--set", "worker.podAnnotations.a=b",
        )  # fmt: skip
        for docs in (rendered["default"], explicit):
            objects = self.mailbox_objects(docs)
            (configmap,) = objects["configmaps"]
            (volume,) = objects["volumes"]
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            assert [m["mountPath"] for m in objects["mounts"]] == ["/etc/cumi-pipeline/mailboxes"]
            assert re.fullmatch(r"[0-9a-f]{64}", objects["checksum"])
            env = workload(docs, "worker").env
            assert env["CUMI_MAILBOXES_FILE"] == "/etc/cumi-pipeline/mailboxes/mailboxes.txt"
            assert not {n for n in env if n.startswith("KAFKA_WORKER_") or n.endswith("_SOURCE")}

    @pytest.mark.parametrize("extra", [[], ["--set", "cumi.mailboxes.source=file"]])
    def test_several_workers_need_the_registry(self, helm: str, extra: list[str]) -> None:
        error = template_error(helm, "--set", "worker.replicaCount=2", *extra)
        assert "worker.replicaCount is 2 with cumi.mailboxes.source file" in error
        assert "every replica would watch every mailbox" in error
        assert "cumi.mailboxes.source=registry" in error
        # the same count is fine with the registry, or with the workers disabled
        template(helm, "--set", "worker.replicaCount=2", "--set", "cumi.mailboxes.source=registry")
        template(helm, "--set", "worker.replicaCount=2", "--set", "worker.enabled=false")

    @pytest.mark.parametrize(
        "flag", ["cumi.mailboxes.list={alice}", "cumi.mailboxes.existingConfigMap=mailboxes"]
    )
    def test_registry_refuses_a_mailbox_list(self, helm: str, flag: str) -> None:
        """A list the registry workers would silently ignore is refused, with the way out."""
        error = template_error(helm, "--set", "cumi.mailboxes.source=registry", "--set", flag)
        assert "not used with cumi.mailboxes.source registry" in error
        assert "ingest mailboxes import" in error

    @pytest.mark.parametrize(
        ("flags", "expected", "absent"),
        [
            (
                ["cumi.mailboxes.source=registry", "cumi.serverName=cuc1"],
                ["ingest mailboxes import", "ingest mailboxes add", 'for server "cuc1"'],
                "cumi.mailboxes.list",
            ),
            (["cumi.mailboxes.list={alice}"], ["1 listed in values"], "ingest mailboxes"),
        ],
    )
    def test_notes(
        self, helm: str, tmp_path: Path, flags: list[str], expected: list[str], absent: str
    ) -> None:
        """NOTES.txt tells how to register the mailboxes, in registry mode only.

        `helm template` never renders NOTES.txt, so a copy of the chart renders it as a manifest.
        """
        chart = tmp_path / "cumi-pipeline"
        shutil.copytree(CHART, chart)
        notes = chart / "templates" / "NOTES.txt"
        body = "".join(f"  {line}\n" for line in notes.read_text().splitlines())
        (chart / "templates" / "notes.yaml").write_text(f"notes: |\n{body}")
        notes.unlink()
        args = [arg for flag in flags for arg in ("--set", flag)]
        (doc,) = template(helm, "--show-only", "templates/notes.yaml", *args, chart=chart)
        for text in expected:
            assert text in doc["notes"], text
        assert absent not in doc["notes"]


class TestValuesSchema:
    """values.schema.json is strict: unknown keys, bad enums and unknown settings are refused."""

    @pytest.mark.parametrize(
        "flag",
        [
            "bogus=1",
            "worker.bogus=1",
            "cumi.credentials.password=hunter2",
            "kafka.sasl.password=hunter2",
            "metrics.serviceMonitor.bogus=true",
            "worker.group.bogus=1",
            "kafka.schemaRegistry.password=hunter2",
        ],
    )
    def test_unknown_keys(self, helm: str, flag: str) -> None:
        assert "additional properties" in template_error(helm, "--set", flag)

    @pytest.mark.parametrize(
        "flag",
        [
            "cumi.credentials.provider=ldap",
            "kafka.securityProtocol=TLS",
            "cumi.cometTransport=carrier-pigeon",
            "logLevel=LOUD",
            "cumi.mailboxes.source=ldap",
        ],
    )
    def test_enums(self, helm: str, flag: str) -> None:
        assert "must be one of" in template_error(helm, "--set", flag)

    def test_unknown_setting_name(self, helm: str) -> None:
        assert "CUMI_NO_SUCH_SETTING" in template_error(
            helm, "--set", "worker.settings.CUMI_NO_SUCH_SETTING=1"
        )

    @pytest.mark.parametrize(
        "name",
        [
            "CUMI_MAILBOX_SOURCE",
            "KAFKA_WORKER_GROUP",
            "KAFKA_WORKER_SESSION_TIMEOUT_MS",
            "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS",
        ],
    )
    def test_settings_with_a_dedicated_key_are_refused(self, helm: str, name: str) -> None:
        """cumi.mailboxes.source and worker.group.* are the one way to set these."""
        error = template_error(helm, "--set", f"worker.settings.{name}=1")
        assert name in error and "schema" in error

    @pytest.mark.parametrize(
        "flag",
        [
            "worker.group.sessionTimeoutMs=999",
            "worker.group.heartbeatIntervalMs=99",
            "worker.group.sessionTimeoutMs=ten",
            "worker.group.id=",
        ],
    )
    def test_group_bounds(self, helm: str, flag: str) -> None:
        """The code's bounds (ingest/settings.py), refused at install time rather than at start."""
        assert "schema" in template_error(helm, "--set", flag)

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            (["kafka.securityProtocol=SASL_PLAINTEXT"], "kafka.sasl.username"),
            (["kafka.securityProtocol=SSL"], "kafka.tls.existingSecret"),
            (["cumi.credentials.provider=delegate"], "delegateUser"),
            (["worker.shutdownTimeoutSeconds=90"], "terminationGracePeriodSeconds"),
            (["cumi.tls.ca.secretName=a", "cumi.tls.ca.configMapName=b"], "not both"),
            (["worker.group.heartbeatIntervalMs=4000"], "at most a third"),
            (["kafka.schemaRegistry.username=u"], "kafka.schemaRegistry.url is required"),
            (
                ["kafka.schemaRegistry.url=http://r:8081", "kafka.schemaRegistry.username=u"],
                "go together (basic auth)",
            ),
            (
                ["worker.group.sessionTimeoutMs=6000", "worker.group.heartbeatIntervalMs=2001"],
                "heartbeatIntervalMs (2001) must be at most a third of "
                "worker.group.sessionTimeoutMs (6000)",
            ),
        ],
    )
    def test_readable_failures(self, helm: str, flags: list[str], message: str) -> None:
        args = [arg for flag in flags for arg in ("--set", flag)]
        assert message in template_error(helm, *args)


class TestSchemaRegistry:
    """kafka.schemaRegistry: registry mode for both processes, secrets mounted, URL checked."""

    def test_off_by_default(self, rendered: dict[str, list[Manifest]]) -> None:
        for container in containers(rendered["default"]):
            assert not [n for n in container.env if n.startswith("KAFKA_SCHEMA_REGISTRY")]

    @pytest.mark.parametrize("component", ["worker", "projector"])
    def test_both_processes_load_it(
        self, rendered: dict[str, list[Manifest]], component: str, tmp_path: Path
    ) -> None:
        env = materialise(workload(rendered["all-features-on"], component).env, tmp_path)
        kafka = (
            settings_module.Settings.load(env=env).kafka
            if component == "worker"
            else ProjectorSettings.load(env=env).kafka
        )
        registry = kafka.schema_registry
        assert registry is not None
        assert registry.url == "https://registry.example.net/apis/ccompat/v7"
        assert registry.username == "cumi-pipeline" and registry.password is not None
        assert registry.ca_file is not None and registry.timeout_seconds == 5.0

    @pytest.mark.parametrize(
        "url", ["ftp://registry:8081", "registry:8081", "http://user:pw@registry:8081"]
    )
    def test_url_is_checked(self, helm: str, url: str) -> None:
        assert "schema" in template_error(helm, "--set", f"kafka.schemaRegistry.url={url}")


class TestMonitoring:
    """ServiceMonitor, PrometheusRule and dashboard: off by default, correct when on."""

    def test_optional_features_off_by_default(self, rendered: dict[str, list[Manifest]]) -> None:
        kinds = {d["kind"] for d in rendered["default"]}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}
        names = {d["metadata"]["name"] for d in rendered["default"]}
        assert not [n for n in names if n.endswith("-dashboard")]

    def test_service_monitor_scrapes_every_service(
        self, rendered: dict[str, list[Manifest]]
    ) -> None:
        docs = rendered["all-features-on"]
        monitor = one(docs, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", "endpoints"}
        selector = spec["selector"]["matchLabels"]
        services = [d for d in docs if d["kind"] == "Service"]
        scraped = [s for s in services if selector.items() <= labels(s).items()]
        assert {labels(s)["app.kubernetes.io/component"] for s in scraped} == {
            "worker",
            "projector",
            "kpis",
        }
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert set(endpoint) <= {
            "port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings",
        }  # fmt: skip
        for service in scraped:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            assert labels(service)[spec["jobLabel"]] == "cumi-pipeline"

    def test_prometheus_rule_passes_promtool(
        self, rendered: dict[str, list[Manifest]], tmp_path: Path
    ) -> None:
        rule = one(rendered["all-features-on"], "PrometheusRule")
        assert set(rule["spec"]) == {"groups"} and rule["spec"]["groups"]
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(yaml.safe_dump(rule["spec"]))
        result = run(tool("promtool"), "check", "rules", str(rules_file))
        assert result.returncode == 0, result.stdout + result.stderr
        source = yaml.safe_load(ALERT_RULES.read_text())
        assert rule["spec"]["groups"] == source["groups"]  # verbatim, no templating

    def test_dashboard_configmap(self, rendered: dict[str, list[Manifest]]) -> None:
        docs = rendered["all-features-on"]
        (configmap,) = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert labels(configmap)["grafana_dashboard"] == "1"
        for key, name in (
            ("cumi-pipeline.json", "dashboard.json"),
            ("cumi-voicemail.json", "voicemail-dashboard.json"),
        ):
            dashboard = json.loads(configmap["data"][key])
            assert dashboard == json.loads((CHART / "files" / name).read_text())
            assert dashboard["panels"] and dashboard["title"]

    def test_network_policies(self, rendered: dict[str, list[Manifest]]) -> None:
        docs = rendered["all-features-on"]
        worker = one(docs, "NetworkPolicy", "worker")
        projector = one(docs, "NetworkPolicy", "projector")
        for policy in (worker, projector):
            assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
            peers = policy["spec"]["ingress"][0]["from"]
            test_pod = labels(one(docs, "Pod"))
            assert any(
                p.get("podSelector", {}).get("matchLabels", {}).items() <= test_pod.items()
                for p in peers
            ), "the helm test pod must reach the health endpoints"

        def egress_ports(policy: Manifest) -> set[int]:
            return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}

        assert 7443 in egress_ports(worker)
        assert 7443 not in egress_ports(projector)  # the projector never talks to Connection


class TestExposure:
    """The NetworkPolicies are on by default; the read API has a port of its own that they (and
    an optional token and TLS) restrict, while /metrics and the probes stay open."""

    @staticmethod
    def ingress(policy: Manifest, port: str) -> list[Manifest]:
        rules = [
            r for r in policy["spec"]["ingress"] if {"port": port, "protocol": "TCP"} in r["ports"]
        ]
        assert len(rules) == 1, (port, policy["spec"]["ingress"])
        return rules[0].get("from", [])  # type: ignore[no-any-return]

    def test_network_policies_on_by_default(self, rendered: dict[str, list[Manifest]]) -> None:
        docs = rendered["default"]
        worker = one(docs, "NetworkPolicy", "worker")
        projector = one(docs, "NetworkPolicy", "projector")
        assert self.ingress(worker, "http") == [] and self.ingress(projector, "http") == []
        assert len(worker["spec"]["ingress"]) == 1  # no read API on the workers
        peers = self.ingress(projector, "read-api")
        release = labels(one(docs, "Pod"))
        selectors = [p["podSelector"]["matchLabels"] for p in peers]
        assert any(s.items() <= release.items() for s in selectors), "the helm test pod"
        assert {"cumi-pipeline-read-api-client": "true"} in selectors
        assert all(set(p) == {"podSelector"} for p in peers)  # this namespace only

    def test_configured_read_api_peers(self, rendered: dict[str, list[Manifest]]) -> None:
        projector = one(rendered["all-features-on"], "NetworkPolicy", "projector")
        peers = self.ingress(projector, "read-api")
        assert {"podSelector": {"matchLabels": {"voicemail-portal": "true"}}} in peers
        assert "cumi-pipeline-read-api-client" not in str(peers)
        namespace = {"matchLabels": {"kubernetes.io/metadata.name": "voicemail-portal"}}
        assert {"namespaceSelector": namespace} in peers
        assert not [p for p in self.ingress(projector, "http") if "voicemail-portal" in str(p)]

    def test_can_be_turned_off(self, helm: str) -> None:
        kinds = {d["kind"] for d in template(helm, "--set", "networkPolicy.enabled=false")}
        assert "NetworkPolicy" not in kinds

    @pytest.mark.parametrize(
        ("url", "port"),
        [
            ("https://registry.example.net/apis/ccompat/v7", 443),
            ("http://apicurio:8080/apis/ccompat/v7", 8080),
        ],
    )
    def test_egress_reaches_the_schema_registry(self, helm: str, url: str, port: int) -> None:
        docs = template(helm, "--set", f"kafka.schemaRegistry.url={url}")
        for component in ("worker", "projector"):
            egress = one(docs, "NetworkPolicy", component)["spec"]["egress"]
            assert {"port": port, "protocol": "TCP"} in [p for r in egress for p in r["ports"]]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_read_api_port_service_and_env(
        self, rendered: dict[str, list[Manifest]], scenario: str, tmp_path: Path
    ) -> None:
        docs = rendered[scenario]
        env = workload(docs, "projector").env
        service = one(docs, "Service", "projector")
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert ports["read-api"] == (int(env["CUMI_READ_API_PORT"]), "read-api")
        assert ports["http"][0] != ports["read-api"][0]
        loaded = ProjectorSettings.load(env=materialise(env, tmp_path))
        assert loaded.read_api.port == int(env["CUMI_READ_API_PORT"])
        assert loaded.read_api.host == loaded.http_host == "0.0.0.0"

    def test_token_and_mutual_tls_wiring(self, rendered: dict[str, list[Manifest]]) -> None:
        env = workload(rendered["all-features-on"], "projector").env
        assert env["CUMI_READ_API_TOKEN_FILE"] == "/etc/cumi-pipeline/read-api-auth/token"
        assert env["CUMI_READ_API_TLS_CERT_FILE"] == "/etc/cumi-pipeline/read-api-tls/tls.crt"
        assert env["CUMI_READ_API_TLS_KEY_FILE"] == "/etc/cumi-pipeline/read-api-tls/tls.key"
        assert env["CUMI_READ_API_TLS_CLIENT_CA_FILE"] == "/etc/cumi-pipeline/read-api-tls/ca.crt"
        default = workload(rendered["default"], "projector").env
        assert not [n for n in default if n.startswith("CUMI_READ_API_T")]

    def test_read_api_port_must_not_be_the_http_port(self, helm: str) -> None:
        error = template_error(helm, "--set", "projector.readApi.port=9102")
        assert "projector.readApi.port must differ from httpPort" in error
