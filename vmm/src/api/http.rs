//! HTTP/1.1 on the API's Unix socket, on threads of its own: each
//! connection is served by the thread that accepted it (so a client that
//! sends nothing, or sends slowly, holds only its own thread). Requests are parsed by `httparse`,
//! routed (`routes`) and handed to the VMM thread, whose answer goes back
//! as JSON. Only the socket's owner may talk to it: the socket is 0600
//! and each peer's uid is checked (SO_PEERCRED).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::routes::{self, HttpError};
use super::{ApiReply, Requests};

/// A request's line and headers: anything longer is no client of ours.
const MAX_HEAD: usize = 16 << 10;
/// A body (a VM configuration is a few KiB).
pub const MAX_BODY: usize = 1 << 20;
const MAX_HEADERS: usize = 64;
/// Connections served at once; more are told 503 and closed.
const MAX_CONNECTIONS: usize = 128;
/// A client silent this long mid-request, or between requests, is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Accepts until the listener fails for good (the process ends it). The
/// thread that accepts a connection serves it: no hand-off between
/// accepting and reading the request. While it serves, another thread
/// waits in `accept` (a new one if none is), so a silent client holds
/// up nobody; threads are kept for later connections once theirs ends,
/// so a request on a new connection (curl's, ch-remote's) costs no
/// thread start.
pub fn serve(listener: UnixListener, requests: Requests) {
    let acceptors = Arc::new(Acceptors {
        listener,
        requests,
        owner: effective_uid(),
        open: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
    });
    acceptors.accept_and_serve();
}

struct Acceptors {
    listener: UnixListener,
    requests: Requests,
    owner: u32,
    /// Connections being served.
    open: AtomicUsize,
    /// Threads waiting in `accept`.
    waiting: AtomicUsize,
}

