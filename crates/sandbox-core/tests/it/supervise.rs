//! The shared supervisor on real pipes, with a stand-in for the process: output that is all
//! there before supervision starts, output that goes on arriving after it, and the chunks a
//! stream listener gets.

use std::future::Future;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::time::{Duration, Instant};

use sandbox_core::supervise::{ChildPipes, ExitInfo, ProcessControl, Supervised, supervise};
use sandbox_core::{Limits, OutputChunk, OutputStream};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// A process that has already exited with status 0.
struct Exited;

impl ProcessControl for Exited {
    fn wait_exit(&self) -> Pin<Box<dyn Future<Output = io::Result<ExitInfo>> + Send + '_>> {
        Box::pin(async {
            Ok(ExitInfo {
                exit_code: Some(0),
                ..ExitInfo::default()
            })
        })
    }

    fn kill_tree(&self) {}

    fn violations(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A pipe whose read end is non-blocking, as the Linux backend hands them over.
fn nonblocking_pipe() -> (OwnedFd, io::PipeWriter) {
    let (reader, writer) = io::pipe().expect("pipe");
    let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .and_then(pipe::Receiver::into_nonblocking_fd)
        .expect("non-blocking read end");
    (reader, writer)
}

/// Bytes that differ at every offset, so a lost or repeated chunk shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Supervises an exited process whose output comes from the non-blocking read ends `stdout`
/// and `stderr`, with the default limits.
async fn supervise_exited(
    stdout: OwnedFd,
    stderr: OwnedFd,
    sink: Option<mpsc::Sender<OutputChunk>>,
) -> Supervised {
    let pipes = ChildPipes {
        stdin: None,
        stdout,
        stderr,
        nonblocking: true,
    };
    supervise(
        &Exited,
        pipes,
        Vec::new(),
        &Limits::default(),
        sink,
        Instant::now(),
    )
    .await
    .expect("supervised")
}

fn streamed(chunks: &[OutputChunk], stream: OutputStream) -> Vec<u8> {
    chunks
        .iter()
        .filter(|chunk| chunk.stream == stream)
        .flat_map(|chunk| chunk.data.iter().copied())
        .collect()
}

#[tokio::test]
async fn output_left_before_supervision_starts_is_read_whole_and_streamed() {
    let (stdout, mut stdout_writer) = nonblocking_pipe();
    let (stderr, mut stderr_writer) = nonblocking_pipe();
    // Less than a pipe holds: written and closed before supervision, as by a program that
    // has already exited.
    let out = pattern(10_000, 0x11);
    let err = pattern(300, 0x22);
    stdout_writer.write_all(&out).expect("stdout");
    stderr_writer.write_all(&err).expect("stderr");
    drop((stdout_writer, stderr_writer));

    let (sink, mut chunks) = mpsc::channel(64);
    let supervised = supervise_exited(stdout, stderr, Some(sink)).await;

    assert_eq!(supervised.stdout.bytes, out);
    assert_eq!(supervised.stderr.bytes, err);
    assert!(!supervised.stdout.truncated && !supervised.stderr.truncated);
    let mut received = Vec::new();
    while let Ok(chunk) = chunks.try_recv() {
        received.push(chunk);
    }
    assert_eq!(streamed(&received, OutputStream::Stdout), out);
    assert_eq!(streamed(&received, OutputStream::Stderr), err);
}

#[tokio::test]
async fn output_that_goes_on_after_supervision_starts_is_read_whole_and_in_order() {
    let (stdout, mut stdout_writer) = nonblocking_pipe();
    let (stderr, stderr_writer) = nonblocking_pipe();
    drop(stderr_writer);
    // Part of it is in the pipe when supervision starts; the rest, many pipe buffers more,
    // comes later from a thread that blocks until the supervisor reads.
    let out = pattern(1024 * 1024, 0x33);
    let expected = out.clone();
    let first = 60_000;
    stdout_writer.write_all(&out[..first]).expect("first part");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        stdout_writer.write_all(&out[first..]).expect("second part");
    });

    let supervised = supervise_exited(stdout, stderr, None).await;
    writer.join().expect("writer");

    assert_eq!(supervised.stdout.bytes.len(), expected.len());
    assert!(supervised.stdout.bytes == expected, "stdout differs");
    assert!(supervised.stderr.bytes.is_empty());
}
