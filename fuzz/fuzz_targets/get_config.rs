//! VHOST_USER_GET_CONFIG against a backend that answers anything: any
//! bytes as the reply (cut short, too long, with a descriptor attached),
//! then the backend hangs up. Checked: the request on the wire is the one
//! asked for; a reply is accepted only when it is exactly right; and a
//! refusal that leaves the connection usable has consumed exactly one
//! whole message, no more and no less.

#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{get_config, GetConfigError, MAX_SIZE};
use vmm_fuzz::le;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Arbitrary, Debug)]
enum Reply {
    /// A well-formed header around any body.
    Framed {
        code: u32,
        flags: u32,
        /// The header's length field; None: the body's length.
        len: Option<u32>,
        offset: Option<u32>,
        size: Option<u32>,
        flags_word: u32,
        payload: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    offset: u32,
    /// 0 to 300: past the protocol's 256 too.
    size: u16,
    reply: Reply,
    /// Attach a descriptor to the reply's first bytes.
    with_fd: bool,
}

fn build(reply: &Reply, offset: u32, size: u32) -> Vec<u8> {
    match reply {
        Reply::Raw(bytes) => bytes.clone(),
        Reply::Framed {
            code,
            flags,
            len,
            offset: got_offset,
            size: got_size,
            flags_word,
            payload,
        } => {
            let mut body = Vec::new();
            body.extend_from_slice(&got_offset.unwrap_or(offset).to_le_bytes());
            body.extend_from_slice(&got_size.unwrap_or(size).to_le_bytes());
            body.extend_from_slice(&flags_word.to_le_bytes());
            body.extend_from_slice(payload);
            let mut out = Vec::new();
            out.extend_from_slice(&(code % 32).to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&len.unwrap_or(body.len() as u32).to_le_bytes());
            out.extend(body);
            out
        }
    }
}

fuzz_target!(|input: Input| {
    let size = u32::from(input.size % 301);
    let reply = build(&input.reply, input.offset, size);
    if reply.len() > 8192 {
        return;
    }
    let (ours, theirs) = UnixStream::pair().expect("a socket pair");
    // The reply is waiting before the request is sent: one thread will do.
    let (first, rest) = reply.split_at(reply.len().min(1));
    if input.with_fd && !first.is_empty() {
        theirs
            .send_with_fd(first, theirs.as_raw_fd())
            .expect("send with a descriptor");
    } else {
        (&theirs).write_all(first).expect("send");
    }
    (&theirs).write_all(rest).expect("send");
    theirs.shutdown(Shutdown::Write).expect("hang up");

    let result = get_config(&ours, input.offset, size);
    ours.shutdown(Shutdown::Write).expect("done sending");

    // What we sent: the header and VhostUserConfig, then `size` zeros.
    let mut request = Vec::new();
    (&theirs)
        .read_to_end(&mut request)
        .expect("read the request");
    if size > MAX_SIZE {
        assert!(matches!(result, Err(GetConfigError::TooLarge { .. })));
        assert!(request.is_empty(), "nothing is sent for {size} bytes");
        return;
    }
    assert_eq!(request.len(), 24 + size as usize, "request length");
    assert_eq!(
        [
            le(&request[0..4]),
            le(&request[8..12]),
            le(&request[12..16]),
            le(&request[16..20])
        ],
        [
            24,
            12 + u64::from(size),
            u64::from(input.offset),
            u64::from(size)
        ]
    );

    // What the reply left on the socket.
    ours.set_nonblocking(true).expect("non-blocking");
    let mut left = Vec::new();
    let _ = (&ours).read_to_end(&mut left);
    let consumed = reply.len() - left.len();
    match result {
        Ok(bytes) => {
            assert!(!input.with_fd, "a reply with a descriptor was accepted");
            assert_eq!(bytes.len(), size as usize);
            assert_eq!(le(&reply[0..4]), 24);
            assert_eq!(le(&reply[4..8]) & 5, 5);
            assert_eq!(le(&reply[8..12]), 12 + u64::from(size));
            assert_eq!(le(&reply[12..16]), u64::from(input.offset));
            assert_eq!(le(&reply[16..20]), u64::from(size));
            assert_eq!(bytes[..], reply[24..24 + size as usize]);
            assert_eq!(consumed, 24 + size as usize, "one message consumed");
        }
        Err(e) if !e.breaks_connection() => {
            let len = le(&reply[8..12]) as usize;
            assert_eq!(consumed, 12 + len, "{e}: one whole message consumed");
        }
        Err(_) => {}
    }
});
