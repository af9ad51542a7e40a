"""deploy/: the HAProxy configuration and the Kubernetes manifests parse, and the ports, probes, config
keys and flags they use are the binary's (no cluster runs here); the ConfigMap's file is one the binary
accepts and serves /readyz with."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pgwire_proxy.process import find_binary
from test_config import help_options

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"


def manifests() -> dict:
    docs = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def config_file() -> dict:
    text = manifests()[("ConfigMap", "pgwire-proxy")]["data"]["pgwire-proxy.conf"]
    pairs = [line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def test_manifests_parse_and_reference_each_other():
    docs = manifests()
    assert {kind for kind, _ in docs} == {"ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget"}
    sts = docs[("StatefulSet", "pgwire-proxy")]
    assert sts["spec"]["serviceName"] == "pgwire-proxy-peers"
    assert docs[("Service", "pgwire-proxy-peers")]["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for kind, name in docs:
        selector = docs[(kind, name)].get("spec", {}).get("selector")  # a ConfigMap has no spec
        if selector:
            assert (selector.get("matchLabels") or selector).items() <= labels.items(), (kind, name)
    pod = sts["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == "pgwire-proxy"


def test_ports_probes_and_flags_are_the_binarys():
    options = set(help_options())
    config = config_file()
    assert set(config) <= options, f"config keys the binary does not have: {set(config) - options}"
    container = manifests()[("StatefulSet", "pgwire-proxy")]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["postgres"] == int(config["port"])
    assert ports["metrics"] == int(config["metrics-address"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    flags = re.findall(r"--([a-z-]+)=", " ".join(container["command"]))
    assert flags and set(flags) <= options
    assert "PGWIRE_PROXY_UPSTREAM_DSN" in {e["name"] for e in container["env"]}
    # Every peer is a pod of the StatefulSet, by ordinal, through the headless Service.
    replicas = manifests()[("StatefulSet", "pgwire-proxy")]["spec"]["replicas"]
    assert config["peers"] == ",".join(f"{i}=pgwire-proxy-{i}.pgwire-proxy-peers:{config['port']}"
                                       for i in range(replicas))
    services = manifests()
    assert services[("Service", "pgwire-proxy")]["spec"]["ports"][0]["targetPort"] == "postgres"
    grace = manifests()[("StatefulSet", "pgwire-proxy")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(config["shutdown-timeout"].rstrip("s"))


def test_the_configmaps_file_runs_and_serves_readyz(pg_upstream, tmp_path):
    import urllib.request
    from pgwire_proxy.cluster import free_port
    text = manifests()[("ConfigMap", "pgwire-proxy")]["data"]["pgwire-proxy.conf"]
    port, metrics = free_port(), free_port()
    text = re.sub(r"^port = .*$", f"port = {port}", text, flags=re.M)
    text = re.sub(r"^listen-address = .*$", "listen-address = 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^metrics-address = .*$", f"metrics-address = 127.0.0.1:{metrics}", text, flags=re.M)
    conf = tmp_path / "pgwire-proxy.conf"
    conf.write_text(text)
    proc = subprocess.Popen([str(find_binary()), f"--config={conf}", "--instance-id=1",
                             f"--upstream-dsn={pg_upstream.dsn}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().decode().startswith("listening on")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=10) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_config_is_valid_and_checks_readyz_on_the_metrics_port():
    path = ROOT / "deploy" / "haproxy.cfg"
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = path.read_text()
    assert "mode tcp" in text and "option httpchk GET /readyz" in text
    metrics_port = config_file()["metrics-address"].rsplit(":", 1)[1]
    assert f"check port {metrics_port}" in text
    assert all(line.split()[-1].endswith(":" + config_file()["port"])
               for line in text.splitlines() if line.strip().startswith("server "))
    assert "shutdown-sessions" not in text  # marking an instance down must not kill its running queries
