"""RateLimit: Check and CheckMultiple over mTLS, driven by grpcio.

The server runs with the policies written by tests/it/ratelimit.rs:
api (sliding log, 5 per hour), stats (sliding log, 1 per hour), conc_log
(sliding log, 100 per hour) and conc_gcra (GCRA, 100 per hour). Windows are an
hour long so that nothing refills while the tests run.

A second server, `isolated_target`, has the operator's repro configuration: an
in-memory store of 64 keys in one shard (so 16 keys per identity), the default
tool limits, and `[ratelimit.tools] default` = rest (token bucket, 3 per hour).
There agent2 attacks and agent is the bystander.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from cordon_client import cert_channel, expect_code, generate_stubs, load_context, run_tests

CTX = load_context()
generate_stubs(CTX["proto_dir"])

from cordon.ratelimit.v1 import ratelimit_pb2 as pb, ratelimit_pb2_grpc  # noqa: E402
from cordon.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc  # noqa: E402

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def stub(name):
    return ratelimit_pb2_grpc.RateLimitStub(cert_channel(CTX, name))


ADMIN = stub("admin")
AGENT = stub("agent")
AGENT2 = stub("agent2")
AUDITOR = stub("auditor")


def isolated_channel(name):
    return cert_channel(dict(CTX, target=CTX["isolated_target"]), name)


ATTACKER = ratelimit_pb2_grpc.RateLimitStub(isolated_channel("agent2"))
BYSTANDER = ratelimit_pb2_grpc.RateLimitStub(isolated_channel("agent"))
SANDBOX = {
    who: sandbox_pb2_grpc.SandboxStub(isolated_channel(who)) for who in ["agent", "agent2"]
}
DAY = pb.InlineLimit(algorithm=pb.ALGORITHM_FIXED_WINDOW, limit=100, window_ms=86_400_000)


def day_check(s, key):
    return s.Check(pb.CheckRequest(key=key, cost=1, inline=DAY), timeout=10).decision


def sandbox_run(who, tool):
    request = sandbox_pb2.RunRequest(argv=["true"], policy=sandbox_pb2.Policy(), tool=tool,
                                     tool_source="builtin")
    return SANDBOX[who].Run(request, timeout=60)


def check(s, key, cost=1, policy="api", **kw):
    return s.Check(pb.CheckRequest(key=key, cost=cost, policy=policy, **kw), timeout=10).decision


def check_call(s, key, cost=1, policy="api"):
    """Returns the decision and the response's initial metadata."""
    response, call = s.Check.with_call(pb.CheckRequest(key=key, cost=cost, policy=policy), timeout=10)
    return response.decision, dict(call.initial_metadata())


def desc(key, cost=1, policy="api"):
    return pb.Descriptor(key=key, cost=cost, policy=policy)


