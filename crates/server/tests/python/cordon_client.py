"""Shared helpers for the Python gRPC client tests.

The Rust test harness starts a real `cordon serve` and writes a JSON file that
describes it (address, certificate paths, credentials); each test script reads
it, generates its stubs from proto/ with grpcio-tools, and reports
"N passed, M failed" on its last line.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
import traceback

import grpc
from grpc_tools import protoc


def load_context():
    with open(sys.argv[1]) as f:
        return json.load(f)


def generate_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="cordon-stubs-")
    files = []
    for base, _, names in os.walk(proto_dir):
        files += [os.path.join(base, n) for n in names if n.endswith(".proto")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"] + files)
    if rc != 0:
        raise RuntimeError(f"protoc failed with {rc}")
    sys.path.insert(0, out)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel(ctx, cert=None, key=None, target=None, options=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ctx["ca"]),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    return grpc.secure_channel(target or ctx["target"], creds, options=options or [])


def cert_channel(ctx, name, **kw):
    c = ctx["certs"][name]
    return channel(ctx, c["cert"], c["key"], **kw)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret, claims, alg="HS256"):
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def expect_code(fn, code, contains=None):
    """Calls fn and asserts it fails with the gRPC status `code`."""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        if contains:
            assert contains in (e.details() or ""), f"{contains!r} not in {e.details()!r}"
        return e
    raise AssertionError(f"expected {code}, but the call succeeded")


def expect_refused(fn):
    """The connection must fail: at the handshake (UNAVAILABLE) or as UNAUTHENTICATED."""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), (
            f"expected refusal, got {e.code()}: {e.details()}"
        )
        return e
    raise AssertionError("expected the connection to be refused, but the call succeeded")


def run_tests(tests):
    passed = failed = 0
    for test in tests:
        start = time.monotonic()
        try:
            test()
            passed += 1
            print(f"ok   {test.__name__} ({time.monotonic() - start:.2f}s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {test.__name__}", flush=True)
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)
