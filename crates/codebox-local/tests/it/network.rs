//! Network allowlists (isolation research, case 15 with the opt-in): a box with an allowlist
//! reaches the listed hosts through codebox's proxy and nothing else; a confined box's
//! installer reaches the package indexes the same way, and never host loopback.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind};
use codebox_local::{Allowlist, Isolation, SandboxPolicy};
use codebox_sandbox::{InstallerNetwork, LoopbackProxy, NetProxy};

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
        .with_sandbox(
            SandboxPolicy::default()
                .with_isolation(Isolation::Bubblewrap)
                .with_require_isolation(true)
                // A service on host loopback: only the operator's explicit option lets a box reach it.
                .with_network_allowlist(Allowlist::parse_allowing_local(&[format!("127.0.0.1:{allowed}")]).unwrap()),
        )
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
        .with_sandbox(SandboxPolicy::default().with_isolation(Isolation::Landlock).with_network_allowlist(list.clone()))
        .build()
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("needs the bubblewrap isolation level"), "{err}");

    let err = builder()
        .with_sandbox(SandboxPolicy::default().with_network(true).with_network_allowlist(list))
        .build()
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("either the host network or a network allowlist"), "{err}");

    let err = Allowlist::parse(&["https://pypi.org"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// Runs first in a bubblewrap installer, as in a kernel: the proxy as `127.0.0.1:3128`.
const FORWARDER: &str = include_str!("../../src/python/net_forwarder.py");

/// What code run as a confined box's installer (as a package's build would be) reaches:
/// one fact per line.
const INSTALLER_PROBE: &str = r#"
import os, socket, http.client
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
        return "connected"
    except OSError as e:
        return type(e).__name__
def udp(port):
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", port))
        return "sent"
    except OSError as e:
        return type(e).__name__
def tunnel(host, port):
    proxy_host, proxy_port = os.environ["HTTPS_PROXY"].split("//")[1].rsplit(":", 1)
    c = http.client.HTTPConnection(proxy_host, int(proxy_port), timeout=20)
    c.set_tunnel(host, port)
    try:
        c.connect()
        return "open"
    except OSError as e:
        return str(e)
print("direct=" + direct(PORT))
print("udp=" + udp(UDP_PORT))
print("loopback=" + tunnel("localhost", PORT))
print("index=" + tunnel("pypi.org", 443))
print("other=" + tunnel("example.org", 443))
"#;

/// An installer of a box at `isolation` runs the probe behind the proxy of the package
/// indexes (PyPI): it reaches PyPI through the proxy, and neither host loopback (not
/// directly, not over UDP, not through the proxy by a name that resolves there) nor a host
/// off the list.
async fn an_installer_reaches_the_package_indexes_only(isolation: Isolation) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let probe = INSTALLER_PROBE
        .replace("UDP_PORT", &udp.local_addr().unwrap().port().to_string())
        .replace("PORT", &tcp.local_addr().unwrap().port().to_string());
    let policy = SandboxPolicy::default().with_isolation(isolation).with_require_isolation(true);
    let work = tempfile::tempdir().unwrap();
    let confinement = policy.confine(work.path()).unwrap();
    let indexes = Allowlist::package_indexes(&[]).unwrap();
    let python = std::path::Path::new("/usr/bin/python3");
    let proxy_dir = tempfile::tempdir().unwrap();
    let (_unix, _tcp, network, env, program) = match isolation {
        Isolation::Bubblewrap => {
            let proxy = NetProxy::start(&proxy_dir.path().join("net.sock"), indexes).unwrap();
            let env = codebox_sandbox::proxy_env(proxy.socket());
            (Some(proxy), None, InstallerNetwork::ProxySocket(proxy_dir.path()), env, format!("{FORWARDER}\n{probe}"))
        }
        _ => {
            let proxy = LoopbackProxy::start(indexes).await.unwrap();
            let (network, env) = (InstallerNetwork::ProxyPort(proxy.port()), proxy.env());
            (None, Some(proxy), network, env, probe)
        }
    };
    let argv = ["/usr/bin/python3", "-I", "-c", &program].map(str::to_owned);
    let prepared = confinement.prepare_installer(&argv, &env, python, &[], network).unwrap();
    let mut cmd = tokio::process::Command::from(prepared.command);
    let out = cmd.output().await.unwrap();
    drop(prepared.guard);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let facts: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    match isolation {
        // Its own network namespace: host loopback is not there at all.
        Isolation::Bubblewrap => {
            assert_eq!(facts["direct"], "ConnectionRefusedError", "{facts:?}");
        }
        // Landlock lets TCP reach the proxy's port alone; seccomp allows stream sockets only.
        _ => {
            assert_eq!(facts["direct"], "PermissionError", "{facts:?}");
            assert_eq!(facts["udp"], "PermissionError", "{facts:?}");
        }
    }
    assert!(facts["loopback"].contains("403"), "{facts:?}");
    assert!(facts["other"].contains("403"), "{facts:?}");
    assert_eq!(facts["index"], "open", "{facts:?}");
    assert!(tcp.accept().is_err(), "a connection reached host loopback");
    assert!(udp.recv(&mut [0u8; 16]).is_err(), "a datagram reached host loopback");
    // Each level has its one installer network: the host's is for the `none` level alone.
    let err = confinement.prepare_installer(&argv, &env, python, &[], InstallerNetwork::Host).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[tokio::test]
async fn a_bubblewrap_installer_reaches_the_package_indexes_only() {
    an_installer_reaches_the_package_indexes_only(Isolation::Bubblewrap).await;
}

#[tokio::test]
async fn a_landlock_installer_reaches_the_package_indexes_only() {
    an_installer_reaches_the_package_indexes_only(Isolation::Landlock).await;
}
