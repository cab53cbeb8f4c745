//! Log lines with a timestamp, to a file or stderr, flushed at once so a
//! harness reading the log sees each line as it happens.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    start: Instant,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("vhost_user_mock") {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "[{:>10.6} {:<5}] {}",
            self.start.elapsed().as_secs_f64(),
            record.level(),
            record.args()
        );
        let _ = out.flush();
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

pub fn init(file: Option<&Path>, level: log::LevelFilter) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match file {
        Some(path) => Box::new(File::create(path)?),
        None => Box::new(std::io::stderr()),
    };
    let logger = Logger {
        out: Mutex::new(out),
        start: Instant::now(),
    };
    log::set_boxed_logger(Box::new(logger)).map_err(std::io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}
