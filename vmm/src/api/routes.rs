//! From an HTTP method and path to the request the VMM thread serves, and
//! the HTTP errors that never reach it: Cloud Hypervisor's names under
//! `/api/v1/`, with 404 for a name we do not know, 405 for a method the
//! name does not take and 400 for a body it does not want.

use super::{ApiReply, ApiRequest};
use crate::config::VmConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("unknown API path {0:?}: expected /api/v1/ and a name such as vm.info")]
    NotFound(String),
    #[error("{path} takes {allowed}, not {method}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("{path} takes no body: got {len} bytes")]
    UnexpectedBody { path: String, len: usize },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the request ended before its end (the client closed or went quiet)")]
    Truncated,
    #[error("a body of {0} bytes: expected at most {max}", max = super::http::MAX_BODY)]
    TooLarge(usize),
    #[error("the request's head is too long")]
    HeadTooLarge,
    #[error("a body needs a Content-Length (chunked transfer is not taken)")]
    LengthRequired,
    #[error("only the socket's owner may use it: a client of uid {0} is refused")]
    Forbidden(u32),
    #[error("too many clients at once: try again")]
    Busy,
    #[error("{path}: the body is refused: {problem}")]
    BadBody {
        path: String,
        /// Where in the JSON, and what is wrong there.
        problem: String,
    },
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::NotFound(_) => 404,
            HttpError::MethodNotAllowed { .. } => 405,
            HttpError::UnexpectedBody { .. }
            | HttpError::BadBody { .. }
            | HttpError::Malformed(_)
            | HttpError::Truncated => 400,
            HttpError::TooLarge(_) => 413,
            HttpError::HeadTooLarge => 431,
            HttpError::LengthRequired => 411,
            HttpError::Forbidden(_) => 403,
            HttpError::Busy => 503,
        }
    }

    /// Whether the server closes the connection after saying it: the
    /// request could not be framed, so nothing after it can be either.
    /// A request framed but not routed leaves the connection open.
    pub fn ends_connection(&self) -> bool {
        !matches!(
            self,
            HttpError::NotFound(_)
                | HttpError::MethodNotAllowed { .. }
                | HttpError::UnexpectedBody { .. }
                | HttpError::BadBody { .. }
        )
    }

    pub fn reply(&self) -> ApiReply {
        ApiReply::error(self.status(), &[self.to_string()])
    }
}

const PREFIX: &str = "/api/v1/";

/// Cloud Hypervisor's `RestoreConfig`, as ch-remote sends it whole: the
/// keys for what vmm does not do (network and VFIO descriptors, NUMA
/// zones, memory restored lazily) are taken at their defaults only.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    source_url: String,
    #[serde(default)]
    resume: bool,
    #[serde(default)]
    prefault: bool,
    #[serde(default)]
    memory_restore_mode: Option<String>,
    #[serde(default)]
    net_fds: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    vfio_fds: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    iommufd_fd: Option<i64>,
    #[serde(default)]
    zone_updates: Vec<serde_json::Value>,
    /// vmm's own: new sockets for vhost-user devices, by device id.
    #[serde(default)]
    vhost_user_sockets: Vec<SocketBody>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketBody {
    id: String,
    socket: std::path::PathBuf,
}

impl RestoreBody {
    fn into_config(self) -> Result<crate::config::RestoreConfig, String> {
        let unsupported = [
            (
                self.memory_restore_mode
                    .as_deref()
                    .is_some_and(|m| m != "Copy" && m != "copy"),
                "memory_restore_mode (only copy)",
            ),
            (self.net_fds.is_some_and(|v| !v.is_empty()), "net_fds"),
            (self.vfio_fds.is_some_and(|v| !v.is_empty()), "vfio_fds"),
            (self.iommufd_fd.is_some(), "iommufd_fd"),
            (!self.zone_updates.is_empty(), "zone_updates"),
        ];
        if let Some((_, key)) = unsupported.iter().find(|(given, _)| *given) {
            return Err(format!("{key}: not supported by vmm"));
        }
        let source = crate::snapshot::file_url_path(&self.source_url).ok_or_else(|| {
            format!(
                "source_url: {:?} is not a file:// URL of an absolute path",
                self.source_url
            )
        })?;
        Ok(crate::config::RestoreConfig {
            source,
            resume: self.resume,
            prefault: self.prefault,
            sockets: self
                .vhost_user_sockets
                .into_iter()
                .map(|s| (s.id, s.socket))
                .collect(),
        })
    }
}

/// Cloud Hypervisor's `VmSnapshotConfig`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    destination_url: String,
}

