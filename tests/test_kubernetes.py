"""Kubernetes rendering and the deploy files: every object is checked against the official API models (no cluster
needed), then for what it must mean: shard count, indexed workers, commands, secrets, names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient
from pydantic import ValidationError

from seraphim.scheduler.job_spec import JobSpec
from seraphim.scheduler.kubernetes import (
    TOKEN_FILE,
    in_cluster_scheduler_address,
    job_label,
    main,
    render_job,
    render_scheduler,
    to_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = "seraphim:0.1.0"
ADDRESS = in_cluster_scheduler_address()
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
API = ApiClient()


def ctr_spec() -> JobSpec:
    return JobSpec.model_validate(yaml.safe_load((ROOT / "examples" / "ctr.yaml").read_text()))


def spec(ps: int = 3, workers: int = 5, ram_mb: float = 1000.5) -> JobSpec:
    return JobSpec(name="demo", algorithm="ctr", cluster={"ps": ps, "workers": workers}, storage={"ram_mb": ram_mb})


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert len(set(kinds)) == len(kinds), kinds
    return {o["kind"]: o for o in objects}


def to_model(obj: dict):
    """The object as its kubernetes.client model: required fields missing or mistyped raise here."""
    version = obj["apiVersion"].rsplit("/", 1)[-1]
    return API.deserialize(json.dumps(obj), version.capitalize() + obj["kind"], "application/json")


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


RENDERINGS = {
    "job": lambda: render_job(spec(), "demo-7", IMAGE, ADDRESS),
    "job-tls-class": lambda: render_job(spec(), "demo-7", IMAGE, "10.0.0.5:7070", namespace="ml", token_secret="tok",
                                        storage_class="fast-ssd", ps_storage_gi=50, tls_secret="seraphim-tls"),
    "scheduler": lambda: render_scheduler(IMAGE),
    "scheduler-tls-class": lambda: render_scheduler(IMAGE, namespace="ml", token_secret="tok",
                                                    storage_class="fast-ssd", tls_secret="seraphim-tls"),
}


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_object_round_trips_through_the_api_models(rendering):
    objects = RENDERINGS[rendering]()
    assert objects
    for obj in objects:
        # A field the model does not know is dropped by the deserializer, so equality catches misspellings.
        assert API.sanitize_for_serialization(to_model(obj)) == json.loads(json.dumps(obj)), obj["kind"]


def test_the_model_check_catches_misspelled_missing_and_mistyped_fields():
    sts = by_kind(render_job(spec(), "demo", IMAGE, ADDRESS))["StatefulSet"]
    misspelled = json.loads(json.dumps(sts))
    misspelled["spec"]["replica"] = misspelled["spec"].pop("replicas")
    assert API.sanitize_for_serialization(to_model(misspelled)) != misspelled
    missing = json.loads(json.dumps(sts))
    del missing["spec"]["selector"]
    with pytest.raises(ValidationError, match="selector"):
        to_model(missing)
    mistyped = json.loads(json.dumps(sts))
    pod_spec(mistyped)["containers"][0]["resources"]["limits"]["memory"] = 1024
    with pytest.raises(ValidationError, match="limits"):
        to_model(mistyped)


def test_job_shape_ps_statefulset_and_indexed_workers():
    s = spec(ps=3, workers=5, ram_mb=1000.5)
    objects = render_job(s, "demo-7", IMAGE, ADDRESS)
    assert [o["kind"] for o in objects] == ["Service", "StatefulSet", "Job"]
    svc, sts, job = by_kind(objects)["Service"], by_kind(objects)["StatefulSet"], by_kind(objects)["Job"]

    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["port"] == 7071
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["replicas"] == s.cluster.ps
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    template_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert svc["spec"]["selector"].items() <= template_labels.items()
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    ps = pod_spec(sts)["containers"][0]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in ps["volumeMounts"]
    assert ps["readinessProbe"]["tcpSocket"]["port"] == 7071
    for kind in ("requests", "limits"):
        memory = ps["resources"][kind]["memory"]
        assert memory.endswith("Mi") and int(memory[:-2]) >= s.storage.ram_mb + 256

    assert job["apiVersion"] == "batch/v1"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == s.cluster.workers
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["backoffLimit"] == s.cluster.max_restarts * s.cluster.workers
    assert pod_spec(job)["restartPolicy"] == "OnFailure"

    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "seraphim"
        assert obj["metadata"]["labels"]["seraphim/job"] == "demo-7"
        assert obj["metadata"]["annotations"]["seraphim/job-id"] == "demo-7"
    assert template_labels["seraphim/role"] == "ps"
    assert job["spec"]["template"]["metadata"]["labels"]["seraphim/role"] == "worker"


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def test_commands_name_the_scheduler_job_shard_and_rank():
    objects = by_kind(render_job(spec(), "demo-7", IMAGE, "sched.example:7070"))
    ps = pod_spec(objects["StatefulSet"])["containers"][0]
    worker = pod_spec(objects["Job"])["containers"][0]
    assert ps["command"] == worker["command"] == ["seraphim"]
    assert ps["args"][:2] == ["ps", "start"] and worker["args"][:2] == ["worker", "start"]
    assert "--shard-from-hostname" in ps["args"] and "--shard" not in ps["args"]
    for c in (ps, worker):
        assert flag(c["args"], "--scheduler") == "sched.example:7070"
        assert flag(c["args"], "--job") == "demo-7"
    assert flag(ps["args"], "--port") == "7071" and flag(ps["args"], "--host") == "0.0.0.0"
    assert flag(ps["args"], "--advertise") == "$(POD_NAME).demo-7-ps.seraphim.svc"
    assert flag(worker["args"], "--rank") == "$(JOB_COMPLETION_INDEX)"
    for c in (ps, worker):  # Kubernetes expands $(VAR) in args only for variables the container declares
        declared = {e["name"] for e in c.get("env", [])}
        assert set(re.findall(r"\$\((\w+)\)", " ".join(c["args"]))) <= declared


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_token_and_tls_secrets_are_mounted_where_the_flags_point(rendering):
    tls = "tls" in rendering
    token_secret = "tok" if tls else "seraphim-token"
    for obj in RENDERINGS[rendering]():
        if "template" not in obj.get("spec", {}):
            continue
        pod = pod_spec(obj)
        secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        assert secrets["token"]["secretName"] == token_secret
        assert secrets["token"]["items"] == [{"key": "token", "path": "token"}]
        assert ("tls" in secrets) == tls
        for c in pod["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            token_file = flag(c["args"], "--token-file")
            assert token_file == TOKEN_FILE == f"{mounts['token']}/token"
            if tls:
                assert secrets["tls"]["secretName"] == "seraphim-tls"
                assert flag(c["args"], "--tls-ca") == f"{mounts['tls']}/ca.crt"
                serves = c["name"] != "worker"  # servers present a certificate; a worker only checks theirs
                for name, file in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
                    assert (flag(c["args"], name) == f"{mounts['tls']}/{file}") if serves else name not in c["args"]
            else:
                assert not any(a.startswith("--tls") for a in c["args"])
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            assert claim["spec"].get("storageClassName") == ("fast-ssd" if tls else None)


def test_scheduler_deployment_service_and_store():
    objects = by_kind(render_scheduler(IMAGE, storage_class="fast-ssd"))
    pvc, dep, svc = objects["PersistentVolumeClaim"], objects["Deployment"], objects["Service"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert pvc["spec"]["storageClassName"] == "fast-ssd"
    pod = pod_spec(dep)
    (claim_volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim_volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (c,) = pod["containers"]
    assert {"name": claim_volume["name"], "mountPath": "/var/lib/seraphim"} in c["volumeMounts"]
    assert c["args"][:2] == ["scheduler", "start"] and flag(c["args"], "--data-dir") == "/var/lib/seraphim"
    assert flag(c["args"], "--port") == "7070" and svc["spec"]["ports"][0]["port"] == 7070
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert ADDRESS == f"{svc['metadata']['name']}.seraphim.svc:7070"


def names_and_labels(objects: list[dict]) -> tuple[list[str], list[str]]:
    names, labels = [], []
    for obj in objects:
        names.append(obj["metadata"]["name"])
        labels += obj["metadata"]["labels"].values()
        labels += obj["spec"].get("template", {}).get("metadata", {}).get("labels", {}).values()
    return names, labels


@pytest.mark.parametrize("job_id", ["demo-7", "Job_" + "x" * 200, "42-nightly", "UPPER.case/run 3", "___"])
def test_names_are_dns_labels_and_fit_statefulset_limits(job_id):
    objects = render_job(spec(), job_id, IMAGE, ADDRESS)
    names, labels = names_and_labels(objects)
    for name in names:
        assert DNS_1123_LABEL.match(name) and name[0].isalpha() and len(name) <= 52, name
    for value in labels:
        assert len(value) <= 63 and LABEL_VALUE.match(value), value
    for obj in objects:
        assert obj["metadata"]["annotations"]["seraphim/job-id"] == job_id
    for kind in ("StatefulSet", "Job"):
        assert flag(pod_spec(by_kind(objects)[kind])["containers"][0]["args"], "--job") == job_id


def test_distinct_job_ids_keep_distinct_labels():
    ids = ["job-1", "Job-1", "job_1", "a" * 100, "a" * 99 + "b", "1", "j-1"]
    assert len({job_label(i) for i in ids}) == len(ids)
    assert job_label("job-1") == "job-1"


@pytest.mark.parametrize("kwargs, message", [
    ({"scheduler_address": "sched"}, "HOST:PORT"),
    ({"scheduler_address": "sched:99999"}, "HOST:PORT"),
    ({"job_id": ""}, "job id is empty"),
    ({"namespace": "My_NS"}, "namespace 'My_NS'"),
    ({"image": ""}, "image is empty"),
    ({"ps_storage_gi": 0}, "ps_storage_gi 0"),
])
def test_bad_arguments_are_refused_with_the_value(kwargs, message):
    args = {"spec": spec(), "job_id": "demo", "image": IMAGE, "scheduler_address": ADDRESS} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        render_job(**args)


def test_to_yaml_is_one_document_per_object():
    objects = render_job(spec(), "demo", IMAGE, ADDRESS) + render_scheduler(IMAGE)
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects


def test_rendered_manifests_in_deploy_are_current():
    regen = "regenerate with the command on the file's first line"
    scheduler = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "scheduler.yaml").read_text()))
    assert scheduler == render_scheduler(IMAGE), f"deploy/kubernetes/scheduler.yaml is stale; {regen}"
    job = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "ctr-job.yaml").read_text()))
    assert job == render_job(ctr_spec(), "ctr-1", IMAGE, ADDRESS), f"deploy/kubernetes/ctr-job.yaml is stale; {regen}"


def test_module_command_prints_manifests_and_reports_errors(capsys, tmp_path):
    assert main(["--image", IMAGE, "--namespace", "ml"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == render_scheduler(IMAGE, namespace="ml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\nalgorithm: ctr\n")
    assert main([str(bad), "--job-id", "x", "--image", IMAGE]) == 1
    assert "name" in capsys.readouterr().err


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def numbered(services: dict, prefix: str) -> list[str]:
    names = sorted((n for n in services if re.fullmatch(rf"{prefix}-\d+", n)), key=lambda n: int(n.split("-")[1]))
    assert names == [f"{prefix}-{i}" for i in range(len(names))], names
    return names


def test_compose_runs_the_same_commands_as_kubernetes():
    doc = compose()
    services = doc["services"]
    ps_names, worker_names = numbered(services, "ps"), numbered(services, "worker")
    assert set(services) == {"scheduler", *ps_names, *worker_names}
    ctr = ctr_spec()
    assert (len(ps_names), len(worker_names)) == (ctr.cluster.ps, ctr.cluster.workers)

    k8s_scheduler = pod_spec(by_kind(render_scheduler(IMAGE))["Deployment"])["containers"][0]["args"]
    assert services["scheduler"]["command"] == k8s_scheduler
    k8s = by_kind(render_job(ctr, "${SERAPHIM_JOB:-}", IMAGE, "scheduler:7070"))
    k8s_ps = pod_spec(k8s["StatefulSet"])["containers"][0]["args"]
    k8s_worker = pod_spec(k8s["Job"])["containers"][0]["args"]
    for name in ps_names:
        svc = services[name]
        assert svc["hostname"] == name  # --shard-from-hostname reads the trailing -N
        expected = [name if a.startswith("$(POD_NAME)") else a for a in k8s_ps]
        assert svc["command"] == expected
        assert any(v.endswith(":/data") and v.split(":")[0] in doc["volumes"] for v in svc["volumes"])
    for rank, name in enumerate(worker_names):
        assert services[name]["command"] == [str(rank) if a == "$(JOB_COMPLETION_INDEX)" else a for a in k8s_worker]
    for name, svc in services.items():
        assert svc["image"] and svc["build"]["dockerfile"] == "deploy/Dockerfile"
        (secret,) = svc["secrets"]
        assert set(svc.get("depends_on", {})) <= set(services), name
        assert secret["target"] == TOKEN_FILE and secret["source"] in doc["secrets"]
    assert any(v.endswith(":/var/lib/seraphim") for v in services["scheduler"]["volumes"])


def test_dockerfile_installs_the_project_and_runs_seraphim_unprivileged():
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines and "FROM ${PYTHON_IMAGE}" in lines
    assert "RUN pip install ." in lines
    assert any(ln.startswith("RUN pip install") and "torch==" in ln for ln in lines)
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert lines[-2:] == ['ENTRYPOINT ["seraphim"]', 'CMD ["--help"]']


@pytest.mark.parametrize("tls_secret, scheme", [(None, "http"), ("seraphim-tls", "https")])
def test_the_scheduler_pod_tells_prometheus_where_its_metrics_are(tls_secret, scheme):
    _, deployment, service = render_scheduler(IMAGE, tls_secret=tls_secret)
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    http = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert container["args"][container["args"].index("--http-port") + 1] == str(http)
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(http),
                                              "prometheus.io/path": "/metrics", "prometheus.io/scheme": scheme}
    assert {"name": "http", "port": http, "targetPort": http, "protocol": "TCP"} in service["spec"]["ports"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yaml").read_text())
    pods = next(job for job in config["scrape_configs"] if "kubernetes_sd_configs" in job)
    keep = {tuple(r["source_labels"]): r for r in pods["relabel_configs"]}
    assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]["regex"] == "true"
    port = keep[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    joined = re.fullmatch(port["regex"], f"10.0.0.7:7070;{http}")  # Prometheus joins the source labels with ';'
    assert joined and joined.expand(port["replacement"].replace("$", "\\")) == f"10.0.0.7:{http}"
    assert pods["authorization"]["type"] == "Bearer"
