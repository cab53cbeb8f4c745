//! The API socket's request path: bytes a client sends on one connection,
//! through `httparse`, the server's framing (Content-Length, keep-alive,
//! 100-continue) and the routing by name. Whatever comes, the server
//! never panics, every refusal is a 4xx with a one-line reason, and one
//! that ends the connection (a request that cannot be framed) is the last.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::parse_api_stream;

fuzz_target!(|bytes: &[u8]| {
    let results = parse_api_stream(bytes);
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(_) => {}
            Err(error) => {
                let status = error.status();
                assert!((400..500).contains(&status), "{error}: {status}");
                let text = error.to_string();
                assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
                // One that ends the connection is the last thing said.
                if error.ends_connection() {
                    assert_eq!(i + 1, results.len(), "{error} and more");
                }
            }
        }
    }
    // Each request was framed whole before it was routed: the shortest
    // one httparse takes ("A / HTTP/1.1\n\n") is 14 bytes.
    assert!(results.len() <= bytes.len() / 14 + 1);
});
