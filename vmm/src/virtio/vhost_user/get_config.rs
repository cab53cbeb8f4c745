//! VHOST_USER_GET_CONFIG, sent and read here rather than by the vhost
//! crate's frontend. The frontend reads the reply as if it had the size
//! that was asked for, but the protocol's refusal is shorter (the
//! VhostUserConfig with a size of 0 and no payload): it then waits for
//! bytes that never come, until our deadline closes the connection, and a
//! backend that merely said no costs the guest 3 s and the connection.
//! Here the reply's own header says how many bytes follow, and exactly
//! those are read, so a refusal or a reply of the wrong size leaves the
//! connection in step and usable.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const GET_CONFIG: u32 = 24;
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const HEADER_LEN: usize = 12;
/// VhostUserConfig: offset, size, flags.
const CONFIG_LEN: usize = 12;
/// The protocol's largest config payload (VHOST_USER_CONFIG_SIZE).
pub const MAX_SIZE: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GET_CONFIG of {size} bytes is more than the protocol's {MAX_SIZE}")]
    TooLarge { size: u32 },
    #[error("Failed to send GET_CONFIG")]
    Send(#[source] std::io::Error),
    #[error("Failed to read the GET_CONFIG reply")]
    Receive(#[source] std::io::Error),
    #[error("GET_CONFIG reply is not one: request {code}, flags {flags:#x}, {len} bytes")]
    NotAReply { code: u32, flags: u32, len: u32 },
    #[error("the backend refused GET_CONFIG (reply of size 0)")]
    Refused,
    #[error(
        "GET_CONFIG reply is for {got_size} bytes at {got_offset} ({len} in the message), not {size} at {offset}"
    )]
    WrongSize {
        offset: u32,
        size: u32,
        got_offset: u32,
        got_size: u32,
        len: u32,
    },
    #[error("GET_CONFIG reply carried a file descriptor")]
    UnexpectedFd,
}

