"""Deployment files: the Kubernetes set as `kubectl apply -k` renders it (schemas for the
oldest and newest supported Kubernetes, offline), every object a pod references defined
in the set, every command line parsed by the real CLIs, the secret templates refused
until filled in, the backbone where the manifests say, and the Containerfile linted."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from cli.main import emi

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUSTOMIZATION = DEPLOY / "kubernetes"
# deploy/README.md states the range; kubernetes-validate holds the schemas offline
OLDEST_K8S, NEWEST_K8S = "1.30.0", "1.37.0"
BIN = Path(sys.executable).parent


def render() -> list[dict]:
    """`kubectl kustomize deploy/kubernetes`: what `kubectl apply -k` would create."""
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(KUSTOMIZATION)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


RENDERED = render()


def named(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in RENDERED if d["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {}).get("spec", {})


def containers() -> list[tuple[str, dict, dict]]:
    """(object name, pod spec, container) for every container in the set."""
    return [
        (doc["metadata"]["name"], pod_spec(doc), c)
        for doc in RENDERED
        for c in pod_spec(doc).get("containers", [])
    ]


def test_the_set_holds_what_an_operator_applies():
    kinds = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "Secret"
                    else d["metadata"]["name"]) for d in RENDERED)  # fmt: skip
    assert kinds == [
        ("CronJob", "emi-extract"), ("CronJob", "emi-model-copy"), ("CronJob", "emi-score"),
        ("Deployment", "emi-gpu-workers"), ("Deployment", "emi-scheduler"),
        ("Deployment", "emi-service"),
        ("NetworkPolicy", "emi-scheduler-clients"),
        ("PersistentVolumeClaim", "emi-audio"), ("PersistentVolumeClaim", "emi-models"),
        ("PersistentVolumeClaim", "emi-output"), ("PersistentVolumeClaim", "emi-service-state"),
        ("Secret", "emi-object-store"), ("Secret", "emi-service"),
        ("Service", "emi-scheduler"), ("Service", "emi-service"),
    ]  # fmt: skip
    assert all(d["spec"]["suspend"] for d in named("CronJob").values())  # templates only
    for claim in named("PersistentVolumeClaim").values():
        assert "storageClassName" not in claim["spec"]  # the cluster's default


@pytest.mark.parametrize("version", [OLDEST_K8S, NEWEST_K8S])
def test_every_object_is_valid_kubernetes(version):
    for doc in RENDERED:
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_referenced_claim_secret_and_config_map_is_defined():
    claims, secrets = named("PersistentVolumeClaim"), named("Secret")
    maps = named("ConfigMap")
    checked = 0
    for name, pod, container in containers():
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (name, volume)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, (name, volume)
            checked += 1
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in pod.get("volumes", [])}, name
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {})
            if "secretKeyRef" in ref:
                secret = secrets[ref["secretKeyRef"]["name"]]
                assert ref["secretKeyRef"]["key"] in secret["data"], (name, variable)
                checked += 1
            if "configMapKeyRef" in ref:
                assert ref["configMapKeyRef"]["name"] in maps, (name, variable)
    assert checked > 20


def test_the_image_is_named_in_one_place():
    kustomization = yaml.safe_load((KUSTOMIZATION / "kustomization.yaml").read_text())
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    used = {c["image"] for _, _, c in containers()}
    assert used == set(images.values())
    workers = named("Deployment")["emi-gpu-workers"]
    [worker] = pod_spec(workers)["containers"]
    assert worker["image"] == images["emi-gpu"]
    for path in KUSTOMIZATION.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert "registry" not in path.read_text(), path  # only the kustomization names it


def test_pods_run_as_the_image_user_and_can_read_their_secrets():
    for name, pod, container in containers():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the image's USER
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        for volume in pod.get("volumes", []):
            if "secret" in volume:  # root-owned files: readable by the pod's group
                assert volume["secret"]["defaultMode"] & 0o040, name
                assert pod["securityContext"]["fsGroup"] == 10001, name


def test_devices_by_role():
    """GPUs go to the workers only; the service and the batch drivers run on CPU nodes
    (their --device is the workers')."""
    for name, _, container in containers():
        gpu = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert (gpu == 1) == (name == "emi-gpu-workers"), name
    [worker] = pod_spec(named("Deployment")["emi-gpu-workers"])["containers"]
    ctx = parse(emi, worker["command"][1:])
    assert ctx.command.name == "worker" and ctx.params["device"] == "cuda"


def parse(group: click.Group, args: list[str]) -> click.Context:
    """Parse a command line with the real CLI, as far as the command's own callback.

    Paths are not checked for existence: they exist inside the pods, not here.
    """
    ctx = group.make_context(group.name, list(args))
    while isinstance(ctx.command, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args, 9 drops it
            warnings.simplefilter("ignore", DeprecationWarning)
            words = [*ctx.protected_args, *ctx.args]
        name, command, rest = ctx.command.resolve_command(ctx, words)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def test_every_emi_command_line_parses(monkeypatch):
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    seen = set()
    for name, _, container in containers():
        command = container["command"]
        if command[0] != "emi":
            continue
        ctx = parse(emi, command[1:])
        seen.add(name)
        assert ctx.params, name
        if "scheduler" in ctx.params:
            assert ctx.params["scheduler"] == "tcp://emi-scheduler:8786", name
        if ctx.command.name == "worker":
            assert ctx.params["scheduler"] == "tcp://emi-scheduler:8786"
    assert seen == {"emi-extract", "emi-score", "emi-service", "emi-gpu-workers",
                    "emi-model-copy"}  # fmt: skip


def test_a_wrong_option_would_be_caught(monkeypatch):
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    with pytest.raises(click.UsageError):
        parse(emi, ["extract", "/data/audio", "s3://b/f.zarr", "--shceduler", "tcp://x:8786"])


def test_dask_command_lines_parse():
    from distributed.cli import dask_scheduler

    [scheduler] = pod_spec(named("Deployment")["emi-scheduler"])["containers"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    dask_scheduler.main.make_context("dask scheduler", list(scheduler["command"][2:]))


def _service():
    deployment = named("Deployment")["emi-service"]
    pod = pod_spec(deployment)
    [container] = pod["containers"]
    return deployment, pod, container


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_service_mounts_its_state_and_secrets_and_probes_its_health():
    deployment, pod, container = _service()
    assert deployment["spec"]["replicas"] == 1  # a SQLite job table: one writer
    command = container["command"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["state"] == _option(command, "--state")
    secret = named("Secret")[volumes["secrets"]["secret"]["secretName"]]
    for option in ("--token-file", "--callback-secret-file"):
        folder, file = _option(command, option).rsplit("/", 1)
        assert folder == mounts["secrets"] and file in secret["data"], option
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["timeoutSeconds"] == 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = _option(command, "--port")
    assert {p["containerPort"] for p in container["ports"]} == {int(port)}
    assert _option(command, "--host") == "0.0.0.0"
    service = named("Service")["emi-service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    policy = named("NetworkPolicy")["emi-scheduler-clients"]
    allowed = {f["podSelector"]["matchLabels"]["component"]
               for f in policy["spec"]["ingress"][0]["from"]}  # fmt: skip
    talkers = {d["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["component"]
               for d in named("CronJob").values()
               if "--scheduler" in pod_spec(d)["containers"][0]["command"]}  # fmt: skip
    assert {"service", "gpu-worker"} | talkers <= allowed


def test_the_secret_templates_are_refused_until_filled_in(tmp_path):
    """The committed secret files hold placeholders: emi serve refuses them at start
    (naming the file and line), so a deployment never runs on a template's token."""
    from service.config import read_tokens
    from service.errors import ServiceSetupError

    with pytest.raises(ServiceSetupError, match="line 3 is the deployment template's"):
        read_tokens(KUSTOMIZATION / "secrets" / "tokens")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--stores", str(tmp_path / "s"),
         "--heads", str(tmp_path / "h"), "--state", str(tmp_path / "state"),
         "--source-root", str(tmp_path), "--port", "0", "--callback-secret-file",
         str(KUSTOMIZATION / "secrets" / "callback-secret")],
        capture_output=True, text=True, timeout=120, cwd=DEPLOY.parent,
    )  # fmt: skip
    assert result.returncode == 2 and "placeholder" in result.stderr, result.stderr


@pytest.mark.slow
def test_the_backbone_where_the_manifests_put_it_serves_extract_jobs(tmp_path, tiny_backbone):
    """The model-copy job's command (emi model copy ... /models/backbone), run with a
    random checkpoint in place of the bucket and a folder in place of the model volume;
    then the service with the manifest's --model on that volume: an extract job into a
    new store succeeds, its store made with that checkpoint."""
    from manifests.synthetic import write_corpus
    from tests.served import Hosted

    _, pod, container = _service()
    model = _option(container["command"], "--model")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    [mount] = [path for path in mounts if model.startswith(path + "/")]
    claim = {v["name"]: v for v in pod["volumes"]}[mounts[mount]]["persistentVolumeClaim"]
    copy = named("CronJob")["emi-model-copy"]
    copy_pod = pod_spec(copy)
    [copier] = copy_pod["containers"]
    assert copier["command"][:3] == ["emi", "model", "copy"] and copier["command"][4] == model
    copy_claims = {v["persistentVolumeClaim"]["claimName"] for v in copy_pod["volumes"]}
    assert copy_claims == {claim["claimName"]}  # the same volume

    volume = tmp_path / "volume"  # stands for the claim, mounted at `mount`
    here = volume / Path(model).relative_to(mount)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "model", "copy", str(tiny_backbone), str(here)],
        capture_output=True, text=True, check=True, cwd=DEPLOY.parent,
    )  # fmt: skip
    identity = json.loads(result.stdout)
    assert identity["ref"] == str(here) and (here / "model.safetensors").exists()

    root = tmp_path / "audio"
    write_corpus(root / "corpus", clips=4, seed=8, min_seconds=1.0, max_seconds=1.5)
    with Hosted(tmp_path, [root], "--model", str(here)) as served:
        served.start()
        client = served.client()
        job = client.submit({"kind": "extract", "source": str(root / "corpus" / "audio"),
                             "store": "fresh"})  # fmt: skip
        done = client.wait(job["id"], poll_s=0.2, timeout_s=180)
        assert done["state"] == "succeeded", (done, served.text())
        [store] = client.stores()
        assert store["name"] == "fresh" and store["clips"] == 4
        assert served.stop() == 0
    from featurestore.store import FeatureStore

    spec = FeatureStore.open(served.stores / "fresh.zarr").spec
    assert spec.backbone.ref == str(here)
    assert spec.backbone.weights_sha256 == identity["weights_sha256"]


def test_the_containerfile_passes_hadolint():
    """hadolint at --failure-threshold error (as the image's docs say); its warnings
    are read here too, so none slips in unseen."""
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DEPLOY.parent / "Containerfile")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
