//! virtio-blk (VIRTIO 1.3 5.2) as a driver sees it: the config fields of
//! the features negotiated, GET_ID, reads hashed, a deterministic write
//! read back, WRITE_ZEROES and DISCARD when asked, FLUSH, the errors the
//! specification defines (a write to a read-only disk, a range past the
//! end, an undefined request type), and one request on every queue at
//! once. Every status is reported as the byte the device wrote. Then,
//! when asked, the bench (bench.rs).

mod bench;
mod request;

use crate::cmdline::{parse_range, List};
use crate::pci::Function;
use crate::rt::{Failure, Hex, Quoted};
use crate::sha256::Sha256;
use crate::tests::virtio_devices;
use crate::{bail, failure, record, Ctx};

use request::{
    pattern, Blk, Data, BLK_ID, F_BLK_SIZE, F_DISCARD, F_FLUSH, F_MQ, F_SEG_MAX, F_WRITE_ZEROES,
    ID_BYTES, QUEUE_SECTORS, SECTOR, S_OK, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_UNDEFINED,
    T_WRITE_ZEROES,
};

/// Every virtio-blk device in turn.
pub fn blk_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, _) = virtio_devices(ctx)?;
    let mut found = false;
    for (slot, f) in functions.iter().flatten().enumerate() {
        if f.virtio_id() != BLK_ID {
            continue;
        }
        found = true;
        blk_device(*f, slot, ctx)?;
    }
    if !found {
        bail!("no virtio-blk device");
    }
    Ok(())
}

