//! The pre-flight: before any guest boots, the runner connects to a
//! backend it started, as a vhost-user frontend of its own, and asks what
//! the guests will depend on: GET_FEATURES, GET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM (with MQ) and, with CONFIG, the config window read at
//! offset 0 and again at a non-zero offset, to see whether the backend
//! honours GET_CONFIG's offset. Every request has a deadline: when one
//! passes, the socket is shut down and the blocked read returns.
//!
//! Each reply that is one u64 (GET_FEATURES, GET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM) is first asked here and its header checked to say 8
//! bytes: the vhost crate reads 8 bytes whatever the header says, and
//! QEMU, which believes the header, waits for ever for bytes a backend
//! that announces more never sends. Then the crate asks again, for its
//! own state.
//!
//! Each reply read here is also checked to bring no file descriptors:
//! none of them carries any, and past 32 the vhost crate's reader (and so
//! `vmm`) takes the kernel's "truncated" for a retry and loses the reply's
//! bytes, which looks like a reply that never came.
//!
//! The vhost crate's frontend sends all but GET_CONFIG. Its GET_CONFIG
//! reads the reply as if it had the size asked for, and the protocol's
//! refusal is shorter, so a backend that merely says no would cost the
//! whole deadline and the connection: GET_CONFIG is sent here, and
//! exactly the bytes the reply's header announces are read.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const GET_QUEUE_NUM: u32 = 17;
const GET_CONFIG: u32 = 24;
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const HEADER_LEN: usize = 12;
/// VhostUserConfig: offset, size, flags.
const CONFIG_HEADER_LEN: usize = 12;
/// The most descriptors one message can bring (the kernel's SCM_MAX_FD).
const MAX_FDS: usize = 253;
/// The protocol's largest config payload (VHOST_USER_CONFIG_SIZE).
pub const MAX_CONFIG: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no reply within {after:?}")]
    NoReply { what: &'static str, after: Duration },
    #[error("{what} failed")]
    Request {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("GET_CONFIG failed")]
    Io(#[source] std::io::Error),
    #[error("{what} reply is not one: request {code}, flags {flags:#x}, {len} bytes")]
    NotAReply {
        what: &'static str,
        code: u32,
        flags: u32,
        len: u32,
    },
    #[error("{what}: the reply's header announces {announced} bytes where the reply is a u64 of 8 (a frontend that believes the header, as QEMU does, waits for ever for the rest)")]
    ReplySize { what: &'static str, announced: u32 },
    #[error("{what}: the reply brings {count} file descriptors where it brings none (past 32, a frontend built on the vhost crate, as vmm is, loses the reply's bytes with them)")]
    ReplyFds { what: &'static str, count: String },
    #[error("Failed to start the deadline thread")]
    Thread(#[source] std::io::Error),
}

/// How GET_CONFIG of `size` bytes at `offset` was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigReply {
    Bytes(Vec<u8>),
    /// The protocol's refusal: a reply of size 0.
    Refused,
    /// A reply for another offset or size than asked.
    Wrong {
        offset: u32,
        size: u32,
    },
}

/// Two reads of the config window: the whole window at offset 0, then
/// what follows `offset` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReads {
    pub window: u32,
    pub at_zero: ConfigReply,
    pub offset: u32,
    pub at_offset: Option<ConfigReply>,
}

/// What the backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub features: u64,
    /// None when the backend lacks VHOST_USER_F_PROTOCOL_FEATURES.
    pub protocol: Option<VhostUserProtocolFeatures>,
    /// With MQ only.
    pub queue_num: Option<u64>,
    /// With CONFIG and a window of at least one byte.
    pub config: Option<ConfigReads>,
}

/// The offset the second read uses: 4 (past the first 32-bit field), or 1
/// for windows of 4 bytes or fewer.
pub fn second_offset(window: u32) -> u32 {
    if window > 4 {
        4
    } else {
        1
    }
}

/// Connects to `socket` and asks. `window` gets the offered features and
/// says how many config bytes to read (0: none).
pub fn ask(
    socket: &Path,
    deadline: Duration,
    window: impl FnOnce(u64) -> u32,
) -> Result<Answers, Error> {
    let stream = connect(socket, deadline)?;
    let link = Link {
        socket: stream.try_clone().map_err(Error::Io)?,
        frontend: Frontend::from_stream(stream, 64),
        deadline,
    };
    let answers = link.ask(window);
    // Hang up: the backend sees its frontend go, as at a guest's end.
    let _ = link.socket.shutdown(Shutdown::Both);
    answers
}

/// Retries while the socket is missing or refuses (a backend starting).
fn connect(path: &Path, deadline: Duration) -> Result<UnixStream, Error> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && start.elapsed() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Connect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

struct Link {
    frontend: Frontend,
    /// The frontend's socket, for GET_CONFIG and the deadline.
    socket: UnixStream,
    deadline: Duration,
}

impl Link {
    fn ask(&self, window: impl FnOnce(u64) -> u32) -> Result<Answers, Error> {
        // A handle of our own: some requests take `&mut`, and the deadline
        // borrows the link.
        let mut frontend = self.frontend.clone();
        self.request("SET_OWNER", || frontend.set_owner())?;
        self.get_u64("GET_FEATURES", GET_FEATURES)?;
        let features = self.request("GET_FEATURES", || frontend.get_features())?;
        let mut answers = Answers {
            features,
            protocol: None,
            queue_num: None,
            config: None,
        };
        if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Ok(answers);
        }
        self.get_u64("GET_PROTOCOL_FEATURES", GET_PROTOCOL_FEATURES)?;
        let offered = self.request("GET_PROTOCOL_FEATURES", || frontend.get_protocol_features())?;
        answers.protocol = Some(offered);
        let used = offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG);
        self.request("SET_PROTOCOL_FEATURES", || {
            frontend.set_protocol_features(used)
        })?;
        if used.contains(VhostUserProtocolFeatures::MQ) {
            self.get_u64("GET_QUEUE_NUM", GET_QUEUE_NUM)?;
            answers.queue_num = Some(self.request("GET_QUEUE_NUM", || frontend.get_queue_num())?);
        }
        let window = window(features).min(MAX_CONFIG);
        if used.contains(VhostUserProtocolFeatures::CONFIG) && window > 0 {
            let at_zero = self.get_config(0, window)?;
            let offset = second_offset(window);
            let at_offset = match at_zero {
                ConfigReply::Bytes(_) => Some(self.get_config(offset, window - offset)?),
                _ => None,
            };
            answers.config = Some(ConfigReads {
                window,
                at_zero,
                offset,
                at_offset,
            });
        }
        Ok(answers)
    }

    /// Runs `op` with the deadline armed: past it the socket is shut down,
    /// the blocked read ends and the request fails as having no reply.
    fn with_deadline<T>(
        &self,
        what: &'static str,
        op: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let watched = self.socket.try_clone().map_err(Error::Io)?;
        let fired = Arc::new(AtomicBool::new(false));
        let (done, wait) = mpsc::channel::<()>();
        let deadline = self.deadline;
        let guard = {
            let fired = fired.clone();
            std::thread::Builder::new()
                .name("preflight-deadline".into())
                .spawn(move || {
                    if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(deadline) {
                        fired.store(true, Ordering::SeqCst);
                        let _ = watched.shutdown(Shutdown::Both);
                    }
                })
                .map_err(Error::Thread)?
        };
        let result = op();
        drop(done);
        let _ = guard.join();
        if fired.load(Ordering::SeqCst) {
            return Err(Error::NoReply {
                what,
                after: deadline,
            });
        }
        result
    }

    fn request<T>(
        &self,
        what: &'static str,
        op: impl FnOnce() -> vhost::Result<T>,
    ) -> Result<T, Error> {
        self.with_deadline(what, || {
            op().map_err(|source| Error::Request { what, source })
        })
    }

    fn get_config(&self, offset: u32, size: u32) -> Result<ConfigReply, Error> {
        self.with_deadline("GET_CONFIG", || get_config(&self.socket, offset, size))
    }

    fn get_u64(&self, what: &'static str, code: u32) -> Result<u64, Error> {
        self.with_deadline(what, || get_u64(&self.socket, what, code))
    }
}