/// The request `method` on `path` (query string ignored) asks for.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, HttpError> {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let name = path
        .strip_prefix(PREFIX)
        .ok_or_else(|| HttpError::NotFound(path.to_owned()))?;
    // vm.create, vm.snapshot and vm.restore take a body; their requests
    // are made from it below.
    let (request, allowed) = match name {
        "vmm.ping" => (Some(ApiRequest::VmmPing), "GET"),
        "vm.info" => (Some(ApiRequest::VmInfo), "GET"),
        "vm.counters" => (Some(ApiRequest::VmCounters), "GET"),
        "vm.pause" => (Some(ApiRequest::VmPause), "PUT"),
        "vm.resume" => (Some(ApiRequest::VmResume), "PUT"),
        "vm.shutdown" => (Some(ApiRequest::VmShutdown), "PUT"),
        "vm.reboot" => (Some(ApiRequest::VmReboot), "PUT"),
        "vm.power-button" => (Some(ApiRequest::VmPowerButton), "PUT"),
        "vm.boot" => (Some(ApiRequest::VmBoot), "PUT"),
        "vm.delete" => (Some(ApiRequest::VmDelete), "PUT"),
        "vmm.shutdown" => (Some(ApiRequest::VmmShutdown), "PUT"),
        "vm.create" | "vm.snapshot" | "vm.restore" => (None, "PUT"),
        _ => return Err(HttpError::NotFound(path.to_owned())),
    };
    if method != allowed {
        return Err(HttpError::MethodNotAllowed {
            method: method.to_owned(),
            path: path.to_owned(),
            allowed,
        });
    }
    let Some(request) = request else {
        // Checked here, on the client's thread: a bad body never reaches
        // the VMM thread.
        let bad_body = |problem: String| HttpError::BadBody {
            path: path.to_owned(),
            problem,
        };
        if name == "vm.restore" {
            return serde_json::from_slice::<RestoreBody>(body)
                .map_err(|e| e.to_string())
                .and_then(RestoreBody::into_config)
                .map(ApiRequest::VmRestore)
                .map_err(bad_body);
        }
        if name == "vm.snapshot" {
            return serde_json::from_slice::<SnapshotBody>(body)
                .map(|body| ApiRequest::VmSnapshot {
                    destination_url: body.destination_url,
                })
                .map_err(|e| bad_body(e.to_string()));
        }
        return VmConfig::from_json(body)
            .map(|config| ApiRequest::VmCreate(Box::new(config)))
            .map_err(|e| bad_body(e.to_string()));
    };
    if !body.is_empty() {
        return Err(HttpError::UnexpectedBody {
            path: path.to_owned(),
            len: body.len(),
        });
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("GET", "/api/v1/vmm.ping", ApiRequest::VmmPing)]
    #[case("GET", "/api/v1/vm.info?x=1", ApiRequest::VmInfo)]
    #[case("GET", "/api/v1/vm.counters", ApiRequest::VmCounters)]
    #[case("PUT", "/api/v1/vm.pause", ApiRequest::VmPause)]
    #[case("PUT", "/api/v1/vm.resume", ApiRequest::VmResume)]
    #[case("PUT", "/api/v1/vmm.shutdown", ApiRequest::VmmShutdown)]
    #[case("PUT", "/api/v1/vm.shutdown", ApiRequest::VmShutdown)]
    #[case("PUT", "/api/v1/vm.reboot", ApiRequest::VmReboot)]
    #[case("PUT", "/api/v1/vm.power-button", ApiRequest::VmPowerButton)]
    #[case("PUT", "/api/v1/vm.boot", ApiRequest::VmBoot)]
    #[case("PUT", "/api/v1/vm.delete", ApiRequest::VmDelete)]
    fn known_names_route(#[case] method: &str, #[case] path: &str, #[case] want: ApiRequest) {
        assert_eq!(route(method, path, b""), Ok(want));
    }

    #[rstest]
    #[case("GET", "/api/v1/vm.nothing", 404)]
    #[case("GET", "/api/v2/vm.info", 404)]
    #[case("GET", "/", 404)]
    #[case("PUT", "/api/v1/vm.info", 405)]
    #[case("GET", "/api/v1/vm.pause", 405)]
    #[case("DELETE", "/api/v1/vmm.ping", 405)]
    fn the_rest_is_refused_with_its_status(
        #[case] method: &str,
        #[case] path: &str,
        #[case] status: u16,
    ) {
        let err = route(method, path, b"").unwrap_err();
        assert_eq!(err.status(), status, "{err}");
        let reply = err.reply();
        let body: Vec<String> = serde_json::from_str(reply.body.as_deref().unwrap()).unwrap();
        assert_eq!(body, vec![err.to_string()]);
    }

    #[test]
    fn a_body_where_none_is_taken_is_refused() {
        let err = route("PUT", "/api/v1/vm.pause", b"{}").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("takes no body"), "{err}");
    }

    #[test]
    fn vm_create_takes_a_vm_config_and_names_what_is_wrong_in_it() {
        let body = br#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":2}}"#;
        let Ok(ApiRequest::VmCreate(config)) = route("PUT", "/api/v1/vm.create", body) else {
            panic!("not created");
        };
        assert_eq!(config.cpus.boot, 2);
        let err = route("PUT", "/api/v1/vm.create", br#"{"payload":{"kernel":""}}"#).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(!err.ends_connection());
        assert_eq!(
            err.to_string(),
            "/api/v1/vm.create: the body is refused: payload.kernel: empty path: expected a file name"
        );
        assert_eq!(
            route("GET", "/api/v1/vm.create", b"").unwrap_err().status(),
            405
        );
    }
}
