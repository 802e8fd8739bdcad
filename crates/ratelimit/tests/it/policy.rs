//! Policy sets from TOML.

use std::time::Duration;

use ratelimit::{Algorithm, Backend, FailureMode, PolicySet};

#[test]
fn policy_set_parses_from_toml() {
    let set: PolicySet = toml::from_str(
        r#"
        [policies.api]
        algorithm = "sliding_window_log"
        limit = 100
        window = "1m"
        backend = "redis"
        failure_mode = "local_fallback"
        overrides = [
            { identity = "ci-bot", limit = 1000 },
            { identity = "ci-bot", tool = "shell", limit = 7, window = 500 },
            { tool = "shell", algorithm = "gcra", burst = 2 },
        ]

        [policies."tool.shell"]
        algorithm = "token_bucket"
        limit = 2
        window = 60000
        burst = 1

        [tools]
        exec = "api"
        "#,
    )
    .unwrap();
    let api = set.get("api").unwrap();
    assert_eq!(api.backend(), Backend::Redis);
    assert_eq!(api.failure_mode(), FailureMode::LocalFallback);
    assert_eq!(api.limit().window(), Duration::from_secs(60));
    assert_eq!(api.resolve(None, None).limit(), 100);
    assert_eq!(api.resolve(Some("ci-bot"), None).limit(), 1000);
    let both = api.resolve(Some("ci-bot"), Some("shell"));
    assert_eq!(
        (both.limit(), both.window()),
        (7, Duration::from_millis(500))
    );
    let tool = api.resolve(Some("joe"), Some("shell"));
    assert_eq!((tool.algorithm(), tool.burst()), (Algorithm::Gcra, 2));
    assert_eq!(set.tool_policy("exec").unwrap().name(), "api");
    // The file redefined tool.shell; web and files keep their defaults.
    assert_eq!(set.tool_policy("shell").unwrap().limit().capacity(), 3);
    assert_eq!(set.tool_policy("web").unwrap().limit().limit(), 30);
    assert_eq!(set.tool_policy("files").unwrap().limit().limit(), 50);
    assert_eq!(
        set.get("tool.files").unwrap().failure_mode(),
        FailureMode::FailClosed
    );
}

#[test]
fn invalid_policy_sets_are_rejected() {
    let cases = [
        (
            "[policies.a]\nalgorithm = \"gcra\"\nlimit = 0\nwindow = \"1s\"",
            "limit must be at least 1",
        ),
        (
            "[policies.a]\nalgorithm = \"gcra\"\nlimit = 1\nwindow = \"soon\"",
            "invalid window",
        ),
        (
            "[policies.a]\nalgorithm = \"fixed_window\"\nlimit = 1\nwindow = 10\nburst = 1",
            "burst",
        ),
        (
            "[policies.a]\nalgorithm = \"gcra\"\nlimit = 1\nwindow = 10\noverrides = [{ limit = 2 }]",
            "override",
        ),
        ("[tools]\nshell = \"missing\"", "unknown policy"),
        (
            "[policies.a]\nalgorithm = \"gcra\"\nlimit = 1\nwindow = 10\nbogus = 1",
            "unknown field",
        ),
    ];
    for (text, expected) in cases {
        let err = toml::from_str::<PolicySet>(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}
