//! The virtio-pci common configuration structure (VIRTIO 1.3, 4.1.4.3):
//! feature words, status, MSI-X vector numbers and per-queue set-up, as a
//! plain register file. Writes tell the transport when the driver reset the
//! device or finished setting it up; everything else stays in here.

/// Bytes up to and including queue_device; the 1.2 fields after it
/// (queue_notify_data, queue_reset) are not offered and read as zero.
pub const COMMON_LEN: usize = 0x38;
pub use crate::virtio::interrupt::NO_VECTOR;

#[cfg(test)]
pub const STATUS_ACKNOWLEDGE: u8 = 1;
#[cfg(test)]
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;

// Register offsets.
const DEVICE_FEATURE_SELECT: usize = 0;
const DEVICE_FEATURE: usize = 4;
const DRIVER_FEATURE_SELECT: usize = 8;
const DRIVER_FEATURE: usize = 12;
const CONFIG_MSIX_VECTOR: usize = 16;
const NUM_QUEUES: usize = 18;
const DEVICE_STATUS: usize = 20;
const CONFIG_GENERATION: usize = 21;
const QUEUE_SELECT: usize = 22;
const QUEUE_SIZE: usize = 24;
const QUEUE_MSIX_VECTOR: usize = 26;
const QUEUE_ENABLE: usize = 28;
const QUEUE_NOTIFY_OFF: usize = 30;
const QUEUE_DESC: usize = 32;
const QUEUE_DRIVER: usize = 40;
const QUEUE_DEVICE: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueState {
    pub max: u16,
    pub size: u16,
    pub vector: u16,
    pub enabled: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueState {
    fn new(max: u16) -> QueueState {
        QueueState {
            max,
            size: max,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// What a write asks of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// device_status was written with 0.
    Reset,
    /// DRIVER_OK was set (after FEATURES_OK).
    Activate,
}

/// What a snapshot keeps of the common configuration: all the driver
/// wrote and the device status; what the device offers comes from the
/// device as built.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonSnapshot {
    /// What the device offered then: the driver's register may hold bits
    /// it never offered, which mean nothing.
    pub features_offered: u64,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub msix_config: u16,
    pub status: u8,
    pub generation: u8,
    pub queue_select: u16,
    pub queues: Vec<QueueState>,
}

/// Why a saved common configuration does not fit the device built.
#[derive(Debug, thiserror::Error)]
pub enum CommonRestoreError {
    #[error("the driver acked features {acked:#x}, the device offers {offered:#x} now")]
    Features { acked: u64, offered: u64 },
    #[error("{saved} queues saved, the device has {built}")]
    QueueCount { saved: usize, built: usize },
    #[error("queue {index}: {saved} entries saved, the device allows {max}")]
    QueueSize { index: usize, saved: u16, max: u16 },
}

pub struct CommonConfig {
    features_offered: u64,
    /// MSI-X table size: vector numbers at or above it read back NO_VECTOR.
    vectors: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub driver_features: u64,
    pub msix_config: u16,
    pub status: u8,
    pub generation: u8,
    queue_select: u16,
    pub queues: Vec<QueueState>,
}

impl CommonConfig {
    pub fn new(features: u64, queue_sizes: &[u16], vectors: u16) -> CommonConfig {
        CommonConfig {
            features_offered: features,
            vectors,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            queues: queue_sizes
                .iter()
                .map(|&max| QueueState::new(max))
                .collect(),
        }
    }

    /// Back to the state after power-on, offering `features` (which may
    /// have changed if the backend was reconnected).
    pub fn reset(&mut self, features: u64) {
        *self = CommonConfig {
            generation: self.generation,
            queues: self.queues.iter().map(|q| QueueState::new(q.max)).collect(),
            ..CommonConfig::new(features, &[], self.vectors)
        };
    }

    pub fn save(&self) -> CommonSnapshot {
        CommonSnapshot {
            features_offered: self.features_offered,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            msix_config: self.msix_config,
            status: self.status,
            generation: self.generation,
            queue_select: self.queue_select,
            queues: self.queues.clone(),
        }
    }

    /// What the driver set, back into a device offering what it acked of
    /// what was offered then, and the same queues. The device's offer is
    /// its own now.
    pub fn restore(&mut self, saved: &CommonSnapshot) -> Result<(), CommonRestoreError> {
        let acked = saved.driver_features & saved.features_offered;
        if acked & !self.features_offered != 0 {
            return Err(CommonRestoreError::Features {
                acked,
                offered: self.features_offered,
            });
        }
        if saved.queues.len() != self.queues.len() {
            return Err(CommonRestoreError::QueueCount {
                saved: saved.queues.len(),
                built: self.queues.len(),
            });
        }
        for (index, (built, q)) in self.queues.iter().zip(&saved.queues).enumerate() {
            if q.max != built.max || q.size > built.max {
                return Err(CommonRestoreError::QueueSize {
                    index,
                    saved: q.size.max(q.max),
                    max: built.max,
                });
            }
        }
        self.device_feature_select = saved.device_feature_select;
        self.driver_feature_select = saved.driver_feature_select;
        self.driver_features = saved.driver_features;
        self.msix_config = saved.msix_config;
        self.status = saved.status;
        self.generation = saved.generation;
        self.queue_select = saved.queue_select;
        self.queues = saved.queues.clone();
        Ok(())
    }

    /// Sets DEVICE_NEEDS_RESET; true if it was not set already.
    pub fn set_needs_reset(&mut self) -> bool {
        let first = self.status & STATUS_NEEDS_RESET == 0;
        self.status |= STATUS_NEEDS_RESET;
        first
    }

    pub fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
    }

    fn image(&self) -> [u8; COMMON_LEN] {
        let mut b = [0u8; COMMON_LEN];
        let word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            DEVICE_FEATURE,
            &word(self.features_offered, self.device_feature_select).to_le_bytes(),
        );
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            DRIVER_FEATURE,
            &word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(CONFIG_MSIX_VECTOR, &self.msix_config.to_le_bytes());
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(DEVICE_STATUS, &[self.status]);
        put(CONFIG_GENERATION, &[self.generation]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        // An out-of-range queue_select reads size 0: "not available".
        if let Some(q) = self.queues.get(usize::from(self.queue_select)) {
            put(QUEUE_SIZE, &q.size.to_le_bytes());
            put(QUEUE_MSIX_VECTOR, &q.vector.to_le_bytes());
            put(QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
            // queue_notify_off is the queue index: notify at index * multiplier.
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &q.desc.to_le_bytes());
            put(QUEUE_DRIVER, &q.avail.to_le_bytes());
            put(QUEUE_DEVICE, &q.used.to_le_bytes());
        }
        b
    }

    /// Any width at any offset; bytes beyond the structure read zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let image = self.image();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= COMMON_LEN {
            return;
        }
        let end = (start + data.len()).min(COMMON_LEN);
        data[..end - start].copy_from_slice(&image[start..end]);
    }

    /// Writes are applied to a byte image of the registers and each field
    /// they touch is then taken from it, so any access width works.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let Ok(start) = usize::try_from(offset) else {
            return Action::None;
        };
        if start >= COMMON_LEN {
            return Action::None;
        }
        let mut image = self.image();
        let end = (start + data.len()).min(COMMON_LEN);
        image[start..end].copy_from_slice(&data[..end - start]);
        let touches = |field: usize, len: usize| start < field + len && end > field;
        let u16_at = |i: usize| u16::from_le_bytes([image[i], image[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([image[i], image[i + 1], image[i + 2], image[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        let vector = |v: u16| if v < self.vectors { v } else { NO_VECTOR };

        if touches(DEVICE_FEATURE_SELECT, 4) {
            self.device_feature_select = u32_at(DEVICE_FEATURE_SELECT);
        }
        if touches(DRIVER_FEATURE_SELECT, 4) {
            self.driver_feature_select = u32_at(DRIVER_FEATURE_SELECT);
        }
        // Features are fixed once FEATURES_OK is set.
        if touches(DRIVER_FEATURE, 4) && self.status & STATUS_FEATURES_OK == 0 {
            let word = u64::from(u32_at(DRIVER_FEATURE));
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | word,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (word << 32),
                _ => {}
            }
        }
        if touches(CONFIG_MSIX_VECTOR, 2) {
            self.msix_config = vector(u16_at(CONFIG_MSIX_VECTOR));
        }
        if touches(QUEUE_SELECT, 2) {
            self.queue_select = u16_at(QUEUE_SELECT);
        }
        let driver_ok = self.driver_ok();
        let queue_vector = vector(u16_at(QUEUE_MSIX_VECTOR));
        // Queue set-up is frozen once the device runs.
        if let Some(q) = self
            .queues
            .get_mut(usize::from(self.queue_select))
            .filter(|_| !driver_ok)
        {
            if touches(QUEUE_SIZE, 2) {
                let size = u16_at(QUEUE_SIZE);
                // The driver may only lower the size, to a power of two.
                if size.is_power_of_two() && size <= q.max {
                    q.size = size;
                } else {
                    log::warn!(
                        "Driver asked for queue size {size} (maximum {}); ignored",
                        q.max
                    );
                }
            }
            if touches(QUEUE_MSIX_VECTOR, 2) {
                q.vector = queue_vector;
            }
            // Only 1 may be written; a queue is disabled by reset alone.
            if touches(QUEUE_ENABLE, 2) && u16_at(QUEUE_ENABLE) == 1 {
                q.enabled = true;
            }
            if touches(QUEUE_DESC, 8) {
                q.desc = u64_at(QUEUE_DESC);
            }
            if touches(QUEUE_DRIVER, 8) {
                q.avail = u64_at(QUEUE_DRIVER);
            }
            if touches(QUEUE_DEVICE, 8) {
                q.used = u64_at(QUEUE_DEVICE);
            }
        }
        if touches(DEVICE_STATUS, 1) {
            return self.set_status(image[DEVICE_STATUS]);
        }
        Action::None
    }

    fn set_status(&mut self, status: u8) -> Action {
        if status == 0 {
            return Action::Reset;
        }
        let old = self.status;
        // The driver cannot clear bits, nor NEEDS_RESET which is ours.
        let mut new = status | old;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.features_offered;
            if unknown != 0 {
                log::warn!(
                    "Driver accepted features {unknown:#x} never offered; FEATURES_OK refused"
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        self.status = new;
        let activate = new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0;
        if activate && new & STATUS_FEATURES_OK == 0 {
            log::warn!("Driver set DRIVER_OK without FEATURES_OK; device not started");
            return Action::None;
        }
        if activate {
            Action::Activate
        } else {
            Action::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(c: &CommonConfig, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn read16(c: &CommonConfig, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        c.read(offset as u64, &mut b);
        u16::from_le_bytes(b)
    }

    fn write32(c: &mut CommonConfig, offset: usize, v: u32) -> Action {
        c.write(offset as u64, &v.to_le_bytes())
    }

    fn write16(c: &mut CommonConfig, offset: usize, v: u16) -> Action {
        c.write(offset as u64, &v.to_le_bytes())
    }

    fn status(c: &mut CommonConfig, v: u8) -> Action {
        c.write(DEVICE_STATUS as u64, &[v])
    }

    const FEATURES: u64 = (1 << 32) | (1 << 29) | 1;

    fn fs() -> CommonConfig {
        CommonConfig::new(FEATURES, &[1024, 512], 3)
    }

    #[test]
    fn feature_words_by_select() {
        let mut c = fs();
        assert_eq!(read32(&c, DEVICE_FEATURE), (1 << 29) | 1);
        write32(&mut c, DEVICE_FEATURE_SELECT, 1);
        assert_eq!(read32(&c, DEVICE_FEATURE), 1);
        write32(&mut c, DEVICE_FEATURE_SELECT, 2);
        assert_eq!(read32(&c, DEVICE_FEATURE), 0);
        write32(&mut c, DRIVER_FEATURE_SELECT, 1);
        write32(&mut c, DRIVER_FEATURE, 1);
        write32(&mut c, DRIVER_FEATURE_SELECT, 0);
        write32(&mut c, DRIVER_FEATURE, 1 << 29);
        assert_eq!(c.driver_features, (1 << 32) | (1 << 29));
        assert_eq!(read32(&c, DRIVER_FEATURE), 1 << 29);
        assert_eq!(read16(&c, NUM_QUEUES), 2);
    }

    #[test]
    fn queue_setup_by_select() {
        let mut c = fs();
        write16(&mut c, QUEUE_SELECT, 1);
        assert_eq!(read16(&c, QUEUE_SIZE), 512);
        assert_eq!(read16(&c, QUEUE_NOTIFY_OFF), 1);
        write16(&mut c, QUEUE_SIZE, 256);
        write16(&mut c, QUEUE_SIZE, 300); // not a power of two
        write16(&mut c, QUEUE_SIZE, 1024); // above the maximum
        assert_eq!(read16(&c, QUEUE_SIZE), 256);
        // 64-bit addresses written as two dwords.
        write32(&mut c, QUEUE_DESC, 0x1000);
        write32(&mut c, QUEUE_DESC + 4, 0x1);
        c.write(QUEUE_DRIVER as u64, &0x2000u64.to_le_bytes());
        write32(&mut c, QUEUE_DEVICE, 0x3000);
        write16(&mut c, QUEUE_MSIX_VECTOR, 2);
        write16(&mut c, QUEUE_ENABLE, 1);
        let q = c.queues[1];
        assert_eq!(
            (q.size, q.desc, q.avail, q.used, q.vector, q.enabled),
            (256, 0x1_0000_1000, 0x2000, 0x3000, 2, true)
        );
        assert_eq!(c.queues[0].desc, 0, "queue 0 untouched");
        // A queue that does not exist reads size 0 and takes nothing.
        write16(&mut c, QUEUE_SELECT, 7);
        assert_eq!(read16(&c, QUEUE_SIZE), 0);
        write16(&mut c, QUEUE_SIZE, 64);
        assert_eq!(read16(&c, QUEUE_SIZE), 0);
    }

    #[test]
    fn vectors_beyond_the_table_read_no_vector() {
        let mut c = fs();
        write16(&mut c, CONFIG_MSIX_VECTOR, 2);
        assert_eq!(read16(&c, CONFIG_MSIX_VECTOR), 2);
        write16(&mut c, CONFIG_MSIX_VECTOR, 3);
        assert_eq!(read16(&c, CONFIG_MSIX_VECTOR), NO_VECTOR);
        write16(&mut c, QUEUE_MSIX_VECTOR, 9);
        assert_eq!(read16(&c, QUEUE_MSIX_VECTOR), NO_VECTOR);
    }

    #[test]
    fn status_sequence_activates_once_and_reset_is_asked_for() {
        let mut c = fs();
        assert_eq!(status(&mut c, STATUS_ACKNOWLEDGE), Action::None);
        assert_eq!(
            status(&mut c, STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            Action::None
        );
        write32(&mut c, DRIVER_FEATURE_SELECT, 1);
        write32(&mut c, DRIVER_FEATURE, 1);
        let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        assert_eq!(status(&mut c, features_ok), Action::None);
        assert_eq!(read16(&c, DEVICE_STATUS) as u8, features_ok);
        // Features are frozen now.
        write32(&mut c, DRIVER_FEATURE, 0);
        assert_eq!(c.driver_features, 1 << 32);
        assert_eq!(
            status(&mut c, features_ok | STATUS_DRIVER_OK),
            Action::Activate
        );
        assert_eq!(status(&mut c, features_ok | STATUS_DRIVER_OK), Action::None);
        // Queue set-up is frozen while running.
        write16(&mut c, QUEUE_SIZE, 64);
        assert_eq!(c.queues[0].size, 1024);
        assert_eq!(status(&mut c, 0), Action::Reset);
        c.reset(FEATURES);
        assert_eq!(c.status, 0);
        assert_eq!(c.driver_features, 0);
        assert_eq!(c.queues[0], QueueState::new(1024));
    }

    #[test]
    fn features_never_offered_refuse_features_ok() {
        let mut c = fs();
        write32(&mut c, DRIVER_FEATURE, 1 << 30);
        status(
            &mut c,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(c.status & STATUS_FEATURES_OK, 0);
        // And DRIVER_OK without FEATURES_OK starts nothing.
        assert_eq!(status(&mut c, STATUS_DRIVER_OK), Action::None);
    }

    #[test]
    fn needs_reset_sticks_until_reset() {
        let mut c = fs();
        assert!(c.set_needs_reset());
        assert!(!c.set_needs_reset());
        status(&mut c, STATUS_ACKNOWLEDGE);
        assert_eq!(c.status, STATUS_ACKNOWLEDGE | STATUS_NEEDS_RESET);
        c.reset(FEATURES);
        assert_eq!(c.status, 0);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut c = fs();
        let mut wide = [0xaau8; 8];
        c.read(COMMON_LEN as u64 - 2, &mut wide);
        assert_eq!(wide, [0; 8], "queue_device's top bytes then nothing");
        c.read(u64::MAX, &mut wide);
        assert_eq!(c.write(COMMON_LEN as u64, &[1, 2, 3, 4]), Action::None);
        assert_eq!(c.write(u64::MAX, &[1]), Action::None);
        // A byte write to the middle of a field changes only that byte.
        write32(&mut c, DEVICE_FEATURE_SELECT, 0x0102_0304);
        c.write(DEVICE_FEATURE_SELECT as u64 + 1, &[0xff]);
        assert_eq!(read32(&c, DEVICE_FEATURE_SELECT), 0x0102_ff04);
    }
}
