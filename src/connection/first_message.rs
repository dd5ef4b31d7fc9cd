//! The resume dialect's first message, `new` or `resume <token> <position>`, read on the
//! upgrade thread as the last step of the handshake. Off the path a plain client's message
//! takes; the room's side of a resume is `room/resume.rs`.

use std::net::SocketAddr;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::connection::socket::ClientStream;
use crate::dialect::Resume;
use crate::trace::Trace;

/// The first message of the resume dialect, `new` or `resume <token> <position>`, within the
/// handshake's deadline. Other text is answered with close 1008 saying what was expected, a
/// binary message with 1003, as it would be later in the connection.
pub fn first_message(
    ws: &mut WebSocket<ClientStream>,
    trace: Trace,
    peer: SocketAddr,
) -> Option<Resume> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let resume = Resume::parse(&text);
                // Told from what was understood, never from the text itself: a malformed
                // message may still hold a token.
                let told = match &resume {
                    Some(Resume::New) => "new".to_owned(),
                    Some(Resume::Back { position, .. }) => format!("resume <token> {position}"),
                    None => format!("neither new nor resume ({} bytes)", text.len()),
                };
                trace.decision(peer, &format!("first message: {told}"));
                if resume.is_none() {
                    let expected = CloseFrame {
                        code: CloseCode::Policy,
                        reason: "expected new, or resume <token> <position>".into(),
                    };
                    let _ = ws.close(Some(expected));
                    let _ = ws.flush();
                }
                return resume;
            }
            Ok(Message::Binary(_)) => {
                trace.decision(peer, "first message: binary");
                let refused = CloseFrame {
                    code: CloseCode::Unsupported,
                    reason: "text messages only".into(),
                };
                let _ = ws.close(Some(refused));
                let _ = ws.flush();
                return None;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            _ => return None,
        }
    }
}
