//! The HTTP upgrade: from a TCP connection to a WebSocket, or to a one-line HTTP error.
//!
//! Runs on the connection's short-lived upgrade thread. tungstenite parses the request and
//! computes `Sec-WebSocket-Accept`; here we decide who may upgrade (the client limit, an
//! address's share behind a trusted proxy, the Origin check) and answer everything else
//! with a status and a reason.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use tungstenite::handshake::server::{Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::WebSocket;

use crate::connection::refusal::{http_error, reject_failed_handshake};
use crate::connection::request::{
    client_address, forwarded_address, offers_resume, origin_allowed,
};
use crate::connection::socket::ClientStream;
use crate::context::Shared;
use crate::limits::addresses::AddressSlot;
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
            let counted = (&*shared.figures, shared.trace);
            reject_failed_handshake(socket, peer, err, &shared.page_url, counted);
            None
        }
    }
}