/// Sends `code`, whose reply is one u64, and reads the reply only if its
/// header says 8 bytes.
fn get_u64(socket: &UnixStream, what: &'static str, code: u32) -> Result<u64, Error> {
    let mut request = Vec::with_capacity(HEADER_LEN);
    for word in [code, VERSION, 0] {
        request.extend_from_slice(&word.to_le_bytes());
    }
    (&*socket).write_all(&request).map_err(Error::Io)?;
    let header = read_reply_header(socket, what)?;
    let (got, flags, len) = (u32_at(&header, 0), u32_at(&header, 4), u32_at(&header, 8));
    if got != code || flags & (VERSION | REPLY) != VERSION | REPLY {
        return Err(Error::NotAReply {
            what,
            code: got,
            flags,
            len,
        });
    }
    if len != 8 {
        return Err(Error::ReplySize {
            what,
            announced: len,
        });
    }
    let mut body = [0u8; 8];
    (&*socket).read_exact(&mut body).map_err(Error::Io)?;
    Ok(u64::from_le_bytes(body))
}

/// Reads a reply's header, refusing one that brings file descriptors (they
/// come with a message's first bytes).
fn read_reply_header(socket: &UnixStream, what: &'static str) -> Result<[u8; HEADER_LEN], Error> {
    let mut header = [0u8; HEADER_LEN];
    let mut read = 0;
    while read < HEADER_LEN {
        let rest = &mut header[read..];
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        let mut fds = [-1; MAX_FDS];
        // SAFETY: the iovec covers the unread part of `header`, which
        // outlives the call and may hold any bytes.
        match unsafe { socket.recv_with_fds(&mut iov, &mut fds) } {
            Ok((0, _)) => return Err(Error::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok((n, 0)) => read += n,
            Ok((_, count)) => {
                for &fd in &fds[..count] {
                    // SAFETY: the kernel just gave us this descriptor and
                    // nothing else owns it; dropping it closes it.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                return Err(Error::ReplyFds {
                    what,
                    count: count.to_string(),
                });
            }
            Err(e) if e.errno() == libc::EINTR => {}
            // More than fit: the kernel truncated and vmm-sys-util closed
            // every one.
            Err(e) if e.errno() == libc::ENOBUFS => {
                return Err(Error::ReplyFds {
                    what,
                    count: format!("more than {MAX_FDS}"),
                })
            }
            Err(e) => return Err(Error::Io(io::Error::from_raw_os_error(e.errno()))),
        }
    }
    Ok(header)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(b) = bytes.get(at..at + 4) {
        word.copy_from_slice(b);
    }
    u32::from_le_bytes(word)
}

