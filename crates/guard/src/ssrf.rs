//! `UrlChecker`: refuse URLs that could reach internal services (server-side request forgery).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

use url::{Host, Url};

/// The schemes allowed when the caller passes none.
pub const DEFAULT_SCHEMES: &[&str] = &["http", "https"];

/// Schemes whose host the WHATWG parser normalizes (IDNA, numeric IPv4 forms, percent-decoding).
const SPECIAL_SCHEMES: &[&str] = &["http", "https", "ws", "wss", "ftp"];

/// Resolves a host name to addresses. Injected so that tests (and callers with their own DNS) can
/// control the answers.
pub trait Resolve: Send + Sync {
    /// Returns every address `host` resolves to. `port` is the URL's port, for resolvers that
    /// need one.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

impl<F> Resolve for F
where
    F: Fn(&str, u16) -> io::Result<Vec<IpAddr>> + Send + Sync,
{
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        self(host, port)
    }
}

/// The operating system's resolver through `getaddrinfo` ([`ToSocketAddrs`]).
///
/// It blocks, so an async caller runs [`UrlChecker::check`] inside `spawn_blocking`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForbiddenAddress {
    /// `0.0.0.0/8` or `::`.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// RFC 1918 private ranges.
    Private,
    /// `169.254.0.0/16` or `fe80::/10`.
    LinkLocal,
    /// `169.254.169.254`, the instance metadata service of most clouds.
    CloudMetadata,
    /// `100.64.0.0/10`, carrier-grade NAT.
    SharedCgnat,
    /// `224.0.0.0/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Reserved or special-purpose ranges that are not globally routable.
    Reserved,
    /// Documentation ranges (`192.0.2.0/24`, `2001:db8::/32`, ...).
    Documentation,
    /// `198.18.0.0/15` and `2001:2::/48`, benchmarking.
    Benchmarking,
    /// `fc00::/7`, IPv6 unique local addresses.
    UniqueLocal,
    /// `fec0::/10`, deprecated IPv6 site-local addresses.
    SiteLocal,
    /// `::/96`, deprecated IPv4-compatible IPv6 addresses.
    Ipv4Compatible,
    /// `64:ff9b:1::/48`, local-use NAT64 prefix.
    Nat64Local,
    /// `2001::/32`, Teredo tunnels, whose embedded IPv4 address is obfuscated.
    Teredo,
}

impl fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::CloudMetadata => "cloud metadata",
            Self::SharedCgnat => "carrier-grade nat",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::UniqueLocal => "unique local",
            Self::SiteLocal => "site-local",
            Self::Ipv4Compatible => "ipv4-compatible",
            Self::Nat64Local => "local-use nat64",
            Self::Teredo => "teredo",
        })
    }
}

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlRefusal {
    /// The WHATWG parser rejects the URL.
    #[error("url does not parse: {0}")]
    Unparseable(String),
    /// Backslashes, whitespace and control characters are read differently by different URL
    /// parsers, so the host this parser sees may not be the one the client connects to.
    #[error("url contains backslashes, whitespace or control characters")]
    SuspiciousCharacters,
    /// The scheme is not in the allow-list.
    #[error("scheme {0:?} is not allowed")]
    Scheme(String),
    /// User information (`user:pass@`) is a common way to disguise the real host.
    #[error("url carries user information")]
    Userinfo,
    /// There is no host to connect to.
    #[error("url has no host")]
    NoHost,
    /// The host name denotes the local machine or an internal service.
    #[error("host {0:?} names the local machine or an internal service")]
    ForbiddenName(String),
    /// The host is, or resolves to, a non-public address.
    #[error("host resolves to {address}, a {kind} address")]
    ForbiddenAddress {
        /// The offending address.
        address: IpAddr,
        /// Why it is not public.
        kind: ForbiddenAddress,
    },
    /// DNS resolution failed.
    #[error("host could not be resolved: {0}")]
    ResolutionFailed(String),
    /// DNS resolution returned no address.
    #[error("host resolved to no addresses")]
    NoAddresses,
}

