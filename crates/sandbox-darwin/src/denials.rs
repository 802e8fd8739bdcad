//! Seatbelt denials, read from the unified log while a run is going on.
//!
//! The kernel logs every Seatbelt denial as `Sandbox: NAME(PID) deny(N) OPERATION TARGET`.
//! For each run the backend starts `/usr/bin/log stream` with a predicate on the sandbox's
//! messages before the child, and at the end keeps the lines of the run's main process.
//!
//! Limits, documented rather than hidden: this path only works on macOS and is not exercised
//! by the test suite on Linux (the line parser is); `log stream` needs a moment to attach, so
//! a denial in the first milliseconds of a run can be missed; denials of descendant processes
//! are not attributed to the run, because their pids are not known to the parent.

use std::time::Duration;

/// The unified-log reader shipped with macOS.
pub const LOG_PROGRAM: &str = "/usr/bin/log";

/// The `log stream` predicate: Seatbelt's denial messages.
pub const LOG_PREDICATE: &str = r#"sender == "Sandbox" AND eventMessage CONTAINS "deny(""#;

/// How long to keep reading after the child exited: the log is delivered asynchronously.
pub const LOG_GRACE: Duration = Duration::from_millis(300);

#[cfg(any(target_os = "macos", all(unix, feature = "test-stand-in")))]
pub(crate) use stream::DenialLog;

#[cfg(any(target_os = "macos", all(unix, feature = "test-stand-in")))]
mod stream {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex, PoisonError};

    use sandbox_core::RunError;

    use super::{LOG_GRACE, LOG_PREDICATE, parse_denial};

    /// A running `log stream`.
    #[derive(Debug)]
    pub(crate) struct DenialLog {
        child: Child,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl DenialLog {
        /// Starts `log stream` at `program`.
        pub(crate) fn start(program: &Path) -> Result<Self, RunError> {
            let mut child = Command::new(program)
                .args(["stream", "--style", "compact", "--predicate", LOG_PREDICATE])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| RunError::Io {
                    what: "starting log stream",
                    source,
                })?;
            let lines = Arc::new(Mutex::new(Vec::new()));
            if let Some(stdout) = child.stdout.take() {
                let sink = Arc::clone(&lines);
                // The thread ends when the log process is killed and its output closes.
                let spawned = std::thread::Builder::new()
                    .name("cordon-darwin-log".into())
                    .spawn(move || {
                        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                            sink.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(line);
                        }
                    });
                if let Err(source) = spawned {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RunError::Io {
                        what: "starting the log reader",
                        source,
                    });
                }
            }
            Ok(DenialLog { child, lines })
        }

        /// Waits [`LOG_GRACE`], stops the log and returns the denials of process `pid`.
        pub(crate) async fn finish(self, pid: i32) -> Vec<String> {
            tokio::time::sleep(LOG_GRACE).await;
            let lines =
                std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner));
            lines.iter().filter_map(|l| parse_denial(l, pid)).collect()
        }
    }

    impl Drop for DenialLog {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Turns one log line into `sandbox_denied: OPERATION TARGET` when it is a Seatbelt denial
/// of process `pid`.
pub fn parse_denial(line: &str, pid: i32) -> Option<String> {
    let (_, message) = line.split_once("Sandbox: ")?;
    let (process, rest) = message.split_once(" deny(")?;
    let open = process.rfind('(')?;
    let logged_pid: i32 = process[open + 1..].strip_suffix(')')?.parse().ok()?;
    if logged_pid != pid {
        return None;
    }
    let (_, what) = rest.split_once(") ")?;
    Some(format!("sandbox_denied: {}", what.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_of_the_run_are_parsed() {
        let line = "2025-01-01 10:00:00.000 E  kernel[0:1a2b] (Sandbox) Sandbox: cat(4242) \
                    deny(1) file-read-data /Users/me/.ssh/id_ed25519";
        assert_eq!(
            parse_denial(line, 4242).as_deref(),
            Some("sandbox_denied: file-read-data /Users/me/.ssh/id_ed25519")
        );
        assert_eq!(parse_denial(line, 4243), None);
    }

    #[test]
    fn names_with_parentheses_and_other_lines_are_handled() {
        let line = "kernel: Sandbox: my (tool)(77) deny(2) network-outbound 1.2.3.4:443";
        assert_eq!(
            parse_denial(line, 77).as_deref(),
            Some("sandbox_denied: network-outbound 1.2.3.4:443")
        );
        assert_eq!(parse_denial("Filtering the log data using ...", 77), None);
        assert_eq!(parse_denial("Sandbox: x(abc) deny(1) y z", 77), None);
    }
}
