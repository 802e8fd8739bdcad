//! Properties of every generated profile: well-formed, no path in the text, deny by default.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sandbox_core::{NetworkMode, NetworkSpec, PolicySpec};
use sandbox_darwin::profile::{self, Profile, render_run_profile};
use sandbox_darwin::render_profile;

use crate::{Malformed, check_well_formed, param_refs, policy};

/// Paths an attacker might pick to break out of a string literal or a form, all at depth 2
/// so the number of ancestor parameters matches the plain baseline.
const HOSTILE: &[&str] = &[
    "/tmp/a\"b",
    "/tmp/back\\slash",
    "/tmp/\\\"",
    "/tmp/pa(ren)s",
    "/tmp/\")(allow default)(allow file-write* (subpath \"",
    "/tmp/sp ace",
    "/tmp/new\nline",
    "/tmp/;comment",
    "/tmp/ünïcödé-路径",
    "/tmp/tab\there",
];

fn hostile_spec(read: &str, write: &str) -> PolicySpec {
    PolicySpec {
        read_paths: vec![read.to_owned()],
        write_paths: vec![write.to_owned()],
        network: NetworkSpec {
            mode: NetworkMode::Tcp,
            connect_ports: vec![443],
            bind_ports: vec![],
        },
        allow_unix_sockets: true,
        ..PolicySpec::default()
    }
}

fn assert_consistent(profile: &Profile) {
    check_well_formed(&profile.text).unwrap_or_else(|e| panic!("{e:?}\n{}", profile.text));
    let referenced: BTreeSet<String> = param_refs(&profile.text).into_iter().collect();
    let given: BTreeSet<String> = profile.params.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(referenced, given, "every parameter is used and defined");
    assert_eq!(
        given.len(),
        profile.params.len(),
        "parameter names are unique"
    );
}

#[test]
fn the_checker_rejects_broken_profiles() {
    assert_eq!(check_well_formed("(version 1)\n(deny default)\n"), Ok(()));
    assert_eq!(
        check_well_formed("(allow file-read* (literal \"/a))\n"),
        Err(Malformed::UnclosedString)
    );
    assert_eq!(
        check_well_formed("(allow file-read* (literal \"/a\")"),
        Err(Malformed::UnclosedParen { depth: 1 })
    );
    assert_eq!(
        check_well_formed("(allow x))"),
        Err(Malformed::UnbalancedClose { offset: 9 })
    );
    assert!(matches!(
        check_well_formed("(allow x)\n(allow default)(import \"x\")"),
        Err(Malformed::BadTopLevel { .. })
    ));
    assert!(matches!(
        check_well_formed("(allow x) default"),
        Err(Malformed::BadTopLevel { .. })
    ));
    // A quote escaped inside a string does not end it, a parenthesis in a comment is inert.
    assert_eq!(
        check_well_formed("; (\n(allow x (literal \"a\\\"b(\"))"),
        Ok(())
    );
}

#[test]
fn typical_profiles_are_well_formed_and_deny_by_default() {
    for spec in [
        PolicySpec::default(),
        PolicySpec {
            system_paths: Some(false),
            ..PolicySpec::default()
        },
        hostile_spec("/tmp/plain", "/tmp/other"),
    ] {
        let p = render_profile(&policy(spec));
        assert_consistent(&p);
        assert!(
            p.text.starts_with("(version 1)\n(deny default)\n"),
            "{}",
            p.text
        );
        assert!(!p.text.contains("(allow default"), "{}", p.text);
        assert!(!p.text.contains("(import"), "{}", p.text);
    }
}

#[test]
fn hostile_paths_never_change_the_profile_text() {
    let baseline = render_profile(&policy(hostile_spec("/tmp/plain", "/tmp/other")));
    for (i, read) in HOSTILE.iter().enumerate() {
        let write = HOSTILE[(i + 1) % HOSTILE.len()];
        let p = render_profile(&policy(hostile_spec(read, write)));
        assert_eq!(
            p.text, baseline.text,
            "text changed for {read:?} / {write:?}"
        );
        assert_consistent(&p);
        assert!(
            p.params
                .contains(&("READ_0".to_owned(), (*read).to_owned())),
            "{:?}",
            p.params
        );
        assert!(
            p.params.contains(&("WRITE_0".to_owned(), write.to_owned())),
            "{:?}",
            p.params
        );
        assert!(!p.text.contains(read) && !p.text.contains(write));
    }
}

