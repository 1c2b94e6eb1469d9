"""Deployment files: Kubernetes schemas (offline) and every command line they hold."""

import subprocess
import sys
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from cli.main import emi

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def documents():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", [])


def test_the_expected_manifests_exist():
    kinds = sorted((name, doc["kind"]) for name, doc in documents())
    assert kinds == [
        ("extract-job.yaml", "Job"),
        ("scheduler.yaml", "Deployment"),
        ("scheduler.yaml", "Service"),
        ("score-job.yaml", "Job"),
        ("service.yaml", "Deployment"),
        ("service.yaml", "NetworkPolicy"),
        ("service.yaml", "PersistentVolumeClaim"),
        ("service.yaml", "Secret"),
        ("service.yaml", "Service"),
        ("workers-gpu.yaml", "Deployment"),
    ]


@pytest.mark.parametrize(
    ("name", "doc"), list(documents()), ids=[f"{n}:{d['kind']}" for n, d in documents()]
)
def test_manifest_is_valid_kubernetes(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_gpu_workers_declare_the_gpu_resource():
    [workers] = [d for n, d in documents() if n == "workers-gpu.yaml"]
    [container] = containers(workers)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    command = container["command"]
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert command[command.index("--nworkers") + 1] == "1"


def parse(group: click.Group, args: list[str]) -> click.Context:
    """Parse a command line with the real CLI, as far as the command's own callback.

    Paths are not checked for existence: they exist inside the pods, not here.
    """
    ctx = group.make_context(group.name, list(args))
    while isinstance(ctx.command, click.Group):
        name, command, rest = ctx.command.resolve_command(ctx, ctx.protected_args + ctx.args)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def emi_command_lines():
    for name, doc in documents():
        for container in containers(doc):
            if container["command"][0] == "emi":
                yield name, container["command"][1:]


def test_every_emi_command_line_parses(monkeypatch):
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    lines = list(emi_command_lines())
    assert {n for n, _ in lines} == {"extract-job.yaml", "score-job.yaml", "service.yaml"}
    for name, args in lines:
        ctx = parse(emi, args)
        assert ctx.params, name
        if args[0] == "extract":
            assert ctx.params["scheduler"] == "tcp://emi-scheduler:8786"
            assert ctx.params["store"].startswith("s3://")
        if args[0] == "serve":
            assert ctx.params["scheduler"] == "tcp://emi-scheduler:8786"


def test_the_service_deployment_mounts_its_state_and_token_and_probes_its_health():
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for name, doc in documents()
            if name == "service.yaml"}  # fmt: skip
    deployment = docs[("Deployment", "emi-service")]
    assert deployment["spec"]["replicas"] == 1  # a SQLite job table: one writer
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = command[command.index("--state") + 1]
    assert mounts["state"] == state
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in docs
    tokens = command[command.index("--token-file") + 1]
    secret_mount = mounts["secrets"]
    assert tokens.startswith(secret_mount + "/")
    secret = docs[("Secret", volumes["secrets"]["secret"]["secretName"])]
    assert tokens.rsplit("/", 1)[1] in secret["stringData"]
    callback = command[command.index("--callback-secret-file") + 1]
    assert callback.rsplit("/", 1)[1] in secret["stringData"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = command[command.index("--port") + 1]
    assert {p["containerPort"] for p in container["ports"]} == {int(port)}
    assert command[command.index("--host") + 1] == "0.0.0.0" and "--token-file" in command
    service = docs[("Service", "emi-service")]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    policy = docs[("NetworkPolicy", "emi-scheduler-clients")]
    allowed = {
        f["podSelector"]["matchLabels"]["component"] for f in policy["spec"]["ingress"][0]["from"]
    }
    workers = [doc for name, doc in documents() if name == "workers-gpu.yaml"][0]
    assert {"service", workers["metadata"]["labels"]["component"]} <= allowed


def test_a_wrong_option_would_be_caught(monkeypatch):
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    with pytest.raises(click.UsageError):
        parse(emi, ["extract", "/data/audio", "s3://b/f.zarr", "--shceduler", "tcp://x:8786"])


def test_dask_command_lines_parse():
    from distributed.cli import dask_scheduler, dask_worker

    for _, doc in documents():
        for container in containers(doc):
            command = container["command"]
            if command[0] != "dask":
                continue
            cli = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}[command[1]]
            cli.make_context(f"dask {command[1]}", list(command[2:]))


def test_slurm_example_runs_its_help():
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "slurm" / "cluster.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--jobs" in result.stdout


def test_the_containerfile_passes_hadolint():
    """hadolint at --failure-threshold error (as the image's docs say); its warnings
    are read here too, so none slips in unseen."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("hadolint")), "--no-color",
         str(DEPLOY.parent / "Containerfile")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
