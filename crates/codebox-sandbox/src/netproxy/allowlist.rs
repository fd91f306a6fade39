//! The hosts a box may reach: allowlist entries, the package index hosts of pip's settings,
//! and the local addresses a box never reaches unless its operator allows them.

use std::net::IpAddr;

use codebox_core::{CodeBoxError, Result};

/// One allowed destination: a host name (or `*.suffix` for its subdomains), or an IP
/// address, with an optional port (any port when absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rule {
    host: String,
    port: Option<u16>,
}

/// The hosts a box may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Allowlist {
    rules: Vec<Rule>,
    /// Whether the listed hosts may be reached at local addresses (see [`is_local_address`]).
    pub(super) local: bool,
}

impl Allowlist {
    /// Parse entries like `pypi.org`, `files.pythonhosted.org:443`, `*.example.com` or
    /// `203.0.113.7:8080`. The hosts are reached at public addresses only: an entry that is a
    /// loopback, link-local, private or otherwise local address is refused, and a name that
    /// resolves to one only is refused when the box asks for it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let list = Self::parse_allowing_local(entries)?;
        let local = list.rules.iter().find(|r| r.host.parse::<IpAddr>().is_ok_and(is_local_address));
        if let Some(r) = local {
            return Err(CodeBoxError::invalid(format!(
                "network allowlist entry {:?}: a local address (loopback, link-local, private or this host's); \
                 a box reaches public addresses only",
                r.host
            )));
        }
        Ok(Self { local: false, ..list })
    }

    /// Like [`Allowlist::parse`], but the hosts may be reached at any address, local ones
    /// included (`[::1]:80`, `10.0.0.5:8080`, a name resolving to `127.0.0.1`): for an
    /// operator who means a box to reach a service on this host or its network.
    pub fn parse_allowing_local<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let mut rules = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let bad = |why: &str| CodeBoxError::invalid(format!("network allowlist entry {entry:?}: {why}"));
            let (host, port) = split_host_port(entry).ok_or_else(|| bad("expected host or host:port"))?;
            let port = match port {
                Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("bad port"))?),
                None => None,
            };
            let host = host.to_ascii_lowercase();
            let name = host.strip_prefix("*.").unwrap_or(&host);
            let valid_name = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !(valid_name || host.parse::<IpAddr>().is_ok()) {
                return Err(bad("not a host name or IP address"));
            }
            rules.push(Rule { host, port });
        }
        Ok(Self { rules, local: true })
    }

    /// The package index hosts pip reaches with the settings `pip` (`PIP_INDEX_URL`,
    /// `PIP_EXTRA_INDEX_URL`, `PIP_FIND_LINKS`, as `(name, value)`): the host and port of
    /// each `http(s)://` URL among them; with no index URL, PyPI (`pypi.org` and
    /// `files.pythonhosted.org`, where its files are). At public addresses only.
    pub fn package_indexes(pip: &[(String, String)]) -> Result<Self> {
        let value = |name: &str| pip.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let mut entries: Vec<String> = Vec::new();
        if value("PIP_INDEX_URL").is_none_or(|v| v.trim().is_empty()) {
            entries.extend(["pypi.org:443", "files.pythonhosted.org:443"].map(str::to_owned));
        }
        for name in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"] {
            let urls = value(name).unwrap_or_default().split_whitespace();
            entries.extend(urls.filter_map(url_authority));
        }
        Self::parse(&entries)
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `host:port` may be reached.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|r| {
            let host_ok = match r.host.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix) && {
                        host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    }
                }
                None => r.host == host,
            };
            host_ok && r.port.is_none_or(|p| p == port)
        })
    }
}

/// `host:port` of an `http://` or `https://` URL (the scheme's port when it names none);
/// `None` for anything else (a local path, `file:`).
fn url_authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_host_port(authority)?;
    let port = port.map_or(Some(default), |p| p.parse().ok())?;
    Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// Whether a box must not reach `ip` through the proxy (unless its allowlist allows local
