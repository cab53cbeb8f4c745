//! One virtio-blk queue on its worker thread: requests popped through
//! `virtio-queue`, carried out, completed, and the guest signalled as soon
//! as it asked to be (EVENT_IDX), not only when the ring runs dry.
//!
//! Through the page cache a request is carried out on the worker thread
//! itself: a read or write there costs microseconds. With O_DIRECT each one
//! waits for the disk, so the worker hands requests to a few I/O threads
//! and completes them as they finish, in any order, as the spec allows.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::disk::{Disk, DiskFile};
use super::request::{self, Completion, DiskInfo, Moved, Refusal};
use crate::util::lock;
use crate::virtio::worker::{EventHandler, Source};
use crate::virtio::{place_of, pop_chain, PlaceSlot, VirtioInterrupt};

/// Bad requests logged per queue before the log goes quiet, so a hostile
/// driver cannot flood it.
const LOGGED_REFUSALS: u32 = 8;
/// I/O threads per queue with O_DIRECT: requests the disk sees at once.
pub const DIRECT_IO_THREADS: usize = 16;
const TOKEN_KICK: u64 = 0;
const TOKEN_DONE: u64 = 1;

/// What a disk's queues count, together, for `vm.counters`.
#[derive(Debug, Default)]
pub struct BlockCounts {
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
    flush_ops: AtomicU64,
    /// Used-buffer notifications `vmm` sent the guest itself.
    queue_interrupts: AtomicU64,
}

impl BlockCounts {
    fn count(&self, moved: Moved) {
        let add = |counter: &AtomicU64, n| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        match moved {
            Moved::Read(bytes) => {
                add(&self.read_ops, 1);
                add(&self.read_bytes, bytes);
            }
            Moved::Written(bytes) => {
                add(&self.write_ops, 1);
                add(&self.write_bytes, bytes);
            }
            Moved::Flushed => add(&self.flush_ops, 1),
            Moved::Nothing => {}
        }
    }

    pub fn counters(&self) -> Vec<crate::lifecycle::Counter> {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            ("read_ops", get(&self.read_ops)),
            ("read_bytes", get(&self.read_bytes)),
            ("write_ops", get(&self.write_ops)),
            ("write_bytes", get(&self.write_bytes)),
            ("flush_ops", get(&self.flush_ops)),
            ("queue_interrupts", get(&self.queue_interrupts)),
        ]
    }
}

/// Generic over the disk so that the fuzz targets run this very loop
/// against a disk in memory.
pub struct QueueHandler<D: Disk = DiskFile> {
    mem: GuestMemoryMmap,
    ring: Ring,
    kick: EventFd,
    disk: Arc<D>,
    info: Arc<DiskInfo>,
    interrupt: VirtioInterrupt,
    /// The ring itself is broken: the device waits for a reset.
    failed: bool,
    /// O_DIRECT's I/O threads.
    pool: Option<Pool>,
    /// Requests handed to the pool and not yet completed.
    in_flight: usize,
    /// Where the queue stands each time the worker pauses.
    place: PlaceSlot,
}

/// The queue and what completing a request touches, apart from guest
/// memory so that both can be borrowed at once.
struct Ring {
    id: String,
    index: usize,
    queue: Queue,
    call: EventFd,
    refusals: u32,
    counts: Arc<BlockCounts>,
}

/// What a queue needs to run.
pub struct QueueParams<D: Disk = DiskFile> {
    pub id: String,
    pub index: usize,
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub kick: EventFd,
    pub call: EventFd,
    pub disk: Arc<D>,
    pub info: Arc<DiskInfo>,
    pub interrupt: VirtioInterrupt,
    /// 0: every request on the worker thread.
    pub io_threads: usize,
    pub counts: Arc<BlockCounts>,
    pub place: PlaceSlot,
}