/// The result of [`UrlChecker::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlVerdict {
    /// True when the URL may be fetched.
    pub allowed: bool,
    /// Why it may not, when `allowed` is false.
    pub reason: Option<UrlRefusal>,
    /// The normalized host (punycode, no trailing dot, IP addresses in canonical form).
    pub host: Option<String>,
    /// The port, explicit or the scheme's default.
    pub port: Option<u16>,
    /// Every address the host resolved to. When `allowed`, connect only to these (pin them) so
    /// that a second DNS answer cannot point elsewhere.
    pub addresses: Vec<IpAddr>,
}

impl UrlVerdict {
    fn refused(reason: UrlRefusal) -> Self {
        Self {
            allowed: false,
            reason: Some(reason),
            host: None,
            port: None,
            addresses: Vec::new(),
        }
    }
}

/// Checks URLs against a scheme allow-list and the addresses their hosts resolve to.
pub struct UrlChecker<R = SystemResolver> {
    resolver: R,
}

impl<R> fmt::Debug for UrlChecker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlChecker").finish_non_exhaustive()
    }
}

impl Default for UrlChecker<SystemResolver> {
    fn default() -> Self {
        Self::new(SystemResolver)
    }
}

impl<R: Resolve> UrlChecker<R> {
    /// A checker that resolves host names with `resolver`.
    pub fn new(resolver: R) -> Self {
        Self { resolver }
    }

