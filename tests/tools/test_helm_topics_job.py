"""The chart's pre-install/pre-upgrade hook Job that runs `ingest topics apply`, rendered and
linted by the real Helm CLI: its command line parses with the real `ingest` parser, its
environment loads with the real Kafka settings code, and the values map onto the arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.chart import CHART
from fixtures.tools import tool

from ingest import cli
from ingest.settings import SettingsSource, load_kafka

pytestmark = pytest.mark.tools

KUBE_VERSION = "1.31.0"
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *args: str) -> list[Manifest]:
    result = run(helm, "template", "rel", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def jobs(docs: list[Manifest]) -> list[Manifest]:
    return [d for d in docs if d["kind"] == "Job"]


def the_job(helm: str, *args: str) -> Manifest:
    (job,) = jobs(render(helm, *args))
    return job


def container(job: Manifest) -> Manifest:
    (spec,) = job["spec"]["template"]["spec"]["containers"]
    return spec  # type: ignore[no-any-return]


def parsed(job: Manifest) -> Any:
    argv = container(job)["args"]
    return cli.build_parser(cli._chosen_command(argv)).parse_args(argv)


class TestHookJob:
    """On by default, before install and upgrade, with the documented specs."""

    def test_a_hook_before_install_and_upgrade(self, helm: str) -> None:
        job = the_job(helm)
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "topics"

    def test_runs_topics_apply_with_the_documented_specs(self, helm: str) -> None:
        args = parsed(the_job(helm))
        assert (args.command, args.action, args.fix_configs) == ("topics", "apply", False)
        assert (args.events_partitions, args.replication, args.events_retention_ms) == (
            12,
            None,
            -1,
        )
        assert args.log_level == "INFO"

    def test_values_become_arguments(self, helm: str) -> None:
        job = the_job(
            helm,
            "--set",
            "topicsJob.eventsPartitions=24",
            "--set",
            "topicsJob.replication=3",
            "--set",
            "topicsJob.eventsRetentionMs=604800000",
            "--set",
            "topicsJob.fixConfigs=true",
            "--set",
            "logLevel=DEBUG",
        )
        args = parsed(job)
        assert (args.events_partitions, args.replication) == (24, 3)
        assert (args.events_retention_ms, args.fix_configs, args.log_level) == (
            604_800_000,
            True,
            "DEBUG",
        )

    def test_can_be_turned_off(self, helm: str) -> None:
        assert jobs(render(helm, "--set", "topicsJob.enabled=false")) == []

    def test_no_service_account_of_the_chart(self, helm: str) -> None:
        """A pre-install hook runs before the chart's ServiceAccount exists."""
        pod = the_job(helm)["spec"]["template"]["spec"]
        assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
        given = the_job(
            helm, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops"
        )
        assert given["spec"]["template"]["spec"]["serviceAccountName"] == "ops"

    @pytest.mark.parametrize(
        "values", ["", "ci/all-features-on-values.yaml", "ci/kafka-tls-values.yaml"]
    )
    def test_env_is_the_kafka_settings(
        self, helm: str, values: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every variable is one `load_kafka` reads, and together they load; mounted files are
        inside the Job's volumes."""
        job = the_job(helm, *(["-f", str(CHART / values)] if values else []))
        env = {e["name"]: e["value"] for e in container(job)["env"]}
        mounts = [m["mountPath"] for m in container(job)["volumeMounts"]]
        local = dict(env)
        for name, value in env.items():
            if value.startswith("/etc/cumi-pipeline/"):
                assert any(value.startswith(m + "/") for m in mounts), (name, mounts)
                path = tmp_path / value.removeprefix("/etc/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("secret\n")
                local[name] = str(path)
        seen: set[str] = set()
        original = SettingsSource.raw

        def raw(self: SettingsSource, name: str) -> Any:
            seen.add(name)
            return original(self, name)

        monkeypatch.setattr(SettingsSource, "raw", raw)
        kafka = load_kafka(SettingsSource.load(local))
        assert kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert set(env) <= seen, set(env) - seen


class TestHelmCli:
    """The chart lints with the Job configured, and the schema guards its values."""

    def test_lint_strict(self, helm: str) -> None:
        result = run(
            helm,
            "lint",
            "--strict",
            str(CHART),
            "--set",
            "topicsJob.replication=3,topicsJob.fixConfigs=true",
        )
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize(
        "flag",
        [
            "topicsJob.eventsPartitions=0",
            "topicsJob.replication=0",
            "topicsJob.eventsRetentionMs=-2",
            "topicsJob.partitions=12",
        ],
    )
    def test_schema_refuses(self, helm: str, flag: str) -> None:
        result = run(helm, "template", "rel", str(CHART), "--set", flag)
        assert result.returncode != 0 and "values don't meet the specifications" in result.stderr