impl Error {
    /// Whether the byte stream can no longer be trusted: the reply was not
    /// read whole, or was no reply to us. A refusal or a reply of the wrong
    /// size that was read whole leaves the connection in step.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Error::Send(_) | Error::Receive(_) | Error::NotAReply { .. }
        )
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Asks for `size` bytes of the device config at `offset`.
pub fn get_config(socket: &UnixStream, offset: u32, size: u32) -> Result<Vec<u8>, Error> {
    if size > MAX_SIZE {
        return Err(Error::TooLarge { size });
    }
    let body_len = CONFIG_LEN as u32 + size;
    let mut request = Vec::with_capacity(HEADER_LEN + body_len as usize);
    for word in [GET_CONFIG, VERSION, body_len, offset, size, 0] {
        request.extend_from_slice(&word.to_le_bytes());
    }
    // The frontend's payload is the config space; zeros, as QEMU sends.
    request.resize(HEADER_LEN + body_len as usize, 0);
    (&*socket).write_all(&request).map_err(Error::Send)?;

    // File descriptors come with the first byte, so only the first read
    // needs to look for them.
    let mut header = [0u8; HEADER_LEN];
    // A signal (a vCPU kick) may cut the wait short: wait again.
    let (got, fd) = loop {
        match socket.recv_with_fd(&mut header) {
            Err(e) if e.errno() == libc::EINTR => continue,
            received => {
                break received
                    .map_err(|e| Error::Receive(std::io::Error::from_raw_os_error(e.errno())))?
            }
        }
    };
    if got == 0 {
        return Err(Error::Receive(std::io::ErrorKind::UnexpectedEof.into()));
    }
    (&*socket)
        .read_exact(&mut header[got..])
        .map_err(Error::Receive)?;
    let (code, flags, len) = (u32_at(&header, 0), u32_at(&header, 4), u32_at(&header, 8));
    // A reply longer than asked for is read whole too, up to the largest
    // the protocol allows, so that it leaves the connection in step.
    if code != GET_CONFIG
        || flags & (VERSION | REPLY) != VERSION | REPLY
        || (len as usize) < CONFIG_LEN
        || len > CONFIG_LEN as u32 + MAX_SIZE
    {
        return Err(Error::NotAReply { code, flags, len });
    }
    let mut body = vec![0u8; len as usize];
    (&*socket).read_exact(&mut body).map_err(Error::Receive)?;
    if fd.is_some() {
        return Err(Error::UnexpectedFd);
    }
    let (got_offset, got_size) = (u32_at(&body, 0), u32_at(&body, 4));
    if got_size == 0 {
        return Err(Error::Refused);
    }
    if got_offset != offset || got_size != size || len != body_len {
        return Err(Error::WrongSize {
            offset,
            size,
            got_offset,
            got_size,
            len,
        });
    }
    body.drain(..CONFIG_LEN);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one GET_CONFIG on the other end with `reply`, after checking
    /// the request; returns the result and both ends, still open.
    fn exchange(
        offset: u32,
        size: u32,
        reply: Vec<u8>,
    ) -> (Result<Vec<u8>, Error>, UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let backend = std::thread::spawn(move || {
            let mut request = vec![0u8; HEADER_LEN + CONFIG_LEN + size as usize];
            (&theirs).read_exact(&mut request).unwrap();
            assert_eq!(u32_at(&request, 0), GET_CONFIG);
            assert_eq!(u32_at(&request, 8), CONFIG_LEN as u32 + size);
            assert_eq!((u32_at(&request, 12), u32_at(&request, 16)), (offset, size));
            (&theirs).write_all(&reply).unwrap();
            theirs
        });
        let result = get_config(&ours, offset, size);
        (result, ours, backend.join().unwrap())
    }

    fn reply(code: u32, flags: u32, len: u32, offset: u32, size: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [code, flags, len, offset, size, 0] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(data);
        bytes
    }

    /// Issue 22: a vCPU reading a config field blocks in GET_CONFIG; the
    /// VMM's pause kicks it (SIGRTMIN) meanwhile. Found by a CI run: the
    /// read failed with EINTR, so the device asked for a reset and the
    /// guest failed. With the kick handler vmm installs, the read waits on.
    #[test]
    fn a_kick_while_waiting_for_the_reply_loses_nothing() {
        crate::vstate::vcpu::install_kick_handler().unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let backend = std::thread::spawn(move || {
            let mut request = vec![0u8; HEADER_LEN + CONFIG_LEN + 4];
            (&theirs).read_exact(&mut request).unwrap();
            // The reader is blocked in its read by now; kick it, twice.
            for _ in 0..2 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                // SAFETY: `me` is the test thread, alive until it joins
                // this one.
                let rc = unsafe { libc::pthread_kill(me, vmm_sys_util::signal::SIGRTMIN()) };
                assert_eq!(rc, 0);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            (&theirs)
                .write_all(&reply(24, 5, 16, 0, 4, b"myfs"))
                .unwrap();
            theirs
        });
        let result = get_config(&ours, 0, 4);
        let _theirs = backend.join().unwrap();
        assert_eq!(result.unwrap(), b"myfs");
    }

    #[test]
    fn a_good_reply_gives_the_bytes() {
        let (result, _, _) = exchange(4, 4, reply(24, 5, 16, 4, 4, b"myfs"));
        assert_eq!(result.unwrap(), b"myfs");
    }

    /// The cases the vhost crate waits on: read whole, at once, and the
    /// connection is still in step (nothing left over, nothing missing).
    #[test]
    fn refusals_and_wrong_sizes_are_read_whole() {
        let cases = [
            reply(24, 5, 12, 0, 0, b""),
            reply(24, 5, 14, 0, 2, b"my"),
            reply(24, 5, 12, 8, 0, b""),
            reply(24, 5, 20, 0, 8, b"myfs-and"),
        ];
        for (i, bytes) in cases.into_iter().enumerate() {
            let (result, ours, _theirs) = exchange(0, 4, bytes);
            let e = result.unwrap_err();
            assert!(!e.breaks_connection(), "case {i}: {e}");
            let refusal = matches!(i, 0 | 2);
            assert_eq!(matches!(e, Error::Refused), refusal, "case {i}: {e}");
            ours.set_nonblocking(true).unwrap();
            let mut rest = [0u8; 1];
            let left = (&ours).read(&mut rest);
            assert!(
                left.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "case {i}: {left:?} left on the socket"
            );
        }
    }

    #[test]
    fn what_is_not_a_reply_to_us_breaks_the_connection() {
        for bytes in [
            reply(25, 5, 16, 0, 4, b"myfs"),
            reply(24, 1, 16, 0, 4, b"myfs"),
            reply(24, 5, 4096, 0, 4, b"myfs"),
            reply(24, 5, 2, 0, 4, b""),
        ] {
            let (result, _, _) = exchange(0, 4, bytes);
            assert!(result.unwrap_err().breaks_connection());
        }
    }

    #[test]
    fn a_backend_gone_mid_reply_is_an_error() {
        let mut cut = reply(24, 5, 16, 0, 4, b"myfs");
        cut.truncate(18);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let backend = std::thread::spawn(move || {
            let mut request = [0u8; HEADER_LEN + CONFIG_LEN + 4];
            (&theirs).read_exact(&mut request).unwrap();
            (&theirs).write_all(&cut).unwrap();
        });
        let e = get_config(&ours, 0, 4).unwrap_err();
        backend.join().unwrap();
        assert!(e.breaks_connection(), "{e}");
    }

    #[test]
    fn more_than_the_protocol_allows_is_not_sent() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        assert!(matches!(
            get_config(&ours, 0, 257),
            Err(Error::TooLarge { size: 257 })
        ));
    }
}