fn blk_device(f: Function, slot: usize, ctx: &mut Ctx) -> Result<(), Failure> {
    let mut blk = Blk::bring_up(f, slot, ctx)?;
    blk.report_config()?;
    blk.get_id()?;
    let args = &ctx.args;
    for range in args.blk_sha.iter() {
        let (start, count) = range_of("probe.blk.sha", range)?;
        blk.read_test(start, count)?;
    }
    for range in args.blk_write.iter() {
        let (start, count) = range_of("probe.blk.write", range)?;
        blk.write_test(start, count)?;
    }
    ranges_with(&mut blk, &args.blk_zero, "probe.blk.zero", Blk::zero_test)?;
    ranges_with(
        &mut blk,
        &args.blk_discard,
        "probe.blk.discard",
        Blk::discard_test,
    )?;
    blk.flush_test()?;
    blk.errors_test()?;
    blk.queues_test()?;
    bench::run(&mut blk, &ctx.args, &mut ctx.dma)?;
    record!(
        "blk done {} requests={} irqs={}",
        f.bdf,
        blk.requests,
        blk.dev.queue_irqs(0)
    );
    blk.dev.reset(&ctx.clock)?;
    match blk.problem {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

fn range_of(key: &str, range: &str) -> Result<(u64, u32), Failure> {
    match parse_range(range) {
        Some(r) => Ok(r),
        None => bail!("{key} wants START:COUNT, got {}", Quoted(range.as_bytes())),
    }
}

fn ranges_with(
    blk: &mut Blk,
    list: &List,
    key: &str,
    test: fn(&mut Blk, u64, u32) -> Result<(), Failure>,
) -> Result<(), Failure> {
    for range in list.iter() {
        let (start, count) = range_of(key, range)?;
        test(blk, start, count)?;
    }
    Ok(())
}

impl Blk {
    /// Remembers the first outcome the specification rules out.
    fn problem(&mut self, p: Failure) {
        self.problem.get_or_insert(p);
    }

    /// `blk config`: one field per negotiated feature, nothing else.
    fn report_config(&self) -> Result<(), Failure> {
        let mut fields = crate::rt::FixedString::<512>::new();
        let mut add = |name: &str, value: u64| {
            let _ = core::fmt::Write::write_fmt(&mut fields, format_args!(" {name}={value}"));
        };
        if self.has(F_SEG_MAX) {
            add("seg_max", u64::from(self.config_u32(12)?));
        }
        if self.has(F_BLK_SIZE) {
            add("blk_size", u64::from(self.config_u32(20)?));
        }
        if self.has(F_MQ) {
            add("queues", u64::from(self.config_u16(34)?));
        }
        if self.has(F_DISCARD) {
            add("max_discard_sectors", u64::from(self.config_u32(36)?));
            add("max_discard_seg", u64::from(self.config_u32(40)?));
            add("discard_sector_alignment", u64::from(self.config_u32(44)?));
        }
        if self.has(F_WRITE_ZEROES) {
            add("max_write_zeroes_sectors", u64::from(self.config_u32(48)?));
            add("max_write_zeroes_seg", u64::from(self.config_u32(52)?));
            let mut unmap = [0u8; 1];
            self.dev.read_config(56, &mut unmap)?;
            add("write_zeroes_may_unmap", u64::from(unmap[0]));
        }
        record!(
            "blk config {} offered=0x{:x} features=0x{:x} vqs={} qsize={} capacity={} ro={} flush={}{}",
            self.bdf(),
            self.dev.device_features,
            self.dev.driver_features,
            self.dev.num_queues,
            self.dev.sizes(),
            self.capacity,
            u8::from(self.ro),
            u8::from(self.has(F_FLUSH)),
            fields
        );
        Ok(())
    }

    /// `blk id`: VIRTIO_BLK_T_GET_ID into a 20-byte buffer.
    fn get_id(&mut self) -> Result<(), Failure> {
        self.with_data(0, ID_BYTES, |_, bytes| bytes.fill(0))?;
        let status = self.request(0, T_GET_ID, 0, Data::FromDevice(ID_BYTES))?;
        let mut id = [0u8; ID_BYTES as usize];
        self.with_data(0, ID_BYTES, |_, bytes| id.copy_from_slice(bytes))?;
        // NUL-padded, not NUL-terminated when all 20 bytes are used.
        let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
        record!(
            "blk id {} status={} serial={}",
            self.bdf(),
            status,
            Quoted(&id[..len])
        );
        if status != S_OK {
            self.problem(failure!("{}: GET_ID status {status}", self.bdf()));
        }
        Ok(())
    }

    /// `blk read`: the sha256 of a range.
    fn read_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        match self.range_sha(start, count)? {
            Ok(digest) => record!(
                "blk read {bdf} start={start} count={count} status=0 sha256={}",
                Hex(&digest)
            ),
            Err(status) => {
                record!("blk read {bdf} start={start} count={count} status={status}");
                if self.in_range(start, count) {
                    self.problem(failure!("{bdf}: read of {start}:{count}, status {status}"));
                }
            }
        }
        Ok(())
    }

    /// `blk write`: the pattern written and read back; on a read-only
    /// device the status of the refused write and whether the range
    /// stayed as it was.
    fn write_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        let mut expected = Sha256::new();
        let mut sector = [0u8; SECTOR as usize];
        for s in start..start + u64::from(count) {
            for (i, b) in sector.iter_mut().enumerate() {
                *b = pattern(s * SECTOR + i as u64);
            }
            expected.update(&sector);
        }
        let expected = expected.finish();
        if self.ro {
            let before = self.range_sha(start, count)?;
            let status = self.write_range(start, count)?;
            let after = self.range_sha(start, count)?;
            let unchanged = match (before, after) {
                (Ok(b), Ok(a)) if a == b => "yes",
                (Ok(_), Ok(_)) => "no",
                _ => "unknown",
            };
            record!("blk write {bdf} start={start} count={count} status={status} ro=1 unchanged={unchanged}");
            // "unknown" is a range the device cannot read (past the end):
            // the status alone then says the write was refused.
            if status == S_OK || unchanged == "no" {
                self.problem(failure!(
                    "{bdf}: write to a read-only device: status {status}, unchanged {unchanged}"
                ));
            }
            return Ok(());
        }
        let status = self.write_range(start, count)?;
        let readback = if status == S_OK {
            match self.range_sha(start, count)? {
                Ok(d) if d == expected => "ok",
                Ok(_) => "mismatch",
                Err(_) => "error",
            }
        } else {
            "none"
        };
        record!(
            "blk write {bdf} start={start} count={count} status={status} ro=0 sha256={} readback={readback}",
            Hex(&expected)
        );
        if self.in_range(start, count) && (status != S_OK || readback != "ok") {
            self.problem(failure!(
                "{bdf}: write of {start}:{count}, status {status}, readback {readback}"
            ));
        }
        Ok(())
    }

    /// `blk zero`: WRITE_ZEROES, then whether the range reads as zeros.
    fn zero_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        if !self.has(F_WRITE_ZEROES) {
            record!("blk zero {bdf} start={start} count={count} negotiated=0");
            self.problem(failure!("{bdf}: WRITE_ZEROES is not offered"));
            return Ok(());
        }
        let status = self.post_segment_request(T_WRITE_ZEROES, start, count)?;
        let mut zeros = Sha256::new();
        for _ in 0..u64::from(count) * SECTOR / 64 {
            zeros.update(&[0u8; 64]);
        }
        let zeros = zeros.finish();
        let readback = match self.range_sha(start, count)? {
            Ok(d) if d == zeros => "zero",
            Ok(_) => "nonzero",
            Err(_) => "error",
        };
        record!("blk zero {bdf} start={start} count={count} status={status} readback={readback}");
        // On a read-only disk only the refusal counts: the range may have
        // been zeros before.
        let fine = if self.ro {
            status != S_OK
        } else {
            status == S_OK && readback == "zero"
        };
        if !fine {
            self.problem(failure!(
                "{bdf}: WRITE_ZEROES of {start}:{count} (ro {}), status {status}, readback {readback}",
                u8::from(self.ro)
            ));
        }
        Ok(())
    }

    /// `blk discard`: the status only (what a discarded range reads as
    /// is the device's choice).
    fn discard_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        if !self.has(F_DISCARD) {
            record!("blk discard {bdf} start={start} count={count} negotiated=0");
            self.problem(failure!("{bdf}: DISCARD is not offered"));
            return Ok(());
        }
        let status = self.post_segment_request(T_DISCARD, start, count)?;
        record!("blk discard {bdf} start={start} count={count} status={status}");
        if (status == S_OK) == self.ro {
            self.problem(failure!(
                "{bdf}: DISCARD of {start}:{count} (ro {}), status {status}",
                u8::from(self.ro)
            ));
        }
        Ok(())
    }

    /// `blk flush`, when FLUSH is negotiated.
    fn flush_test(&mut self) -> Result<(), Failure> {
        if !self.has(F_FLUSH) {
            return Ok(());
        }
        let status = self.request(0, T_FLUSH, 0, Data::None)?;
        record!("blk flush {} status={status}", self.bdf());
        if status != S_OK && !self.ro {
            self.problem(failure!("{}: FLUSH status {status}", self.bdf()));
        }
        Ok(())
    }

    /// `blk errors`: reads at the end and across it, and a request type
    /// the specification does not define.
    fn errors_test(&mut self) -> Result<(), Failure> {
        let bdf = self.bdf();
        let len = QUEUE_SECTORS * SECTOR as u32;
        let at_end = self.request(0, T_IN, self.capacity, Data::FromDevice(len))?;
        let across = self.request(
            0,
            T_IN,
            self.capacity.saturating_sub(1),
            Data::FromDevice(2 * SECTOR as u32),
        )?;
        let undefined = self.request(0, T_UNDEFINED, 0, Data::None)?;
        record!(
            "blk errors {bdf} capacity={} read_at_end={at_end} read_across_end={across} type={T_UNDEFINED} undefined_type={undefined}",
            self.capacity
        );
        if at_end == S_OK || across == S_OK || undefined == S_OK {
            self.problem(failure!(
                "{bdf}: a request that must fail did not (at end {at_end}, across {across}, type {T_UNDEFINED} {undefined})"
            ));
        }
        Ok(())
    }

    /// `blk queue`: 8 sectors read on every queue, all in flight at once;
    /// queue q reads from sector 8q (wrapping at the capacity).
    fn queues_test(&mut self) -> Result<(), Failure> {
        let bdf = self.bdf();
        let len = QUEUE_SECTORS * SECTOR as u32;
        let span = self.capacity / u64::from(QUEUE_SECTORS);
        if span == 0 {
            bail!(
                "{bdf}: capacity {} is too small for the queue test",
                self.capacity
            );
        }
        let sector = |q: u16| (u64::from(q) % span) * u64::from(QUEUE_SECTORS);
        for q in 0..self.queues {
            self.with_data(q, len, |_, bytes| bytes.fill(0))?;
            self.post(q, T_IN, sector(q), Data::FromDevice(len))?;
        }
        for q in 0..self.queues {
            let status = self.complete(q)?;
            let mut hash = Sha256::new();
            self.with_data(q, len, |_, bytes| hash.update(bytes))?;
            record!(
                "blk queue {bdf} q={q} start={} count={QUEUE_SECTORS} status={status} sha256={} irqs={}",
                sector(q),
                Hex(&hash.finish()),
                self.dev.queue_irqs(q)
            );
            if status != S_OK {
                self.problem(failure!("{bdf}: read on queue {q}, status {status}"));
            }
        }
        Ok(())
    }
}
