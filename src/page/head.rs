//! A page request's head, read with a deadline and parsed strictly: what the page listener
//! answers from. Lines end in CRLF, no control byte but tab, at most [`HEAD_MAX_BYTES`].

use std::io::{self, Read};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use tiny_http::{HTTPVersion, Header, Method};

use crate::limits::addresses;

/// The longest request head read. Browsers send one or two KiB, cookies included; without
/// a bound, one endless header line would grow a buffer for as long as the deadline lasts.
pub const HEAD_MAX_BYTES: usize = 16 * 1024;

/// Bytes asked of the socket per read while a head arrives.
const READ_CHUNK_BYTES: usize = 2048;

/// How long the next head may take.
#[derive(Clone, Copy)]
pub enum Wait {
    /// The whole head must have arrived by then.
    Head(Instant),
    /// Its first byte must arrive by then; the rest within the head timeout after it.
    Idle(Instant),
}

pub enum HeadRead {
    /// The head is `buffer[..end]`, its blank line included.
    Complete(usize),
    TooLarge,
    /// A line ends in a lone LF or CR. No blank line of ours will ever come, so waiting for
    /// the deadline would only hold the connection's place: it is answered at once.
    BadLineEnd,
    /// Closed, failed, or out of time: nobody to answer.
    Gone,
}

