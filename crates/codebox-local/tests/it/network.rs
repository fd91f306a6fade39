//! Network allowlists (isolation research, case 15 with the opt-in): a box with an allowlist
//! reaches the listed hosts through codebox's proxy and nothing else.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind};
use codebox_local::{Allowlist, Isolation};

use crate::builder;

/// A one-line HTTP server on host loopback answering every request with `name`.
fn serve_http(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}", name.len());
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    port
}

#[tokio::test]
async fn case15_only_allowlisted_hosts_are_reachable() {
    let allowed = serve_http("allowed");
    let other = serve_http("other");
    let lb = builder()
        .with_isolation(Isolation::Bubblewrap)
        .with_require_isolation(true)
        // A service on host loopback: only the operator's explicit option lets a box reach it.
        .with_network_allowlist(Allowlist::parse_allowing_local(&[format!("127.0.0.1:{allowed}")]).unwrap())
        .build()
        .unwrap();
    lb.start().await.unwrap();
    let code = format!(
        r#"
import urllib.request, urllib.error, socket, http.client
def get(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{{port}}/x", timeout=10).read().decode()
    except urllib.error.HTTPError as e:
        return f"{{e.code}} {{e.read().decode().strip()}}"
def tunnel(port):
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    c.set_tunnel("127.0.0.1", port)
    try:
        c.request("GET", "/t")
        return c.getresponse().read().decode()
    except OSError as e:
        return str(e)
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
        return "connected"
    except OSError as e:
        return type(e).__name__
def dns():
    try:
        socket.getaddrinfo("example.com", 80)
        return "ok"
    except socket.gaierror:
        return "fail"
print(f"allowed={{get({allowed})}}")
print(f"other={{get({other})}}")
print(f"tunnel={{tunnel({allowed})}}")
print(f"tunnel_other={{tunnel({other})}}")
print(f"direct={{direct({allowed})}}")
print(f"dns={{dns()}}")
"#
    );
    let ex = lb.exec(&code).await.unwrap();
    assert!(ex.is_ok(), "{:?}", ex.error());
    let facts: BTreeMap<String, String> =
        ex.stdout().lines().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
    assert_eq!(facts["allowed"], "allowed");
    assert_eq!(facts["other"], format!("403 codebox: 127.0.0.1:{other} is not on this box's network allowlist"));
    assert_eq!(facts["tunnel"], "allowed");
    assert!(facts["tunnel_other"].contains("403"), "{facts:?}");
    assert_eq!(facts["direct"], "ConnectionRefusedError", "no route around the proxy");
    assert_eq!(facts["dns"], "fail");

    // pip keeps the private network too: pypi.org is not on the list, so the proxy refuses it.
    let err = lb.install(&["codebox-allowlist-probe".to_owned()]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Install);
    assert!(err.to_string().contains("403"), "pip went through the proxy and was refused: {err}");

    // The proxy is there again after a restart (it lives with each kernel).
    lb.restart().await.unwrap();
    let again =
        lb.exec(&format!("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{allowed}/').read()")).await;
    assert_eq!(again.unwrap().text(), "b'allowed'");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn an_allowlist_without_a_private_network_is_refused() {
    let list = Allowlist::parse(&["pypi.org"]).unwrap();
    let err = builder()
        .with_isolation(Isolation::Landlock)
        .with_network_allowlist(list.clone())
        .build()
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("needs the bubblewrap isolation level"), "{err}");

    let err = builder().with_network(true).with_network_allowlist(list).build().map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("either the host network or a network allowlist"), "{err}");

    let err = Allowlist::parse(&["https://pypi.org"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
