//! A client of `vmm --api-socket` for tests: Debian's `curl` for what a
//! user sends, a raw socket for what no client should send, and what the
//! host sees of the VM's threads.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A reply as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Waits until something listens at `socket`.
pub fn wait_for_socket(socket: &Path, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while UnixStream::connect(socket).is_err() {
        if start.elapsed() > within {
            return Err(format!(
                "nothing listens at {} after {within:?}",
                socket.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `curl --unix-socket SOCKET -X METHOD http://localhost/api/v1/NAME`,
/// with `body` as JSON when given.
pub fn curl(socket: &Path, method: &str, name: &str, body: Option<&str>) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        "--unix-socket",
    ])
    .arg(socket)
    .args(["-X", method, "--write-out", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    cmd.arg(format!("http://localhost/api/v1/{name}"));
    let out = cmd.output().unwrap_or_else(|e| panic!("curl runs: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        status: status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {name}: no status in {text:?} ({})",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
        body: body.to_owned(),
    }
}

/// Sends `request` as it is and reads until the server closes (or 60 s
/// pass): the raw response.
pub fn raw(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    // A server that refuses early may close before all is written.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// One request on `stream`, its answer read to the end of its body
/// (by Content-Length: Cloud Hypervisor's server keeps the connection
/// open): the status and the body.
pub fn exchange(
    stream: &mut UnixStream,
    method: &str,
    name: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} /api/v1/{name} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{method} {name}: write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // A signal the caller handles (the conformance runner's) may cut
        // the read short: it is read again.
        let n = match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.map_err(|e| format!("{method} {name}: read: {e}"))?,
        };
        if n == 0 {
            return Err(format!("{method} {name}: the server closed the connection"));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if body.len() >= length {
            let status =
                status_of(head).ok_or_else(|| format!("{method} {name}: no status in {head:?}"))?;
            return Ok((status, body[..length].to_owned()));
        }
    }
}

/// One request on a fresh connection, without curl and without panics
/// (for the conformance runner and the benchmarks).
pub fn call(
    socket: &Path,
    method: &str,
    name: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    exchange(&mut stream, method, name, body)
}

/// A PUT that must succeed (any 2xx status): the error names the request,
/// the status and the body otherwise.
pub fn put(socket: &Path, name: &str, body: Option<&str>) -> Result<(), String> {
    match call(socket, "PUT", name, body)? {
        (200..=299, _) => Ok(()),
        (status, body) => Err(format!("{name}: {status} {body}")),
    }
}

/// The status of a raw response's first line.
pub fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (clock ticks, user and system) the threads of `pid` named
/// `vcpu*` have used.
pub fn vcpu_cpu_ticks(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("vcpu"))
        })
        .map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised name: utime is the 14th field
            // of the line, stime the 15th.
            let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            field(14).unwrap_or(0) + field(15).unwrap_or(0)
        })
        .sum()
}
