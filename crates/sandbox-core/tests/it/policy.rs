use sandbox_core::{
    Limits, LimitsSpec, NetworkMode, NetworkPolicy, NetworkSpec, Policy, PolicyError,
    PolicyFileError, PolicySpec, RequestError, RunRequest,
};

#[test]
fn defaults_fill_zero_limits() {
    let policy = Policy::new(&PolicySpec::default()).unwrap();
    assert_eq!(policy.limits(), &Limits::default());
    assert_eq!(policy.limits().timeout_ms, 30_000);
    assert_eq!(policy.limits().max_output_bytes, 1 << 20);
    assert!(policy.system_paths());
    assert_eq!(policy.network(), &NetworkPolicy::None);
}

#[test]
fn relative_and_dotted_paths_are_rejected_by_name() {
    for (path, relative) in [("data", true), ("/srv/../etc", false), ("/srv/./x", false)] {
        let spec = PolicySpec {
            write_paths: vec![path.into()],
            ..PolicySpec::default()
        };
        let err = Policy::new(&spec).unwrap_err();
        assert!(err.to_string().contains(path), "{err}");
        assert_eq!(matches!(err, PolicyError::RelativePath { .. }), relative);
    }
}

#[test]
fn limits_and_ports_are_bounded() {
    let spec = PolicySpec {
        limits: LimitsSpec {
            max_open_files: 2,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    assert!(matches!(
        Policy::new(&spec),
        Err(PolicyError::LimitOutOfRange {
            field: "max_open_files",
            ..
        })
    ));
    let spec = PolicySpec {
        network: NetworkSpec {
            mode: NetworkMode::Tcp,
            connect_ports: vec![70_000],
            bind_ports: vec![],
        },
        ..PolicySpec::default()
    };
    assert!(matches!(
        Policy::new(&spec),
        Err(PolicyError::PortOutOfRange {
            field: "connect_ports",
            port: 70_000
        })
    ));
    let spec = PolicySpec {
        network: NetworkSpec {
            mode: NetworkMode::None,
            connect_ports: vec![80],
            bind_ports: vec![],
        },
        ..PolicySpec::default()
    };
    assert!(matches!(
        Policy::new(&spec),
        Err(PolicyError::PortsWithoutTcp { .. })
    ));
}

#[test]
fn toml_policy_files_use_the_proto_field_names() {
    let spec = PolicySpec::from_toml(
        r#"
read_paths = ["/srv/in"]
write_paths = ["/srv/out"]
system_paths = false
require_kernel_enforcement = true
allow_unix_sockets = true
[network]
mode = "tcp"
connect_ports = [443]
bind_ports = [8080]
[limits]
timeout_ms = 1000
cpu_time_ms = 500
memory_bytes = 268435456
max_output_bytes = 4096
max_processes = 8
max_file_size_bytes = 1048576
max_open_files = 64
"#,
    )
    .unwrap();
    let policy = Policy::new(&spec).unwrap();
    assert!(!policy.system_paths());
    assert!(policy.require_kernel_enforcement());
    assert!(policy.allow_unix_sockets());
    assert_eq!(policy.limits().max_processes, 8);
    match policy.network() {
        NetworkPolicy::Tcp {
            connect_ports,
            bind_ports,
        } => {
            assert!(connect_ports.contains(&443));
            assert!(bind_ports.contains(&8080));
        }
        NetworkPolicy::None => panic!("tcp expected"),
    }
    assert!(matches!(
        PolicySpec::from_toml("read_path = []"),
        Err(PolicyFileError::Parse(_))
    ));
}

#[test]
fn requests_validate_env_and_cwd() {
    let spec = PolicySpec {
        write_paths: vec!["/srv/out".into()],
        ..PolicySpec::default()
    };
    let policy = Policy::new(&spec).unwrap();
    assert_eq!(
        RunRequest::new(vec![], policy.clone()),
        Err(RequestError::EmptyArgv)
    );
    let req = RunRequest::new(vec!["true".into()], policy).unwrap();
    assert!(matches!(
        req.clone().with_env("A=B", "x"),
        Err(RequestError::InvalidEnvName { .. })
    ));
    assert!(matches!(
        req.clone().with_env("A\0", "x"),
        Err(RequestError::InvalidEnvName { .. })
    ));
    assert!(req.clone().with_env("A", "x").is_ok());
    assert!(req.clone().with_cwd("/srv/out/sub").is_ok());
    assert!(matches!(
        req.clone().with_cwd("/srv"),
        Err(RequestError::CwdNotWritable { .. })
    ));
    assert!(matches!(
        req.with_cwd("/srv/out/../x"),
        Err(RequestError::InvalidCwd(_))
    ));
}
