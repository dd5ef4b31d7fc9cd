//! The one-line HTTP error a refused upgrade ends with, counted by its status: off the path a
//! message takes, which only ever sees the upgrade succeed.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use tungstenite::error::ProtocolError;
use tungstenite::handshake::server::ErrorResponse;
use tungstenite::Error;

use crate::figures::{self, Figures};
use crate::trace::Trace;

/// Answers a request that could not be upgraded, unless tungstenite already answered it;
/// a wrong request is pointed to the chat page at `page_url`.
pub fn reject_failed_handshake(
    socket: &TcpStream,
    peer: SocketAddr,
    err: Error,
    page_url: &str,
    (figures, trace): (&Figures, Trace),
) {
    let (status, body) = match err {
        // tungstenite already wrote the response our callback returned.
        Error::Http(response) => {
            trace.decision(peer, &format!("answered HTTP {}", response.status()));
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
                page_url
            ),
        ),
        Error::Protocol(p) => (400, format!("bad WebSocket handshake: {p}")),
        // The client went away or sent nothing in time: nobody to answer.
        _ => {
            trace.decision(peer, &format!("handshake failed: {err}"));
            return;
        }
    };
    trace.decision(peer, &format!("answered HTTP {status}"));
    let reason = match status {
        426 => "Upgrade Required",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nUpgrade: websocket\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    figures::add(figures.refused_at(status), 1);
    let mut socket = socket;
    let _ = socket.write_all(response.as_bytes());
}

pub fn http_error(figures: &Figures, status: u16, body: &str) -> ErrorResponse {
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