    /// Checks `url`. `schemes` lists the allowed schemes (compared case-insensitively); an empty
    /// list means [`DEFAULT_SCHEMES`].
    ///
    /// A host is refused when ANY of its addresses is not public, so a DNS answer that mixes a
    /// public and a private address (a rebinding attempt) is refused. Resolution may block; see
    /// [`SystemResolver`].
    pub fn check<S: AsRef<str>>(&self, url: &str, schemes: &[S]) -> UrlVerdict {
        if url
            .chars()
            .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
        {
            return UrlVerdict::refused(UrlRefusal::SuspiciousCharacters);
        }
        let parsed = match Url::parse(url) {
            Ok(parsed) => parsed,
            Err(e) => return UrlVerdict::refused(UrlRefusal::Unparseable(e.to_string())),
        };
        let scheme = parsed.scheme();
        let allowed_scheme = if schemes.is_empty() {
            DEFAULT_SCHEMES.contains(&scheme)
        } else {
            schemes
                .iter()
                .any(|s| s.as_ref().eq_ignore_ascii_case(scheme))
        };
        if !allowed_scheme {
            return UrlVerdict::refused(UrlRefusal::Scheme(scheme.to_owned()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return UrlVerdict::refused(UrlRefusal::Userinfo);
        }
        let port = parsed.port_or_known_default();
        let target = match host_of(&parsed) {
            Ok(target) => target,
            Err(reason) => return UrlVerdict::refused(reason),
        };
        let mut verdict = UrlVerdict {
            allowed: false,
            reason: None,
            host: None,
            port,
            addresses: Vec::new(),
        };
        match target {
            Target::Ip(ip) => {
                verdict.host = Some(ip.to_string());
                verdict.addresses = vec![ip];
            }
            Target::Name(name) => {
                verdict.host = Some(name.clone());
                if forbidden_name(&name) {
                    verdict.reason = Some(UrlRefusal::ForbiddenName(name));
                    return verdict;
                }
                match self.resolver.resolve(&name, port.unwrap_or(0)) {
                    Ok(addresses) => {
                        for address in addresses {
                            if !verdict.addresses.contains(&address) {
                                verdict.addresses.push(address);
                            }
                        }
                    }
                    Err(e) => {
                        verdict.reason = Some(UrlRefusal::ResolutionFailed(e.to_string()));
                        return verdict;
                    }
                }
            }
        }
        if verdict.addresses.is_empty() {
            verdict.reason = Some(UrlRefusal::NoAddresses);
            return verdict;
        }
        if let Some((address, kind)) = verdict
            .addresses
            .iter()
            .find_map(|&a| classify_ip(a).map(|kind| (a, kind)))
        {
            verdict.reason = Some(UrlRefusal::ForbiddenAddress { address, kind });
            return verdict;
        }
        verdict.allowed = true;
        verdict
    }
}

enum Target {
    Ip(IpAddr),
    Name(String),
}

fn host_of(parsed: &Url) -> Result<Target, UrlRefusal> {
    match parsed.host() {
        None => Err(UrlRefusal::NoHost),
        Some(Host::Ipv4(ip)) => Ok(Target::Ip(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => Ok(Target::Ip(IpAddr::V6(ip))),
        Some(Host::Domain(domain)) => {
            if SPECIAL_SCHEMES.contains(&parsed.scheme()) {
                return domain_target(domain);
            }
            // Other schemes keep the host opaque (no IDNA, no numeric IPv4 forms), but the client
            // that eventually connects will still interpret it; normalize it as http would.
            let reparsed = Url::parse(&format!("http://{domain}/"))
                .map_err(|e| UrlRefusal::Unparseable(e.to_string()))?;
            match reparsed.host() {
                Some(Host::Domain(d)) => domain_target(d),
                _ => host_of(&reparsed),
            }
        }
    }
}

fn domain_target(domain: &str) -> Result<Target, UrlRefusal> {
    // "localhost." and "localhost" are the same name to DNS.
    let name = domain.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(UrlRefusal::NoHost);
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(Target::Ip(ip)),
        Err(_) => Ok(Target::Name(name)),
    }
}

/// Names that resolve to the local machine or to internal infrastructure whatever DNS says.
fn forbidden_name(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "instance-data",
    ];
    const SUFFIXES: &[&str] = &[
        ".localhost",
        ".local",
        ".localdomain",
        ".internal",
        ".home.arpa",
    ];
    EXACT.contains(&name) || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Returns why `ip` is not a public unicast address, or `None` when it is.
///
/// IPv6 forms that embed an IPv4 address (mapped, translated, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) are judged by the embedded address.
pub fn classify_ip(ip: IpAddr) -> Option<ForbiddenAddress> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<ForbiddenAddress> {
    use ForbiddenAddress as F;
    let [a, b, c, d] = ip.octets();
    Some(match (a, b, c, d) {
        (0, ..) => F::Unspecified,
        (127, ..) => F::Loopback,
        (10, ..) => F::Private,
        (172, 16..=31, ..) => F::Private,
        (192, 168, ..) => F::Private,
        (169, 254, 169, 254) => F::CloudMetadata,
        (169, 254, ..) => F::LinkLocal,
        (100, 64..=127, ..) => F::SharedCgnat,
        (224..=239, ..) => F::Multicast,
        (255, 255, 255, 255) => F::Broadcast,
        (240..=255, ..) => F::Reserved,
        (192, 0, 0, _) | (192, 88, 99, _) => F::Reserved,
        (192, 0, 2, _) | (198, 51, 100, _) | (203, 0, 113, _) => F::Documentation,
        (198, 18..=19, ..) => F::Benchmarking,
        _ => return None,
    })
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

fn classify_v6(ip: Ipv6Addr) -> Option<ForbiddenAddress> {
    use ForbiddenAddress as F;
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(F::Unspecified);
    }
    if ip.is_loopback() {
        return Some(F::Loopback);
    }
    match s {
        // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated).
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0xffff, 0, hi, lo] => {
            classify_v4(embedded_v4(hi, lo))
        }
        [0, 0, 0, 0, 0, 0, _, _] => Some(F::Ipv4Compatible),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => classify_v4(embedded_v4(hi, lo)),
        [0x64, 0xff9b, 1, ..] => Some(F::Nat64Local),
        [0x2002, hi, lo, ..] => classify_v4(embedded_v4(hi, lo)),
        [0x2001, 0, ..] => Some(F::Teredo),
        [0x2001, 0x0db8, ..] => Some(F::Documentation),
        [0x2001, 2, 0, ..] => Some(F::Benchmarking),
        [0x0100, 0, 0, 0, ..] => Some(F::Reserved),
        [x, ..] if x & 0xfe00 == 0xfc00 => Some(F::UniqueLocal),
        [x, ..] if x & 0xffc0 == 0xfe80 => Some(F::LinkLocal),
        [x, ..] if x & 0xffc0 == 0xfec0 => Some(F::SiteLocal),
        [x, ..] if x & 0xff00 == 0xff00 => Some(F::Multicast),
        [0x3fff, y, ..] if y & 0xf000 == 0 => Some(F::Documentation),
        // Anything outside 2000::/3 is not allocated for global unicast.
        [x, ..] if x & 0xe000 != 0x2000 => Some(F::Reserved),
        _ => None,
    }
}
