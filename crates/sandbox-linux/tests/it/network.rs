//! Network attacks, checked from the listener's side.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use sandbox_core::{NetworkMode, NetworkSpec, PolicySpec, RunOutcome, Sandbox, Technology};

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

/// Whether `l` has received a connection from a run that has ended, tried for `within`. A
/// connection is made before the run ends, but the handshake's last step may still be on its
/// way through the kernel's loopback queue, which a loaded machine can defer.
fn connection_within(l: &TcpListener, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        match l.accept() {
            Ok(_) => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a refused run's connection reached `l` after all: a short grace suffices, since
/// nothing of the run is left to connect later.
fn saw_connection(l: &TcpListener) -> bool {
    connection_within(l, Duration::from_millis(50))
}

/// Whether an allowed run's connection reached `l`: it returns as soon as it has, so a long
/// bound costs a passing test nothing.
fn got_connection(l: &TcpListener) -> bool {
    connection_within(l, Duration::from_secs(5))
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
    assert!(got_connection(&l));
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

/// Sends to `port` through TCP Fast Open with `sendto`, `sendmsg` and `sendmmsg` (flag
/// `MSG_FASTOPEN`): each connects an unconnected socket and sends in one call.
fn fast_open_code(port: u16) -> String {
    format!(
        r#"import socket, struct
MSG_FASTOPEN = 0x20000000
addr = ('127.0.0.1', {port})
attempt(lambda: socket.socket().sendto(b'sendto', MSG_FASTOPEN, addr))
attempt(lambda: socket.socket().sendmsg([b'sendmsg'], [], MSG_FASTOPEN, addr))
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
class mmsghdr(ctypes.Structure):
    _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32),
                ('iov', ctypes.POINTER(iovec)), ('iovlen', ctypes.c_size_t),
                ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                ('flags', ctypes.c_int), ('len', ctypes.c_uint)]
name = ctypes.create_string_buffer(
    struct.pack('=H', socket.AF_INET) + struct.pack('!H', {port})
    + socket.inet_aton('127.0.0.1') + bytes(8), 16)
data = ctypes.create_string_buffer(b'sendmmsg', 8)
iov = iovec(ctypes.addressof(data), 8)
msg = mmsghdr(ctypes.addressof(name), 16, ctypes.pointer(iov), 1, None, 0, 0, 0)
s = socket.socket()
sys_call({sendmmsg}, s.fileno(), ctypes.addressof(msg), 1, MSG_FASTOPEN)
"#,
        sendmmsg = libc::SYS_sendmmsg,
    )
}

#[test]
fn tcp_fast_open_cannot_reach_ports_outside_connect_ports() {
    let (l, port) = listener();
    let (allowed, allowed_port) = listener();
    let spec = tcp(vec![u32::from(allowed_port)], vec![]);
    // Landlock's connect hook never sees a Fast Open connection, so seccomp refuses the flag,
    // under both kernel backends.
    for sandbox in [strongest(), backend(Technology::Seccomp)] {
        let technology = sandbox.technology();
        let out = attack_on(&sandbox, policy(spec.clone()), &fast_open_code(port));
        assert_eq!(
            stdout(&out),
            "DENIED EPERM\nDENIED EPERM\nDENIED EPERM\n",
            "{technology:?}: {}",
            stderr(&out)
        );
        assert!(!saw_connection(&l), "{technology:?}");
        // Positive control: a plain connection to the allowed port still works.
        let out = attack_on(&sandbox, policy(spec.clone()), &connect_code(allowed_port));
        assert_eq!(stdout(&out), "ALLOWED\n", "{}", stderr(&out));
        assert!(got_connection(&allowed), "{technology:?}");
    }
    // The same program without a sandbox does connect and send: the denial is the filter's.
    let out = attack_on(
        &backend(Technology::None),
        policy(spec),
        &fast_open_code(port),
    );
    assert_eq!(
        stdout(&out),
        "ALLOWED\nALLOWED\nALLOWED 1\n",
        "{}",
        stderr(&out)
    );
    assert!(got_connection(&l));
}

#[test]
fn tcp_fast_open_connect_goes_through_landlock() {
    let (l, port) = listener();
    let (_other, other_port) = listener();
    // TCP_FASTOPEN_CONNECT (30; Python 3.11 does not name it) defers the SYN to the first
    // write, but the address comes from connect(), which Landlock checks: a refused connect
    // leaves the write nowhere to send.
    let code = format!(
        "import socket\ns = socket.socket()\n\
         s.setsockopt(socket.IPPROTO_TCP, 30, 1)\n\
         attempt(lambda: s.connect(('127.0.0.1', {port})))\n\
         attempt(lambda: s.send(b'data'))"
    );
    let out = attack(policy(tcp(vec![u32::from(other_port)], vec![])), &code);
    if out.enforcement.network_ports {
        assert_eq!(
            stdout(&out),
            "DENIED EACCES\nDENIED EPIPE\n",
            "{}",
            stderr(&out)
        );
        assert!(!saw_connection(&l));
    }
    let out = attack(policy(tcp(vec![u32::from(port)], vec![])), &code);
    assert_eq!(stdout(&out), "ALLOWED\nALLOWED\n", "{}", stderr(&out));
    assert!(got_connection(&l));
}

/// Runs `code` with `sandbox` on a fresh TCP socket `s`, then makes `s` listen. A listening
/// program publishes its port in a shared directory and waits for one connection, which this
/// process attempts from outside; returns the outcome and whether the connection was made.
fn listen_from_outside(
    sandbox: &Arc<dyn Sandbox>,
    mut spec: PolicySpec,
    code: &str,
) -> (RunOutcome, bool) {
    let dir = open_dir();
    spec.write_paths.push(dir.path().display().to_string());
    let published = dir.path().join("port");
    let code = format!(
        "import socket\ns = socket.socket()\n{code}\n\
         try:\n    s.listen(1)\n\
         except OSError as e:\n    print('DENIED', errno.errorcode[e.errno])\n\
         else:\n    print('LISTENING')\n\
         \x20   with open({tmp:?}, 'w') as f: f.write(str(s.getsockname()[1]))\n\
         \x20   os.rename({tmp:?}, {published:?})\n\
         \x20   s.settimeout(20)\n\
         \x20   attempt(lambda: s.accept())",
        tmp = dir.path().join("port.tmp").display().to_string(),
        published = published.display().to_string(),
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outside = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(port) = std::fs::read_to_string(&published) {
                    let port: u16 = port.parse().expect("a port number");
                    return TcpStream::connect(("127.0.0.1", port)).is_ok();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };
    let out = attack_on(sandbox, policy(spec), &code);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, outside.join().expect("the outside thread"))
}

#[test]
fn listen_without_bind_ports_is_denied() {
    // listen() on an unbound socket takes an ephemeral port without a bind() that Landlock
    // could check, so with no bind port allowed seccomp refuses listen itself.
    for sandbox in [strongest(), backend(Technology::Seccomp)] {
        let technology = sandbox.technology();
        let (out, connected) = listen_from_outside(&sandbox, tcp(vec![], vec![]), "");
        assert_eq!(
            stdout(&out),
            "DENIED EPERM\n",
            "{technology:?}: {}",
            stderr(&out)
        );
        assert!(!connected, "{technology:?}");
    }
    // The same program without a sandbox listens and is reached from outside.
    let (out, connected) = listen_from_outside(&backend(Technology::None), tcp(vec![], vec![]), "");
    assert_eq!(stdout(&out), "LISTENING\nALLOWED\n", "{}", stderr(&out));
    assert!(connected);
}

#[test]
fn listen_on_an_allowed_bind_port_works() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, connected) = listen_from_outside(
        &strongest(),
        tcp(vec![], vec![u32::from(free)]),
        &format!("s.bind(('127.0.0.1', {free}))"),
    );
    assert_eq!(stdout(&out), "LISTENING\nALLOWED\n", "{}", stderr(&out));
    assert!(connected);
}