impl<D: Disk + 'static> QueueHandler<D> {
    pub fn new(p: QueueParams<D>) -> std::io::Result<QueueHandler<D>> {
        let pool = match p.io_threads {
            0 => None,
            n => Some(Pool::new(
                &format!("{}-q{}", p.id, p.index),
                n,
                &p.mem,
                &p.disk,
                &p.info,
            )?),
        };
        Ok(QueueHandler {
            mem: p.mem,
            ring: Ring {
                id: p.id,
                index: p.index,
                queue: p.queue,
                call: p.call,
                refusals: 0,
                counts: p.counts,
            },
            kick: p.kick,
            disk: p.disk,
            info: p.info,
            interrupt: p.interrupt,
            failed: false,
            pool,
            in_flight: 0,
            place: p.place,
        })
    }

    /// What the worker waits on.
    pub fn sources(&self) -> Vec<Source> {
        let mut sources = vec![Source {
            fd: self.kick.as_raw_fd(),
            token: TOKEN_KICK,
            events: EventSet::IN,
        }];
        if let Some(pool) = &self.pool {
            sources.push(Source {
                fd: pool.done_event.as_raw_fd(),
                token: TOKEN_DONE,
                events: EventSet::IN,
            });
        }
        sources
    }

    /// Every request the driver made available.
    fn process(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = &self.mem;
        loop {
            self.ring.queue.disable_notification(mem)?;
            while let Some(chain) = pop_chain(&mut self.ring.queue, mem)? {
                let head = chain.head_index();
                match &self.pool {
                    Some(pool) => {
                        pool.submit(head, chain.collect());
                        self.in_flight += 1;
                    }
                    None => {
                        let done = request::process(mem, chain, self.disk.as_ref(), &self.info);
                        self.ring.complete(mem, head, done)?;
                    }
                }
            }
            // With EVENT_IDX, requests that arrived while notifications
            // were off are caught here.
            if !self.ring.queue.enable_notification(mem)? {
                return Ok(());
            }
        }
    }

    /// Requests the I/O threads finished.
    fn collect(&mut self) -> Result<(), virtio_queue::Error> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let _ = pool.done_event.read();
        for (head, done) in pool.done.try_iter() {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.ring.complete(&self.mem, head, done)?;
        }
        Ok(())
    }

    /// Waits for every request the pool holds and completes it, so that
    /// no I/O thread writes guest memory during a pause.
    fn finish_in_flight(&mut self) -> Result<(), virtio_queue::Error> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        while self.in_flight > 0 {
            // Fails only once every I/O thread is gone.
            let Ok((head, done)) = pool.done.recv() else {
                break;
            };
            self.in_flight -= 1;
            self.ring.complete(&self.mem, head, done)?;
        }
        Ok(())
    }

    fn fail(&mut self, e: virtio_queue::Error) {
        if !self.failed {
            log::error!(
                "{}: queue {}: the ring is unusable ({e}); device needs reset",
                self.ring.id,
                self.ring.index
            );
            self.failed = true;
            self.interrupt.set_needs_reset();
        }
    }
}

impl Ring {
    /// Puts a request in the used ring and signals the guest if it asked.
    fn complete(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        done: Completion,
    ) -> Result<(), virtio_queue::Error> {
        if let Some(problem) = done.problem {
            self.log_refusal(problem);
        }
        self.counts.count(done.moved);
        self.queue.add_used(mem, head, done.used_len)?;
        if self.queue.needs_notification(mem)? {
            self.counts.queue_interrupts.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.call.write(1) {
                log::error!(
                    "{}: queue {}: cannot signal the guest: {e}",
                    self.id,
                    self.index
                );
            }
        }
        Ok(())
    }

    /// One line per bad request, until `LOGGED_REFUSALS` of them.
    fn log_refusal(&mut self, refusal: Refusal) {
        self.refusals = self.refusals.saturating_add(1);
        if self.refusals > LOGGED_REFUSALS {
            return;
        }
        let what = match refusal {
            Refusal::BadChain(why) => format!("bad request: {why}"),
            Refusal::IoError(why) => format!("I/O error: {why}"),
            Refusal::Unsupported(t) => format!("unsupported request type {t}"),
        };
        let quiet = if self.refusals == LOGGED_REFUSALS {
            "; further refusals on this queue are not logged"
        } else {
            ""
        };
        log::warn!("{}: queue {}: {what}{quiet}", self.id, self.index);
    }
}

impl<D: Disk + 'static> EventHandler for QueueHandler<D> {
    fn ready(&mut self, token: u64, _events: EventSet) {
        let result = match token {
            TOKEN_DONE => self.collect(),
            _ => {
                let _ = self.kick.read();
                if self.failed {
                    return;
                }
                self.process()
            }
        };
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Nothing in flight, then the queue's place for a snapshot.
    fn pause(&mut self) {
        if let Err(e) = self.finish_in_flight() {
            self.fail(e);
        }
        *lock(&self.place) = Some(place_of(self.ring.index, &self.ring.queue));
    }
}