/// Sends GET_CONFIG and reads exactly the reply its header announces.
fn get_config(socket: &UnixStream, offset: u32, size: u32) -> Result<ConfigReply, Error> {
    let body_len = CONFIG_HEADER_LEN as u32 + size;
    let mut request = Vec::with_capacity(HEADER_LEN + body_len as usize);
    for word in [GET_CONFIG, VERSION, body_len, offset, size, 0] {
        request.extend_from_slice(&word.to_le_bytes());
    }
    request.resize(HEADER_LEN + body_len as usize, 0);
    (&*socket).write_all(&request).map_err(Error::Io)?;
    let header = read_reply_header(socket, "GET_CONFIG")?;
    let (code, flags, len) = (u32_at(&header, 0), u32_at(&header, 4), u32_at(&header, 8));
    if code != GET_CONFIG
        || flags & (VERSION | REPLY) != VERSION | REPLY
        || len > CONFIG_HEADER_LEN as u32 + MAX_CONFIG
    {
        return Err(Error::NotAReply {
            what: "GET_CONFIG",
            code,
            flags,
            len,
        });
    }
    let mut body = vec![0u8; len as usize];
    (&*socket).read_exact(&mut body).map_err(Error::Io)?;
    // libvhost-user refuses with an empty message; others with size 0.
    if body.len() < CONFIG_HEADER_LEN || u32_at(&body, 4) == 0 {
        return Ok(ConfigReply::Refused);
    }
    let (got_offset, got_size) = (u32_at(&body, 0), u32_at(&body, 4));
    if got_offset != offset || got_size != size || len != body_len {
        return Ok(ConfigReply::Wrong {
            offset: got_offset,
            size: got_size,
        });
    }
    body.drain(..CONFIG_HEADER_LEN);
    Ok(ConfigReply::Bytes(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;

    /// A backend of a few lines on a real socket: it answers the requests
    /// the pre-flight sends, GET_CONFIG from `config` at the offset asked
    /// or (`ignore_offset`) at 0, as QEMU's libvhost-user does, with
    /// `fds` descriptors of /dev/null attached to every GET_FEATURES reply.
    fn backend(
        config: &'static [u8],
        ignore_offset: bool,
        fds: usize,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            loop {
                let mut header = [0u8; HEADER_LEN];
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                let (code, len) = (u32_at(&header, 0), u32_at(&header, 8));
                let mut body = vec![0u8; len as usize];
                s.read_exact(&mut body).unwrap();
                let reply = |payload: &[u8]| {
                    let mut m = Vec::new();
                    for w in [code, 0x5, payload.len() as u32] {
                        m.extend_from_slice(&w.to_le_bytes());
                    }
                    m.extend_from_slice(payload);
                    m
                };
                let message = match code {
                    // VERSION_1, PROTOCOL_FEATURES; MQ, CONFIG; 2 queues.
                    1 => reply(&(1u64 << 32 | 1 << 30).to_le_bytes()),
                    15 => reply(&(1u64 | 1 << 9).to_le_bytes()),
                    17 => reply(&2u64.to_le_bytes()),
                    24 => {
                        let (offset, size) = (u32_at(&body, 0), u32_at(&body, 4));
                        let at = if ignore_offset { 0 } else { offset } as usize;
                        match config.get(at..at + size as usize) {
                            Some(bytes) => {
                                let mut p = body[..CONFIG_HEADER_LEN].to_vec();
                                p.extend_from_slice(bytes);
                                reply(&p)
                            }
                            None => reply(&[]),
                        }
                    }
                    _ => continue,
                };
                if code == GET_FEATURES && fds > 0 {
                    let null = File::open("/dev/null").unwrap();
                    let attached = vec![null.as_raw_fd(); fds];
                    let sent = s.send_with_fds(&[&message[..]], &attached).unwrap();
                    s.write_all(&message[sent..]).unwrap();
                    continue;
                }
                s.write_all(&message).unwrap();
            }
        });
        (dir, path)
    }

    const CONFIG: &[u8] = b"myfs\0\0\0\0";

    #[test]
    fn asks_what_the_guests_will_need_and_reads_the_window_twice() {
        for ignore_offset in [false, true] {
            let (_dir, path) = backend(CONFIG, ignore_offset, 0);
            let a = ask(&path, Duration::from_secs(5), |_| 8).unwrap();
            assert_eq!(a.features, 1 << 32 | 1 << 30);
            assert_eq!(
                a.protocol,
                Some(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG)
            );
            assert_eq!(a.queue_num, Some(2));
            let reads = a.config.unwrap();
            assert_eq!(reads.at_zero, ConfigReply::Bytes(CONFIG.to_vec()));
            assert_eq!(reads.offset, 4);
            let second = if ignore_offset {
                &CONFIG[..4]
            } else {
                &CONFIG[4..]
            };
            assert_eq!(reads.at_offset, Some(ConfigReply::Bytes(second.to_vec())));
        }
    }

    #[test]
    fn a_refusal_is_told_at_once_and_a_silent_backend_at_the_deadline() {
        let (_dir, path) = backend(CONFIG, true, 0);
        let start = Instant::now();
        let a = ask(&path, Duration::from_secs(10), |_| 12).unwrap();
        assert_eq!(a.config.unwrap().at_zero, ConfigReply::Refused);
        // Half the deadline: "at once" on any machine.
        assert!(start.elapsed() < Duration::from_secs(5), "waited");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let e = ask(&path, Duration::from_millis(300), |_| 8).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NoReply {
                    what: "GET_FEATURES",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(20), "hung");
    }

    /// Issue 21, finding 12: a reply bringing 250 descriptors passed the
    /// pre-flight (a plain read drops them) and `vmm` then put the lost
    /// reply down to a malformed header. Any count is named, and one is
    /// as wrong as many.
    #[test]
    fn a_reply_bringing_file_descriptors_is_named_with_their_count() {
        for fds in [1, 32, 250] {
            let (_dir, path) = backend(CONFIG, false, fds);
            let e = ask(&path, Duration::from_secs(10), |_| 8).unwrap_err();
            assert!(
                matches!(&e, Error::ReplyFds { what: "GET_FEATURES", count } if *count == fds.to_string()),
                "{fds}: {e:?}"
            );
            assert!(
                e.to_string().starts_with(&format!(
                    "GET_FEATURES: the reply brings {fds} file descriptors where it brings none"
                )),
                "{e}"
            );
        }
    }
}
