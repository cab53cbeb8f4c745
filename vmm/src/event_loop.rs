//! What the VMM thread waits on: descriptors registered with what each
//! stands for, so that a wait answers in those terms and a new source (the
//! API socket, the serial input) is one registration, not a token number
//! kept by hand in step with a match.

use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub struct EventLoop<S> {
    epoll: Epoll,
    /// A source's token is its index; removed ones leave `None`.
    sources: Vec<Option<(RawFd, S)>>,
    ready: Vec<EpollEvent>,
}

impl<S: Copy + PartialEq> EventLoop<S> {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            sources: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// Watches `fd` for input, reported as `source`.
    pub fn add(&mut self, fd: RawFd, source: S) -> io::Result<()> {
        let token = self.sources.len() as u64;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
        self.sources.push(Some((fd, source)));
        self.ready.push(EpollEvent::default());
        Ok(())
    }

    /// Stops watching `source` (its descriptor still open).
    pub fn remove(&mut self, source: S) -> io::Result<()> {
        for slot in &mut self.sources {
            if let Some((fd, _)) = slot.filter(|(_, s)| *s == source) {
                self.epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default())?;
                *slot = None;
            }
        }
        Ok(())
    }

    /// Waits until something is ready (a signal's interruption is not an
    /// answer) and says what.
    pub fn wait(&mut self) -> io::Result<Vec<S>> {
        loop {
            match self.epoll.wait(-1, &mut self.ready) {
                Ok(n) => {
                    return Ok(self.ready[..n]
                        .iter()
                        .filter_map(|event| {
                            let slot = self.sources.get(usize::try_from(event.data()).ok()?)?;
                            slot.map(|(_, source)| source)
                        })
                        .collect())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Source {
        A,
        B,
    }

    #[test]
    fn a_wait_names_what_is_ready_and_a_removed_source_is_gone() {
        let (a, b) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        let mut events = EventLoop::new().unwrap();
        events.add(a.as_raw_fd(), Source::A).unwrap();
        events.add(b.as_raw_fd(), Source::B).unwrap();
        b.write(1).unwrap();
        assert_eq!(events.wait().unwrap(), [Source::B]);
        a.write(1).unwrap();
        let mut both = events.wait().unwrap();
        both.sort_by_key(|s| *s as u8);
        assert_eq!(both, [Source::A, Source::B]);
        events.remove(Source::B).unwrap();
        b.read().unwrap();
        assert_eq!(events.wait().unwrap(), [Source::A]);
    }
}
