//! Network attacks, checked from the listener's side.

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sandbox_core::{NetworkMode, NetworkSpec, PolicySpec};

use crate::*;

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn tcp(connect: Vec<u32>, bind: Vec<u32>) -> PolicySpec {
    PolicySpec {
        network: NetworkSpec {
            mode: NetworkMode::Tcp,
            connect_ports: connect,
            bind_ports: bind,
        },
        ..PolicySpec::default()
    }
}

fn connect_code(port: u16) -> String {
    format!(
        "import socket\nattempt(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2))"
    )
}

fn saw_connection(l: &TcpListener) -> bool {
    std::thread::sleep(Duration::from_millis(50));
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn network_none_denies_sockets() {
    let (l, port) = listener();
    let out = attack(policy(PolicySpec::default()), &connect_code(port));
    assert_eq!(stdout(&out), "DENIED EPERM\n", "{}", stderr(&out));
    assert!(!saw_connection(&l));
}

#[test]
fn tcp_connect_only_to_allowed_ports() {
    let (l, port) = listener();
    let (_other, other_port) = listener();
    let out = attack(
        policy(tcp(vec![u32::from(other_port)], vec![])),
        &connect_code(port),
    );
    let denied = out.enforcement.network_ports;
    if denied {
        assert_eq!(stdout(&out), "DENIED EACCES\n", "{}", stderr(&out));
        assert!(!saw_connection(&l));
    } else {
        assert!(
            out.enforcement
                .missing
                .contains(&"network_ports".to_owned())
        );
    }
    // Positive control: the allowed port works.
    let out = attack(
        policy(tcp(vec![u32::from(port)], vec![])),
        &connect_code(port),
    );
    assert_eq!(stdout(&out), "ALLOWED\n", "{}", stderr(&out));
    assert!(saw_connection(&l));
}

#[test]
fn tcp_bind_only_to_allowed_ports() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let code = format!(
        "import socket\ns = socket.socket()\nattempt(lambda: s.bind(('127.0.0.1', {free})))"
    );
    let out = attack(policy(tcp(vec![], vec![])), &code);
    if out.enforcement.network_ports {
        assert_eq!(stdout(&out), "DENIED EACCES\n", "{}", stderr(&out));
    }
    let out = attack(policy(tcp(vec![], vec![u32::from(free)])), &code);
    assert_eq!(stdout(&out), "ALLOWED\n", "{}", stderr(&out));
}

#[test]
fn udp_is_denied_even_in_tcp_mode() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = udp.local_addr().unwrap().port();
    let code = format!(
        "import socket\nattempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
         .sendto(b'x', ('127.0.0.1', {port})))"
    );
    let out = attack(policy(tcp(vec![u32::from(port)], vec![])), &code);
    assert_eq!(stdout(&out), "DENIED EPERM\n", "{}", stderr(&out));
    let mut buf = [0u8; 8];
    assert!(udp.recv(&mut buf).is_err(), "the datagram arrived");
}

#[test]
fn unix_sockets_to_listeners_outside_are_denied() {
    let dir = open_dir();
    let path = dir.path().join("sock");
    let pathname = UnixListener::bind(&path).unwrap();
    pathname.set_nonblocking(true).unwrap();
    let name = format!("cordon-test-{}", marker("abstract"));
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = UnixListener::bind_addr(&addr).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
    let code = format!(
        "import socket\n\
         attempt(lambda: socket.socket(socket.AF_UNIX).connect({p:?}))\n\
         attempt(lambda: socket.socket(socket.AF_UNIX).connect('\\0{name}'))",
        p = path.display().to_string()
    );
    // Default policy: no AF_UNIX sockets at all.
    let out = attack(policy(PolicySpec::default()), &code);
    assert_eq!(
        stdout(&out),
        "DENIED EPERM\nDENIED EPERM\n",
        "{}",
        stderr(&out)
    );
    // With unix sockets allowed, Landlock scoping still keeps abstract sockets inside.
    let spec = PolicySpec {
        allow_unix_sockets: true,
        ..PolicySpec::default()
    };
    let out = attack(policy(spec), &code);
    let text = stdout(&out);
    if out.enforcement.ipc_scoping {
        assert_eq!(
            text.lines().nth(1),
            Some("DENIED EPERM"),
            "{text} {}",
            stderr(&out)
        );
    }
    assert!(abstract_listener.accept().is_err());
    // The pathname socket is guarded by its file permissions (0755 here, not writable by the
    // run's uid when the server is root).
    if is_root() {
        assert_eq!(text.lines().next(), Some("DENIED EACCES"), "{text}");
        assert!(pathname.accept().is_err());
    }
}
