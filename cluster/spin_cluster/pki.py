"""The cluster's certificates and keys, made fresh for each cluster: a CA, the apiserver's serving
certificate, the apiserver's client certificate for kubelets, the kubelet's serving certificate
and the service-account signing key pair."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of the cluster's certificates and keys (all under one folder)."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def kubelet_client(self) -> Path:
        """The apiserver's client certificate towards kubelets (logs, exec)."""
        return self.root / "apiserver-kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.root / "apiserver-kubelet-client.key"

    @property
    def kubelet(self) -> Path:
        """The process kubelet's serving certificate."""
        return self.root / "kubelet.crt"

    @property
    def kubelet_key(self) -> Path:
        return self.root / "kubelet.key"

    @property
    def front_proxy_ca(self) -> Path:
        """The CA of the aggregation layer's request-header authentication (a CA of its own)."""
        return self.root / "front-proxy-ca.crt"

    @property
    def front_proxy_client(self) -> Path:
        return self.root / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.root / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _sans(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _issue(path: Path, key_path: Path, subject: x509.Name, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
           *, server: bool = False, client: bool = False, names: list[str] | None = None) -> None:
    key = _key()
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca[0].subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + VALID_FOR)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(names)), critical=False)
    cert = builder.sign(ca[1], hashes.SHA256())
    _write_key(key_path, key)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _ca(cn: str, cert_path: Path, key_path: Path | None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = _key()
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_name = _name(cn)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + VALID_FOR)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    if key_path is not None:
        _write_key(key_path, ca_key)
    cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_cert, ca_key


def create(root: Path, apiserver_names: list[str], kubelet_names: list[str]) -> Pki:
    """Make every certificate and key of a new cluster under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    pki = Pki(root)
    ca = _ca("spin-cluster-ca", pki.ca, pki.ca_key)
    front_proxy = _ca("spin-cluster-front-proxy-ca", pki.front_proxy_ca, None)  # its key is not needed again
    _issue(pki.front_proxy_client, pki.front_proxy_client_key, _name("front-proxy-client"), front_proxy, client=True)
    _issue(pki.apiserver, pki.apiserver_key, _name("kube-apiserver"), ca, server=True, names=apiserver_names)
    _issue(pki.kubelet_client, pki.kubelet_client_key, _name("kube-apiserver-kubelet-client", "system:masters"), ca,
           client=True)
    _issue(pki.kubelet, pki.kubelet_key, _name("spin-kubelet"), ca, server=True, names=kubelet_names)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def issue_serving(pki: Pki, cert: Path, key: Path, cn: str, names: list[str]) -> None:
    """A serving certificate for `names` signed by the cluster's CA: what a webhook server on
    loopback presents (its webhook configurations carry the cluster CA as caBundle)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key}: not the cluster's EC key")
    cert.parent.mkdir(parents=True, exist_ok=True)
    _issue(cert, key, _name(cn), (ca_cert, ca_key), server=True, names=names)