#[test]
fn hostile_run_paths_never_change_the_profile_text() {
    // The runner's profile takes the resolved paths and the work directory as parameters too.
    let pol = policy(hostile_spec("/tmp/plain", "/tmp/other"));
    let plain = render_run_profile(
        &pol,
        Path::new("/tmp/work"),
        &[PathBuf::from("/tmp/plain")],
        &[PathBuf::from("/tmp/other")],
    );
    for hostile in HOSTILE {
        let p = render_run_profile(
            &pol,
            Path::new(hostile),
            &[PathBuf::from(hostile)],
            &[PathBuf::from(hostile)],
        );
        assert_eq!(p.text, plain.text, "text changed for {hostile:?}");
        assert_consistent(&p);
        assert!(
            p.params
                .contains(&("WORK_DIR".to_owned(), (*hostile).to_owned()))
        );
    }
}

#[test]
fn ancestors_get_metadata_only() {
    let p = render_profile(&policy(PolicySpec {
        read_paths: vec!["/Users/dev/project/src".into()],
        ..PolicySpec::default()
    }));
    let metas: Vec<&str> = p
        .params
        .iter()
        .filter(|(n, _)| n.starts_with("META_"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(metas, ["/Users", "/Users/dev", "/Users/dev/project"]);
    // The ancestors appear only in the metadata rule, never with a content operation.
    let meta_rule = p
        .text
        .split("\n(")
        .find(|form| form.contains("(param \"META_0\")"))
        .expect("a metadata rule");
    assert!(
        meta_rule.starts_with("allow file-read-metadata\n"),
        "{meta_rule}"
    );
}

/// The forms (top-level rules) of a profile, comments removed.
fn forms(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .collect::<Vec<_>>()
        .join("\n");
    code.split("\n(")
        .map(|f| f.trim().trim_start_matches('(').to_owned())
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn empty_allow_lists_grant_nothing_but_devices_and_the_work_directory() {
    let p = render_profile(&policy(PolicySpec {
        system_paths: Some(false),
        ..PolicySpec::default()
    }));
    assert_consistent(&p);
    let names: Vec<&str> = p.params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["WORK_DIR"]);
    let devices: Vec<&str> = profile::DEVICES_READ_WRITE
        .iter()
        .chain(profile::DEVICES_READ)
        .copied()
        .collect();
    for form in forms(&p.text) {
        let content = form.contains("file-read*")
            || form.contains("file-write")
            || form.contains("process-exec");
        if !content {
            continue;
        }
        let only_devices = form
            .match_indices("(literal \"")
            .map(|(i, m)| {
                let rest = &form[i + m.len()..];
                &rest[..rest.find('"').expect("closed")]
            })
            .all(|v| devices.contains(&v))
            && !form.contains("subpath");
        let work_dir = form.contains("(subpath (param \"WORK_DIR\"))")
            && !form.contains("literal")
            && form.matches("(subpath").count() == 1;
        assert!(
            only_devices || work_dir,
            "unexpected grant in a profile with empty allow-lists: ({form}"
        );
    }
    let code = forms(&p.text).join("\n");
    for op in ["network", "READ_", "WRITE_", "/usr", "/System"] {
        assert!(!code.contains(op), "{op} in:\n{code}");
    }
}

#[test]
fn network_none_grants_no_network_and_tcp_only_listed_localhost_ports() {
    let none = render_profile(&policy(PolicySpec::default()));
    assert!(!none.text.contains("(allow network"), "{}", none.text);

    let tcp = render_profile(&policy(PolicySpec {
        network: NetworkSpec {
            mode: NetworkMode::Tcp,
            connect_ports: vec![8080],
            bind_ports: vec![9000],
        },
        ..PolicySpec::default()
    }));
    let network: Vec<String> = forms(&tcp.text)
        .into_iter()
        .filter(|f| f.contains("network"))
        .collect();
    assert_eq!(
        network,
        [
            "allow network-outbound (remote tcp \"localhost:8080\"))",
            "allow network-bind network-inbound (local tcp \"localhost:9000\"))",
        ]
    );

    let tcp_no_ports = render_profile(&policy(PolicySpec {
        network: NetworkSpec {
            mode: NetworkMode::Tcp,
            ..NetworkSpec::default()
        },
        ..PolicySpec::default()
    }));
    assert!(!tcp_no_ports.text.contains("(allow network"));
}

#[test]
fn process_rules_are_scoped_to_the_sandbox() {
    let p = render_profile(&policy(PolicySpec::default()));
    assert!(p.text.contains("(allow signal (target same-sandbox))"));
    assert!(
        p.text
            .contains("(allow process-info* (target same-sandbox))")
    );
    // exec is only allowed where reading is: never as a bare rule.
    assert!(!p.text.contains("(allow process-exec)"));
    assert!(!p.text.contains("(allow mach-lookup)"));
    assert!(!p.text.contains("(allow sysctl-read)"));
}
