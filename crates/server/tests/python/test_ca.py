"""CertAuthority: issuance from CSRs and server keys, renewal, live revocation,
listing, and hot reload of the TLS files, driven by grpcio and `cryptography`.

The context's "suite" picks the group: "service" (a fresh server), "restart"
(the same data directory after a restart) or "reload" (TLS hot reload).
"""

import base64
import os
import signal
import socket
import ssl
import threading
import time

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cordon_client import (
    cert_channel, channel, expect_code, expect_refused, generate_stubs, load_context, read,
    run_tests,
)

CTX = load_context()
generate_stubs(CTX["proto_dir"])

from cordon.ca.v1 import ca_pb2, ca_pb2_grpc  # noqa: E402
from cordon.identity.v1 import identity_pb2, identity_pb2_grpc  # noqa: E402

TD = CTX["trust_domain"]
# A private subchannel pool makes every channel open its own connection, so a
# "new connection" really performs a new TLS handshake.
FRESH = [("grpc.use_local_subchannel_pool", 1)]


def ca_stub(ch):
    return ca_pb2_grpc.CertAuthorityStub(ch)


def whoami(ch):
    return identity_pb2_grpc.IdentityStub(ch).WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key, cn="worker", ca=False, sans=None):
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def pem_channel(cert_pem, key_bytes, fresh=True):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(CTX["ca"]),
        private_key=key_bytes,
        certificate_chain=cert_pem.encode() if isinstance(cert_pem, str) else cert_pem,
    )
    return grpc.secure_channel(CTX["target"], creds, options=FRESH if fresh else [])


def admin():
    return ca_stub(cert_channel(CTX, "admin"))


def issue(identity="worker", csr=None, validity=0, stub=None):
    key = None
    if csr is None:
        key = new_key()
        # The CSR's subject is irrelevant: the server takes the identity from the request.
        csr = make_csr(key, cn="csr-subject")
    r = (stub or admin()).IssueCertificate(
        ca_pb2.IssueCertificateRequest(identity=identity, csr_pem=csr, validity_seconds=validity),
        timeout=10,
    )
    return r, key


def load(cert_pem):
    return x509.load_pem_x509_certificate(cert_pem.encode())


def spiffe(name):
    return f"spiffe://{TD}/user/{name}"


# --- suite "service" -------------------------------------------------------


def test_issue_from_csr_and_connect():
    r, key = issue("worker")
    assert r.private_key_pem == "", "a CSR issuance must not return a key"
    assert r.ca_pem.strip() == read(CTX["ca"]).decode().strip()
    cert = load(r.certificate_pem)
    assert format(cert.serial_number, "x") == r.serial.lstrip("0"), (cert.serial_number, r.serial)
    lifetime = r.not_after_unix - r.not_before_unix
    assert lifetime == 24 * 3600 + 60, lifetime
    assert r.renew_after_unix == r.not_before_unix + lifetime * 2 // 3
    who = whoami(pem_channel(r.certificate_pem, key_pem(key)))
    assert who.identity == "worker", who
    assert who.certificate_serial == r.serial
    assert who.spiffe_id == spiffe("worker")


