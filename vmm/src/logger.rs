//! The `log` backend: one line per record, `[vmm +12.345ms INFO target]
//! message`, to stderr or appended to a file, written whole under a mutex so
//! that threads never interleave within a line. A log that cannot be written
//! (a full disk, `--log-file /dev/full`) is said once on stderr; vmm carries
//! on, and its exit status stays the guest's.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::files::{open_output, FileError, FilesInUse};
use crate::util::escape_controls;

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("Failed to open log file {path}")]
    OpenFile {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("Failed to install the logger")]
    Install(#[source] log::SetLoggerError),
}

struct Logger {
    start: Instant,
    level: LevelFilter,
    sink: Mutex<Sink>,
}

/// Where the lines go, and where a failure to write them is reported.
struct Sink {
    out: Box<dyn Write + Send>,
    /// What `out` is, for the warning: the file's path, or stderr.
    name: String,
    /// stderr, but for tests.
    warnings: Box<dyn Write + Send>,
    /// A write failed and was reported; later failures are not.
    failed: bool,
}

impl Sink {
    fn new(out: Box<dyn Write + Send>, name: String) -> Self {
        Self {
            out,
            name,
            warnings: Box::new(io::stderr()),
            failed: false,
        }
    }

    fn write_line(&mut self, line: &str) {
        let written = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush());
        if let Err(e) = written {
            self.report(&e);
        }
    }

    /// Once: after that the log is known to be incomplete, and repeating
    /// it per record would bury the guest's output.
    fn report(&mut self, error: &io::Error) {
        if std::mem::replace(&mut self.failed, true) {
            return;
        }
        // Nowhere to go if stderr fails too.
        let _ = writeln!(
            self.warnings,
            "vmm: warning: cannot write the log to {}: {error}; records from here on may be lost",
            escape_controls(&self.name, false)
        );
    }
}

/// Installs the logger for the whole process: records at `level` or more
/// severe go to `file` (created if needed, appended to, never one of the
/// files `in_use`) or to stderr. Times are counted from this call.
pub fn init(
    level: LevelFilter,
    file: Option<&Path>,
    in_use: &mut FilesInUse,
) -> Result<(), LoggerError> {
    let sink = match file {
        Some(path) => Sink::new(
            Box::new(
                open_output(path, true, in_use, format!("--log-file {}", path.display())).map_err(
                    |source| LoggerError::OpenFile {
                        path: path.to_path_buf(),
                        source,
                    },
                )?,
            ),
            path.display().to_string(),
        ),
        None => Sink::new(Box::new(io::stderr()), "stderr".into()),
    };
    log::set_boxed_logger(Box::new(Logger::new(level, sink))).map_err(LoggerError::Install)?;
    log::set_max_level(level);
    Ok(())
}

