//! Legacy platform devices. Each takes an offset and bytes and knows nothing
//! of buses or threads; the builder places them.

pub mod acpi_ged;
pub mod acpi_power;
pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod serial;