impl Acceptors {
    fn accept_and_serve(self: &Arc<Self>) {
        loop {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let accepted = self.listener.accept();
            let last = self.waiting.fetch_sub(1, Ordering::SeqCst) == 1;
            match accepted {
                Ok((stream, _)) => {
                    if last {
                        // The last one waiting took a connection: another
                        // waits in its place before this one serves. (Not
                        // on a failed accept: this thread goes back to
                        // waiting itself, and EMFILE must not breed
                        // threads.)
                        self.spawn_waiter();
                    }
                    self.serve_one(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("API socket: accept failed: {e}");
                    // EMFILE and friends pass; do not spin meanwhile.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn spawn_waiter(self: &Arc<Self>) {
        let next = self.clone();
        let spawned = std::thread::Builder::new()
            .name("api-client".into())
            .spawn(move || next.accept_and_serve());
        if let Err(e) = spawned {
            log::error!("API socket: cannot start a client thread: {e}");
        }
    }

    fn serve_one(&self, mut stream: UnixStream) {
        // A stranger's request is read before it is refused: closing a
        // socket with unread data resets it, and the client would never
        // see why.
        let stranger = match peer_uid(&stream) {
            Ok(uid) if uid == self.owner => None,
            Ok(uid) => {
                log::warn!("API socket: refused a client of uid {uid}");
                Some(uid)
            }
            Err(e) => {
                log::warn!("API socket: cannot tell a client's uid: {e}");
                return;
            }
        };
        if self.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.open.fetch_sub(1, Ordering::SeqCst);
            // Whatever the client sent already, read without waiting.
            if stream.set_nonblocking(true).is_ok() {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                let _ = stream.set_nonblocking(false);
            }
            let _ = respond(&mut stream, &HttpError::Busy.reply(), false);
            return;
        }
        connection(stream, &self.requests, stranger);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one client's requests in turn until it closes, goes quiet or
/// sends something that ends the conversation; a `stranger` (another
/// uid) gets 403 for its first request, and nothing more.
fn connection(mut stream: UnixStream, requests: &Requests, stranger: Option<u32>) {
    if stream.set_read_timeout(Some(IDLE)).is_err() || stream.set_write_timeout(Some(IDLE)).is_err()
    {
        return;
    }
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                log::debug!("API socket: {error}");
                let _ = respond(&mut stream, &error.reply(), false);
                return;
            }
        };
        if let Some(uid) = stranger {
            let _ = respond(&mut stream, &HttpError::Forbidden(uid).reply(), false);
            return;
        }
        let (reply, asked, keep_alive) =
            match routes::route(&request.method, &request.path, &request.body) {
                Ok(api) => (requests.ask(api), true, request.keep_alive),
                Err(error) => (
                    error.reply(),
                    false,
                    request.keep_alive && !error.ends_connection(),
                ),
            };
        let written = respond(&mut stream, &reply, keep_alive);
        if asked {
            requests.answered();
        }
        if written.is_err() || !keep_alive {
            return;
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    keep_alive: bool,
}

/// The next request on the connection, with its whole body; None when the
/// client closed (or went quiet) between requests.
fn read_request<S: Read + Write>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, HttpError> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let request = head(&parsed)?;
                let body_len = request.content_length;
                if body_len > MAX_BODY {
                    return Err(HttpError::TooLarge(body_len));
                }
                buffer.drain(..head_len);
                if request.expect_continue && buffer.len() < body_len {
                    // The client waits for this before it sends the body.
                    let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                while buffer.len() < body_len {
                    match stream.read(&mut chunk) {
                        Ok(0) => return Err(HttpError::Truncated),
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Err(HttpError::Truncated),
                    }
                }
                let body: Vec<u8> = buffer.drain(..body_len).collect();
                return Ok(Some(Request {
                    method: request.method,
                    path: request.path,
                    body,
                    keep_alive: request.keep_alive,
                }));
            }
            Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD => {
                return Err(HttpError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        match stream.read(&mut chunk) {
            Ok(0) if buffer.is_empty() => return Ok(None),
            Ok(0) => return Err(HttpError::Truncated),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if buffer.is_empty() => return Ok(None),
            Err(_) => return Err(HttpError::Truncated),
        }
    }
}

/// What the head of a request says.
struct Head {
    method: String,
    path: String,
    content_length: usize,
    keep_alive: bool,
    expect_continue: bool,
}

fn head(parsed: &httparse::Request<'_, '_>) -> Result<Head, HttpError> {
    let method = parsed.method.unwrap_or_default().to_owned();
    let path = parsed.path.unwrap_or_default().to_owned();
    // HTTP/1.0 closes unless asked not to; 1.1 keeps the connection.
    let mut keep_alive = parsed.version == Some(1);
    let mut content_length = 0;
    let mut expect_continue = false;
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        } else if header.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(Head {
        method,
        path,
        content_length,
        keep_alive,
        expect_continue,
    })
}

fn respond(stream: &mut UnixStream, reply: &ApiReply, keep_alive: bool) -> io::Result<()> {
    // No reason phrase, as Cloud Hypervisor's server writes it: ch-remote
    // reads everything after the version as the status number.
    let mut out = format!("HTTP/1.1 {} \r\nServer: vmm\r\n", reply.status);
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    match &reply.body {
        Some(body) => {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ));
            out.push_str(body);
        }
        // 204 carries no Content-Length (RFC 9110, 8.6).
        None if reply.status == 204 => out.push_str("\r\n"),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain data; zero is valid for each field.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` outlive the call and `len` says how much
    // room `cred` has; the result is checked.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// What the server makes of `bytes` arriving on one connection: each
/// request in turn, routed, or the error that ends the connection. For
/// the fuzz target; no VMM answers, so a routed request is returned as is.
#[cfg(feature = "fuzzing")]
pub fn parse_stream(bytes: &[u8]) -> Vec<Result<super::ApiRequest, HttpError>> {
    /// Reads the bytes; what the server writes (100 Continue) is dropped.
    struct Duplex<'a>(&'a [u8]);
    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut stream = Duplex(bytes);
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    loop {
        match read_request(&mut stream, &mut buffer) {
            Ok(Some(request)) => {
                let routed = routes::route(&request.method, &request.path, &request.body);
                let ends = routed.as_ref().is_err_and(HttpError::ends_connection);
                out.push(routed);
                if ends || !request.keep_alive {
                    return out;
                }
            }
            Ok(None) => return out,
            Err(error) => {
                out.push(Err(error));
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(reply: &ApiReply, keep_alive: bool) -> String {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        respond(&mut ours, reply, keep_alive).unwrap();
        drop(ours);
        let mut out = String::new();
        theirs.read_to_string(&mut out).unwrap();
        out
    }

    /// ch-remote reads everything between "HTTP/1.1 " and the line's end
    /// as the status number, and looks for "Content-Length" as written:
    /// with a reason phrase it failed on every answer.
    #[test]
    fn answers_are_framed_as_cloud_hypervisor_s_clients_read_them() {
        let ok = written(&ApiReply::json(&serde_json::json!({"a": 1})), true);
        assert!(ok.starts_with("HTTP/1.1 200 \r\n"), "{ok:?}");
        assert!(ok.contains("\r\nContent-Length: 7\r\n"), "{ok:?}");
        assert!(ok.ends_with("\r\n\r\n{\"a\":1}"), "{ok:?}");
        assert!(!ok.contains("Connection: close"), "{ok:?}");

        let none = written(&ApiReply::no_content(), false);
        assert!(none.starts_with("HTTP/1.1 204 \r\n"), "{none:?}");
        assert!(!none.contains("Content-Length"), "{none:?}");
        assert!(none.contains("Connection: close\r\n"), "{none:?}");

        let refused = written(&ApiReply::error(409, &["no".into()]), true);
        assert!(refused.starts_with("HTTP/1.1 409 \r\n"), "{refused:?}");
        assert!(refused.ends_with("[\"no\"]"), "{refused:?}");
    }
}
