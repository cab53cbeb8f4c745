//! The API's listening socket: a path bound for the owner alone (a live
//! socket of another VMM is refused, a stale one replaced, any other file
//! left alone), or a listening socket handed down by its descriptor.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::files::PathOrFd;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "--api-socket: {path} is the socket of a running process: expected a path no VMM serves"
    )]
    InUse { path: PathBuf },
    #[error(
        "--api-socket: {path} exists and is no socket: expected a new path (it is left as it is)"
    )]
    NotASocket { path: PathBuf },
    #[error("--api-socket: cannot replace the stale socket {path}")]
    Stale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--api-socket: cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--api-socket: fd={fd} is not a listening Unix socket")]
    NotListening { fd: RawFd },
    #[error("--api-socket: fd={fd}")]
    Fd {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("Failed to create the API's eventfd")]
    EventFd(#[source] io::Error),
    #[error("Failed to start the API thread")]
    Thread(#[source] io::Error),
}

pub fn listen(socket: &PathOrFd) -> Result<UnixListener, SocketError> {
    match socket {
        PathOrFd::Path(path) => listen_at(path),
        PathOrFd::Fd(fd) => adopt(*fd),
    }
}

fn listen_at(path: &Path) -> Result<UnixListener, SocketError> {
    let bind_error = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("Replacing the stale API socket {}", path.display());
                std::fs::remove_file(path).map_err(|source| SocketError::Stale {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(SocketError::Stale {
                    path: path.to_owned(),
                    source,
                })
            }
        },
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(bind_error(source)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    // Another user who connects before this is refused by uid all the same.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

fn adopt(fd: RawFd) -> Result<UnixListener, SocketError> {
    let fd_error = |source| SocketError::Fd { fd, source };
    // SAFETY: stat is plain data; zero is valid for each field.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `stat`, which outlives the call; the
    // result is checked.
    if unsafe { libc::fstat(fd, &mut stat) } < 0 {
        return Err(fd_error(io::Error::last_os_error()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK || !listening_unix(fd) {
        return Err(SocketError::NotListening { fd });
    }
    Ok(UnixListener::from(
        crate::files::take_handed_down(fd).map_err(fd_error)?,
    ))
}

/// Whether `fd` is a Unix stream socket in the listening state.
fn listening_unix(fd: RawFd) -> bool {
    let int_option = |option| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` outlive the call and `len` says how
        // much room `value` has; the result is checked.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of_mut!(value).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    int_option(libc::SO_ACCEPTCONN) == Some(1)
        && int_option(libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && int_option(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, IntoRawFd};

    #[test]
    fn a_path_is_bound_for_the_owner_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let _listener = listen_at(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live one is another VMM's: refused, and left serving.
        let err = listen_at(&path).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        assert!(UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_any_other_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        let _listener = listen_at(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());

        let file = dir.path().join("precious");
        std::fs::write(&file, b"data").unwrap();
        let err = listen_at(&file).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[test]
    fn a_descriptor_must_be_a_listening_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("given.sock");
        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        let listener = adopt(fd).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(listener);

        let file = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        assert!(matches!(adopt(file), Err(SocketError::NotListening { .. })));
        // SAFETY: the descriptor was refused, so it is still ours.
        drop(unsafe { std::fs::File::from_raw_fd(file) });
        let (one, _other) = UnixStream::pair().unwrap();
        let fd = one.into_raw_fd();
        assert!(matches!(adopt(fd), Err(SocketError::NotListening { .. })));
        // SAFETY: as above.
        drop(unsafe { UnixStream::from_raw_fd(fd) });
    }
}
