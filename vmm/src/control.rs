//! The VMM around its VM: the VM is built from the configuration and run;
//! with the API, a VM shut down (`vm.shutdown`) leaves vmm waiting, its
//! configuration kept, for `vm.boot`, and `vm.reboot` builds it again.
//! vmm started with only `--api-socket`, or after `vm.delete`, has no
//! configuration until `vm.create` brings one. A request that ends or
//! starts a VM is answered once that is done.

mod restore;

use std::os::fd::AsRawFd;

pub use self::restore::{open as open_restore, Restore, RestoreError};
use crate::api::{Answer, ApiEndpoint, ApiReply, ApiRequest};
use crate::builder::{build_vm, BuildError, Start, Terminals};
use crate::config::VmConfig;
use crate::event_loop::EventLoop;
use crate::events;
use crate::files::FilesInUse;
use crate::signals::TerminationSignals;
use crate::util::error_chain;
use crate::vm_exit::ExitReason;
use crate::vmm::{ping, vm_info, RunError};

/// What a VMM without a VM waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signal,
    Api,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("Failed to wait for API requests with no VM running")]
    Epoll(#[source] std::io::Error),
}

pub struct Control<'a> {
    /// None until `vm.create` when vmm started without a VM, and after
    /// `vm.delete`.
    config: Option<VmConfig>,
    /// What every build starts from: the inputs, the log, the events.
    files: FilesInUse,
    signals: &'a TerminationSignals,
    api: Option<ApiEndpoint>,
    /// The consoles' host ends, kept across the configuration's builds (a
    /// reboot keeps the user's pty and the console file's content) and
    /// dropped with it, after its last VM, giving the terminal back.
    terminals: Terminals,
    /// The snapshot the next build restores (`--restore`, `vm.restore`).
    restore: Option<Restore>,
}

/// What ends the wait of a VMM without a VM.
enum Next {
    Boot(Answer),
    End(ExitReason),
}

impl<'a> Control<'a> {
    pub fn new(
        config: Option<VmConfig>,
        files: FilesInUse,
        signals: &'a TerminationSignals,
        api: Option<ApiEndpoint>,
        restore: Option<Restore>,
    ) -> Self {
        Self {
            config,
            files,
            signals,
            api,
            terminals: Terminals::default(),
            restore,
        }
    }

    /// Runs VMs until one ends in a way that ends vmm (a power-off, a
    /// signal, `vmm.shutdown`), and says why.
    pub fn run(mut self) -> Result<ExitReason, ControlError> {
        // The request that asked for this boot, answered once it is done.
        let mut booting: Option<Answer> = None;
        if self.config.is_none() {
            match self.wait_for_boot()? {
                Next::Boot(answer) => booting = Some(answer),
                Next::End(reason) => return Ok(reason),
            }
        }
        loop {
            // wait_for_boot ends with a configuration, or the end.
            let Some(config) = &self.config else {
                return Ok(ExitReason::ApiShutdown);
            };
            // A restore is once: a reboot after it boots the payload.
            let restoring = self.restore.take();
            let start = match &restoring {
                Some(restore) => Start::Restore {
                    snapshot: &restore.snapshot,
                    resume: restore.resume,
                    prefault: restore.prefault,
                },
                None => Start::Boot,
            };
            let built = build_vm(config, self.files.clone(), &mut self.terminals, start);
            let restored = restoring.is_some();
            drop(restoring);
            let vm = match built {
                Ok(vm) => vm,
                Err(e) => {
                    let Some(answer) = booting.take() else {
                        return Err(e.into());
                    };
                    log::error!("vm.boot or vm.restore: {}", error_chain(&e));
                    // A restore that failed leaves no VM behind: a vm.boot
                    // after it would boot the snapshot's payload afresh.
                    if restored {
                        self.delete();
                    }
                    answer.send(ApiReply::error(500, &[error_chain(&e)]));
                    match self.wait_for_boot()? {
                        Next::Boot(answer) => booting = Some(answer),
                        Next::End(reason) => return Ok(reason),
                    }
                    continue;
                }
            };
            if let Some(answer) = booting.take() {
                answer.send(ApiReply::no_content());
            }
            let (reason, answer) = vm.run(self.signals, self.api.as_ref())?;
            // The VM is gone: its threads joined, its devices dropped.
            match reason {
                ExitReason::ApiVmReboot => {
                    events::emit("vm", "rebooting", &[]);
                    booting = answer;
                }
                ExitReason::ApiVmShutdown | ExitReason::ApiVmDelete => {
                    if reason == ExitReason::ApiVmDelete {
                        self.delete();
                    }
                    if let Some(answer) = answer {
                        answer.send(ApiReply::no_content());
                    }
                    match self.wait_for_boot()? {
                        Next::Boot(answer) => booting = Some(answer),
                        Next::End(reason) => return Ok(reason),
                    }
                }
                other => {
                    if let Some(answer) = answer {
                        answer.send(ApiReply::no_content());
                    }
                    return Ok(other);
                }
            }
        }
    }

