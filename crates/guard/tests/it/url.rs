//! `UrlChecker` with a fake resolver: no network is needed or used.

use std::io;
use std::net::IpAddr;

use guard::{ForbiddenAddress, UrlChecker, UrlRefusal, classify_ip};

/// Answers from a fixed table; unknown names fail like NXDOMAIN.
fn fake(host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
    let answers: &[&str] = match host {
        "example.com" | "evil.com" => &["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        "xn--bcher-kva.example" => &["93.184.215.15"],
        "rebind.evil.com" => &["93.184.215.14", "127.0.0.1"],
        "internal.evil.com" => &["10.0.0.5"],
        "metadata.evil.com" => &["169.254.169.254"],
        "v6only.evil.com" => &["fd00:ec2::254"],
        "mapped.evil.com" => &["::ffff:192.168.1.1"],
        "empty.evil.com" => &[],
        _ => return Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
    };
    Ok(answers
        .iter()
        .map(|a| a.parse().expect("valid fake address"))
        .collect())
}

/// (url, allowed). Every refused case is an SSRF attempt; most are bypass spellings.
const CASES: &[(&str, bool)] = &[
    // Benign.
    ("https://example.com", true),
    ("http://example.com:8080/path?q=1#frag", true),
    ("https://EXAMPLE.com./", true),
    ("https://bücher.example/", true),
    ("http://93.184.215.14/", true),
    ("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/", true),
    ("http://[64:ff9b::5db8:d70e]/", true),
    ("http://[2002:5db8:d70e::1]/", true),
    ("https://evil.com#@127.0.0.1", true),
    // Plain forbidden addresses.
    ("http://127.0.0.1/", false),
    ("http://localhost/", false),
    ("http://10.0.0.1/", false),
    ("http://172.16.0.1/", false),
    ("http://192.168.0.1/", false),
    ("http://169.254.169.254/latest/meta-data/", false),
    ("http://100.64.0.1/", false),
    ("http://224.0.0.1/", false),
    ("http://0.0.0.0/", false),
    ("http://[::1]/", false),
    ("http://[::]/", false),
    ("http://[fd00::1]/", false),
    ("http://[fe80::1]/", false),
    // Bypass: numeric IPv4 spellings.
    ("http://2130706433/", false),
    ("http://0177.0.0.1/", false),
    ("http://0x7f.1/", false),
    ("http://0x7f000001/", false),
    ("http://127.1/", false),
    ("http://0/", false),
    ("http://017700000001/", false),
    ("http://127.0.0.1./", false),
    ("http://%31%32%37.0.0.1/", false),
    ("http://１２７.０.０.１/", false),
    ("http://127。0。0。1/", false),
    ("http://3232235521/", false),
    ("http://0xA9FEA9FE/", false),
    // Bypass: IPv6 embeddings of IPv4.
    ("http://[::ffff:127.0.0.1]/", false),
    ("http://[::ffff:7f00:1]/", false),
    ("http://[0:0:0:0:0:ffff:169.254.169.254]/", false),
    ("http://[::127.0.0.1]/", false),
    ("http://[64:ff9b::7f00:1]/", false),
    ("http://[64:ff9b:1::a00:1]/", false),
    ("http://[2002:7f00:1::]/", false),
    ("http://[2002:c0a8:101::1]/", false),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", false),
    ("http://[ff02::1]/", false),
    // Bypass: names.
    ("http://LOCALHOST/", false),
    ("http://localhost./", false),
    ("http://foo.localhost/", false),
    ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", false),
    ("http://metadata.google.internal/", false),
    ("http://rebind.evil.com/", false),
    ("http://internal.evil.com/", false),
    ("http://metadata.evil.com/", false),
    ("http://v6only.evil.com/", false),
    ("http://mapped.evil.com/", false),
    ("http://empty.evil.com/", false),
    ("http://unknown.invalid/", false),
    // Bypass: userinfo and parser differentials.
    ("http://evil.com@127.0.0.1/", false),
    ("http://user:pass@example.com/", false),
    ("http://127.0.0.1#@evil.com", false),
    ("http://evil.com\\@127.0.0.1/", false),
    ("http://example.com\\.127.0.0.1/", false),
    ("http://127.0.0.1:80\\@evil.com/", false),
    (" http://127.0.0.1/", false),
    ("http://exa\tmple.com/", false),
    // Bypass: schemes.
    ("file:///etc/passwd", false),
    ("gopher://127.0.0.1:6379/_INFO", false),
    ("ftp://example.com/", false),
    ("javascript:alert(1)", false),
    ("//example.com/", false),
];

#[test]
fn url_table() {
    assert!(CASES.len() >= 30);
    let checker = UrlChecker::new(fake);
    let mut failures = Vec::new();
    for (url, allowed) in CASES {
        let verdict = checker.check(url, &[] as &[&str]);
        if verdict.allowed != *allowed {
            failures.push(format!(
                "{url:?}: expected allowed={allowed}, got {verdict:?}"
            ));
        }
        if verdict.allowed {
            assert!(verdict.reason.is_none());
            assert!(!verdict.addresses.is_empty());
        } else {
            // A refusal because the fake resolver does not know the name would prove nothing.
            match &verdict.reason {
                None => failures.push(format!("{url:?}: refused without a reason")),
                Some(UrlRefusal::ResolutionFailed(_)) if !url.contains(".invalid") => {
                    failures.push(format!("{url:?}: refused only because resolution failed"));
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn numeric_forms_normalize_to_the_same_host() {
    let checker = UrlChecker::new(fake);
    for url in [
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://127.1/",
    ] {
        let verdict = checker.check(url, &[] as &[&str]);
        assert_eq!(verdict.host.as_deref(), Some("127.0.0.1"), "{url}");
        assert_eq!(
            verdict.reason,
            Some(UrlRefusal::ForbiddenAddress {
                address: "127.0.0.1".parse().unwrap(),
                kind: ForbiddenAddress::Loopback,
            }),
            "{url}"
        );
    }
}

#[test]
fn allowed_urls_return_addresses_to_pin() {
    let checker = UrlChecker::new(fake);
    let verdict = checker.check("https://example.com/x", &["https"]);
    assert!(verdict.allowed);
    assert_eq!(verdict.host.as_deref(), Some("example.com"));
    assert_eq!(verdict.port, Some(443));
    assert_eq!(verdict.addresses.len(), 2);
}

#[test]
fn mixed_dns_answers_are_refused_and_reported() {
    let checker = UrlChecker::new(fake);
    let verdict = checker.check("http://rebind.evil.com/", &[] as &[&str]);
    assert!(!verdict.allowed);
    assert_eq!(verdict.addresses.len(), 2);
    let reason = verdict.reason.expect("a reason").to_string();
    assert_eq!(reason, "host resolves to 127.0.0.1, a loopback address");
}

#[test]
fn scheme_allow_list_is_honored() {
    let checker = UrlChecker::new(fake);
    assert!(!checker.check("http://example.com/", &["https"]).allowed);
    assert!(checker.check("HTTPS://example.com/", &["HTTPS"]).allowed);
    assert!(checker.check("ftp://example.com/", &["ftp"]).allowed);
    // Non-special schemes keep the host opaque; it is still normalized like http's.
    let verdict = checker.check("gopher://0x7f.1/", &["gopher"]);
    assert_eq!(verdict.host.as_deref(), Some("127.0.0.1"));
    assert!(!verdict.allowed);
    assert!(!checker.check("file:///etc/passwd", &["file"]).allowed);
}

#[test]
fn classify_ip_covers_the_special_ranges() {
    let cases = [
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700::1111", None),
        ("169.254.169.254", Some(ForbiddenAddress::CloudMetadata)),
        ("100.127.255.255", Some(ForbiddenAddress::SharedCgnat)),
        ("100.128.0.0", None),
        ("172.32.0.1", None),
        ("255.255.255.255", Some(ForbiddenAddress::Broadcast)),
        ("198.18.0.1", Some(ForbiddenAddress::Benchmarking)),
        ("::ffff:0:10.0.0.1", Some(ForbiddenAddress::Private)),
        ("::8.8.8.8", Some(ForbiddenAddress::Ipv4Compatible)),
        ("2001::1", Some(ForbiddenAddress::Teredo)),
        ("2001:db8::1", Some(ForbiddenAddress::Documentation)),
        ("fec0::1", Some(ForbiddenAddress::SiteLocal)),
        ("64:ff9b:1::1", Some(ForbiddenAddress::Nat64Local)),
    ];
    for (ip, expected) in cases {
        assert_eq!(classify_ip(ip.parse().unwrap()), expected, "{ip}");
    }
}

#[test]
fn system_resolver_answers_for_numeric_hosts_without_network() {
    // The default checker never calls DNS for literal addresses.
    let verdict = UrlChecker::default().check("http://127.0.0.1/", &[] as &[&str]);
    assert!(!verdict.allowed);
    assert_eq!(
        verdict.addresses,
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
}