/// addresses): loopback, unspecified, link-local, multicast, broadcast, private (RFC 1918,
/// shared address space, unique-local), an IPv4 address inside IPv6 (mapped, compatible,
/// NAT64) that is one of these, or an address of this host's own interfaces (which reach
/// whatever listens on all of them, this server included).
pub(crate) fn is_local_address(ip: IpAddr) -> bool {
    let v4_local = |v4: std::net::Ipv4Addr| {
        let [a, b, ..] = v4.octets();
        v4.is_loopback()
            || v4.is_unspecified()
            || v4.is_link_local()
            || v4.is_multicast()
            || v4.is_broadcast()
            || v4.is_private()
            || a == 0
            || (a == 100 && (64..128).contains(&b))
            || a >= 240
    };
    let by_range = match ip {
        IpAddr::V4(v4) => v4_local(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = match s {
                [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0, 0, ..] => {
                    Some(v6.to_ipv4().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED))
                }
                [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
                    Some(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
                }
                _ => None,
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || embedded.is_some_and(v4_local)
        }
    };
    // An address this host can bind is one of its own.
    by_range || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address has no port.
pub(super) fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    if s.parse::<IpAddr>().is_ok() {
        return Some((s, None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None if !s.is_empty() => Some((s, None)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_match() {
        let entries = ["PyPI.org", "files.pythonhosted.org:443", "*.example.com", "10.0.0.5:8080", "[::1]:80"];
        let a = Allowlist::parse_allowing_local(&entries).unwrap();
        assert!(a.allows("pypi.org", 443) && a.allows("pypi.org", 80) && a.allows("PYPI.ORG.", 1));
        assert!(a.allows("files.pythonhosted.org", 443) && !a.allows("files.pythonhosted.org", 80));
        assert!(a.allows("a.example.com", 1) && a.allows("a.b.example.com", 1));
        assert!(!a.allows("example.com", 1) && !a.allows("badexample.com", 1));
        assert!(a.allows("10.0.0.5", 8080) && !a.allows("10.0.0.5", 22));
        assert!(a.allows("::1", 80));
        assert!(!a.allows("evil.org", 443) && !a.allows("pypi.org.evil.org", 443));
        assert!(Allowlist::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_named() {
        for bad in ["", "host:0", "host:99999", "a b", "x:y:z", "http://x", "-.-/", "*."] {
            let err = Allowlist::parse(&[bad]).unwrap_err().to_string();
            assert!(err.contains("network allowlist entry"), "{bad}: {err}");
        }
    }

    #[test]
    fn local_addresses_are_refused_as_entries_unless_the_operator_allows_them() {
        for entry in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:80",
            "10.0.0.5",
            "169.254.169.254",
            "0.0.0.0",
            "[fe80::1]",
            "[::ffff:127.0.0.1]:1",
            "192.168.1.1",
            "100.64.0.1",
            "[fd00::1]",
        ] {
            let err = Allowlist::parse(&[entry]).unwrap_err().to_string();
            assert!(err.contains("a local address"), "{entry}: {err}");
            assert!(Allowlist::parse_allowing_local(&[entry]).is_ok(), "{entry}");
        }
        assert!(Allowlist::parse(&["203.0.113.80:443", "8.8.8.8", "[2001:4860:4860::8888]:443", "localhost"]).is_ok());
        for ip in ["127.0.0.2", "::1", "224.0.0.1", "255.255.255.255", "172.16.0.1", "[64:ff9b::7f00:1]"] {
            let ip: IpAddr = ip.trim_matches(['[', ']']).parse().unwrap();
            assert!(is_local_address(ip), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888", "203.0.113.80"] {
            assert!(!is_local_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn package_indexes_come_from_the_pip_settings() {
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let pypi = Allowlist::package_indexes(&[]).unwrap();
        assert!(pypi.allows("pypi.org", 443) && pypi.allows("files.pythonhosted.org", 443));
        assert!(!pypi.allows("pypi.org", 80) && !pypi.allows("example.org", 443));
        let own = Allowlist::package_indexes(&set(&[
            ("PIP_INDEX_URL", "https://user:pw@mirror.example.org:8443/simple"),
            ("PIP_EXTRA_INDEX_URL", "http://extra.example.org/simple https://third.example.org"),
            ("PIP_FIND_LINKS", "/opt/wheels file:///srv/w https://wheels.example.org/w/"),
        ]))
        .unwrap();
        assert!(own.allows("mirror.example.org", 8443) && own.allows("extra.example.org", 80));
        assert!(own.allows("third.example.org", 443) && own.allows("wheels.example.org", 443));
        assert!(!own.allows("pypi.org", 443), "an index of its own replaces PyPI");
        let local = Allowlist::package_indexes(&set(&[("PIP_INDEX_URL", "http://127.0.0.1:3141/simple")]));
        assert!(local.is_err(), "an index on a local address is refused like any entry");
    }
}
