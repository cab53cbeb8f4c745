//! What the VMM wants of its vCPU threads (run, pause, save their state)
//! and where they are: a pause is answered once every thread is parked
//! outside KVM_RUN or has ended, and a resume lets them all go. Threads
//! read it between two KVM_RUNs; the VMM kicks them out of KVM_RUN to make
//! them look. A parked thread saves its vCPU when asked: a vCPU's ioctls
//! belong to the thread that runs it.

use std::sync::{Condvar, Mutex};

use super::saved::{StateError, VcpuState};
use crate::util::lock;

/// One parked vCPU's answer to a save.
pub type Saved = (u8, Result<VcpuState, StateError>);

#[derive(Debug, Default)]
struct State {
    pause: bool,
    /// The VM is ending: nothing parks any more.
    stopping: bool,
    parked: usize,
    ended: usize,
    /// Raised by the VMM for each save; a parked thread that has not
    /// answered this round saves its vCPU into `saved`.
    save_round: u64,
    saved: Vec<Saved>,
}

#[derive(Debug, Default)]
pub struct VcpuControl {
    state: Mutex<State>,
    changed: Condvar,
}

impl VcpuControl {
    pub fn pause_wanted(&self) -> bool {
        let state = lock(&self.state);
        state.pause && !state.stopping
    }

    /// On a vCPU thread, outside KVM_RUN with nothing pending: waits while
    /// a pause is wanted, saving vCPU `id` with `save` whenever asked.
    pub fn park(&self, id: u8, save: &mut dyn FnMut() -> Result<VcpuState, StateError>) {
        let mut state = lock(&self.state);
        state.parked += 1;
        let mut answered = state.save_round;
        self.changed.notify_all();
        while state.pause && !state.stopping {
            if state.save_round != answered {
                answered = state.save_round;
                // The VMM waits; nothing else needs the lock meanwhile.
                drop(state);
                let result = save();
                state = lock(&self.state);
                if state.save_round == answered {
                    state.saved.push((id, result));
                    self.changed.notify_all();
                }
                continue;
            }
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// On a vCPU thread, as it ends.
    pub fn ended(&self) {
        lock(&self.state).ended += 1;
        self.changed.notify_all();
    }

    /// Asks every thread to park; they look once kicked.
    pub fn request_pause(&self) {
        lock(&self.state).pause = true;
    }

    /// Waits until all `threads` are parked or ended.
    pub fn wait_parked(&self, threads: usize) {
        let mut state = lock(&self.state);
        while state.parked + state.ended < threads && !state.stopping {
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    /// With every thread parked (after `wait_parked`): each saves its vCPU.
    /// The answers of the threads parked, in no particular order; a thread
    /// that has ended gives none.
    pub fn save_parked(&self) -> Vec<Saved> {
        let mut state = lock(&self.state);
        state.save_round += 1;
        state.saved.clear();
        self.changed.notify_all();
        while state.saved.len() < state.parked && !state.stopping {
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        std::mem::take(&mut state.saved)
    }

    /// Lets parked threads go, without waiting for them: one that has not
    /// left its park when the next pause comes stays in it, still counted
    /// as parked, and it is (it has not run the guest since).
    pub fn resume(&self) {
        lock(&self.state).pause = false;
        self.changed.notify_all();
    }

    /// The VM ends: parked threads go, and none parks again.
    pub fn stop(&self) {
        lock(&self.state).stopping = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// What the test threads answer a save with: no KVM here.
    fn unsaved(id: u8) -> StateError {
        StateError::Msrs {
            id,
            written: 0,
            count: 0,
            index: 0,
        }
    }

    /// Threads that count while running and park when asked: while
    /// paused no count moves; resumed, all move again.
    #[test]
    fn pause_waits_for_every_thread_and_resume_lets_them_all_go() {
        let control = Arc::new(VcpuControl::default());
        let counts: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let (control, counts) = (control.clone(), counts.clone());
                std::thread::spawn(move || {
                    while !lock(&control.state).stopping {
                        if control.pause_wanted() {
                            control.park(i as u8, &mut || Err(unsaved(i as u8)));
                            continue;
                        }
                        counts[i].fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                    }
                    control.ended();
                })
            })
            .collect();
        let snapshot = || -> Vec<u64> { counts.iter().map(|c| c.load(Ordering::SeqCst)).collect() };
        for _ in 0..20 {
            control.request_pause();
            control.wait_parked(3);
            let before = snapshot();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(snapshot(), before, "a parked thread ran");
            let mut saved: Vec<u8> = control
                .save_parked()
                .into_iter()
                .map(|(id, result)| {
                    assert!(matches!(result, Err(StateError::Msrs { id: e, .. }) if e == id));
                    id
                })
                .collect();
            saved.sort_unstable();
            assert_eq!(saved, [0, 1, 2], "each parked thread saves once");
            control.resume();
            let resumed = snapshot();
            while snapshot()
                .iter()
                .zip(&resumed)
                .any(|(now, then)| now == then)
            {
                std::thread::yield_now();
            }
        }
        control.request_pause();
        control.wait_parked(3);
        control.stop();
        for t in threads {
            t.join().unwrap();
        }
    }
}
