//! ACPI tables: RSDP -> XSDT -> FADT (hardware-reduced, with sleep control
//! and reset registers), DSDT (PCI host bridge, ECAM resource, COM1, the
//! RTC, the event device and power button, \_S5),
//! MADT (one LAPIC per vCPU, the IOAPIC) and MCFG (ECAM).

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Equal, Field,
    FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local,
    Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate,
    Store, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap as GuestMemory};

use super::layout::*;
use crate::devices::acpi_ged::EVENT_POWER_BUTTON;
use crate::devices::acpi_power::{
    RESET_OFFSET, RESET_VALUE, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET, SLP_TYP_S5,
};
use crate::devices::cmos::CENTURY;

const OEM_ID: [u8; 6] = *b"VMMGVU";
const OEM_TABLE_ID: [u8; 8] = *b"VMMGVU  ";
const OEM_REVISION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes, more than the {available} reserved for them")]
    TooLarge { needed: u64, available: u64 },
    #[error("Failed to write ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn dsdt() -> Vec<u8> {
    // The AML builders borrow their children, so each object is built and
    // serialised within one statement.
    let mut aml = Vec::new();
    Device::new(
        "_SB_.PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &AddressSpace::new_bus_number(0u16, 0u16),
                    &IO::new(PORT_PCI_CONFIG_ADDRESS, PORT_PCI_CONFIG_ADDRESS, 1, 8),
                    &AddressSpace::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_MMIO32_START as u32,
                        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);
    // Motherboard resources: where guests without MCFG support (and Linux,
    // which checks) find the ECAM window.
    Device::new(
        "_SB_.MRES".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Memory32Fixed::new(
                    false,
                    PCI_ECAM_START as u32,
                    PCI_ECAM_SIZE as u32,
                )]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);
    isa_device(
        &mut aml,
        "_SB_.COM1",
        "PNP0501",
        (PORT_COM1, PORT_COM1_LEN),
        COM1_IRQ,
    );
    // Where Linux's rtc_cmos finds the clock and its interrupt, as on a PC.
    isa_device(
        &mut aml,
        "_SB_.RTC_",
        "PNP0B00",
        (PORT_CMOS, PORT_CMOS_LEN),
        RTC_IRQ,
    );
    power_button(&mut aml);
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&SLP_TYP_S5, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut aml);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}

/// A legacy device at fixed ports on an ISA interrupt (edge, active
/// high), as PC firmware describes its own.
fn isa_device(aml: &mut Vec<u8>, path: &str, hid: &str, (port, len): (u16, u16), irq: u32) {
    Device::new(
        path.into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new(hid)),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(port, port, 1, len as u8),
                    &Interrupt::new(true, true, false, false, irq),
                ]),
            ),
        ],
    )
    .to_aml_bytes(aml);
}

/// The power button of a hardware-reduced platform: a `PNP0C0C` device
/// the Generic Event Device notifies (0x80, "pressed") from `_EVT` when
/// its status byte, which reading clears, has the power-button bit.
fn power_button(aml: &mut Vec<u8>) {
    let ged_hid = "ACPI0013".to_owned();
    let port = PORT_ACPI_GED;
    let len = PORT_ACPI_GED_LEN as u8;
    Device::new(
        "_SB_.GED_".into(),
        vec![
            &Name::new("_HID".into(), &ged_hid),
            &Name::new("_UID".into(), &aml::ZERO),
            // Interrupts only: Linux's GED driver refuses any other
            // resource in _CRS ("unable to parse IRQ resource").
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Interrupt::new(true, true, false, false, GED_IRQ)]),
            ),
            &OpRegion::new(
                "GDST".into(),
                OpRegionSpace::SystemIO,
                &u64::from(port),
                &u64::from(len),
            ),
            &Field::new(
                "GDST".into(),
                FieldAccessType::Byte,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"GDAT", 8)],
            ),
            &Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    &Store::new(&Local(0), &Path::new("GDAT")),
                    &If::new(
                        &Equal::new(
                            &And::new(&Local(1), &Local(0), &EVENT_POWER_BUTTON),
                            &EVENT_POWER_BUTTON,
                        ),
                        vec![&Notify::new(&Path::new("\\_SB_.PWRB"), &0x80u8)],
                    ),
                ],
            ),
        ],
    )
    .to_aml_bytes(aml);
    Device::new(
        "_SB_.PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(aml);
}

fn io_register(port: u64) -> GAS {
    GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let power = u64::from(PORT_ACPI_POWER);
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // Ignored by ACPI on a hardware-reduced platform, yet Linux's rtc_cmos
    // reads the century from there.
    builder.century = CENTURY;
    builder.reset_reg = io_register(power + RESET_OFFSET);
    builder.reset_value = RESET_VALUE;
    builder.sleep_control_reg = io_register(power + SLEEP_CONTROL_OFFSET);
    builder.sleep_status_reg = io_register(power + SLEEP_STATUS_OFFSET);
    to_bytes(&builder.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, IOAPIC_START as u32, 0));
    to_bytes(&madt)
}

fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    to_bytes(&mcfg)
}

