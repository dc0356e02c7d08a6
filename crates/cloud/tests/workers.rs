//! `halo-cloud serve --workers N`: the runtime serves on exactly N worker threads
//! (as `/metrics` reports them), and a count of 0 is refused before anything starts.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

mod support;
use support::{CloudProcess, start_cloud};

const ADMIN: &str = "workers-test-admin-token-0123";

fn serve(dir: &std::path::Path, workers: &str) -> (CloudProcess, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_halo-cloud"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
        .args(["--workers", workers])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    start_cloud(command)
}

/// A GET of `path` with the admin token, on a connection of its own: the whole answer.
fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[test]
fn the_runtime_serves_on_the_workers_asked_for() {
    for (workers, expected) in [("1", 1), ("3", 3)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_cloud, addr) = serve(dir.path(), workers);
        let answer = get(&addr, "/healthz");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let metrics = get(&addr, "/metrics");
        let line = metrics
            .lines()
            .find(|line| line.starts_with("halo_runtime_workers "))
            .unwrap_or_else(|| panic!("no halo_runtime_workers in {metrics}"));
        assert_eq!(
            line,
            format!("halo_runtime_workers {expected}"),
            "--workers {workers}"
        );
    }
}

#[test]
fn zero_workers_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_halo-cloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
        .args(["--workers", "0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run halo-cloud");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--workers"), "{stderr}");
}