def test_csr_asking_for_ca_and_extra_sans_gets_a_plain_leaf():
    key = new_key()
    csr = make_csr(
        key, cn="admin", ca=True,
        sans=[x509.DNSName("evil.example"), x509.UniformResourceIdentifier(spiffe("admin"))],
    )
    r, _ = issue("worker", csr=csr)
    cert = load(r.certificate_pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False, bc
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(spiffe("worker"))], list(san)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign, ku
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH], list(eku)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "worker", cn

    # The leaf works for itself...
    assert whoami(pem_channel(r.certificate_pem, key_pem(key))).identity == "worker"
    # ...but a certificate it signs for "admin" is refused: it cannot act as a CA.
    forged_key = new_key()
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .issuer_name(cert.subject)
        .public_key(forged_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe("admin"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    chain = forged.public_bytes(serialization.Encoding.PEM) + r.certificate_pem.encode()
    expect_refused(lambda: whoami(pem_channel(chain, key_pem(forged_key))))


def test_server_generated_key_is_returned_once_and_never_stored():
    r = admin().IssueCertificate(ca_pb2.IssueCertificateRequest(identity="worker"), timeout=10)
    assert "PRIVATE KEY" in r.private_key_pem
    key = serialization.load_pem_private_key(r.private_key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    who = whoami(pem_channel(r.certificate_pem, r.private_key_pem.encode()))
    assert who.identity == "worker" and who.certificate_serial == r.serial
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    body_lines = [line for line in r.private_key_pem.splitlines() if "-----" not in line]
    for base, _, names in os.walk(CTX["data_dir"]):
        for name in names:
            data = read(os.path.join(base, name))
            assert der not in data, f"the private key is stored in {name}"
            for line in body_lines:
                assert line.encode() not in data, f"the private key is stored in {name}"


def test_revocation_refuses_open_and_new_connections_only_of_that_certificate():
    victim, victim_key = issue("worker")
    other, other_key = issue("worker")
    open_channel = pem_channel(victim.certificate_pem, key_pem(victim_key))
    assert whoami(open_channel).certificate_serial == victim.serial
    other_channel = pem_channel(other.certificate_pem, key_pem(other_key))
    assert whoami(other_channel).certificate_serial == other.serial

    before = int(time.time())
    r = admin().RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            serial=victim.serial.upper(), reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE
        ),
        timeout=10,
    )
    assert before - 1 <= r.revoked_at_unix <= time.time() + 1, r

    # The connection that is already open: its next call is refused.
    expect_code(lambda: whoami(open_channel), grpc.StatusCode.UNAUTHENTICATED, "revoked")
    # A new connection fails at the TLS handshake, through the CRL.
    expect_code(
        lambda: whoami(pem_channel(victim.certificate_pem, key_pem(victim_key))),
        grpc.StatusCode.UNAVAILABLE,
    )
    # The client sees the TLS alert before the server's log line is written.
    wait_for_log("invalid peer certificate: Revoked")
    # Everyone else continues, on open and on new connections.
    assert whoami(other_channel).identity == "worker"
    assert whoami(pem_channel(other.certificate_pem, key_pem(other_key))).identity == "worker"
    assert whoami(cert_channel(CTX, "admin")).identity == "admin"

    crl = x509.load_pem_x509_crl(
        admin().GetCrl(ca_pb2.GetCrlRequest(), timeout=10).crl_pem.encode()
    )
    ca_cert = x509.load_pem_x509_certificate(read(CTX["ca"]))
    assert crl.is_signature_valid(ca_cert.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(int(victim.serial, 16))
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise, reason
    assert crl.get_revoked_certificate_by_serial_number(int(other.serial, 16)) is None

    expect_code(
        lambda: admin().RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial=victim.serial), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    expect_code(
        lambda: admin().RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial="0badc0de"), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_code(
        lambda: admin().RevokeCertificate(ca_pb2.RevokeCertificateRequest(serial="xyz"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "serial",
    )
    expect_code(
        lambda: admin().RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial=other.serial, reason=2), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reason",
    )
    expect_code(
        lambda: ca_stub(cert_channel(CTX, "agent")).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial=other.serial), timeout=10
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Kept for the "restart" suite, which checks the revocation survives.
    with open(os.path.join(CTX["data_dir"], "revoked-client.pem"), "w") as f:
        f.write(victim.certificate_pem)
    with open(os.path.join(CTX["data_dir"], "revoked-client.key"), "wb") as f:
        f.write(key_pem(victim_key))
    with open(os.path.join(CTX["data_dir"], "revoked-client.serial"), "w") as f:
        f.write(victim.serial)


def test_agent_renews_its_own_identity_only():
    agent = ca_stub(cert_channel(CTX, "agent"))
    key = new_key()
    # The CSR asks for "admin" every way it can; the server ignores all of it.
    csr = make_csr(key, cn="admin", sans=[x509.UniformResourceIdentifier(spiffe("admin"))])
    r = agent.RenewCertificate(ca_pb2.RenewCertificateRequest(csr_pem=csr), timeout=10)
    cert = load(r.certificate_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agent"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(spiffe("agent"))]
    who = whoami(pem_channel(r.certificate_pem, key_pem(key)))
    assert who.identity == "agent" and list(who.roles) == ["agent"], who
    # Explicitly naming its own identity works; naming another one does not.
    r2 = agent.RenewCertificate(ca_pb2.RenewCertificateRequest(identity="agent"), timeout=10)
    assert load(r2.certificate_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agent"
    expect_code(
        lambda: agent.RenewCertificate(ca_pb2.RenewCertificateRequest(identity="admin"), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    expect_code(
        lambda: issue("admin", stub=agent), grpc.StatusCode.PERMISSION_DENIED, "ca.issue"
    )
    expect_code(lambda: issue("agent", stub=agent), grpc.StatusCode.PERMISSION_DENIED)
    # The renewed certificate can renew in turn.
    renewed = ca_stub(pem_channel(r.certificate_pem, key_pem(key)))
    r3 = renewed.RenewCertificate(ca_pb2.RenewCertificateRequest(), timeout=10)
    assert "PRIVATE KEY" in r3.private_key_pem


def test_api_key_caller_cannot_renew():
    bearer = [("authorization", f"Bearer {CTX['api_key']}")]
    stub = ca_stub(channel(CTX))
    expect_code(
        lambda: stub.RenewCertificate(ca_pb2.RenewCertificateRequest(), metadata=bearer, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "client certificate",
    )


def test_expired_certificate_cannot_renew():
    expect_refused(
        lambda: ca_stub(cert_channel(CTX, "expired", options=FRESH)).RenewCertificate(
            ca_pb2.RenewCertificateRequest(), timeout=10
        )
    )


def test_corrupted_csr_is_invalid_argument():
    for bad in [
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
    ]:
        expect_code(lambda: issue("worker", csr=bad), grpc.StatusCode.INVALID_ARGUMENT, "csr_pem")
    # A well-formed CSR whose signature was tampered with: the requester has
    # not proven it holds the key.
    good = x509.load_pem_x509_csr(make_csr(new_key()).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    tampered = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    expect_code(lambda: issue("worker", csr=tampered), grpc.StatusCode.INVALID_ARGUMENT, "csr_pem")


def test_a_small_rsa_key_is_named_as_such():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    expect_code(lambda: issue("worker", csr=make_csr(small)), grpc.StatusCode.INVALID_ARGUMENT,
                "at least 2048 required")


def test_identity_outside_the_pattern_is_invalid_argument():
    for bad in ["intruder", "../etc", "worker/x", "", "worker\n"]:
        expect_code(lambda: issue(bad), grpc.StatusCode.INVALID_ARGUMENT, "identity")


def test_validity_default_requested_and_capped():
    r, _ = issue("worker", validity=3600)
    assert r.not_after_unix - r.not_before_unix == 3600 + 60
    r, _ = issue("worker", validity=10 * 365 * 86400)
    assert r.not_after_unix - r.not_before_unix == CTX["max_validity_seconds"] + 60


def test_list_filters_and_paginates():
    serials = [issue("worker-list")[0].serial for _ in range(5)]
    short, _ = issue("worker-list", validity=1)
    admin().RevokeCertificate(ca_pb2.RevokeCertificateRequest(serial=serials[0]), timeout=10)
    auditor = ca_stub(cert_channel(CTX, "ops"))
    seen, token, pages = [], "", 0
    while True:
        r = auditor.ListCertificates(
            ca_pb2.ListCertificatesRequest(identity="worker-list", page_size=2, page_token=token),
            timeout=10,
        )
        pages += 1
        assert len(r.certificates) <= 2
        seen += [c.serial for c in r.certificates]
        assert all(c.identity == "worker-list" for c in r.certificates)
        token = r.next_page_token
        if not token:
            break
    assert pages == 3 and seen == serials + [short.serial], (pages, seen)

    time.sleep(2.1)

    def listed(status):
        r = auditor.ListCertificates(
            ca_pb2.ListCertificatesRequest(identity="worker-list", status=status), timeout=10
        )
        return r.certificates

    revoked = listed(ca_pb2.CERTIFICATE_STATUS_REVOKED)
    assert [c.serial for c in revoked] == [serials[0]]
    assert revoked[0].revocation_reason == ca_pb2.REVOCATION_REASON_UNSPECIFIED
    assert revoked[0].revoked_at_unix > 0
    assert [c.serial for c in listed(ca_pb2.CERTIFICATE_STATUS_VALID)] == serials[1:]
    assert [c.serial for c in listed(ca_pb2.CERTIFICATE_STATUS_EXPIRED)] == [short.serial]
    everything = auditor.ListCertificates(ca_pb2.ListCertificatesRequest(), timeout=10).certificates
    assert {"worker", "worker-list", "agent"} <= {c.identity for c in everything}

    expect_code(
        lambda: auditor.ListCertificates(
            ca_pb2.ListCertificatesRequest(page_token="not-a-token"), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    expect_code(
        lambda: auditor.ListCertificates(ca_pb2.ListCertificatesRequest(status=42), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "status",
    )
    expect_code(
        lambda: ca_stub(cert_channel(CTX, "agent")).ListCertificates(
            ca_pb2.ListCertificatesRequest(), timeout=10
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # The auditor reads but cannot issue or revoke.
    expect_code(lambda: issue("worker", stub=auditor), grpc.StatusCode.PERMISSION_DENIED)


def test_ca_bundle_and_crl():
    auditor = ca_stub(cert_channel(CTX, "ops"))
    bundle = auditor.GetCaBundle(ca_pb2.GetCaBundleRequest(), timeout=10).ca_pem
    assert bundle.strip() == read(CTX["ca"]).decode().strip()
    crl = x509.load_pem_x509_crl(
        auditor.GetCrl(ca_pb2.GetCrlRequest(), timeout=10).crl_pem.encode()
    )
    ca_cert = x509.load_pem_x509_certificate(bundle.encode())
    assert crl.is_signature_valid(ca_cert.public_key())
    assert crl.next_update_utc.timestamp() > time.time() + 3600
    with open(os.path.join(CTX["data_dir"], "ca", "crl.pem"), "rb") as f:
        on_disk = x509.load_pem_x509_crl(f.read())
    assert on_disk.is_signature_valid(ca_cert.public_key())


SERVICE = [
    test_issue_from_csr_and_connect,
    test_csr_asking_for_ca_and_extra_sans_gets_a_plain_leaf,
    test_server_generated_key_is_returned_once_and_never_stored,
    test_revocation_refuses_open_and_new_connections_only_of_that_certificate,
    test_agent_renews_its_own_identity_only,
    test_api_key_caller_cannot_renew,
    test_expired_certificate_cannot_renew,
    test_corrupted_csr_is_invalid_argument,
    test_a_small_rsa_key_is_named_as_such,
    test_identity_outside_the_pattern_is_invalid_argument,
    test_validity_default_requested_and_capped,
    test_list_filters_and_paginates,
    test_ca_bundle_and_crl,
]


# --- suite "restart" -------------------------------------------------------


def test_revocation_survives_a_restart():
    base = os.path.join(CTX["data_dir"], "revoked-client")
    serial = read(base + ".serial").decode()
    expect_code(
        lambda: whoami(pem_channel(read(base + ".pem"), read(base + ".key"))),
        grpc.StatusCode.UNAVAILABLE,
    )
    crl = x509.load_pem_x509_crl(admin().GetCrl(ca_pb2.GetCrlRequest(), timeout=10).crl_pem.encode())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    revoked = admin().ListCertificates(
        ca_pb2.ListCertificatesRequest(status=ca_pb2.CERTIFICATE_STATUS_REVOKED), timeout=10
    ).certificates
    assert serial in [c.serial for c in revoked]
    # Issuance keeps working on the reopened inventory.
    r, key = issue("worker")
    assert whoami(pem_channel(r.certificate_pem, key_pem(key))).identity == "worker"


RESTART = [test_revocation_survives_a_restart]


# --- suite "reload" --------------------------------------------------------


def server_serial():
    host, port = CTX["target"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=CTX["ca"])
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def replace(path, data):
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def install(pair):
    replace(CTX["server_key"], read(pair["key"]))
    replace(CTX["server_cert"], read(pair["cert"]))


def wait_for_serial(serial, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server_serial() == serial:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server still presents {server_serial():x}, expected {serial:x}")


def serial_of(pair):
    return x509.load_pem_x509_certificate(read(pair["cert"])).serial_number


def wait_for_log(text, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with open(CTX["log"]) as f:
            if text in f.read():
                return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in the server log")


class ConnectionWatch:
    """Records the connectivity states of a channel after it became READY."""

    def __init__(self, ch):
        self.states = []
        self.ready = threading.Event()
        ch.subscribe(self.seen, try_to_connect=True)

    def seen(self, state):
        if self.ready.is_set():
            self.states.append(state)
        elif state == grpc.ChannelConnectivity.READY:
            self.ready.set()


def test_sighup_and_file_change_reload_without_dropping_connections():
    first = server_serial()
    open_channel = cert_channel(CTX, "admin", options=FRESH)
    watch = ConnectionWatch(open_channel)
    assert whoami(open_channel).identity == "admin"
    assert watch.ready.wait(5)

    # SIGHUP picks up a replaced certificate and key.
    install(CTX["next"][0])
    os.kill(CTX["pid"], signal.SIGHUP)
    wait_for_serial(serial_of(CTX["next"][0]))
    assert serial_of(CTX["next"][0]) != first

    # A garbage certificate is refused, named in the log, and the server keeps
    # serving with the previous configuration.
    replace(CTX["server_cert"], b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    os.kill(CTX["pid"], signal.SIGHUP)
    wait_for_log("tls reload refused")
    with open(CTX["log"]) as f:
        assert CTX["server_cert"] in f.read()
    assert server_serial() == serial_of(CTX["next"][0])
    assert whoami(cert_channel(CTX, "admin", options=FRESH)).identity == "admin"

    # A change on disk is picked up without a signal.
    install(CTX["next"][1])
    wait_for_serial(serial_of(CTX["next"][1]))
    wait_for_log("tls files changed on disk; configuration reloaded")
    assert whoami(cert_channel(CTX, "admin", options=FRESH)).identity == "admin"

    # The connection opened before all this is still the same connection.
    assert whoami(open_channel).identity == "admin"
    time.sleep(0.3)
    assert watch.states == [], f"the open connection changed state: {watch.states}"


RELOAD = [test_sighup_and_file_change_reload_without_dropping_connections]


run_tests({"service": SERVICE, "restart": RESTART, "reload": RELOAD}[CTX["suite"]])