impl Logger {
    fn new(level: LevelFilter, sink: Sink) -> Self {
        Self {
            start: Instant::now(),
            level,
            sink: Mutex::new(sink),
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let thread = std::thread::current();
        let line = format_line(
            self.start.elapsed(),
            record.level(),
            record.target(),
            thread.name(),
            record.args(),
        );
        // A thread that panicked while logging left no half-written state
        // we care about.
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_line(&line);
    }

    fn flush(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = sink.out.flush() {
            sink.report(&e);
        }
    }
}

/// `[vmm +12.345ms LEVEL target] message\n`, with `(thread)` after the
/// target for named threads other than `main`.
fn format_line(
    elapsed: Duration,
    level: Level,
    target: &str,
    thread: Option<&str>,
    message: &fmt::Arguments,
) -> String {
    let micros = elapsed.as_micros();
    let (ms, frac) = (micros / 1000, micros % 1000);
    match thread.filter(|name| *name != "main") {
        Some(name) => format!("[vmm +{ms}.{frac:03}ms {level} {target} ({name})] {message}\n"),
        None => format!("[vmm +{ms}.{frac:03}ms {level} {target}] {message}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn line_format() {
        let line = format_line(
            Duration::from_micros(12_345),
            Level::Info,
            "vmm::builder",
            None,
            &format_args!("memory {:#x}", 0x1000),
        );
        assert_eq!(line, "[vmm +12.345ms INFO vmm::builder] memory 0x1000\n");
    }

    #[test]
    fn line_format_names_threads_but_main() {
        let args = format_args!("exit");
        let at = Duration::from_millis(3);
        assert_eq!(
            format_line(at, Level::Warn, "vmm", Some("vcpu0"), &args),
            "[vmm +3.000ms WARN vmm (vcpu0)] exit\n"
        );
        assert_eq!(
            format_line(at, Level::Warn, "vmm", Some("main"), &args),
            "[vmm +3.000ms WARN vmm] exit\n"
        );
    }

    #[test]
    fn line_format_long_runs_and_zero() {
        let args = format_args!("x");
        assert_eq!(
            format_line(Duration::ZERO, Level::Trace, "t", None, &args),
            "[vmm +0.000ms TRACE t] x\n"
        );
        assert_eq!(
            format_line(Duration::from_secs(3600), Level::Error, "t", None, &args),
            "[vmm +3600000.000ms ERROR t] x\n"
        );
    }

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    fn record(logger: &Logger, level: Level, message: &str) {
        logger.log(
            &Record::builder()
                .level(level)
                .target("vmm::test")
                .args(format_args!("{message}"))
                .build(),
        );
    }

    #[test]
    fn filters_by_level_and_writes_whole_lines() {
        let sink = Shared::default();
        let logger = Logger::new(
            LevelFilter::Info,
            Sink::new(Box::new(sink.clone()), "t".into()),
        );
        record(&logger, Level::Debug, "hidden");
        record(&logger, Level::Info, "shown");
        record(&logger, Level::Error, "also shown");
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // The test harness names its threads after the tests.
        assert!(lines[0].starts_with("[vmm +"), "{text}");
        assert!(lines[0].contains("ms INFO vmm::test (") && lines[0].ends_with(")] shown"));
        assert!(lines[1].contains("ms ERROR vmm::test (") && lines[1].ends_with(")] also shown"));
    }

    #[test]
    fn threads_do_not_interleave() {
        let sink = Shared::default();
        let logger = Arc::new(Logger::new(
            LevelFilter::Trace,
            Sink::new(Box::new(sink.clone()), "t".into()),
        ));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let logger = logger.clone();
                std::thread::Builder::new()
                    .name(format!("worker{i}"))
                    .spawn(move || {
                        for _ in 0..50 {
                            record(&logger, Level::Info, "0123456789");
                        }
                    })
                    .expect("spawn")
            })
            .collect();
        for thread in threads {
            thread.join().expect("join");
        }
        let text = sink.text();
        assert_eq!(text.lines().count(), 200);
        assert!(text
            .lines()
            .all(|l| l.contains("INFO vmm::test (worker") && l.ends_with("] 0123456789")));
    }

    /// A disk that is full, as /dev/full is.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The log used to be lost without a word; now the first failure is
    /// said once, naming the file and the cause.
    #[test]
    fn a_log_that_cannot_be_written_is_reported_once() {
        let warnings = Shared::default();
        let mut sink = Sink::new(Box::new(Full), "/dev/full".into());
        sink.warnings = Box::new(warnings.clone());
        let logger = Logger::new(LevelFilter::Info, sink);
        for _ in 0..3 {
            record(&logger, Level::Error, "lost");
        }
        assert_eq!(
            warnings.text(),
            "vmm: warning: cannot write the log to /dev/full: No space left on device (os error 28); records from here on may be lost\n"
        );
    }

    #[test]
    fn unopenable_file_is_an_error() {
        let err = init(
            LevelFilter::Info,
            Some(Path::new("/nonexistent-dir/vmm.log")),
            &mut FilesInUse::default(),
        )
        .expect_err("no such directory");
        assert!(matches!(err, LoggerError::OpenFile { .. }));
        assert_eq!(
            err.to_string(),
            "Failed to open log file /nonexistent-dir/vmm.log"
        );
    }
}