/// I/O threads taking requests from the worker and handing back their
/// completions; dropped, it finishes what it took and joins.
struct Pool {
    jobs: Option<mpsc::Sender<(u16, Vec<Descriptor>)>>,
    done: mpsc::Receiver<(u16, Completion)>,
    done_event: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new<D: Disk + 'static>(
        name: &str,
        count: usize,
        mem: &GuestMemoryMmap,
        disk: &Arc<D>,
        info: &Arc<DiskInfo>,
    ) -> std::io::Result<Pool> {
        let (jobs, queue) = mpsc::channel::<(u16, Vec<Descriptor>)>();
        let queue = Arc::new(Mutex::new(queue));
        let (finished, done) = mpsc::channel();
        let done_event = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let mut pool = Pool {
            jobs: Some(jobs),
            done,
            done_event: done_event.clone(),
            threads: Vec::with_capacity(count),
        };
        for n in 0..count {
            let (queue, finished, done_event) =
                (queue.clone(), finished.clone(), done_event.clone());
            let (mem, disk, info) = (mem.clone(), disk.clone(), info.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{name}-io{n}"))
                .spawn(move || loop {
                    // The lock is held only to take the next job.
                    let job = lock(&queue).recv();
                    let Ok((head, descriptors)) = job else {
                        return;
                    };
                    let done = request::process(&mem, descriptors, disk.as_ref(), &info);
                    if finished.send((head, done)).is_err() {
                        return;
                    }
                    let _ = done_event.write(1);
                })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    fn submit(&self, head: u16, descriptors: Vec<Descriptor>) {
        if let Some(jobs) = &self.jobs {
            // Fails only once every thread is gone, which drop alone does.
            let _ = jobs.send((head, descriptors));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel ends each thread after its current request.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("A block I/O thread panicked");
            }
        }
    }
}

/// One queue's request processing without its thread, for the fuzz
/// targets: the worker's loop over a hostile driver's ring, every request
/// carried out on the caller's thread.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    pub struct BlockQueue<D: Disk + 'static> {
        handler: QueueHandler<D>,
    }

    impl<D: Disk + 'static> BlockQueue<D> {
        pub fn new(
            mem: GuestMemoryMmap,
            queue: Queue,
            disk: Arc<D>,
            info: DiskInfo,
            interrupt: VirtioInterrupt,
        ) -> std::io::Result<BlockQueue<D>> {
            let handler = QueueHandler::new(QueueParams {
                id: "fuzz-disk".to_owned(),
                index: 0,
                mem,
                queue,
                kick: EventFd::new(libc::EFD_NONBLOCK)?,
                call: EventFd::new(libc::EFD_NONBLOCK)?,
                disk,
                info: Arc::new(info),
                interrupt,
                io_threads: 0,
                counts: Arc::default(),
                place: PlaceSlot::default(),
            })?;
            Ok(BlockQueue { handler })
        }

        /// The driver notified the queue.
        pub fn kick(&mut self) {
            self.handler.ready(TOKEN_KICK, EventSet::IN);
        }

        /// The ring turned out unusable: the device waits for a reset.
        pub fn failed(&self) -> bool {
            self.handler.failed
        }

        /// The used ring's index as the device last wrote it.
        pub fn next_used(&self) -> u16 {
            self.handler.ring.queue.next_used()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::interrupt::fake::FakeMsiGroup;
    use crate::virtio::block::request::ID_BYTES;

    const MEM: u64 = 1 << 20;

    /// A driver whose ring says there are chains it cannot give: more
    /// available entries than the queue holds (avail.idx 17 on a 16-entry
    /// queue), or an entry outside guest memory (the available ring's
    /// header in the last 4 bytes). The ring is broken and the device
    /// needs a reset. The worker used to take "no chain" for "none yet"
    /// while `enable_notification` said "more", and spun forever: a host
    /// CPU gone, and a reset that never returned. Either way the requests
    /// are carried out: on the worker, or through the I/O threads.
    #[rstest::rstest]
    fn a_ring_that_cannot_give_its_chains_fails_the_queue_instead_of_spinning(
        #[values((0x2000, 17), (MEM - 4, 1))] ring: (u64, u16),
        #[values(0, 2)] io_threads: usize,
    ) {
        let (avail, idx) = ring;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
        let mut queue = Queue::new(16).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(0x1000))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(0x3000))
            .unwrap();
        queue.set_ready(true);
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let disk = DiskFile::open(image.path(), false, false).unwrap();
        let interrupt = VirtioInterrupt::new(Arc::new(FakeMsiGroup::new(2)));
        let mut handler = QueueHandler::new(QueueParams {
            id: "disk".to_owned(),
            index: 0,
            mem,
            queue,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            disk: Arc::new(disk),
            info: Arc::new(DiskInfo {
                capacity: 8,
                readonly: false,
                id: [0; ID_BYTES],
                discard: false,
            }),
            interrupt: interrupt.clone(),
            io_threads,
            counts: Arc::default(),
            place: PlaceSlot::default(),
        })
        .unwrap();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            handler.ready(TOKEN_KICK, EventSet::IN);
            let _ = done.send(handler.failed);
        });
        let failed = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the worker is still spinning on the broken ring");
        assert!(failed, "the queue is marked broken");
        assert!(interrupt.needs_reset(), "and the driver told");
    }
}
