//! Reading the head of a request to the proxy: where it wants to go, if it is a request the
//! proxy serves at all.

use super::allowlist::split_host_port;

/// The largest request head the proxy reads before deciding.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Where one request wants to go.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tunnel: bool,
}

/// What the bytes read so far say about a request head.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Not all of it has arrived.
    Partial,
    /// Not an HTTP/1 request head.
    Invalid,
    /// A whole head of `len` bytes, and where it wants to go when the proxy serves that.
    Complete { len: usize, target: Option<Target> },
}

/// Parse the request head at the start of `buf` with `httparse`.
pub(super) fn read_head(buf: &[u8]) -> Head {
    // Every header ends a line, so the lines seen bound the headers: no head within MAX_HEAD
    // is refused for having many of them.
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines + 1];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let target = request.method.zip(request.path).and_then(|(method, uri)| parse_target(method, uri));
            Head::Complete { len, target }
        }
        Err(_) => Head::Invalid,
    }
}

/// The destination of an HTTP/1 request for `uri` by `method`: `CONNECT host:port` or an
/// absolute `http://` URI. `None` for anything else.
pub(super) fn parse_target(method: &str, uri: &str) -> Option<Target> {
    let (authority, default_port, tunnel) = if method.eq_ignore_ascii_case("CONNECT") {
        (uri, None, true)
    } else {
        let rest = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("HTTP://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        (&rest[..end], Some(80), false)
    };
    if authority.contains('@') {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    let port = match (port, default_port) {
        (Some(p), _) => p.parse().ok()?,
        (None, Some(d)) => d,
        (None, None) => return None,
    };
    Some(Target { host: host.to_owned(), port, tunnel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_connect_and_absolute_requests_only() {
        let t = |s: &str| match read_head(s.as_bytes()) {
            Head::Complete { len, target } if len == s.len() => target,
            other => panic!("{s:?} is a whole head: {other:?}"),
        };
        assert_eq!(
            t("CONNECT pypi.org:443 HTTP/1.1\r\n\r\n"),
            Some(Target { host: "pypi.org".into(), port: 443, tunnel: true })
        );
        assert_eq!(
            t("GET http://h.org/x?y HTTP/1.1\r\n\r\n"),
            Some(Target { host: "h.org".into(), port: 80, tunnel: false })
        );
        assert_eq!(
            t("GET http://h.org:8080 HTTP/1.0\r\n\r\n"),
            Some(Target { host: "h.org".into(), port: 8080, tunnel: false })
        );
        assert_eq!(t("GET /relative HTTP/1.1\r\n\r\n"), None);
        assert_eq!(t("CONNECT pypi.org HTTP/1.1\r\n\r\n"), None, "CONNECT needs a port");
        assert_eq!(t("GET http://user@h.org/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(t("GET https://h.org/ HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn heads_are_read_whole_or_refused() {
        assert_eq!(read_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org"), Head::Partial);
        for bad in
            [&b"CONNECT pypi.org:443 HTTP/2.0\r\n\r\n"[..], b"GET  http://h.org/ HTTP/1.1\r\n\r\n", b"\x16\x03\x01"]
        {
            assert_eq!(read_head(bad), Head::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
        // As many headers as fit in the largest head the proxy reads.
        let mut many = b"GET http://h.org/ HTTP/1.1\r\n".to_vec();
        while many.len() < MAX_HEAD - 16 {
            many.extend_from_slice(b"X-A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let target = Some(Target { host: "h.org".into(), port: 80, tunnel: false });
        assert_eq!(read_head(&many), Head::Complete { len: many.len(), target });
    }
}
