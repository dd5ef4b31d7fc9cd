//! The HTTP upgrade: from a TCP connection to a WebSocket, or to a one-line HTTP error.
//!
//! Runs on the connection's short-lived upgrade thread. tungstenite parses the request and
//! computes `Sec-WebSocket-Accept`; here we decide who may upgrade (the client limit, an
//! address's share behind a trusted proxy, the Origin check) and answer everything else
//! with a status and a reason.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use tungstenite::error::ProtocolError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error, WebSocket};

use crate::connection::socket::ClientStream;
use crate::context::Shared;
use crate::figures::{self, Figures};
use crate::limits::addresses::{self, AddressSlot};
use crate::wire::{self, Dialect};

/// tungstenite's read buffer, which it fills with zeros before each read, so every byte
/// of it is memory an idle client holds. Its 128 KiB default would cost more than all
/// the rest of a client; chat lines are short, and longer ones arrive in several reads.
const READ_BUFFER_BYTES: usize = 1024;

/// The HTTP upgrade. Returns the open WebSocket, the client's address for the logs and its
/// dialect (the resume subprotocol, when it asked for it), or `None` once the client has
/// been answered with an HTTP error (or has timed out). Behind a trusted proxy, the
/// forwarded address's slot is put in `address`. The handshake's deadline still holds for
/// the WebSocket until the caller calls `handshake_done` on its stream: the resume dialect's
/// first message is part of the handshake.
pub fn handshake(
    shared: &Shared,
    socket: &Arc<TcpStream>,
    peer: SocketAddr,
    over_capacity: bool,
    address: &mut Option<AddressSlot>,
) -> Option<(WebSocket<ClientStream>, String, Dialect)> {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_timeout;
    let stream = ClientStream::new(socket.clone(), deadline);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let mut from = None;
    let mut dialect = Dialect::Plain;
    // The error type is tungstenite's, so its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, mut response: Response| {
        let client = client_address(request, peer, config.trust_proxy);
        shared.trace.handshake_request(&client, request);
        if over_capacity {
            return Err(http_error(
                &shared.figures,
                503,
                &format!(
                    "server full: {} clients connected, try again later",
                    shared.max_clients
                ),
            ));
        }
        if config.trust_proxy {
            let ip = forwarded_address(request, true).unwrap_or(peer.ip());
            match shared.addresses.take(ip, Instant::now()) {
                Ok(slot) => *address = Some(slot),
                Err(refused) => {
                    refused.report("WebSocket port");
                    return Err(http_error(&shared.figures, 429, &refused.reason()));
                }
            }
        }
        if !origin_allowed(request, &config.allow_origins, config.trust_proxy) {
            return Err(http_error(
                &shared.figures,
                403,
                "this page's origin may not use this chat server",
            ));
        }
        if offers_resume(request) {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tungstenite::http::HeaderValue::from_static(wire::RESUME_SUBPROTOCOL),
            );
            dialect = Dialect::Resume;
        }
        shared.trace.handshake_response(&client, request, &response);
        from = Some(client);
        Ok(response)
    };
    match tungstenite::accept_hdr_with_config(stream, check, Some(ws_config)) {
        Ok(ws) => Some((ws, from.unwrap_or_else(|| peer.to_string()), dialect)),
        Err(HandshakeError::Interrupted(_)) => {
            shared.trace.decision(peer, "handshake timed out; dropped");
            None
        }
        Err(HandshakeError::Failure(err)) => {
            reject_failed_handshake(shared, socket, peer, err);
            None
        }
    }
}

/// Answers a request that could not be upgraded, unless tungstenite already answered it.
fn reject_failed_handshake(shared: &Shared, socket: &TcpStream, peer: SocketAddr, err: Error) {
    let (status, body) = match err {
        // tungstenite already wrote the response our callback returned.
        Error::Http(response) => {
            shared
                .trace
                .decision(peer, &format!("answered HTTP {}", response.status()));
            return;
        }
        Error::Protocol(
            ProtocolError::MissingConnectionUpgradeHeader
            | ProtocolError::MissingUpgradeWebSocketHeader
            | ProtocolError::WrongHttpMethod,
        ) => (
            426,
            format!(
                "this is threadchat's WebSocket port; the chat page is at {}",
                shared.page_url
            ),
        ),
        Error::Protocol(p) => (400, format!("bad WebSocket handshake: {p}")),
        // The client went away or sent nothing in time: nobody to answer.
        _ => {
            shared
                .trace
                .decision(peer, &format!("handshake failed: {err}"));
            return;
        }
    };
    shared
        .trace
        .decision(peer, &format!("answered HTTP {status}"));
    let reason = match status {
        426 => "Upgrade Required",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nUpgrade: websocket\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    figures::add(shared.figures.refused_at(status), 1);
    let mut socket = socket;
    let _ = socket.write_all(response.as_bytes());
}

fn http_error(figures: &Figures, status: u16, body: &str) -> ErrorResponse {
    figures::add(figures.refused_at(status), 1);
    let mut response = ErrorResponse::new(Some(format!("{body}\n")));
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        "Content-Type",
        tungstenite::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Browsers send `Origin`; scripts usually do not. A page may talk to us if it was served
/// by the same host (the page on one port, this server on another), or if its origin is
/// allowed on the command line. Behind a proxy, `Host` is whatever the proxy sends: it must
/// pass the browser's own (nginx: `proxy_set_header Host $host`), or, with `--trust-proxy`,
/// send it as `X-Forwarded-Host`, which is then used instead.
fn origin_allowed(request: &Request, allowed: &[String], trust_proxy: bool) -> bool {
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
fn client_address(request: &Request, peer: SocketAddr, trust_proxy: bool) -> String {
    match forwarded_address(request, trust_proxy) {
        Some(address) => address.to_string(),
        None => peer.to_string(),
    }
}

/// With `--trust-proxy`, the address the proxy forwards; never without it.
fn forwarded_address(request: &Request, trust_proxy: bool) -> Option<IpAddr> {
    let values = request.headers().get_all("X-Forwarded-For");
    // A value that is not text stays in its place, so that it is never skipped for an
    // earlier one the client may have written.
    let values = values.iter().map(|v| v.to_str().unwrap_or(""));
    addresses::last_forwarded(values).filter(|_| trust_proxy)
}

/// Whether the client lists the resume subprotocol among those it speaks.
fn offers_resume(request: &Request) -> bool {
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