/// Reads until `buffer` holds a whole request head, by `ends_by` at the latest. Bytes after
/// it (a pipelined request) stay in the buffer for the next call.
pub fn read_head(
    socket: &TcpStream,
    buffer: &mut Vec<u8>,
    wait: Wait,
    head_timeout: Duration,
    ends_by: Instant,
) -> HeadRead {
    let (mut deadline, mut idle) = match wait {
        Wait::Head(by) => (by, false),
        Wait::Idle(until) if buffer.is_empty() => (until, true),
        Wait::Idle(_) => (Instant::now() + head_timeout, false),
    };
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let mut scanned: usize = 0;
    loop {
        // RFC 9112 section 2.2: empty lines before a request line are ignored.
        let blank = buffer
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buffer.drain(..blank);
        scanned = scanned.saturating_sub(blank);
        let end = find_blank_line(buffer, scanned);
        // Bytes past the head belong to the next request and are checked with it.
        let head = &buffer[..end.unwrap_or(buffer.len())];
        if has_bare_line_end(head, scanned.saturating_sub(1)) {
            return HeadRead::BadLineEnd;
        }
        if let Some(at) = end {
            return if at > HEAD_MAX_BYTES {
                HeadRead::TooLarge
            } else {
                HeadRead::Complete(at)
            };
        }
        if buffer.len() >= HEAD_MAX_BYTES {
            return HeadRead::TooLarge;
        }
        scanned = buffer.len().saturating_sub(3);
        let left = deadline
            .min(ends_by)
            .saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return HeadRead::Gone;
        }
        match (&*socket).read(&mut chunk) {
            Ok(0) => return HeadRead::Gone,
            Ok(n) => {
                if idle {
                    idle = false;
                    deadline = Instant::now() + head_timeout;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            // Interrupted (a stopped and continued process) is retried; a timeout comes
            // back to the deadline check above.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return HeadRead::Gone,
        }
    }
}

/// Where the head ends: just past the first `\r\n\r\n` at or after `from`.
pub fn find_blank_line(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// Whether `head` has, at or after `from`, an LF without a CR before it or a CR followed by
/// anything but LF (RFC 9112 section 2.2 lets a server reject both). A CR that ends `head`
/// is undecided until its next byte arrives.
pub fn has_bare_line_end(head: &[u8], from: usize) -> bool {
    let Some(tail) = head.get(from..) else {
        return false;
    };
    tail.iter().enumerate().any(|(i, &byte)| {
        let at = from + i;
        match byte {
            b'\n' => at == 0 || head[at - 1] != b'\r',
            b'\r' => head.get(at + 1).is_some_and(|&next| next != b'\n'),
            _ => false,
        }
    })
}

/// A control byte other than HTAB (RFC 9110 section 5.5: field values hold none; nor do
/// names or the request line). A NUL that reached a file name or a log would end it early.
pub fn is_control(byte: u8) -> bool {
    byte.is_ascii_control() && byte != b'\t'
}

/// One request head, in tiny_http's types.
pub struct PageRequest {
    pub method: Method,
    pub url: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
}

impl PageRequest {
    pub fn header(&self, name: &'static str) -> impl DoubleEndedIterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    }

    /// HTTP/1.1 without `Connection: close`, and no body: a body is never read here, so
    /// the next request's start would be unknown. HTTP/1.0 closes.
    pub fn keeps_alive(&self) -> bool {
        let close = self
            .header("Connection")
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("close"));
        let body = self.header("Transfer-Encoding").next().is_some()
            || self.header("Content-Length").any(|v| v.trim() != "0");
        self.version == (1, 1) && !close && !body
    }

    pub fn forwarded(&self) -> Option<IpAddr> {
        addresses::last_forwarded(self.header("X-Forwarded-For"))
    }
}

/// Parses a request head (its blank line included), or says which error answers it.
pub fn parse_head(head: &[u8]) -> Result<PageRequest, (u16, &'static str)> {
    let text = std::str::from_utf8(head)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or((400, "the request head is not ASCII"))?;
    let mut lines = text.split("\r\n");
    // The CRLFs are the separators split on; any other control byte is refused.
    if text.split("\r\n").any(|line| line.bytes().any(is_control)) {
        return Err((400, "the request head holds a control byte"));
    }
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(url), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "the request line is not METHOD PATH HTTP/1.1"));
    };
    if method.is_empty() || !url.starts_with('/') {
        return Err((400, "the request line is not METHOD PATH HTTP/1.1"));
    }
    let method: Method = method.parse().map_err(|_| (400, "bad method"))?;
    let version = match version {
        "HTTP/1.1" => HTTPVersion(1, 1),
        "HTTP/1.0" => HTTPVersion(1, 0),
        v if v.starts_with("HTTP/") => return Err((505, "only HTTP/1.0 and HTTP/1.1 are served")),
        _ => return Err((400, "the request line is not METHOD PATH HTTP/1.1")),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        // Obsolete line folding (RFC 9112 section 5.2) may be refused; it is.
        if line.starts_with([' ', '\t']) {
            return Err((400, "folded header lines are not accepted"));
        }
        headers.push(
            line.parse()
                .map_err(|_| (400, "a header line is not Name: value"))?,
        );
    }
    Ok(PageRequest {
        method,
        url: url.to_owned(),
        version,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<PageRequest, (u16, &'static str)> {
        parse_head(head.as_bytes())
    }

    #[test]
    fn a_browser_request_keeps_alive_and_a_close_does_not() {
        let request =
            parse("GET /config.js?v=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.url, "/config.js?v=1");
        assert!(request.keeps_alive());
        let closing = parse("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(!closing.keeps_alive());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keeps_alive());
        let with_body = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(!with_body.keeps_alive());
    }

    #[test]
    fn malformed_heads_get_400_and_other_versions_505() {
        for bad in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "GET /é HTTP/1.1\r\n\r\n",
            "GET / HTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n",
            "GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
            "GET / HTTP/1.1\r\nA\x1b: b\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\nA: b\r\n\r\n",
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(400), "{bad:?}");
        }
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n").err().map(|e| e.0),
            Some(505)
        );
    }

    #[test]
    fn a_tab_in_a_header_value_is_accepted() {
        let request = parse("GET / HTTP/1.1\r\nA: b\tc\r\n\r\n").unwrap();
        assert_eq!(request.header("A").next(), Some("b\tc"));
    }

    #[test]
    fn a_line_must_end_with_crlf_and_a_final_cr_waits_for_its_lf() {
        assert!(has_bare_line_end(b"GET / HTTP/1.1\nHost", 0));
        assert!(has_bare_line_end(b"GET / HTTP/1.1\rHost", 0));
        assert!(has_bare_line_end(b"\n", 0));
        assert!(!has_bare_line_end(b"GET / HTTP/1.1\r\nHost: x\r", 0));
        // Scanning from just before a CRLF sees the CR.
        assert!(!has_bare_line_end(b"GET / HTTP/1.1\r\n", 15));
        assert!(has_bare_line_end(b"GET / HTTP/1.1\r\nA\n", 15));
        assert!(!has_bare_line_end(b"GET", 10));
    }

    #[test]
    fn the_forwarded_address_is_the_last_one() {
        let request = parse(
            "GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.1\r\n\
             X-Forwarded-For: 10.0.0.1, 198.51.100.7\r\n\r\n",
        )
        .unwrap();
        assert_eq!(request.forwarded(), "198.51.100.7".parse().ok());
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        let bytes = b"GET / HTTP/1.1\r\nA: b\r\n\r\nGET /next";
        assert_eq!(find_blank_line(bytes, 0), Some(24));
        assert_eq!(find_blank_line(bytes, 22), None);
        assert_eq!(find_blank_line(b"GET", 10), None);
    }
}
