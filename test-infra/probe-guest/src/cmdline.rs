//! The kernel command line: `probe.*` keys choose what runs and how;
//! unknown `probe.*` keys and bad values are reported and ignored, other
//! words are left alone (they belong to whoever else reads the line).

use crate::rt::FixedString;
use crate::virtio::Mode;

pub const MAX_ITEMS: usize = 32;
/// The echo test's largest message: one buffer each way.
pub const MAX_ECHO_BYTES: u32 = 1 << 20;

/// Comma-separated values, borrowed from the stored command line.
#[derive(Clone, Copy)]
pub struct List {
    items: [&'static str; MAX_ITEMS],
    len: usize,
}

impl List {
    const fn new() -> Self {
        List {
            items: [""; MAX_ITEMS],
            len: 0,
        }
    }

    fn push(&mut self, s: &'static str) {
        if self.len < MAX_ITEMS {
            self.items[self.len] = s;
            self.len += 1;
        }
    }

    fn extend_csv(&mut self, s: &'static str) {
        for item in s.split(',').filter(|i| !i.is_empty()) {
            self.push(item);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.items[..self.len].iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Args {
    pub run: List,
    pub fs_tag: Option<&'static str>,
    pub fs_read: List,
    pub fs_write: List,
    /// Paths unlinked at the end of the fs test (what it wrote).
    pub fs_remove: List,
    pub fs_list: List,
    pub fs_ops: bool,
    /// Time FUSE operations (the `fs bench` record).
    pub fs_bench: bool,
    pub virtio_mode: Mode,
    /// Feature bits the driver accepts when the device offers them
    /// (VERSION_1 is always accepted).
    pub virtio_features: u64,
    pub pci_window: (u64, u64),
    /// Keep the BAR addresses the VMM chose instead of assigning them
    /// from `pci_window` (`probe.pci.bars=keep`).
    pub pci_keep_bars: bool,
    /// Devices the echo test drives (None: every virtio device but fs).
    pub echo_id: Option<u32>,
    pub echo_rounds: u32,
    pub echo_bytes: u32,
    /// How often a failed device may be reset and set up again.
    pub echo_recover: u32,
    pub echo_timeout_ms: u64,
    /// How long `reconnect` waits for DEVICE_NEEDS_RESET after `ready`.
    pub reconnect_timeout_ms: u64,
    /// `OFFSET:HEX`: bytes the config test writes.
    pub config_write: Option<&'static str>,
    /// `START:COUNT` sector ranges `blk` reads and hashes.
    pub blk_sha: List,
    /// `START:COUNT` sector ranges `blk` writes with the pattern.
    pub blk_write: List,
    /// `START:COUNT` ranges for VIRTIO_BLK_T_WRITE_ZEROES (negotiated only
    /// when given).
    pub blk_zero: List,
    /// `START:COUNT` ranges for VIRTIO_BLK_T_DISCARD (likewise).
    pub blk_discard: List,
    /// How long one block request may take.
    pub blk_timeout_ms: u64,
    /// What the blk bench measures, in order (`BENCH_OPS`).
    pub blk_bench: List,
    /// How long each throughput measurement keeps submitting.
    pub blk_bench_ms: u64,
    /// Requests the bench keeps in flight on one queue.
    pub blk_bench_depth: u16,
    /// Write-then-FLUSH pairs the flush measurement times.
    pub blk_bench_flushes: u32,
    /// Seeds the random offsets.
    pub blk_bench_seed: u64,
    /// Text `console` transmits first (a newline is added).
    pub console_tx: Option<&'static str>,
    /// Bytes of the console pattern transmitted after `console_tx`.
    pub console_tx_bytes: u32,
    /// Input `console` waits for: this many bytes ...
    pub console_rx_bytes: u32,
    /// ... or a line holding just this.
    pub console_rx_end: Option<&'static str>,
    /// Text written through `emerg_wr`, byte by byte (a newline is added).
    pub console_emerg: Option<&'static str>,
    /// How long `console` waits for its input.
    pub console_timeout_ms: u64,
    /// `console` waits for the device to announce a new size first.
    pub console_resize: bool,
    /// Seeds the `chaos` test's choices: the same seed, the same accesses.
    pub chaos_seed: u64,
    /// How many accesses `chaos` makes.
    pub chaos_ops: u64,
    /// The devices (numbers on bus 0) `chaos` targets, as a bit mask;
    /// 0: every function.
    pub chaos_devices: u32,
    /// The rings chaos starts hold no requests (`probe.chaos.rings=empty`)
    /// instead of garbage.
    pub chaos_empty_rings: bool,
    /// Milliseconds between two of `tick`'s lines.
    pub tick_ms: u64,
    /// Times the run list is run (0: for ever).
    pub repeat: u64,
    /// Notify a queue again when it has completed nothing for this long
    /// (0: never): for VMMs known to lose a notification.
    pub rekick_ms: u64,
    unknown: List,
}

static mut STORED: FixedString<4096> = FixedString::new();

fn store(s: &str) -> &'static str {
    // SAFETY: written once, at start-up, before anything borrows it.
    let stored = unsafe { &mut *core::ptr::addr_of_mut!(STORED) };
    stored.clear();
    let _ = core::fmt::Write::write_str(stored, s);
    // SAFETY: never written again, so the borrow can live forever.
    unsafe { (*core::ptr::addr_of!(STORED)).as_str() }
}

/// The value of the choice `word` names.
fn choose<T: Copy>(word: &str, choices: &[(&str, T)]) -> Option<T> {
    choices
        .iter()
        .find(|(name, _)| *name == word)
        .map(|&(_, v)| v)
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The most sectors one range may name (1 GiB): more than any test image
/// needs, and a typo cannot make a test run for minutes.
pub const MAX_BLK_RANGE: u32 = 1 << 21;

/// What `probe.blk.bench` can measure.
pub const BENCH_OPS: [&str; 5] = ["randread", "randwrite", "seqread", "seqwrite", "flush"];
/// The most requests the bench keeps in flight (a 128-entry queue holds
/// 42 three-descriptor chains).
pub const MAX_BENCH_DEPTH: u16 = 256;
/// The most FLUSHes the bench times (their latencies are kept to sort).
pub const MAX_BENCH_FLUSHES: u32 = 100_000;

/// `START:COUNT` in sectors, COUNT from 1 to MAX_BLK_RANGE.
pub fn parse_range(s: &str) -> Option<(u64, u32)> {
    let (start, count) = s.split_once(':')?;
    let count = count
        .parse()
        .ok()
        .filter(|c| (1..=MAX_BLK_RANGE).contains(c))?;
    Some((start.parse().ok()?, count))
}

/// Adds comma-separated `START:COUNT` ranges to `list`; false (and nothing
/// added) if one is malformed.
fn ranges(list: &mut List, value: &'static str) -> bool {
    if value.split(',').any(|r| parse_range(r).is_none()) {
        return false;
    }
    list.extend_csv(value);
    true
}

/// Comma-separated device numbers (0 to 31) as a bit mask.
fn device_mask(value: &str) -> Option<u32> {
    let mut mask = 0u32;
    for item in value.split(',') {
        let dev: u32 = item.parse().ok().filter(|&d| d < 32)?;
        mask |= 1 << dev;
    }
    Some(mask)
}

/// A positive number of milliseconds.
fn millis(value: &str) -> Option<u64> {
    value.parse().ok().filter(|&v| v > 0)
}

impl Args {
    pub fn parse(cmdline: &str) -> Args {
        let line = store(cmdline);
        let mut a = Args {
            run: List::new(),
            fs_tag: None,
            fs_read: List::new(),
            fs_write: List::new(),
            fs_remove: List::new(),
            fs_list: List::new(),
            fs_ops: true,
            fs_bench: false,
            virtio_mode: Mode::Interrupt,
            virtio_features: 0,
            pci_window: (0xc000_0000, 0xe000_0000),
            pci_keep_bars: false,
            echo_id: None,
            echo_rounds: 8,
            echo_bytes: 256,
            echo_recover: 0,
            echo_timeout_ms: 2000,
            reconnect_timeout_ms: 30_000,
            config_write: None,
            blk_sha: List::new(),
            blk_write: List::new(),
            blk_zero: List::new(),
            blk_discard: List::new(),
            blk_timeout_ms: 5000,
            blk_bench: List::new(),
            blk_bench_ms: 1000,
            blk_bench_depth: 32,
            blk_bench_flushes: 200,
            blk_bench_seed: 1,
            console_tx: None,
            console_tx_bytes: 6000,
            console_rx_bytes: 0,
            console_rx_end: None,
            console_emerg: None,
            console_timeout_ms: 10_000,
            console_resize: false,
            chaos_seed: 1,
            chaos_ops: 10_000,
            chaos_devices: 0,
            chaos_empty_rings: false,
            tick_ms: 10,
            repeat: 1,
            rekick_ms: 0,
            unknown: List::new(),
        };
        for word in line.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("probe.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            let good = match key {
                "run" => {
                    a.run.extend_csv(value);
                    true
                }
                "fs.tag" => {
                    a.fs_tag = Some(value);
                    !value.is_empty()
                }
                "fs.read" => {
                    a.fs_read.extend_csv(value);
                    true
                }
                "fs.write" => {
                    a.fs_write.extend_csv(value);
                    true
                }
                "fs.remove" => {
                    a.fs_remove.extend_csv(value);
                    true
                }
                "fs.list" => {
                    a.fs_list.extend_csv(value);
                    true
                }
                "fs.bench" => choose(value, &[("on", true), ("off", false)])
                    .map(|v| a.fs_bench = v)
                    .is_some(),
                "fs.ops" => choose(value, &[("on", true), ("off", false)])
                    .map(|v| a.fs_ops = v)
                    .is_some(),
                "virtio.mode" => choose(value, &[("irq", Mode::Interrupt), ("poll", Mode::Poll)])
                    .map(|v| a.virtio_mode = v)
                    .is_some(),
                "echo.id" => value.parse().map(|v| a.echo_id = Some(v)).is_ok(),
                "echo.rounds" => value.parse().map(|v| a.echo_rounds = v).is_ok(),
                "echo.bytes" => value
                    .parse()
                    .ok()
                    .filter(|&v| (1..=MAX_ECHO_BYTES).contains(&v))
                    .map(|v| a.echo_bytes = v)
                    .is_some(),
                "echo.recover" => value.parse().map(|v| a.echo_recover = v).is_ok(),
                "echo.timeout_ms" => value
                    .parse()
                    .ok()
                    .filter(|&v| v > 0)
                    .map(|v| a.echo_timeout_ms = v)
                    .is_some(),
                "reconnect.timeout_ms" => value
                    .parse()
                    .ok()
                    .filter(|&v| v > 0)
                    .map(|v| a.reconnect_timeout_ms = v)
                    .is_some(),
                "config.write" => {
                    a.config_write = Some(value);
                    value.contains(':')
                }
                "virtio.features" => parse_hex(value).map(|f| a.virtio_features = f).is_some(),
                "pci.window" => value
                    .split_once('-')
                    .and_then(|(b, e)| Some((parse_hex(b)?, parse_hex(e)?)))
                    .filter(|(b, e)| b < e)
                    .map(|w| a.pci_window = w)
                    .is_some(),
                "pci.bars" => choose(value, &[("assign", false), ("keep", true)])
                    .map(|v| a.pci_keep_bars = v)
                    .is_some(),
                "blk.sha" => ranges(&mut a.blk_sha, value),
                "blk.write" => ranges(&mut a.blk_write, value),
                "blk.zero" => ranges(&mut a.blk_zero, value),
                "blk.discard" => ranges(&mut a.blk_discard, value),
                "blk.timeout_ms" => millis(value).map(|v| a.blk_timeout_ms = v).is_some(),
                "blk.bench" => {
                    let known = value.split(',').all(|op| BENCH_OPS.contains(&op));
                    if known {
                        a.blk_bench.extend_csv(value);
                    }
                    known
                }
                "blk.bench_ms" => millis(value).map(|v| a.blk_bench_ms = v).is_some(),
                "blk.bench_depth" => value
                    .parse()
                    .ok()
                    .filter(|v| (1..=MAX_BENCH_DEPTH).contains(v))
                    .map(|v| a.blk_bench_depth = v)
                    .is_some(),
                "blk.bench_flushes" => value
                    .parse()
                    .ok()
                    .filter(|v| (1..=MAX_BENCH_FLUSHES).contains(v))
                    .map(|v| a.blk_bench_flushes = v)
                    .is_some(),
                "blk.bench_seed" => value.parse().map(|v| a.blk_bench_seed = v).is_ok(),
                "console.tx" => {
                    a.console_tx = Some(value);
                    !value.is_empty()
                }
                "console.tx_bytes" => value.parse().map(|v| a.console_tx_bytes = v).is_ok(),
                "console.rx_bytes" => value.parse().map(|v| a.console_rx_bytes = v).is_ok(),
                "console.rx_end" => {
                    a.console_rx_end = Some(value);
                    !value.is_empty()
                }
                "console.emerg" => {
                    a.console_emerg = Some(value);
                    !value.is_empty()
                }
                "console.timeout_ms" => millis(value).map(|v| a.console_timeout_ms = v).is_some(),
                "console.resize" => choose(value, &[("on", true), ("off", false)])
                    .map(|v| a.console_resize = v)
                    .is_some(),
                "chaos.seed" => value.parse().map(|v| a.chaos_seed = v).is_ok(),
                "chaos.ops" => value.parse().map(|v| a.chaos_ops = v).is_ok(),
                "chaos.devices" => device_mask(value).map(|m| a.chaos_devices = m).is_some(),
                "chaos.rings" => choose(value, &[("garbage", false), ("empty", true)])
                    .map(|v| a.chaos_empty_rings = v)
                    .is_some(),
                "tick_ms" => millis(value).map(|v| a.tick_ms = v).is_some(),
                "repeat" => value.parse().map(|v| a.repeat = v).is_ok(),
                "rekick_ms" => value.parse().map(|v| a.rekick_ms = v).is_ok(),
                _ => false,
            };
            if !good {
                a.unknown.push(word);
            }
        }
        if a.run.is_empty() {
            a.run.push("boot");
        }
        a
    }

    /// Words that were not understood, as `key=value`.
    pub fn unknown(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.unknown.iter()
    }
}
