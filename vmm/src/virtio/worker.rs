//! The thread a device serves its events on: named, it owns a stop
//! eventfd, waits in epoll on the device's sources (queue kicks, a backend
//! socket, a wake-up eventfd) and is joined when the `Worker` is dropped.
//! The device logic lives in an `EventHandler`, which the thread owns.
//!
//! A worker pauses between two events: `pause` returns once the thread
//! has finished what it was doing, let its handler settle (`EventHandler::
//! pause`) and parked; until `resume` it touches neither guest memory nor
//! interrupts, and the events that come meanwhile (kicks) wait in their
//! eventfds, so none is lost.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::util::lock;

/// The tokens of the stop and pause eventfds; handlers never see them.
const STOP: u64 = u64::MAX;
const PAUSE: u64 = u64::MAX - 1;
/// How long a thread whose epoll fails rests before it tries again, so a
/// persistent failure does not spin.
const RETRY: Duration = Duration::from_millis(10);

/// What the worker thread runs.
pub trait EventHandler: Send + 'static {
    /// The source registered with `token` is ready with `events`.
    fn ready(&mut self, token: u64, events: EventSet);

    /// Called before every wait: the longest the thread may sleep before
    /// it is called again (None: until an event arrives).
    fn before_wait(&mut self) -> Option<Duration> {
        None
    }

    /// Called once on the thread before the first wait, with the means
    /// to change what the thread waits on (a handler that must stop
    /// reading a source for a while, or for good).
    fn start(&mut self, _control: Control) {}

    /// The worker is pausing: finish whatever is in flight elsewhere (I/O
    /// threads of its own) so that nothing reaches the guest until
    /// `resume`. Handlers that do all their work in `ready` have nothing
    /// to do.
    fn pause(&mut self) {}

    /// The worker runs again after a pause.
    fn resume(&mut self) {}
}

/// Changes the sources a running worker waits on.
#[derive(Clone)]
pub struct Control {
    epoll: Arc<Epoll>,
}

impl Control {
    /// Stops waking for `fd` until `resume`; it stays registered.
    pub fn pause(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(EventSet::empty(), token),
        )
    }

    pub fn resume(&self, source: &Source) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            source.fd,
            EpollEvent::new(source.events, source.token),
        )
    }

    /// Forgets `fd` (at end of file, say), which must stay open until then.
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// One source to wait on: its descriptor (which the handler must keep
/// open for as long as the worker runs), the token `ready` gets, and the
/// events that matter.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub fd: RawFd,
    pub token: u64,
    pub events: EventSet,
}

/// Where a pause stands, shared by the worker and its thread.
#[derive(Debug, Default)]
struct PauseState {
    wanted: bool,
    parked: bool,
    stopping: bool,
}

#[derive(Debug, Default)]
struct Pausing {
    state: Mutex<PauseState>,
    changed: Condvar,
}

/// Owns its thread: dropping the worker stops and joins it.
pub struct Worker {
    stop: EventFd,
    pause: EventFd,
    pausing: Arc<Pausing>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn<H: EventHandler>(
        name: &str,
        sources: &[Source],
        handler: H,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let pause = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Arc::new(Epoll::new()?);
        for (fd, token) in [(&stop, STOP), (&pause, PAUSE)] {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        for source in sources {
            epoll.ctl(
                ControlOperation::Add,
                source.fd,
                EpollEvent::new(source.events, source.token),
            )?;
        }
        // Thread names cannot hold NUL.
        let name = name.replace('\0', "");
        let pausing = Arc::new(Pausing::default());
        let thread = {
            let (pausing, pause) = (pausing.clone(), pause.try_clone()?);
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || run(&name, &epoll, &pause, &pausing, handler))?
        };
        Ok(Worker {
            stop,
            pause,
            pausing,
            thread: Some(thread),
        })
    }

    /// Returns once the thread is parked between two events, its handler
    /// settled; a thread that has ended counts as parked.
    pub fn pause(&self) -> std::io::Result<()> {
        lock(&self.pausing.state).wanted = true;
        self.pause.write(1)?;
        let mut state = lock(&self.pausing.state);
        while !state.parked && !self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            // A thread that ended without parking wakes nobody: look again
            // now and then.
            state = match self.pausing.changed.wait_timeout(state, RETRY) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        Ok(())
    }

    /// Lets a paused thread go on; it serves what came meanwhile.
    pub fn resume(&self) {
        lock(&self.pausing.state).wanted = false;
        self.pausing.changed.notify_all();
    }
}

