use sandbox_core::{
    Limits, LimitsSpec, MAX_ARG_STRLEN, MAX_ARG_TOTAL, NetworkMode, NetworkPolicy, NetworkSpec,
    Policy, PolicyError, PolicyFileError, PolicySpec, RequestError, RunRequest,
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
fn path_errors_name_their_field() {
    let read = PolicySpec {
        read_paths: vec!["/srv/in".into(), "rel".into()],
        ..PolicySpec::default()
    };
    let write = PolicySpec {
        write_paths: vec!["/srv//out".into()],
        ..PolicySpec::default()
    };
    assert_eq!(
        Policy::new(&read).unwrap_err().to_string(),
        "read_paths: path is not absolute: rel"
    );
    assert_eq!(
        Policy::new(&write).unwrap_err().to_string(),
        "write_paths: path is not normalized: /srv//out"
    );
    let req = RunRequest::new(vec!["true".into()], Policy::default()).unwrap();
    for (cwd, message) in [
        ("rel", "cwd: path is not absolute: rel"),
        ("/srv/../x", "cwd: path is not normalized: /srv/../x"),
    ] {
        let err = req.clone().with_cwd(cwd).unwrap_err();
        assert!(matches!(err, RequestError::InvalidCwd(_)), "{err:?}");
        assert_eq!(err.to_string(), message);
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

#[test]
fn requests_name_the_argument_the_kernel_would_refuse() {
    let policy = Policy::default();
    let new = |argv: &[&str]| {
        RunRequest::new(argv.iter().map(|&a| a.to_owned()).collect(), policy.clone())
    };
    let err = new(&[""]).unwrap_err();
    assert_eq!(err, RequestError::EmptyProgram);
    assert!(err.to_string().starts_with("argv[0]"), "{err}");
    assert!(
        new(&["sh", ""]).is_ok(),
        "only the program must not be empty"
    );
    assert_eq!(
        new(&["sh", "a\0b"]).unwrap_err(),
        RequestError::NulInArgument { index: 1 }
    );

    let longest = "a".repeat(MAX_ARG_STRLEN - 1);
    let too_long = "a".repeat(MAX_ARG_STRLEN);
    assert!(new(&["echo", &longest]).is_ok());
    let err = new(&["echo", "x", &too_long]).unwrap_err();
    assert_eq!(
        err,
        RequestError::ArgumentTooLong {
            index: 2,
            len: MAX_ARG_STRLEN
        }
    );
    assert!(
        err.to_string().starts_with("argv[2] is 131072 bytes"),
        "{err}"
    );
    let many: Vec<&str> =
        std::iter::repeat_n(longest.as_str(), MAX_ARG_TOTAL / MAX_ARG_STRLEN + 1).collect();
    let err = new(&many).unwrap_err();
    assert!(matches!(err, RequestError::ArgvTooLarge { .. }), "{err:?}");
    assert!(err.to_string().starts_with("argv takes"), "{err}");

    let req = new(&["sh"]).unwrap();
    let err = req
        .clone()
        .with_env("BIG", "v".repeat(200_000))
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::EnvTooLong {
            name: "BIG".into(),
            len: 200_004
        }
    );
    assert!(
        err.to_string().starts_with("env[BIG] is 200004 bytes"),
        "{err}"
    );
    assert_eq!(
        req.clone().with_env("A", "x\0").unwrap_err().to_string(),
        "env[A] contains a nul byte"
    );
    // NAME=value with its NUL is exactly MAX_ARG_STRLEN; three such variables fit in
    // MAX_ARG_TOTAL and a fourth does not, while replacing one takes no more room.
    let value = "v".repeat(MAX_ARG_STRLEN - "BIG=".len() - 1);
    let req = req.with_env("BIG", value.clone()).unwrap();
    let req = req.with_env("BIG", value.clone()).unwrap();
    let req = req.with_env("BIA", value.clone()).unwrap();
    let req = req.with_env("BIB", value.clone()).unwrap();
    let err = req.with_env("BIC", value).unwrap_err();
    assert!(
        matches!(&err, RequestError::EnvTooLarge { name, total } if name == "BIC" && *total > MAX_ARG_TOTAL),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("env[BIC] brings argv and env to"),
        "{err}"
    );
}

/// The limits are the kernel's: one string more is refused by `execve` itself, and a request at
/// both limits executes.
#[cfg(target_os = "linux")]
#[test]
fn the_argument_limits_match_the_kernel() {
    use std::process::{Command, Stdio};

    let run = |args: &[String], env: &[(String, String)]| {
        Command::new("/bin/true")
            .args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .status()
    };
    let longest = "a".repeat(MAX_ARG_STRLEN - 1);
    assert!(run(std::slice::from_ref(&longest), &[]).unwrap().success());
    let err = run(&["a".repeat(MAX_ARG_STRLEN)], &[]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(7), "{err}"); // E2BIG
    let value = "v".repeat(MAX_ARG_STRLEN - "BIG=".len() - 1);
    assert!(
        run(&[], &[("BIG".into(), value.clone())])
            .unwrap()
            .success()
    );
    let err = run(&[], &[("BIG".into(), value + "v")]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(7), "{err}");

    // A request filled up to MAX_ARG_TOTAL runs: the kernel takes what the limits accept.
    let argv = vec!["/bin/true".to_owned()];
    let mut req = RunRequest::new(argv, Policy::default()).unwrap();
    for i in 0.. {
        match req.clone().with_env(format!("V{i}"), "v".repeat(4000)) {
            Ok(next) => req = next,
            Err(RequestError::EnvTooLarge { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(req.env().len() > MAX_ARG_TOTAL / 4100);
    let env: Vec<(String, String)> = req.env().clone().into_iter().collect();
    assert!(run(&[], &env).unwrap().success());
}
