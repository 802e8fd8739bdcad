use sandbox_core::{Ceiling, CeilingConfig, Limits, PolicyError, PolicySpec};

fn ceiling(forbidden: &str) -> Ceiling {
    Ceiling::new(CeilingConfig {
        read_roots: vec!["/srv".into(), "/usr".into()],
        write_roots: vec!["/srv/work".into()],
        forbidden: vec![forbidden.into()],
        max: Limits {
            timeout_ms: 60_000,
            ..Limits::MAX
        },
        defaults: Limits {
            timeout_ms: 10_000,
            ..Limits::default()
        },
    })
    .unwrap()
}

fn spec(read: &[&str], write: &[&str]) -> PolicySpec {
    PolicySpec {
        read_paths: read.iter().map(|s| s.to_string()).collect(),
        write_paths: write.iter().map(|s| s.to_string()).collect(),
        ..PolicySpec::default()
    }
}

#[test]
fn paths_must_lie_under_the_roots_for_their_access() {
    let c = ceiling("/srv/cordon");
    assert!(
        c.admit(&spec(&["/srv/in", "/srv/work/x"], &["/srv/work/out"]))
            .is_ok()
    );
    assert_eq!(
        c.admit(&spec(&["/etc"], &[])).unwrap_err(),
        PolicyError::OutsideCeiling {
            field: "read_paths",
            path: "/etc".into()
        }
    );
    assert_eq!(
        c.admit(&spec(&[], &["/srv/in"])).unwrap_err(),
        PolicyError::OutsideCeiling {
            field: "write_paths",
            path: "/srv/in".into()
        }
    );
}

#[test]
fn forbidden_paths_are_refused_directly_inside_and_through_a_parent() {
    let c = ceiling("/srv/work/cordon-data");
    for path in [
        "/srv/work/cordon-data",
        "/srv/work/cordon-data/keys",
        "/srv/work",
        "/srv",
    ] {
        let err = c.admit(&spec(&[path], &[])).unwrap_err();
        assert_eq!(
            err,
            PolicyError::Forbidden {
                field: "read_paths",
                path: path.into()
            }
        );
    }
    assert!(c.admit(&spec(&["/srv/work/other"], &[])).is_ok());
    assert!(c.check_system_path("/usr".as_ref()).is_ok());
    assert!(c.check_system_path("/srv".as_ref()).is_err());
}

#[test]
fn ceiling_defaults_and_maximum_apply() {
    let c = ceiling("/srv/cordon");
    let policy = c.admit(&PolicySpec::default()).unwrap();
    assert_eq!(policy.limits().timeout_ms, 10_000);
    let mut over = PolicySpec::default();
    over.limits.timeout_ms = 61_000;
    assert_eq!(
        c.admit(&over).unwrap_err(),
        PolicyError::LimitAboveCeiling {
            field: "timeout_ms",
            value: 61_000,
            max: 60_000
        }
    );
}

#[test]
fn invalid_ceilings_are_rejected() {
    let bad = CeilingConfig {
        read_roots: vec!["relative".into()],
        write_roots: vec![],
        forbidden: vec![],
        max: Limits::default(),
        defaults: Limits::default(),
    };
    assert!(matches!(
        Ceiling::new(bad),
        Err(PolicyError::RelativePath { .. })
    ));
    let bad = CeilingConfig {
        read_roots: vec![],
        write_roots: vec![],
        forbidden: vec![],
        max: Limits::default(),
        defaults: Limits {
            timeout_ms: 31_000,
            ..Limits::default()
        },
    };
    assert!(matches!(
        Ceiling::new(bad),
        Err(PolicyError::LimitAboveCeiling { .. })
    ));
}
