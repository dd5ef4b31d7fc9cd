//! What the upgrade request says: who the client is behind a trusted proxy, whether its
//! page's origin may use this server, and which dialect it asks for. The handshake
//! (`handshake.rs`) asks these by name.

use std::net::{IpAddr, SocketAddr};

use tungstenite::handshake::server::Request;

use crate::limits::addresses;
use crate::wire;

/// Browsers send `Origin`; scripts usually do not. A page may talk to us if it was served
/// by the same host (the page on one port, this server on another), or if its origin is
/// allowed on the command line. Behind a proxy, `Host` is whatever the proxy sends: it must
/// pass the browser's own (nginx: `proxy_set_header Host $host`), or, with `--trust-proxy`,
/// send it as `X-Forwarded-Host`, which is then used instead.
pub fn origin_allowed(request: &Request, allowed: &[String], trust_proxy: bool) -> bool {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(origin) = header("Origin") else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let forwarded = header("X-Forwarded-Host").filter(|_| trust_proxy);
    match forwarded.or(header("Host")) {
        Some(host) => host_part(origin_host).eq_ignore_ascii_case(host_part(host)),
        None => false,
    }
}

/// The client's address for the join/leave log and `--trace`: the peer's, or, with
/// `--trust-proxy`, the last address in `X-Forwarded-For`, the one the proxy itself added.
/// Any before it came from the client and prove nothing; without the flag the header is
/// ignored altogether, since any client can send it.
pub fn client_address(request: &Request, peer: SocketAddr, trust_proxy: bool) -> String {
    match forwarded_address(request, trust_proxy) {
        Some(address) => address.to_string(),
        None => peer.to_string(),
    }
}

/// With `--trust-proxy`, the address the proxy forwards; never without it.
pub fn forwarded_address(request: &Request, trust_proxy: bool) -> Option<IpAddr> {
    let values = request.headers().get_all("X-Forwarded-For");
    // A value that is not text stays in its place, so that it is never skipped for an
    // earlier one the client may have written.
    let values = values.iter().map(|v| v.to_str().unwrap_or(""));
    addresses::last_forwarded(values).filter(|_| trust_proxy)
}

/// Whether the client lists the resume subprotocol among those it speaks.
pub fn offers_resume(request: &Request) -> bool {
    request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == wire::RESUME_SUBPROTOCOL)
}

/// `example.org:8080` -> `example.org`; `[::1]:8080` -> `[::1]`.
fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut request = Request::builder().uri("/chat");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn x_forwarded_for_is_ignored_without_trust_proxy() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let spoofed = request(&[("X-Forwarded-For", "203.0.113.9")]);
        assert_eq!(client_address(&spoofed, peer, false), "127.0.0.1:40000");
    }

    #[test]
    fn with_trust_proxy_the_last_hop_is_the_client() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let chain = request(&[("X-Forwarded-For", "10.9.9.9, 198.51.100.7")]);
        assert_eq!(client_address(&chain, peer, true), "198.51.100.7");
        let junk = request(&[("X-Forwarded-For", "not an address")]);
        assert_eq!(client_address(&junk, peer, true), "127.0.0.1:40000");
        assert_eq!(client_address(&request(&[]), peer, true), "127.0.0.1:40000");
    }

    #[test]
    fn behind_a_proxy_the_origin_check_uses_the_forwarded_host_only_when_trusted() {
        let through_proxy = request(&[
            ("Origin", "https://chat.example.org"),
            ("Host", "127.0.0.1:12345"),
            ("X-Forwarded-Host", "chat.example.org"),
        ]);
        assert!(origin_allowed(&through_proxy, &[], true));
        assert!(!origin_allowed(&through_proxy, &[], false));
        let host_passed = request(&[
            ("Origin", "https://chat.example.org"),
            ("Host", "chat.example.org"),
        ]);
        assert!(origin_allowed(&host_passed, &[], false));
    }

    #[test]
    fn host_part_handles_names_and_ipv6() {
        assert_eq!(host_part("example.org:8080"), "example.org");
        assert_eq!(host_part("[::1]:8080"), "[::1]");
        assert_eq!(host_part("localhost"), "localhost");
    }

    #[test]
    fn the_resume_subprotocol_is_found_among_others() {
        let offered = request(&[("Sec-WebSocket-Protocol", "chat, threadchat-resume")]);
        assert!(offers_resume(&offered));
        assert!(!offers_resume(&request(&[(
            "Sec-WebSocket-Protocol",
            "chat"
        )])));
        assert!(!offers_resume(&request(&[])));
    }
}
