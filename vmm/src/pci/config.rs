//! A type-0 configuration space: plain registers with per-byte write masks,
//! so that read-only fields stay read-only whatever the guest writes.

pub const CONFIG_SPACE_SIZE: usize = 4096;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const INTERRUPT_LINE: usize = 0x3c;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciClass {
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
}

pub const CLASS_HOST_BRIDGE: PciClass = PciClass {
    class: 0x06,
    subclass: 0x00,
    prog_if: 0x00,
};

pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    write_mask: Box<[u8; CONFIG_SPACE_SIZE]>,
}

impl ConfigSpace {
    pub fn new(vendor: u16, device: u16, class: PciClass, revision: u8) -> Self {
        let mut space = Self {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            write_mask: Box::new([0; CONFIG_SPACE_SIZE]),
        };
        space.set_u16(VENDOR_ID, vendor);
        space.set_u16(DEVICE_ID, device);
        space.regs[REVISION_ID] = revision;
        space.regs[CLASS_PROG] = class.prog_if;
        space.regs[CLASS_PROG + 1] = class.subclass;
        space.regs[CLASS_PROG + 2] = class.class;
        // Memory space, bus master and INTx-disable are the command bits a
        // guest may set on our devices; the rest read back as zero.
        space.set_write_mask_u16(COMMAND, (1 << 1) | (1 << 2) | (1 << 10));
        space.write_mask[INTERRUPT_LINE] = 0xff;
        space
    }

    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.regs[offset] = value;
    }

    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    pub fn set_write_mask_u32(&mut self, offset: usize, mask: u32) {
        self.write_mask[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    pub fn set_write_mask_u16(&mut self, offset: usize, mask: u16) {
        self.write_mask[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    /// Reads outside the space (a guest bug) return all ones, like absent hardware.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let start = usize::from(offset);
        match self.regs.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0xff),
        }
    }

    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let start = usize::from(offset);
        for (i, &byte) in data.iter().enumerate() {
            let Some(mask) = self.write_mask.get(start + i).copied() else {
                return;
            };
            let reg = &mut self.regs[start + i];
            *reg = (*reg & !mask) | (byte & mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut cs = ConfigSpace::new(0x8086, 0x0d57, CLASS_HOST_BRIDGE, 0);
        cs.write(VENDOR_ID as u16, &[0xff, 0xff, 0xff, 0xff]);
        let mut id = [0u8; 4];
        cs.read(0, &mut id);
        assert_eq!(id, [0x86, 0x80, 0x57, 0x0d]);
        cs.write(COMMAND as u16, &[0xff, 0xff]);
        let mut command = [0u8; 2];
        cs.read(COMMAND as u16, &mut command);
        assert_eq!(u16::from_le_bytes(command), 0x0406);
    }

    #[test]
    fn class_code_layout() {
        let cs = ConfigSpace::new(1, 2, CLASS_HOST_BRIDGE, 3);
        let mut dword = [0u8; 4];
        cs.read(REVISION_ID as u16, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x0600_0003);
    }

    #[test]
    fn out_of_range_reads_all_ones() {
        let cs = ConfigSpace::new(1, 2, CLASS_HOST_BRIDGE, 0);
        let mut data = [0u8; 4];
        cs.read(4094, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
