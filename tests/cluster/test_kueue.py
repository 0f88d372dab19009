"""How Kueue is put on the cluster (spin_cluster.kueue), read from Kueue's own module: its CRDs with
conversion webhooks where its kustomization enables them, its admission webhooks for its API and
batch Jobs only, all called at a loopback URL with our CA; its webhook certificate is signed by the
cluster CA for 127.0.0.1. (The e2e tests in tests/operator/test_e2e.py run the process itself.)"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from spin_cluster import build, kueue, pki
from spin_cluster.components import KUEUE

URL, CA = "https://127.0.0.1:9443", "Q0E="


def test_kueue_is_pinned_and_its_module_carries_crds_and_webhooks() -> None:
    assert KUEUE.version.startswith("v0.")
    module = build.module_source(KUEUE)
    assert module.name == f"kueue@{KUEUE.version}"
    assert (module / "config" / "components" / "webhook" / "manifests.yaml").is_file()


def test_crds_convert_through_the_loopback_webhook_where_kueue_enables_conversion() -> None:
    crds = {c["spec"]["names"]["plural"]: c for c in kueue.crds(build.module_source(KUEUE), URL, CA)}
    assert {"workloads", "clusterqueues", "localqueues", "resourceflavors", "workloadpriorityclasses"} <= set(crds)
    converted = {name for name, c in crds.items() if c["spec"].get("conversion")}
    assert {"workloads", "clusterqueues", "localqueues"} <= converted
    assert "resourceflavors" not in converted  # its patch is commented out in Kueue's kustomization
    conversion = crds["workloads"]["spec"]["conversion"]
    assert conversion["strategy"] == "Webhook"
    assert conversion["webhook"]["clientConfig"] == {"url": f"{URL}/convert", "caBundle": CA}
    storage = [v["name"] for v in crds["workloads"]["spec"]["versions"] if v["storage"]]
    assert storage == [kueue.VERSION]


def test_webhooks_are_kueues_own_and_batch_jobs_at_loopback_urls() -> None:
    docs = kueue.webhook_configurations(build.module_source(KUEUE), URL, CA)
    assert [d["metadata"]["name"] for d in docs] == [kueue.MUTATING, kueue.VALIDATING]
    hooks = [h for d in docs for h in d["webhooks"]]
    names = {h["name"] for h in hooks}
    assert {"mjob.kb.io", "vjob.kb.io", "mworkload.kb.io", "vworkload.kb.io", "vclusterqueue.kb.io"} <= names
    assert not names & {"mpod.kb.io", "vpod.kb.io", "mdeployment.kb.io", "mtrainjob.kb.io"}
    for hook in hooks:
        assert set(hook["clientConfig"]) == {"url", "caBundle"} and hook["clientConfig"]["caBundle"] == CA
        assert hook["clientConfig"]["url"].startswith(f"{URL}/")
    job = next(h for h in hooks if h["name"] == "mjob.kb.io")
    assert job["clientConfig"]["url"] == f"{URL}/mutate-batch-v1-job"


def test_configuration_runs_one_kueue_on_loopback_with_our_certificates(tmp_path: Path) -> None:
    cfg = kueue.configuration(9443, 8081, 8443, tmp_path)
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": str(tmp_path)}
    assert cfg["internalCertManagement"] == {"enable": False} and cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["manageJobsWithoutQueueName"] is False and cfg["integrations"]["frameworks"] == ["batch/job"]
    assert cfg["health"]["healthProbeBindAddress"].startswith("127.0.0.1:")
    assert cfg["metrics"]["bindAddress"].startswith("127.0.0.1:")


def test_the_webhook_certificate_is_the_cluster_cas_for_loopback(tmp_path: Path) -> None:
    keys = pki.create(tmp_path / "pki", ["127.0.0.1"], ["127.0.0.1"])
    pki.issue_serving(keys, tmp_path / "w" / "tls.crt", tmp_path / "w" / "tls.key", "kueue-webhook", ["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate((tmp_path / "w" / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate(keys.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert (tmp_path / "w" / "tls.key").stat().st_mode & 0o077 == 0