/// Lays out every table in the BIOS area and returns the RSDP's address.
pub fn create_acpi_tables(mem: &GuestMemory, cpus: u8) -> Result<u64, AcpiError> {
    let align = |addr: u64| (addr + 7) & !7;
    let mut next = align(RSDP_START + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next = align(addr + bytes.len() as u64);
        (addr, bytes)
    };
    let dsdt = place(dsdt());
    let fadt = place(fadt(dsdt.0));
    let madt = place(madt(cpus));
    let mcfg = place(mcfg());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for (addr, _) in [&fadt, &madt, &mcfg] {
        xsdt.add_entry(*addr);
    }
    let xsdt = place(to_bytes(&xsdt));
    let rsdp = (RSDP_START, to_bytes(&Rsdp::new(OEM_ID, xsdt.0)));
    let end = xsdt.0 + xsdt.1.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(AcpiError::TooLarge {
            needed: end - RSDP_START,
            available: ACPI_TABLES_END - RSDP_START,
        });
    }
    for (addr, bytes) in [rsdp, dsdt, fadt, madt, mcfg, xsdt] {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    mem.write_slice(&reset_vector_code(), GuestAddress(RESET_VECTOR))
        .map_err(AcpiError::Write)?;
    Ok(RSDP_START)
}

/// Real-mode code for the reset vector: the FADT's reset register write,
/// then `hlt` forever. There is no firmware to jump to, yet Linux on a
/// hardware-reduced ACPI platform reboots through the EFI and then the
/// BIOS path (`reboot_type` becomes BOOT_EFI when the FADT says
/// HW_REDUCED_ACPI), which ends in a real-mode jump to F000:FFF0. Without
/// this, `reboot` and a panic with `panic=-1` left the guest spinning in
/// zeroed memory.
fn reset_vector_code() -> Vec<u8> {
    let port = PORT_ACPI_POWER + RESET_OFFSET as u16;
    let mut code = vec![0xb0, RESET_VALUE]; // mov al, RESET_VALUE
    code.push(0xba); // mov dx, port
    code.extend_from_slice(&port.to_le_bytes());
    code.extend_from_slice(&[
        0xee, // out dx, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ]);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_vector_writes_the_fadt_reset_register() {
        let code = reset_vector_code();
        assert!(code.len() <= 16, "past 1 MiB: {code:x?}");
        // mov al, imm8; mov dx, imm16; out dx, al
        assert_eq!(code[..2], [0xb0, RESET_VALUE]);
        assert_eq!(code[2], 0xba);
        assert_eq!(u16::from_le_bytes([code[3], code[4]]), 0x602);
        assert_eq!(code[5], 0xee);
        let fadt = fadt(0x1000);
        // The FADT's RESET_REG is a GAS at offset 116: address at +4.
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            0x602
        );
        assert_eq!(fadt[128], RESET_VALUE);
    }

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        for table in [dsdt(), fadt(0x1000), madt(4), mcfg()] {
            assert!(checksum_ok(&table), "{:?}", &table[..4]);
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap());
            assert_eq!(len as usize, table.len());
        }
    }

    #[test]
    fn madt_lists_every_cpu() {
        let table = madt(4);
        // Header (44) + 4 LAPICs (8 each) + one IOAPIC (12).
        assert_eq!(table.len(), 44 + 4 * 8 + 12);
        assert_eq!(&table[44..48], &[0, 8, 0, 0]);
        assert_eq!(&table[44 + 3 * 8..44 + 3 * 8 + 4], &[0, 8, 3, 3]);
    }

    #[test]
    fn dsdt_names_host_bridge_and_s5() {
        let table = dsdt();
        let has = |needle: &[u8]| table.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"PCI0"));
        assert!(has(b"_S5_"));
        // EISAID("PNP0C02") as AML encodes it.
        assert!(has(&0x020c_d041u32.to_le_bytes()));
    }

    #[test]
    fn fadt_names_the_rtc_century_register_and_no_legacy_flags() {
        let table = fadt(0x1000);
        assert_eq!(table[108], 0x32, "CENTURY");
        // IAPC_BOOT_ARCH at offset 109: not "no CMOS RTC", no 8042 claimed.
        assert_eq!(u16::from_le_bytes([table[109], table[110]]), 0);
    }

    #[test]
    fn dsdt_has_the_rtc_at_0x70_on_irq_8() {
        let table = dsdt();
        let has = |needle: &[u8]| table.windows(needle.len()).any(|w| w == needle);
        // EISAID("PNP0B00"), IO(Decode16, 0x70, 0x70, 1, 2) and
        // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {8}.
        assert!(has(&0x000b_d041u32.to_le_bytes()));
        assert!(has(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x08, 0x00, 0x00, 0x00]));
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_control_at_0x600() {
        let table = fadt(0x1000);
        let flags = u32::from_le_bytes(table[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        // sleep_control_reg GAS at offset 244: I/O space, address 0x600.
        assert_eq!(table[244], 1);
        assert_eq!(
            u64::from_le_bytes(table[248..256].try_into().unwrap()),
            0x600
        );
    }

    /// What iasl -d shows (checked by hand): the GED with its port and
    /// GSI, an `_EVT` reading GDAT, and the button it notifies.
    #[test]
    fn dsdt_has_the_event_device_and_the_power_button() {
        let table = dsdt();
        let has = |needle: &[u8]| table.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"ACPI0013\0"));
        assert!(has(b"_EVT"));
        assert!(has(b"GDAT"));
        // EISAID("PNP0C0C").
        assert!(has(&0x0c0c_d041u32.to_le_bytes()));
        // OperationRegion(GDST, SystemIO, 0x610, 1), and a _CRS of
        // Interrupt(..., Edge, ...) {5} alone: Linux's GED driver refuses
        // anything else there, an IO descriptor included.
        assert!(has(&[
            0x5b, 0x80, b'G', b'D', b'S', b'T', 0x01, 0x0b, 0x10, 0x06, 0x01
        ]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00]));
        assert!(!has(&[0x47, 0x01, 0x10, 0x06]));
    }
}
