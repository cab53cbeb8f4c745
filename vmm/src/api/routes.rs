//! From an HTTP method and path to the request the VMM thread serves, and
//! the HTTP errors that never reach it: Cloud Hypervisor's names under
//! `/api/v1/`, with 404 for a name we do not know, 405 for a method the
//! name does not take and 400 for a body it does not want.

use super::{ApiReply, ApiRequest};

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
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::NotFound(_) => 404,
            HttpError::MethodNotAllowed { .. } => 405,
            HttpError::UnexpectedBody { .. } | HttpError::Malformed(_) | HttpError::Truncated => {
                400
            }
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
        )
    }

    pub fn reply(&self) -> ApiReply {
        ApiReply::error(self.status(), &[self.to_string()])
    }
}

const PREFIX: &str = "/api/v1/";

/// The request `method` on `path` (query string ignored) asks for.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, HttpError> {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let name = path
        .strip_prefix(PREFIX)
        .ok_or_else(|| HttpError::NotFound(path.to_owned()))?;
    let (request, allowed) = match name {
        "vmm.ping" => (ApiRequest::VmmPing, "GET"),
        "vm.info" => (ApiRequest::VmInfo, "GET"),
        "vm.counters" => (ApiRequest::VmCounters, "GET"),
        "vm.pause" => (ApiRequest::VmPause, "PUT"),
        "vm.resume" => (ApiRequest::VmResume, "PUT"),
        "vm.shutdown" => (ApiRequest::VmShutdown, "PUT"),
        "vm.reboot" => (ApiRequest::VmReboot, "PUT"),
        "vm.boot" => (ApiRequest::VmBoot, "PUT"),
        "vmm.shutdown" => (ApiRequest::VmmShutdown, "PUT"),
        _ => return Err(HttpError::NotFound(path.to_owned())),
    };
    if method != allowed {
        return Err(HttpError::MethodNotAllowed {
            method: method.to_owned(),
            path: path.to_owned(),
            allowed,
        });
    }
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
    #[case("PUT", "/api/v1/vm.boot", ApiRequest::VmBoot)]
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
}