    fn delete(&mut self) {
        if self.config.take().is_some() {
            self.files.forget_inputs();
            self.terminals = Terminals::default();
            events::emit("vm", "deleted", &[]);
        }
    }

    /// `vm.restore`: the snapshot checked, its configuration created as
    /// `vm.create` would, and the VM built from it next.
    fn restore(&mut self, source: &crate::config::RestoreConfig) -> Result<(), ApiReply> {
        if self.config.is_some() {
            return Err(ApiReply::error(
                409,
                &["a VM is created already: vm.delete removes it first".into()],
            ));
        }
        let (config, restore) = open_restore(source).map_err(|e| {
            log::error!("vm.restore: {}", error_chain(&e));
            ApiReply::error(400, &[error_chain(&e)])
        })?;
        let reply = self.create(config);
        if reply.status != 204 {
            return Err(reply);
        }
        self.restore = Some(restore);
        Ok(())
    }

    /// `vm.create`: the configuration's inputs are known before the VM
    /// opens any output, as at start-up.
    fn create(&mut self, config: VmConfig) -> ApiReply {
        if self.config.is_some() {
            return ApiReply::error(
                409,
                &["a VM is created already: vm.delete removes it first".into()],
            );
        }
        let mut files = self.files.clone();
        for input in config.input_files() {
            if let Err(e) = files.add_input(&input.path, &input.what, input.written) {
                return ApiReply::error(400, &[input.what, error_chain(&e)]);
            }
        }
        self.files = files;
        self.config = Some(config);
        events::emit("vm", "created", &[]);
        ApiReply::no_content()
    }

    /// No VM runs: serves the API and watches the signals until `vm.boot`
    /// or the end.
    fn wait_for_boot(&mut self) -> Result<Next, ControlError> {
        let Some(api_fd) = self.api.as_ref().map(AsRawFd::as_raw_fd) else {
            // Only the API shuts a VM down and keeps vmm.
            return Ok(Next::End(ExitReason::ApiVmShutdown));
        };
        let mut sources = EventLoop::new().map_err(ControlError::Epoll)?;
        sources
            .add(self.signals.as_raw_fd(), Source::Signal)
            .map_err(ControlError::Epoll)?;
        sources
            .add(api_fd, Source::Api)
            .map_err(ControlError::Epoll)?;
        loop {
            for source in sources.wait().map_err(ControlError::Epoll)? {
                if source == Source::Signal {
                    if let Some(signo) = self.signals.read() {
                        return Ok(Next::End(ExitReason::Signal(signo)));
                    }
                    continue;
                }
                let mut requests = self
                    .api
                    .as_ref()
                    .map(ApiEndpoint::take)
                    .unwrap_or_default()
                    .into_iter();
                while let Some((request, answer)) = requests.next() {
                    let no_vm =
                        || ApiReply::error(409, &["no VM is created: vm.create brings one".into()]);
                    let created = self.config.is_some();
                    match request {
                        ApiRequest::VmBoot if created => {
                            // Those that came with it are asked again once
                            // the VM runs.
                            for (_, later) in requests {
                                later.send(ApiReply::error(
                                    503,
                                    &["the VM is booting: try again".into()],
                                ));
                            }
                            return Ok(Next::Boot(answer));
                        }
                        ApiRequest::VmmShutdown => {
                            answer.send(ApiReply::no_content());
                            return Ok(Next::End(ExitReason::ApiShutdown));
                        }
                        ApiRequest::VmmPing => answer.send(ApiReply::json(&ping())),
                        ApiRequest::VmCreate(config) => answer.send(self.create(*config)),
                        ApiRequest::VmRestore(source) => match self.restore(&source) {
                            Ok(()) => {
                                for (_, later) in requests {
                                    later.send(ApiReply::error(
                                        503,
                                        &["the VM is being restored: try again".into()],
                                    ));
                                }
                                return Ok(Next::Boot(answer));
                            }
                            Err(reply) => answer.send(reply),
                        },
                        ApiRequest::VmDelete => {
                            self.delete();
                            answer.send(ApiReply::no_content());
                        }
                        ApiRequest::VmInfo => answer.send(match &self.config {
                            Some(config) => ApiReply::json(&vm_info(
                                config,
                                "Created",
                                0,
                                serde_json::Map::new(),
                            )),
                            None => no_vm(),
                        }),
                        ApiRequest::VmBoot
                        | ApiRequest::VmCounters
                        | ApiRequest::VmPause
                        | ApiRequest::VmResume
                        | ApiRequest::VmShutdown
                        | ApiRequest::VmReboot
                        | ApiRequest::VmSnapshot { .. }
                        | ApiRequest::VmPowerButton => answer.send(if created {
                            ApiReply::error(
                                409,
                                &["the VM is Created (not booted): vm.boot starts it".into()],
                            )
                        } else {
                            no_vm()
                        }),
                    }
                }
            }
        }
    }
}
