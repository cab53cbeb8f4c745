//! The relay between the frontend (the VMM) and the `vhost-user-backend`
//! daemon that implements the device. It passes every message and file
//! descriptor through unchanged, except where a fault says otherwise, and
//! hides the protocol features the command line withholds. Only the
//! vhost-user header is parsed: request, flags, payload size.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::fault::{self, Faults, What};

const HEADER_LEN: usize = 12;
/// Larger payloads are not vhost-user (the spec's largest is a page of
/// config space plus its header).
const MAX_PAYLOAD: usize = 1 << 20;
const MAX_FDS: usize = 32;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const GET_PROTOCOL_FEATURES: u32 = 15;
/// VhostUserConfig: offset, size, flags.
const CONFIG_HEADER_LEN: usize = 12;
/// Exit status of a `crash` fault.
pub const CRASH_STATUS: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading a message from the {0}")]
    Read(&'static str, #[source] std::io::Error),
    #[error("sending a message to the {0}")]
    Write(&'static str, #[source] std::io::Error),
    #[error("the {side} sent a {size}-byte payload, more than vhost-user allows")]
    TooLarge { side: &'static str, size: usize },
}

pub struct Message {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn field(&self, i: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.header[4 * i..4 * i + 4]);
        u32::from_le_bytes(b)
    }

    fn set_field(&mut self, i: usize, v: u32) {
        self.header[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn code(&self) -> u32 {
        self.field(0)
    }

    fn flags(&self) -> u32 {
        self.field(1)
    }

    /// A reply to `request` carrying `payload`, as the backend would send.
    fn reply(request: &Message, payload: Vec<u8>) -> Message {
        let mut m = Message {
            header: [0; HEADER_LEN],
            payload,
            fds: Vec::new(),
        };
        m.set_field(0, request.code());
        // Version 1 and the reply bit.
        m.set_field(1, 0x1 | FLAG_REPLY);
        m.set_field(2, m.payload.len() as u32);
        m
    }

    fn expects_reply(&self) -> bool {
        self.flags() & FLAG_NEED_REPLY != 0 || fault::always_replies(self.code())
    }

    fn resize_payload(&mut self, len: usize, fill: u8) {
        self.payload.resize(len, fill);
        self.set_field(2, len as u32);
    }
}

/// Reads one message; None at end of file before it starts.
fn read_message(stream: &UnixStream, side: &'static str) -> Result<Option<Message>, RelayError> {
    let mut header = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_LEN {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: header[got..].as_mut_ptr().cast(),
            iov_len: HEADER_LEN - got,
        }];
        // SAFETY: the iovec points into `header`, which outlives the call
        // and may take any bytes.
        let (n, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut raw) }
            .map_err(|e| RelayError::Read(side, std::io::Error::from_raw_os_error(e.errno())))?;
        for &fd in &raw[..nfds] {
            // SAFETY: the kernel just gave us this descriptor; we own it.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(RelayError::Read(
                side,
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        got += n;
    }
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(RelayError::TooLarge { side, size });
    }
    let mut payload = vec![0u8; size];
    (&*stream)
        .read_exact(&mut payload)
        .map_err(|e| RelayError::Read(side, e))?;
    Ok(Some(Message {
        header,
        payload,
        fds,
    }))
}

fn send(stream: &UnixStream, side: &'static str, m: &Message) -> Result<(), RelayError> {
    let bytes: Vec<u8> = m.header.iter().chain(&m.payload).copied().collect();
    let fds: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = stream
        .send_with_fds(&[&bytes[..]], &fds)
        .map_err(|e| RelayError::Write(side, std::io::Error::from_raw_os_error(e.errno())))?;
    if sent < bytes.len() {
        // The descriptors went with the first part.
        (&*stream)
            .write_all(&bytes[sent..])
            .map_err(|e| RelayError::Write(side, e))?;
        sent = bytes.len();
    }
    debug_assert_eq!(sent, bytes.len());
    Ok(())
}

/// Bytes that are no vhost-user message, different every time.
fn garbage() -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the relay does after a message.
enum Next {
    Continue,
    Close,
}

pub struct Relay {
    pub faults: Arc<Faults>,
    /// Config bytes SET_CONFIG may change. The relay refuses the others
    /// itself: vhost-user-backend ends the connection when a device
    /// refuses a request, and a refusal must leave the device usable.
    pub writable: Vec<std::ops::Range<u32>>,
    /// Protocol feature bits the backend has but the command line withholds.
    pub hidden_protocol: u64,
}

impl Relay {
    /// Relays until either side closes or a fault ends the connection.
    pub fn run(&self, frontend: &UnixStream, backend: &UnixStream) -> Result<(), RelayError> {
        let result = self.relay(frontend, backend);
        let _ = frontend.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
        result
    }

    fn relay(&self, frontend: &UnixStream, backend: &UnixStream) -> Result<(), RelayError> {
        while let Some(request) = read_message(frontend, "frontend")? {
            let code = request.code();
            log::debug!(
                "request {} ({code}) flags {:#x} size {} fds {}",
                fault::request_name(code).unwrap_or("UNKNOWN"),
                request.flags(),
                request.payload.len(),
                request.fds.len()
            );
            let mut what = self.faults.on_request(code).map(|f| f.what);
            if what.is_none() && code == fault::SET_CONFIG && !self.may_write(&request) {
                what = Some(What::Error);
            }
            if let Next::Close = self.handle(request, what, frontend, backend)? {
                break;
            }
        }
        Ok(())
    }