def test_allowed_then_denied_with_retry_after():
    for expected_remaining in [4, 3, 2, 1, 0]:
        d, md = check_call(AGENT, "basic")
        assert d.allowed and d.limit == 5 and d.remaining == expected_remaining, d
        assert "retry-after" not in md, md
    d, md = check_call(AGENT, "basic")
    assert not d.allowed and d.remaining == 0, d
    assert d.retry_after_ms > 0 and d.reset_after_ms > 0, d
    # An hour-long window: the oldest admission leaves it in about an hour.
    assert 3_500_000 < d.retry_after_ms <= 3_600_000, d
    assert int(md["retry-after"]) == -(-d.retry_after_ms // 1000), md
    assert int(md["retry-after-ms"]) == d.retry_after_ms, md


def test_cost_and_peek():
    assert check(AGENT, "peek", cost=0).remaining == 5
    assert check(AGENT, "peek", cost=0).remaining == 5, "a peek must not consume"
    assert check(AGENT, "peek", cost=3).remaining == 2
    assert check(AGENT, "peek", cost=0).remaining == 2
    d = check(AGENT, "peek", cost=3)
    assert not d.allowed and d.remaining == 2, d
    assert check(AGENT, "peek", cost=0).remaining == 2, "a denied request must not consume"
    d = check(AGENT, "peek", cost=2)
    assert d.allowed and d.remaining == 0, d


def test_check_multiple_is_all_or_nothing():
    assert check(AGENT, "multi-full", cost=5).allowed
    r, call = AGENT.CheckMultiple.with_call(
        pb.CheckMultipleRequest(descriptors=[desc("multi-free"), desc("multi-full")]), timeout=10
    )
    assert not r.allowed, r
    assert r.decisions[0].allowed and not r.decisions[1].allowed, r
    assert r.decisions[1].retry_after_ms > 0, r
    assert int(dict(call.initial_metadata())["retry-after"]) >= 1
    assert check(AGENT, "multi-free", cost=0).remaining == 5, "a denied multi-check consumed quota"

    r = AGENT.CheckMultiple(
        pb.CheckMultipleRequest(descriptors=[desc("multi-free", 2), desc("multi-other", 1)]), timeout=10
    )
    assert r.allowed and [d.remaining for d in r.decisions] == [3, 4], r
    assert check(AGENT, "multi-free", cost=0).remaining == 3
    assert check(AGENT, "multi-other", cost=0).remaining == 4


def test_inline_limit():
    inline = pb.InlineLimit(algorithm=pb.ALGORITHM_TOKEN_BUCKET, limit=2, window_ms=3_600_000)
    for remaining in [1, 0]:
        d = AGENT.Check(pb.CheckRequest(key="inline", cost=1, inline=inline), timeout=10).decision
        assert d.allowed and d.remaining == remaining, d
    d = AGENT.Check(pb.CheckRequest(key="inline", cost=1, inline=inline), timeout=10).decision
    assert not d.allowed and d.retry_after_ms > 0, d


def test_bad_input_names_the_field():
    def bad(fn, field):
        e = expect_code(fn, INVALID)
        assert e.details().startswith(field + ":"), f"{field!r} does not start {e.details()!r}"

    bad(lambda: check(AGENT, ""), "key")
    bad(lambda: check(AGENT, "x" * 1025), "key")
    bad(lambda: check(AGENT, "k", policy="nope"), "policy")
    bad(lambda: AGENT.Check(pb.CheckRequest(key="k", cost=1), timeout=10), "policy")
    bad(lambda: check(AGENT, "k", cost=6), "cost")

    def inline(**fields):
        return lambda: AGENT.Check(pb.CheckRequest(key="k", cost=1, inline=pb.InlineLimit(**fields)), timeout=10)

    bad(inline(limit=1, window_ms=1000), "inline.algorithm")
    bad(inline(algorithm=99, limit=1, window_ms=1000), "inline.algorithm")
    bad(inline(algorithm=pb.ALGORITHM_GCRA, limit=0, window_ms=1000), "inline.limit")
    bad(inline(algorithm=pb.ALGORITHM_GCRA, limit=1, window_ms=0), "inline.window_ms")
    bad(inline(algorithm=pb.ALGORITHM_SLIDING_WINDOW_LOG, limit=1, window_ms=1000, burst=1), "inline.burst")
    bad(inline(algorithm=pb.ALGORITHM_SLIDING_WINDOW_LOG, limit=100_001, window_ms=1000), "inline.limit")

    multi = lambda *ds: AGENT.CheckMultiple(pb.CheckMultipleRequest(descriptors=list(ds)), timeout=10)  # noqa: E731
    bad(lambda: multi(), "descriptors")
    bad(lambda: multi(*[desc(f"k{i}") for i in range(65)]), "descriptors")
    bad(lambda: multi(desc("a"), desc("")), "descriptors[1].key")
    bad(lambda: multi(desc("a"), desc("b", cost=6)), "descriptors[1].cost")
    bad(lambda: multi(desc("a"), desc("b", policy="nope")), "descriptors[1].policy")
    bad(lambda: ADMIN.Reset(pb.ResetRequest(key="", policy="api"), timeout=10), "key")
    bad(lambda: ADMIN.Reset(pb.ResetRequest(key="k", policy="nope"), timeout=10), "policy")
    # Nothing was consumed by any of the refused calls.
    assert check(AGENT, "a", cost=0).remaining == 5
    assert check(AGENT, "k", cost=0).remaining == 5


def test_rbac():
    expect_code(lambda: check(AUDITOR, "rbac"), DENIED)
    expect_code(lambda: AUDITOR.CheckMultiple(pb.CheckMultipleRequest(descriptors=[desc("rbac")]), timeout=10), DENIED)
    expect_code(lambda: AGENT.Reset(pb.ResetRequest(key="agent:rbac", policy="api"), timeout=10), DENIED)
    expect_code(lambda: AGENT.GetStats(pb.GetStatsRequest(), timeout=10), DENIED)
    expect_code(lambda: AUDITOR.GetStats(pb.GetStatsRequest(), timeout=10), DENIED)
    assert ADMIN.GetStats(pb.GetStatsRequest(), timeout=10).policies


def test_agents_cannot_touch_each_others_buckets():
    assert check(AGENT, "shared", cost=5).allowed
    assert not check(AGENT, "shared").allowed
    d = check(AGENT2, "shared")
    assert d.allowed and d.remaining == 4, "agent2 shares agent's bucket"
    # An admin sees agent's bucket under the scoped key, and can reset it.
    assert check(ADMIN, "agent:shared", cost=0).remaining == 0
    assert check(ADMIN, "shared", cost=0).remaining == 5, "admin keys are not scoped"
    ADMIN.Reset(pb.ResetRequest(key="agent:shared", policy="api"), timeout=10)
    assert check(AGENT, "shared").remaining == 4
    assert check(AGENT2, "shared", cost=0).remaining == 4, "the reset touched agent2's bucket"


def test_stats_count_decisions():
    def snapshot():
        r = ADMIN.GetStats(pb.GetStatsRequest(), timeout=10)
        assert not r.redis_degraded
        return {p.policy: p for p in r.policies}

    before = snapshot()
    assert {"api", "stats", "inline", "tool.shell"} <= set(before), before.keys()
    assert check(AGENT, "stats-key", policy="stats").allowed
    assert not check(AGENT, "stats-key", policy="stats").allowed
    after = snapshot()
    assert after["stats"].allowed - before["stats"].allowed == 1
    assert after["stats"].denied - before["stats"].denied == 1
    assert after["stats"].backend_errors == 0 and after["stats"].fallbacks == 0


def concurrent_exact(policy):
    clients, per_client = 64, 4
    stubs = [stub("agent") for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def run(s):
        barrier.wait()
        return sum(check(s, "hot", policy=policy).allowed for _ in range(per_client))

    with ThreadPoolExecutor(clients) as pool:
        admitted = sum(pool.map(run, stubs))
    assert admitted == 100, f"{policy}: {admitted} admitted of {clients * per_client}, limit 100"


def test_64_concurrent_clients_sliding_log():
    concurrent_exact("conc_log")


def test_64_concurrent_clients_gcra():
    concurrent_exact("conc_gcra")


def test_one_identity_cannot_fill_the_store_for_others():
    # The operator's repro: 70 keys with day-long windows from one agent.
    admitted, refusals = 0, []
    for i in range(1, 71):
        try:
            assert day_check(ATTACKER, f"fill{i}").allowed
            admitted += 1
        except grpc.RpcError as e:
            refusals.append(e)
    # A quarter of the 64 keys, then a refusal that names the quota, not a
    # denial carrying another key's window.
    assert admitted == 16 and len(refusals) == 54, (admitted, len(refusals))
    for e in refusals:
        assert e.code() == EXHAUSTED, e
        assert "quota of 16" in e.details() and "max_keys_per_identity" in e.details(), e.details()
    # A CheckMultiple of 64 fresh keys is refused whole the same way.
    expect_code(lambda: ATTACKER.CheckMultiple(pb.CheckMultipleRequest(descriptors=[
        pb.Descriptor(key=f"more{i}", cost=1, inline=DAY) for i in range(64)]), timeout=10),
        EXHAUSTED, "max_keys_per_identity")
    # The attacker's own keys still count exactly.
    assert day_check(ATTACKER, "fill1").remaining == 98

    # The bystander's new keys and Sandbox.Run's shell limit are untouched:
    # five runs, then the tool's own retry delay (a minute's refill), not a day.
    assert day_check(BYSTANDER, "mine").allowed
    assert [sandbox_run("agent", "shell").exit_code for _ in range(5)] == [0] * 5
    e = expect_code(lambda: sandbox_run("agent", "shell"), EXHAUSTED, "rate limit of tool shell")
    assert 0 < int(dict(e.trailing_metadata())["retry-after-ms"]) <= 12_000, e.trailing_metadata()
    # The attacker's own shell limit did not suffer from its flood either.
    assert sandbox_run("agent2", "shell").exit_code == 0


def test_unlisted_tools_share_the_default_tool_limit():
    # Inventing tool names, or none, draws from one bucket of three per hour.
    assert [sandbox_run("agent2", tool).exit_code for tool in ["x", "y", ""]] == [0, 0, 0]
    for tool in ["z", "", "x"]:
        expect_code(lambda: sandbox_run("agent2", tool), EXHAUSTED, "rate limit of tool")
    # Another identity's unlisted tools keep their own bucket.
    assert sandbox_run("agent", "x").exit_code == 0
    # The attacker's bucket is the one its scoped key reaches under the policy.
    d = ATTACKER.Check(pb.CheckRequest(key="default", cost=0, policy="rest"), timeout=10).decision
    assert d.remaining == 0, d
    d = BYSTANDER.Check(pb.CheckRequest(key="default", cost=0, policy="rest"), timeout=10).decision
    assert d.remaining == 2, d


run_tests([
    test_allowed_then_denied_with_retry_after,
    test_cost_and_peek,
    test_check_multiple_is_all_or_nothing,
    test_inline_limit,
    test_bad_input_names_the_field,
    test_rbac,
    test_agents_cannot_touch_each_others_buckets,
    test_stats_count_decisions,
    test_64_concurrent_clients_sliding_log,
    test_64_concurrent_clients_gcra,
    test_one_identity_cannot_fill_the_store_for_others,
    test_unlisted_tools_share_the_default_tool_limit,
])
