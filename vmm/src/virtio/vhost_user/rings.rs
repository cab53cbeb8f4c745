//! The rings the backend runs: handing them over at DRIVER_OK (addresses
//! in the backend's mapping, bases, kicks and calls), stopping them at a
//! reset, and stopping and restarting them where they stood around a
//! pause.

use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{Error, GenericVhostUser, VhostUserProtocolFeatures};
use crate::util::error_chain;
use crate::virtio::ActiveQueue;

impl GenericVhostUser {
    fn host_address(&self, queue: usize, gpa: u64, len: u64) -> Result<u64, Error> {
        let bad = Error::BadRingAddress {
            queue,
            addr: gpa,
            len,
        };
        let usize_len = usize::try_from(len).map_err(|_| Error::BadRingAddress {
            queue,
            addr: gpa,
            len,
        })?;
        if !self.memory.check_range(GuestAddress(gpa), usize_len) {
            return Err(bad);
        }
        self.memory
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| bad)
    }

    /// Starts `queues`, each at the available index `base` gives (0 at
    /// DRIVER_OK, where GET_VRING_BASE left it after a pause).
    pub(super) fn start_queues(
        &mut self,
        queues: &[ActiveQueue],
        base: impl Fn(usize) -> u16,
    ) -> Result<(), Error> {
        // Firecracker's order: every ring size first, then per queue
        // address, base, call, kick and enable (the kick starts the ring,
        // so the call fd is in place before it).
        for q in queues {
            let size = q.queue.size();
            self.request("SET_VRING_NUM", |f| f.set_vring_num(q.index, size))?;
        }
        for q in queues {
            let size = q.queue.size();
            let len = u64::from(size);
            let ring = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: self.host_address(q.index, q.queue.desc_table(), 16 * len)?,
                avail_ring_addr: self.host_address(q.index, q.queue.avail_ring(), 6 + 2 * len)?,
                used_ring_addr: self.host_address(q.index, q.queue.used_ring(), 6 + 8 * len)?,
                log_addr: None,
            };
            self.request("SET_VRING_ADDR", |f| f.set_vring_addr(q.index, &ring))?;
            let at = base(q.index);
            self.request("SET_VRING_BASE", |f| f.set_vring_base(q.index, at))?;
            self.request("SET_VRING_CALL", |f| f.set_vring_call(q.index, &q.call))?;
            self.request("SET_VRING_KICK", |f| f.set_vring_kick(q.index, &q.kick))?;
            if self.vring_enable {
                self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(q.index, true))?;
            }
            self.started.push(q.index);
        }
        if !self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
        {
            // Unacked, the requests may still be on their way when the
            // guest, let go after DRIVER_OK, kicks a ring; a backend that
            // sees the kick before SET_VRING_ENABLE drops it (the
            // vhost-user-backend 0.10 under vhost-device-rng 0.1 does) and the ring
            // stalls. Backends handle requests in order, so the reply to
            // a request that always has one says every ring is enabled.
            self.request("GET_FEATURES", |f| f.get_features())?;
        }
        Ok(())
    }

    /// Stops the rings the backend runs.
    pub(super) fn stop_queues(&mut self) {
        for q in std::mem::take(&mut self.started) {
            if let Err(e) = self.stop_queue(q) {
                log::warn!("{}: queue {q}: {}", self.params.id, error_chain(&e));
            }
        }
    }

    /// Stops ring `q` and says where the backend stopped in it.
    fn stop_queue(&mut self, q: usize) -> Result<u16, Error> {
        if self.vring_enable {
            self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(q, false))?;
        }
        // GET_VRING_BASE is what stops a ring.
        let base = self.request("GET_VRING_BASE", |f| f.get_vring_base(q))?;
        // The split ring's indices are 16 bits; the message carries 32.
        Ok(base as u16)
    }

    /// Stops every ring the vhost-user way (GET_VRING_BASE, after
    /// SET_VRING_ENABLE 0 where there is one) and keeps where each
    /// stopped: the backend then neither reads nor writes them.
    pub(super) fn stop_rings(&mut self) -> Result<(), Error> {
        self.paused.clear();
        for q in std::mem::take(&mut self.started) {
            let base = self.stop_queue(q)?;
            log::debug!("{}: queue {q} stopped at {base}", self.params.id);
            self.paused.push((q, base));
        }
        Ok(())
    }

    /// Starts the rings again where they stopped, and kicks each once:
    /// what the driver made available while they were stopped, or just
    /// before, is served without waiting for its next kick.
    pub(super) fn restart_rings(&mut self) -> Result<(), Error> {
        let paused = std::mem::take(&mut self.paused);
        let rings: Vec<ActiveQueue> = std::mem::take(&mut self.rings)
            .into_iter()
            .filter(|r| paused.iter().any(|(q, _)| *q == r.index))
            .collect();
        let base = |index| {
            paused
                .iter()
                .find(|(q, _)| *q == index)
                .map_or(0, |(_, base)| *base)
        };
        let started = self.start_queues(&rings, base);
        for ring in &rings {
            let _ = ring.kick.write(1);
        }
        self.rings = rings;
        started
    }
}