    /// Whether a SET_CONFIG stays inside the writable ranges.
    fn may_write(&self, request: &Message) -> bool {
        let field = |i: usize| {
            request
                .payload
                .get(4 * i..4 * i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let (Some(offset), Some(size)) = (field(0), field(1)) else {
            return false;
        };
        let end = u64::from(offset) + u64::from(size);
        let allowed = self
            .writable
            .iter()
            .any(|r| u64::from(r.start) <= u64::from(offset) && end <= u64::from(r.end));
        if !allowed {
            log::info!(
                "SET_CONFIG of {size} bytes at {offset} refused: outside the writable ranges {:?}",
                self.writable
            );
        }
        allowed
    }

    fn handle(
        &self,
        request: Message,
        what: Option<What>,
        frontend: &UnixStream,
        backend: &UnixStream,
    ) -> Result<Next, RelayError> {
        match what {
            Some(What::Close) => return Ok(Next::Close),
            Some(What::Crash) => crash(),
            Some(What::Error) => {
                let payload = if request.code() == fault::GET_CONFIG {
                    // The same offset and flags, size 0: the protocol's
                    // "GET_CONFIG failed".
                    let mut p = request
                        .payload
                        .get(..CONFIG_HEADER_LEN)
                        .map_or_else(|| vec![0u8; CONFIG_HEADER_LEN], <[u8]>::to_vec);
                    p[4..8].copy_from_slice(&0u32.to_le_bytes());
                    p
                } else {
                    1u64.to_le_bytes().to_vec()
                };
                if request.expects_reply() || request.code() == fault::SET_CONFIG {
                    send(frontend, "frontend", &Message::reply(&request, payload))?;
                }
                return Ok(Next::Continue);
            }
            _ => {}
        }
        let expects_reply = request.expects_reply();
        send(backend, "backend", &request)?;
        drop(request.fds);
        if !expects_reply {
            return Ok(match what {
                Some(What::CloseAfter) => Next::Close,
                Some(What::CrashAfter) => crash(),
                _ => Next::Continue,
            });
        }
        let Some(mut reply) = read_message(backend, "backend")? else {
            return Ok(Next::Close);
        };
        if reply.code() == GET_PROTOCOL_FEATURES && reply.payload.len() == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&reply.payload);
            let features = u64::from_le_bytes(b) & !self.hidden_protocol;
            reply.payload.copy_from_slice(&features.to_le_bytes());
        }
        self.answer(reply, what, frontend)
    }

    fn answer(
        &self,
        mut reply: Message,
        what: Option<What>,
        frontend: &UnixStream,
    ) -> Result<Next, RelayError> {
        let is_config =
            reply.code() == fault::GET_CONFIG && reply.payload.len() >= CONFIG_HEADER_LEN;
        match what {
            Some(What::Short) => {
                if is_config {
                    let data = (reply.payload.len() - CONFIG_HEADER_LEN) / 2;
                    reply.resize_payload(CONFIG_HEADER_LEN + data, 0);
                    reply.payload[4..8].copy_from_slice(&(data as u32).to_le_bytes());
                } else {
                    let len = reply.payload.len() / 2;
                    reply.resize_payload(len, 0);
                }
            }
            Some(What::Long) => {
                let len = reply.payload.len() + 8;
                reply.resize_payload(len, 0xaa);
                if is_config {
                    let data = (len - CONFIG_HEADER_LEN) as u32;
                    reply.payload[4..8].copy_from_slice(&data.to_le_bytes());
                }
            }
            Some(What::Delay(d)) => std::thread::sleep(d),
            Some(What::Drop) => return Ok(Next::Continue),
            Some(What::WrongCode) => {
                let code = reply.code();
                reply.set_field(0, code + 1);
            }
            Some(What::BadSize) => {
                let size = reply.field(2);
                reply.set_field(2, size + 4);
            }
            Some(What::Truncate) => {
                let bytes: Vec<u8> = reply.header.iter().chain(&reply.payload).copied().collect();
                (&*frontend)
                    .write_all(&bytes[..bytes.len() / 2])
                    .map_err(|e| RelayError::Write("frontend", e))?;
                return Ok(Next::Close);
            }
            Some(What::ExtraFd(count)) => {
                for _ in 0..count {
                    let null =
                        File::open("/dev/null").map_err(|e| RelayError::Write("frontend", e))?;
                    reply.fds.push(null.into());
                }
            }
            Some(What::Garbage) => {
                (&*frontend)
                    .write_all(&garbage())
                    .map_err(|e| RelayError::Write("frontend", e))?;
                return Ok(Next::Continue);
            }
            _ => {}
        }
        send(frontend, "frontend", &reply)?;
        Ok(match what {
            Some(What::CloseAfter) => Next::Close,
            Some(What::CrashAfter) => crash(),
            _ => Next::Continue,
        })
    }
}

pub fn crash() -> ! {
    log::info!("crashing (exit status {CRASH_STATUS}) as the fault asks");
    log::logger().flush();
    std::process::exit(CRASH_STATUS)
}