fn run<H: EventHandler>(
    name: &str,
    epoll: &Arc<Epoll>,
    pause: &EventFd,
    pausing: &Pausing,
    mut handler: H,
) {
    handler.start(Control {
        epoll: epoll.clone(),
    });
    let mut events = [EpollEvent::default(); 8];
    loop {
        let timeout_ms = handler.before_wait().map_or(-1, |t| {
            // Rounded up, so that the time has passed when the wait ends.
            i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let n = match epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{name}: epoll: {e}");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        for event in &events[..n] {
            match event.data() {
                STOP => return,
                PAUSE => {
                    let _ = pause.read();
                    if !park(pausing, &mut handler) {
                        return;
                    }
                }
                token => handler.ready(token, event.event_set()),
            }
        }
    }
}

/// Parks the thread while a pause is wanted; false when the worker is
/// being dropped instead.
fn park<H: EventHandler>(pausing: &Pausing, handler: &mut H) -> bool {
    if !lock(&pausing.state).wanted {
        return true;
    }
    handler.pause();
    let mut state = lock(&pausing.state);
    state.parked = true;
    pausing.changed.notify_all();
    while state.wanted && !state.stopping {
        state = match pausing.changed.wait(state) {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
    }
    state.parked = false;
    let stopping = state.stopping;
    drop(state);
    if !stopping {
        handler.resume();
    }
    !stopping
}

impl Drop for Worker {
    fn drop(&mut self) {
        lock(&self.pausing.state).stopping = true;
        self.pausing.changed.notify_all();
        if let Err(e) = self.stop.write(1) {
            log::error!("Cannot stop a worker thread: {e}");
            // Joining would wait for ever; let it run out with the process.
            return;
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("A worker thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An in-VMM device's shape: kicks in, work done on the worker thread.
    struct Kicks {
        kicks: Vec<EventFd>,
        done: mpsc::Sender<(u64, String)>,
    }

    impl EventHandler for Kicks {
        fn ready(&mut self, token: u64, events: EventSet) {
            assert!(events.contains(EventSet::IN));
            let _ = self.kicks[token as usize].read();
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            self.done.send((token, thread)).unwrap();
        }
    }

    #[test]
    fn kicks_reach_the_handler_on_a_named_thread_until_dropped() {
        let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let ours: Vec<EventFd> = kicks.iter().map(|k| k.try_clone().unwrap()).collect();
        let sources: Vec<Source> = kicks
            .iter()
            .enumerate()
            .map(|(i, k)| Source {
                fd: k.as_raw_fd(),
                token: i as u64,
                events: EventSet::IN,
            })
            .collect();
        let (done, events) = mpsc::channel();
        let worker = Worker::spawn("test-worker", &sources, Kicks { kicks, done }).unwrap();
        ours[1].write(1).unwrap();
        let got = events.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, (1, "test-worker".to_owned()));
        drop(worker);
        // The thread is gone: its handler (and the sender) were dropped.
        assert!(events.recv_timeout(Duration::from_secs(5)).is_err());
    }

    struct Ticks(mpsc::Sender<()>);

    impl EventHandler for Ticks {
        fn ready(&mut self, _: u64, _: EventSet) {}
        fn before_wait(&mut self) -> Option<Duration> {
            let _ = self.0.send(());
            Some(Duration::from_millis(1))
        }
    }

    #[test]
    fn before_wait_bounds_the_sleep() {
        let (tx, ticks) = mpsc::channel();
        let worker = Worker::spawn("test-ticks", &[], Ticks(tx)).unwrap();
        for _ in 0..3 {
            ticks.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        drop(worker);
    }

    /// Counts the pauses and resumes it is told of.
    struct Settles {
        kicks: Vec<EventFd>,
        done: mpsc::Sender<String>,
    }

    impl EventHandler for Settles {
        fn ready(&mut self, token: u64, _: EventSet) {
            let _ = self.kicks[token as usize].read();
            self.done.send(format!("kick {token}")).unwrap();
        }
        fn pause(&mut self) {
            self.done.send("pause".into()).unwrap();
        }
        fn resume(&mut self) {
            self.done.send("resume".into()).unwrap();
        }
    }

    #[test]
    fn a_paused_worker_serves_nothing_until_resumed_and_loses_no_kick() {
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ours = kick.try_clone().unwrap();
        let source = Source {
            fd: kick.as_raw_fd(),
            token: 0,
            events: EventSet::IN,
        };
        let (done, events) = mpsc::channel();
        let worker = Worker::spawn(
            "test-pause",
            &[source],
            Settles {
                kicks: vec![kick],
                done,
            },
        )
        .unwrap();
        let next = || events.recv_timeout(Duration::from_secs(5)).unwrap();
        for round in 0..3 {
            worker.pause().unwrap();
            assert_eq!(next(), "pause", "round {round}");
            ours.write(1).unwrap();
            assert!(
                events.recv_timeout(Duration::from_millis(100)).is_err(),
                "a paused worker served a kick"
            );
            worker.resume();
            assert_eq!(next(), "resume");
            assert_eq!(next(), "kick 0");
        }
        // Dropped while paused: the thread ends all the same.
        worker.pause().unwrap();
        assert_eq!(next(), "pause");
        drop(worker);
        assert!(events.recv_timeout(Duration::from_secs(5)).is_err());
    }
}
