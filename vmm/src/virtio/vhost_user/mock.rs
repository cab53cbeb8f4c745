//! An in-process vhost-user backend for protocol tests, built on the vhost
//! crate's own request handler: it serves a real Unix socket in a temporary
//! directory and records every request it gets.

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::*;
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;

pub const VERSION_1: u64 = 1 << 32;
pub const PROTOCOL: u64 = 1 << 30;

pub struct Mock {
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    pub queue_num: u64,
    pub config: Vec<u8>,
    /// GET_CONFIG sleeps this long before answering.
    pub hang: Option<Duration>,
    pub log: Vec<String>,
}

impl Mock {
    pub fn fs() -> Mock {
        let mut config = vec![0u8; 40];
        config[..4].copy_from_slice(b"myfs");
        config[36] = 1;
        Mock {
            features: VERSION_1 | PROTOCOL | (1 << 29) | (1 << 28) | (1 << 33) | (1 << 34) | 1,
            protocol: VhostUserProtocolFeatures::all(),
            queue_num: 2,
            config,
            hang: None,
            log: Vec::new(),
        }
    }

    fn note(&mut self, what: String) -> VuResult<()> {
        self.log.push(what);
        Ok(())
    }
}

fn refuse<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation("not implemented by the mock"))
}

impl VhostUserBackendReqHandlerMut for Mock {
    fn set_owner(&mut self) -> VuResult<()> {
        self.note("SET_OWNER".into())
    }
    fn reset_owner(&mut self) -> VuResult<()> {
        refuse()
    }
    fn reset_device(&mut self) -> VuResult<()> {
        self.note("RESET_DEVICE".into())
    }
    fn get_features(&mut self) -> VuResult<u64> {
        self.log.push("GET_FEATURES".into());
        Ok(self.features)
    }
    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.features != 0 {
            return Err(VuError::InvalidParam);
        }
        self.note(format!("SET_FEATURES {features:#x}"))
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        assert_eq!(ctx.len(), files.len());
        self.note(format!("SET_MEM_TABLE {}", ctx.len()))?;
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.note(format!("SET_VRING_NUM {index} {num}"))?;
        if u64::from(index) >= self.queue_num {
            return Err(VuError::InvalidParam);
        }
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        _descriptor: u64,
        _used: u64,
        _available: u64,
        _log: u64,
    ) -> VuResult<()> {
        self.note(format!("SET_VRING_ADDR {index}"))
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.note(format!("SET_VRING_BASE {index} {base}"))
    }
    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.log.push(format!("GET_VRING_BASE {index}"));
        // Where a pause stopped ring `index`: a value of its own, so a
        // test sees it come back at resume.
        Ok(VhostUserVringState::new(index, 7 + 10 * index))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.note(format!("SET_VRING_KICK {index} {}", fd.is_some()))
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.note(format!("SET_VRING_CALL {index} {}", fd.is_some()))
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        refuse()
    }
    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        self.log.push("GET_PROTOCOL_FEATURES".into());
        Ok(self.protocol)
    }
    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.note(format!("SET_PROTOCOL_FEATURES {features:#x}"))
    }
    fn get_queue_num(&mut self) -> VuResult<u64> {
        self.log.push("GET_QUEUE_NUM".into());
        Ok(self.queue_num)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.note(format!("SET_VRING_ENABLE {index} {}", u8::from(enable)))
    }
    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        self.log.push(format!("GET_CONFIG {offset} {size}"));
        if let Some(hang) = self.hang {
            std::thread::sleep(hang);
        }
        let (offset, size) = (offset as usize, size as usize);
        self.config
            .get(offset..offset + size)
            .map(<[u8]>::to_vec)
            .ok_or(VuError::InvalidParam)
    }
    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        self.note(format!("SET_CONFIG {offset} {buf:?}"))
    }
    fn set_backend_req_fd(&mut self, _backend: Backend) {}
    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VuResult<()> {
        refuse()
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        refuse()
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        refuse()
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VuResult<()> {
        refuse()
    }
    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        refuse()
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        refuse()
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        refuse()
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VuResult<Option<File>> {
        refuse()
    }
    fn check_device_state(&mut self) -> VuResult<()> {
        refuse()
    }
    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        refuse()
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VuResult<()> {
        refuse()
    }
}

/// A backend serving `connections` connections one after the other on a
/// socket in its own temporary directory.
pub struct Server {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub mock: Arc<Mutex<Mock>>,
    /// The backend's end of the connection being served.
    current: Arc<Mutex<Option<UnixStream>>>,
    pub thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(mock: Mock, connections: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.sock");
        let mock = Arc::new(Mutex::new(mock));
        let current = Arc::new(Mutex::new(None));
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::Builder::new()
            .name("mock-backend".into())
            .spawn({
                let mock = mock.clone();
                let current = current.clone();
                move || {
                    for _ in 0..connections {
                        let (stream, _) = listener.accept().unwrap();
                        *current.lock().unwrap() = Some(stream.try_clone().unwrap());
                        let mut handler = BackendReqHandler::from_stream(stream, mock.clone());
                        // Until the frontend goes away (or we fail to answer).
                        while handler.handle_request().is_ok() {}
                    }
                }
            })
            .unwrap();
        Server {
            _dir: dir,
            path,
            mock,
            current,
            thread: Some(thread),
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.mock.lock().unwrap().log.clone()
    }

    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.mock.lock().unwrap().log)
    }

    /// The backend "crashes": its end of the connection goes away and it
    /// takes the next connection, as a restarted backend would.
    pub fn kill_connection(&self) {
        if let Some(s) = self.current.lock().unwrap().take() {
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }

    /// Waits until the backend has served all its connections.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}
