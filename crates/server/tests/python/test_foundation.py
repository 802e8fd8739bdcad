"""Foundation: mTLS, identity, RBAC, health and limits, driven by grpcio."""

import time

import grpc

from cordon_client import (
    cert_channel, channel, expect_code, expect_refused, generate_stubs, load_context, make_jwt,
    run_tests,
)

CTX = load_context()
generate_stubs(CTX["proto_dir"])

from cordon.identity.v1 import identity_pb2, identity_pb2_grpc  # noqa: E402

# grpc.health.v1.HealthCheckResponse{status: SERVING} on the wire.
SERVING = b"\x08\x01"


def whoami(ch, metadata=None):
    stub = identity_pb2_grpc.IdentityStub(ch)
    return stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=metadata, timeout=10)


def health(ch, metadata=None):
    check = ch.unary_unary("/grpc.health.v1.Health/Check")
    return check(b"", metadata=metadata, timeout=10)


def bearer(token):
    return [("authorization", f"Bearer {token}")]


def jwt(**overrides):
    now = int(time.time())
    claims = {
        "sub": CTX["jwt"]["subject"],
        "iss": CTX["jwt"]["issuer"],
        "aud": CTX["jwt"]["audience"],
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
    }
    claims.update(overrides)
    return make_jwt(overrides.pop("_secret", CTX["jwt"]["secret"]), claims)


def test_health_serving_with_and_without_certificate():
    assert health(cert_channel(CTX, "admin")) == SERVING
    assert health(channel(CTX)) == SERVING


def test_whoami_admin_certificate():
    r = whoami(cert_channel(CTX, "admin"))
    assert r.identity == "admin", r
    assert r.auth_method == identity_pb2.AUTH_METHOD_CLIENT_CERTIFICATE
    assert list(r.roles) == ["admin"]
    assert r.spiffe_id == f"spiffe://{CTX['trust_domain']}/user/admin"
    assert len(r.certificate_serial) >= 30, r.certificate_serial
    assert r.expires_at_unix > time.time()


def test_no_credentials_is_unauthenticated():
    expect_code(lambda: whoami(channel(CTX)), grpc.StatusCode.UNAUTHENTICATED)


def test_certificate_from_another_ca_refused():
    expect_refused(lambda: whoami(cert_channel(CTX, "other_ca")))


def test_expired_certificate_refused():
    expect_refused(lambda: whoami(cert_channel(CTX, "expired")))


def test_not_yet_valid_certificate_refused():
    expect_refused(lambda: whoami(cert_channel(CTX, "not_yet_valid")))


def test_server_auth_only_certificate_refused_as_client():
    expect_refused(lambda: whoami(cert_channel(CTX, "server")))


def test_ca_certificate_refused_as_client():
    expect_refused(lambda: whoami(cert_channel(CTX, "ca")))


def test_revoked_certificate_refused():
    expect_refused(lambda: whoami(cert_channel(CTX, "revoked")))
    # The CRL names only that serial: a sibling certificate still works.
    assert whoami(cert_channel(CTX, "agent")).identity == "agent"


def test_api_key_without_certificate():
    r = whoami(channel(CTX), metadata=bearer(CTX["api_key"]))
    assert r.identity == CTX["api_key_identity"], r
    assert r.auth_method == identity_pb2.AUTH_METHOD_API_KEY


def test_wrong_api_key_unauthenticated():
    expect_code(
        lambda: whoami(channel(CTX), metadata=bearer(CTX["api_key"] + "x")),
        grpc.StatusCode.UNAUTHENTICATED,
    )


def test_jwt_without_certificate():
    r = whoami(channel(CTX), metadata=bearer(jwt()))
    assert r.identity == CTX["jwt"]["subject"], r
    assert r.auth_method == identity_pb2.AUTH_METHOD_JWT
    assert list(r.roles) == ["auditor"]


def test_jwt_bad_signature_unauthenticated():
    forged = jwt(_secret="not-the-secret-not-the-secret-000")
    expect_code(lambda: whoami(channel(CTX), metadata=bearer(forged)), grpc.StatusCode.UNAUTHENTICATED,
                "signature does not verify")


