//! `--event-monitor`: what happened, one JSON object per line in Cloud
//! Hypervisor's event shape (`timestamp` since start as `secs` and
//! `nanos`, `source`, `event`, `properties`). Any thread may `emit`; a
//! writer thread of its own writes, so a slow reader never blocks the
//! VMM, a vCPU or a device. When the queue is full an event is dropped
//! and counted; once the writer catches up it says how many in an
//! `events-dropped` event, and `vm.counters` shows the totals.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Events waiting for the writer before new ones are dropped.
const QUEUE: usize = 4096;

static MONITOR: OnceLock<Monitor> = OnceLock::new();

struct Monitor {
    queue: SyncSender<String>,
    start: Instant,
    sent: AtomicU64,
    /// Lines the writer has written (or failed to).
    written: AtomicU64,
    dropped: AtomicU64,
    /// Dropped since the writer last said so.
    unsaid: AtomicU64,
}

#[derive(Serialize)]
struct Event<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<BTreeMap<&'a str, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("--event-monitor is given twice")]
    Twice,
    #[error("Failed to start the event monitor's thread")]
    Thread(#[source] std::io::Error),
}

/// Starts writing events to `file`. Once per process.
pub fn start(file: File) -> Result<(), EventError> {
    let (queue, events) = mpsc::sync_channel::<String>(QUEUE);
    let monitor = Monitor {
        queue,
        start: Instant::now(),
        sent: AtomicU64::new(0),
        written: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        unsaid: AtomicU64::new(0),
    };
    MONITOR.set(monitor).map_err(|_| EventError::Twice)?;
    std::thread::Builder::new()
        .name("event-monitor".into())
        .spawn(move || write_events(file, &events))
        .map_err(EventError::Thread)?;
    Ok(())
}

fn write_events(mut file: File, events: &mpsc::Receiver<String>) {
    let mut said_failure = false;
    let mut write = |line: &str| {
        let result = file.write_all(line.as_bytes());
        if let Some(monitor) = MONITOR.get() {
            monitor.written.fetch_add(1, Ordering::SeqCst);
        }
        if let Err(e) = result {
            if !said_failure {
                said_failure = true;
                log::warn!("--event-monitor: cannot write events: {e}; later ones may be lost");
            }
        }
    };
    // Caught up whenever the queue is empty: then, and only then, the
    // events dropped meanwhile are said.
    while let Ok(line) = events.recv() {
        write(&line);
        while let Ok(line) = events.try_recv() {
            write(&line);
        }
        let Some(monitor) = MONITOR.get() else {
            continue;
        };
        let unsaid = monitor.unsaid.swap(0, Ordering::SeqCst);
        if unsaid > 0 {
            let count = unsaid.to_string();
            write(&line_for(
                monitor,
                "vmm",
                "events-dropped",
                &[("count", &count)],
            ));
        }
    }
}

fn line_for(monitor: &Monitor, source: &str, event: &str, properties: &[(&str, &str)]) -> String {
    let event = Event {
        timestamp: monitor.start.elapsed(),
        source,
        event,
        properties: (!properties.is_empty()).then(|| {
            properties
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned()))
                .collect()
        }),
    };
    // A map of strings and a duration always serialize.
    let mut line = serde_json::to_string(&event).unwrap_or_default();
    line.push('\n');
    line
}

/// Says that `event` happened to `source` ("vm", "vmm", "virtio-device"),
/// logged at info level too. Never blocks.
pub fn emit(source: &str, event: &str, properties: &[(&str, &str)]) {
    log::info!("Event: {source} {event} {properties:?}");
    let Some(monitor) = MONITOR.get() else {
        return;
    };
    match monitor
        .queue
        .try_send(line_for(monitor, source, event, properties))
    {
        Ok(()) => {
            monitor.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            monitor.dropped.fetch_add(1, Ordering::Relaxed);
            monitor.unsaid.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Events queued for writing and events dropped, since start; None
/// without `--event-monitor`.
pub fn counts() -> Option<(u64, u64)> {
    MONITOR.get().map(|m| {
        (
            m.sent.load(Ordering::Relaxed),
            m.dropped.load(Ordering::Relaxed),
        )
    })
}

/// Waits, at most `within`, until every event emitted so far is written:
/// the last ones (the VM's shutdown) before the process ends.
pub fn flush(within: Duration) {
    let Some(monitor) = MONITOR.get() else {
        return;
    };
    let deadline = Instant::now() + within;
    // The drop notices the writer adds count as written lines too.
    while monitor.written.load(Ordering::SeqCst) < monitor.sent.load(Ordering::SeqCst) {
        if Instant::now() >= deadline {
            log::warn!("--event-monitor: the last events were not written in {within:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    /// A reader that does not read: the writer blocks on the full pipe,
    /// the queue fills, and what comes then is dropped, counted and, once
    /// the reader catches up, said. The only test that starts the monitor
    /// (it is one per process); other tests' events may join its lines.
    #[test]
    fn a_slow_reader_loses_events_counted_and_said_never_the_vm_s_time() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`; checked.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are new and owned here alone.
        let (mut reader, writer) =
            unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        start(writer).unwrap();
        let start_time = Instant::now();
        for i in 0..20_000 {
            emit("test", "tick", &[("n", &i.to_string())]);
        }
        // Emitting never waited for the reader.
        assert!(start_time.elapsed() < Duration::from_secs(20));
        let (sent, dropped) = counts().unwrap();
        assert!(dropped > 0, "nothing dropped with nobody reading");
        assert!(sent + dropped >= 20_000);

        // The reader catches up: every line is an event, and the drops
        // are said, in all as many as were counted.
        let mut text = String::new();
        let mut said = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while said < counts().unwrap().1 {
            let n = reader.read(&mut buf).unwrap();
            text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            while let Some((line, rest)) = text.split_once('\n') {
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                if event["event"] == "events-dropped" {
                    said += event["properties"]["count"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap();
                }
                text = rest.to_owned();
            }
        }
        assert_eq!(said, counts().unwrap().1);
    }
}
