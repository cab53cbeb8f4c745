//! What the device settles with its backend: the features and protocol
//! features at each connection, the queue layout checked against what the
//! backend offers, and the guest's memory table.

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

use super::*;

impl GenericVhostUser {
    pub(super) fn negotiate(&mut self) -> Result<Negotiated, Error> {
        let id = self.params.id.clone();
        self.request("SET_OWNER", |f| f.set_owner())?;
        let backend_features = self.request("GET_FEATURES", |f| f.get_features())?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            protocol = offered & WANTED_PROTOCOL;
            self.request("SET_PROTOCOL_FEATURES", |f| {
                f.set_protocol_features(protocol)
            })?;
            log::debug!("{id}: protocol features offered {offered:?}, using {protocol:?}");
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request without a reply of its own is acked, so a
                // backend's refusal (of SET_MEM_TABLE, say) is not missed.
                if let Some(c) = &self.connection {
                    c.link
                        .frontend
                        .set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                }
            }
        }
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            log::warn!(
                "{id}: backend does not offer VIRTIO_F_VERSION_1 (features {backend_features:#x}); offering it to the guest anyway"
            );
        }
        let asked = self.params.queue_sizes.len();
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let offered = self.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            log::debug!("{id}: backend has {offered} queues, {asked} asked for");
            if asked as u64 > offered {
                return Err(Error::TooManyQueues { id, asked, offered });
            }
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Without MQ this is the only way to learn the backend's queue
            // count before the guest runs, and even with it the only way to
            // learn its largest queue size: ask for every ring as
            // configured and see what is refused. Nothing runs until a
            // ring is kicked, and DRIVER_OK sets the sizes again.
            for (index, size) in self.params.queue_sizes.clone().into_iter().enumerate() {
                match self.request("SET_VRING_NUM", |f| f.set_vring_num(index, size)) {
                    Ok(()) => {}
                    // A lost connection is no refusal.
                    Err(e) if self.broken => return Err(e),
                    Err(e) => {
                        return Err(Error::QueueRefused {
                            id: id.clone(),
                            index,
                            size,
                            source: Box::new(e),
                        })
                    }
                }
            }
        }
        let spec_config = self.params.device_type.spec_config_size().unwrap_or(0) > 0;
        if spec_config
            && self.config_bytes.is_none()
            && !protocol.contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::NoConfigFeature {
                id,
                ty: self.params.device_type.to_string(),
            });
        }
        Ok(Negotiated {
            backend_features,
            protocol,
        })
    }

    pub(super) fn set_mem_table(&mut self) -> Result<(), Error> {
        let regions = self
            .memory
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|source| Error::Backend {
                    what: "memory region",
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&regions).map(|_| ()))
    }
}