def test_jwt_expired_unauthenticated():
    old = int(time.time()) - 3600
    token = jwt(exp=old, iat=old - 60, nbf=old - 60)
    expect_code(lambda: whoami(channel(CTX), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED,
                "expired (exp)")


def test_jwt_not_yet_valid_unauthenticated():
    token = jwt(nbf=int(time.time()) + 3600)
    expect_code(lambda: whoami(channel(CTX), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED,
                "not valid yet (nbf)")


def test_jwt_wrong_audience_unauthenticated():
    token = jwt(aud="someone-else")
    expect_code(lambda: whoami(channel(CTX), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED,
                "another audience (aud)")


def test_jwt_wrong_issuer_unauthenticated():
    token = jwt(iss="https://evil.example")
    expect_code(lambda: whoami(channel(CTX), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED,
                "another issuer (iss)")


def test_jwt_without_exp_names_the_claim_not_the_parser():
    claims = {"sub": CTX["jwt"]["subject"], "iss": CTX["jwt"]["issuer"], "aud": CTX["jwt"]["audience"]}
    token = make_jwt(CTX["jwt"]["secret"], claims)
    e = expect_code(lambda: whoami(channel(CTX), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED)
    assert "exp" in e.details() and "line" not in e.details() and "column" not in e.details(), e.details()


def test_bearer_scheme_is_case_insensitive():
    for scheme in ["bearer", "BEARER", "BeArEr"]:
        r = whoami(channel(CTX), metadata=[("authorization", f"{scheme} {CTX['api_key']}")])
        assert r.auth_method == identity_pb2.AUTH_METHOD_API_KEY, (scheme, r)
    expect_code(lambda: whoami(channel(CTX), metadata=[("authorization", f"Basic {CTX['api_key']}")]),
                grpc.StatusCode.UNAUTHENTICATED, "Bearer")


def test_jwt_alg_none_unauthenticated():
    good = jwt().split(".")
    none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"
    token = f"{none_header}.{good[1]}."
    expect_code(lambda: whoami(channel(CTX), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED)


def test_certificate_takes_priority_over_bearer():
    r = whoami(cert_channel(CTX, "agent"), metadata=bearer(CTX["api_key"]))
    assert r.identity == "agent", r
    assert r.auth_method == identity_pb2.AUTH_METHOD_CLIENT_CERTIFICATE


def test_role_without_permission_denied():
    # The auditor JWT may call WhoAmI but not a method that needs another permission.
    ch = channel(CTX)
    method = ch.unary_unary("/cordon.ratelimit.v1.RateLimit/Reset")
    expect_code(lambda: method(b"", metadata=bearer(jwt()), timeout=10), grpc.StatusCode.PERMISSION_DENIED)


def test_identity_without_roles_denied():
    expect_code(lambda: whoami(cert_channel(CTX, "nobody")), grpc.StatusCode.PERMISSION_DENIED)


def test_oversized_message_resource_exhausted():
    big = b"\x0a" + b"\x80\x80\x80\x04" + b"a" * (8 * 1024 * 1024)
    ch = cert_channel(CTX, "admin", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    method = ch.unary_unary("/cordon.identity.v1.Identity/WhoAmI")
    expect_code(lambda: method(big, timeout=20), grpc.StatusCode.RESOURCE_EXHAUSTED)
    # The connection and the server are still fine afterwards.
    assert whoami(ch).identity == "admin"


run_tests([
    test_health_serving_with_and_without_certificate,
    test_whoami_admin_certificate,
    test_no_credentials_is_unauthenticated,
    test_certificate_from_another_ca_refused,
    test_expired_certificate_refused,
    test_not_yet_valid_certificate_refused,
    test_server_auth_only_certificate_refused_as_client,
    test_ca_certificate_refused_as_client,
    test_revoked_certificate_refused,
    test_api_key_without_certificate,
    test_wrong_api_key_unauthenticated,
    test_jwt_without_certificate,
    test_jwt_bad_signature_unauthenticated,
    test_jwt_expired_unauthenticated,
    test_jwt_not_yet_valid_unauthenticated,
    test_jwt_wrong_audience_unauthenticated,
    test_jwt_wrong_issuer_unauthenticated,
    test_jwt_without_exp_names_the_claim_not_the_parser,
    test_bearer_scheme_is_case_insensitive,
    test_jwt_alg_none_unauthenticated,
    test_certificate_takes_priority_over_bearer,
    test_role_without_permission_denied,
    test_identity_without_roles_denied,
    test_oversized_message_resource_exhausted,
])
