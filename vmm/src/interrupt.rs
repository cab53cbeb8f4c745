//! The interrupt seam between device models and the hypervisor: MSI vector
//! groups and ioeventfd registration, as traits with errors of their own.
//! `vstate` implements them with KVM; `pci` and `virtio` use only these, so
//! MSI-X and the virtio-pci transport test without KVM.

use vmm_sys_util::eventfd::EventFd;

/// A cause from the implementation (KVM), kept whole for the error chain.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("No MSI vector {0} in this group")]
    NoVector(usize),
    #[error("Failed to update MSI vector {vector}")]
    Update {
        vector: usize,
        #[source]
        source: BoxedError,
    },
    #[error("Failed to signal MSI vector {vector}")]
    Trigger {
        vector: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Where an MSI goes: the address/data pair the guest programmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// A device's MSI vectors. Each has a notifier eventfd: writing it raises
/// the vector when it is routed and unmasked, and keeps the signal pending
/// while it is masked (MSI-X's pending bit). Handing that eventfd to a
/// vhost-user backend (`SET_VRING_CALL`) keeps the VMM off the data path.
pub trait MsiInterruptGroup: Send + Sync {
    /// Routes `vector` to `message`, then arms it (`masked == false`) or
    /// disarms it.
    fn update(
        &self,
        vector: usize,
        message: MsiMessage,
        masked: bool,
    ) -> Result<(), InterruptError>;

    /// Whether a signal is waiting on a masked vector.
    fn pending(&self, vector: usize) -> bool;

    /// The eventfd that raises `vector`.
    fn notifier(&self, vector: usize) -> Option<&EventFd>;

    /// Raises `vector` from the VMM itself; a masked vector keeps it pending.
    fn trigger(&self, vector: usize) -> Result<(), InterruptError> {
        let notifier = self
            .notifier(vector)
            .ok_or(InterruptError::NoVector(vector))?;
        notifier
            .write(1)
            .map_err(|source| InterruptError::Trigger { vector, source })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IoEventError {
    #[error("Failed to register an ioeventfd at {addr:#x}")]
    Register {
        addr: u64,
        #[source]
        source: BoxedError,
    },
    #[error("Failed to unregister the ioeventfd at {addr:#x}")]
    Unregister {
        addr: u64,
        #[source]
        source: BoxedError,
    },
}

/// Guest writes to an MMIO address that signal an eventfd without an exit
/// to the VMM (KVM ioeventfds): how virtqueue kicks arrive.
pub trait IoEventRegistry: Send + Sync {
    /// Any write width at `addr` signals `event`.
    fn register(&self, event: &EventFd, addr: u64) -> Result<(), IoEventError>;
    fn unregister(&self, event: &EventFd, addr: u64) -> Result<(), IoEventError>;
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fake {
    //! What KVM would do, observable, for tests and fuzz targets of MSI-X
    //! and the transport.

    use std::collections::BTreeSet;
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::util::lock;

    /// Routes, arming, and deliveries (a signal on an armed vector, or one
    /// kept while masked and delivered when armed).
    #[derive(Default)]
    pub struct Log {
        pub routes: Vec<Option<(u64, u32)>>,
        pub armed: Vec<bool>,
        pub delivered: Vec<(usize, u64, u32)>,
    }

    /// A group of fake vectors; clones share them, so a test keeps one as
    /// its handle on what was routed, armed and delivered.
    #[derive(Clone)]
    pub struct FakeMsiGroup {
        fds: Arc<Vec<EventFd>>,
        pub log: Arc<Mutex<Log>>,
    }

    impl FakeMsiGroup {
        pub fn new(count: usize) -> FakeMsiGroup {
            let log = Arc::new(Mutex::new(Log {
                routes: vec![None; count],
                armed: vec![false; count],
                delivered: Vec::new(),
            }));
            let fds = (0..count)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd for a fake vector"))
                .collect();
            FakeMsiGroup {
                fds: Arc::new(fds),
                log,
            }
        }

        /// Delivers what is waiting on armed vectors, as KVM's irqfd would.
        pub fn poll(&self) {
            let mut log = lock(&self.log);
            for (i, fd) in self.fds.iter().enumerate() {
                if log.armed[i] && fd.read().is_ok() {
                    let (addr, data) = log.routes[i].expect("an armed vector has a route");
                    log.delivered.push((i, addr, data));
                }
            }
        }

        pub fn delivered(&self) -> Vec<(usize, u64, u32)> {
            self.poll();
            lock(&self.log).delivered.clone()
        }

        pub fn armed(&self, vector: usize) -> bool {
            lock(&self.log).armed[vector]
        }

        pub fn route(&self, vector: usize) -> Option<(u64, u32)> {
            lock(&self.log).routes[vector]
        }
    }

    impl MsiInterruptGroup for FakeMsiGroup {
        fn update(
            &self,
            vector: usize,
            message: MsiMessage,
            masked: bool,
        ) -> Result<(), InterruptError> {
            {
                let mut log = lock(&self.log);
                if !masked {
                    log.routes[vector] = Some((message.address, message.data));
                }
                log.armed[vector] = !masked;
            }
            self.poll();
            Ok(())
        }

        fn pending(&self, vector: usize) -> bool {
            let fd = &self.fds[vector];
            match fd.read() {
                Ok(n) => {
                    fd.write(n)
                        .expect("a fake vector's eventfd takes back its count");
                    true
                }
                Err(_) => false,
            }
        }

        fn notifier(&self, vector: usize) -> Option<&EventFd> {
            self.fds.get(vector)
        }
    }

    /// Registered ioeventfds by address. Registering a pair twice, or
    /// unregistering one that is not there, is a transport bug: it panics.
    #[derive(Clone, Default)]
    pub struct FakeIoEvents(Arc<Mutex<BTreeSet<(u64, i32)>>>);

    impl IoEventRegistry for FakeIoEvents {
        fn register(&self, event: &EventFd, addr: u64) -> Result<(), IoEventError> {
            let added = lock(&self.0).insert((addr, event.as_raw_fd()));
            assert!(added, "ioeventfd registered twice at {addr:#x}");
            Ok(())
        }
        fn unregister(&self, event: &EventFd, addr: u64) -> Result<(), IoEventError> {
            let removed = lock(&self.0).remove(&(addr, event.as_raw_fd()));
            assert!(removed, "no ioeventfd to unregister at {addr:#x}");
            Ok(())
        }
    }

    impl FakeIoEvents {
        /// The addresses with an ioeventfd, in order.
        pub fn addrs(&self) -> Vec<u64> {
            lock(&self.0).iter().map(|(a, _)| *a).collect()
        }
    }
}
