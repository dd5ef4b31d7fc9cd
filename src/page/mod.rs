//! What the page server answers: the cookbook's `client-server`, with tiny_http's HTTP.
//!
//! It serves the chat page and `/config.js`, which tells the page which port the
//! WebSocket server really listens on (the cookbook hard-codes 12345). The page is built
//! into the binary, so `threadchat` runs from anywhere; `--www DIR` serves a folder
//! instead, for people editing the page. Nothing outside that folder is ever served.
//! The connections themselves, with their limits and deadlines, are the page listener's
//! (`src/page/listener.rs`); it hands each request here, and the answer goes back as bytes
//! that tiny_http's `Response` has printed.

pub mod head;
pub mod listener;

use std::fs;
use std::path::{Component, Path, PathBuf};

use tiny_http::{HTTPVersion, Header, Method, Response};

/// The page compiled into the binary.
const BUILT_IN_PAGE: &str = include_str!("../../www/index.html");

/// Where the page comes from.
pub enum Site {
    BuiltIn,
    /// A folder, already canonical so that containment can be checked by prefix.
    Folder(PathBuf),
}

impl Site {
    /// The page `--www` names: a folder, which must exist, or the built-in page.
    pub fn of(www: Option<&Path>) -> Result<Site, String> {
        match www {
            None => Ok(Site::BuiltIn),
            Some(dir) => dir
                .canonicalize()
                .map(Site::Folder)
                .map_err(|e| format!("--www {}: {e}", dir.display())),
        }
    }
}

/// What the page needs to know about the WebSocket server.
pub struct PageSettings {
    pub ws_port: u16,
    /// `--ws-url`, already checked to need no escaping.
    pub ws_url: Option<String>,
    pub max_message_bytes: usize,
}

/// `/config.js`, written once at start: what the page needs to find the WebSocket server.
pub fn config_js(settings: &PageSettings) -> String {
    let ws_url = match &settings.ws_url {
        Some(url) => format!("\"{url}\""),
        None => "null".to_owned(),
    };
    format!(
        "window.THREADCHAT = {{ wsPort: {}, wsUrl: {ws_url}, maxMessageBytes: {} }};\n",
        settings.ws_port, settings.max_message_bytes
    )
}

/// A response before it is turned into tiny_http's type, so the routing can be tested.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            content_type,
            body,
        }
    }

    pub fn error(status: u16, line: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{line}\n").into_bytes(),
        }
    }
}

/// Routes one request.
pub fn answer(site: &Site, config_js: &str, method: &Method, url: &str) -> Reply {
    if !matches!(method, Method::Get | Method::Head) {
        return Reply::error(405, "only GET and HEAD are served here");
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    if path == "/config.js" {
        return Reply::ok(
            "text/javascript; charset=utf-8",
            config_js.as_bytes().to_vec(),
        );
    }
    let Some(relative) = percent_decode(path) else {
        return Reply::error(400, "bad percent-encoding in the path");
    };
    match site {
        Site::BuiltIn if relative == "/" || relative == "/index.html" => Reply::ok(
            "text/html; charset=utf-8",
            BUILT_IN_PAGE.as_bytes().to_vec(),
        ),
        Site::BuiltIn => not_found(),
        Site::Folder(root) => serve_file(root, &relative),
    }
}

fn not_found() -> Reply {
    Reply::error(404, "not found")
}

/// Serves `relative` from `root`, refusing anything that would leave it: `..` segments
/// (however they were encoded) and symbolic links that point outside.
fn serve_file(root: &Path, relative: &str) -> Reply {
    let mut path = root.to_path_buf();
    for part in Path::new(relative.trim_start_matches('/')).components() {
        match part {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            _ => return not_found(),
        }
    }
    if path.is_dir() {
        path.push("index.html");
    }
    let Ok(real) = path.canonicalize() else {
        return not_found();
    };
    if !real.starts_with(root) {
        return not_found();
    }
    match fs::read(&real) {
        Ok(body) => Reply::ok(content_type(&real), body),
        Err(_) => not_found(),
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    }
}

/// Decodes `%XX` escapes. `None` for a malformed escape, a NUL or a backslash, or a
/// result that is not UTF-8: none of those name a file we serve.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.contains(['\0', '\\'])).then_some(text)
}

/// How the request asked to be answered, as far as the response is concerned.
pub struct Answering<'a> {
    pub version: HTTPVersion,
    /// The request's headers: tiny_http picks the transfer encoding from them.
    pub headers: &'a [Header],
    /// HEAD: the headers alone.
    pub head_only: bool,
    /// The connection closes after this response, and the response says so.
    pub close: bool,
}

/// The whole response, printed by tiny_http (status line, `Date`, `Content-Length` or
/// chunks, no body for HEAD), into memory: the page listener then writes it under its own
/// deadline, which tiny_http's writer has no notion of.
pub fn response_bytes(reply: Reply, answering: &Answering) -> Vec<u8> {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    if let Ok(header) = Header::from_bytes("Content-Type", reply.content_type) {
        response.add_header(header);
    }
    if reply.status == 405 {
        if let Ok(header) = Header::from_bytes("Allow", "GET, HEAD") {
            response.add_header(header);
        }
    }
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = response.raw_print(
        &mut bytes,
        answering.version.clone(),
        answering.headers,
        answering.head_only,
        None,
    );
    // tiny_http leaves `Connection` to its own server loop, which is not in use here.
    if answering.close {
        if let Some(end_of_status) = bytes.windows(2).position(|w| w == b"\r\n") {
            let at = end_of_status + 2;
            bytes.splice(at..at, b"Connection: close\r\n".iter().copied());
        }
    }
    bytes
}

/// A one-line HTTP error, for a connection refused before its request is read.
pub fn refusal_bytes(status: u16, line: &str) -> Vec<u8> {
    let answering = Answering {
        version: HTTPVersion(1, 1),
        headers: &[],
        head_only: false,
        close: true,
    };
    response_bytes(Reply::error(status, line), &answering)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn www() -> Site {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
        Site::Folder(root.canonicalize().unwrap())
    }

    fn get(site: &Site, url: &str) -> Reply {
        answer(site, "cfg", &Method::Get, url)
    }

    #[test]
    fn index_is_served_as_html_from_both_sites() {
        for site in [Site::BuiltIn, www()] {
            let reply = get(&site, "/");
            assert_eq!(reply.status, 200);
            assert_eq!(reply.content_type, "text/html; charset=utf-8");
            assert!(String::from_utf8_lossy(&reply.body).contains("<title>"));
        }
    }

    #[test]
    fn traversal_in_any_spelling_is_not_found() {
        let site = www();
        for url in [
            "/../Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/%2E%2E/%2e%2e/etc/passwd",
            "/..%2fCargo.toml",
            "/%2e%2e%5cCargo.toml",
            "/%00",
        ] {
            let status = get(&site, url).status;
            assert!(status == 404 || status == 400, "{url} gave {status}");
        }
    }

    #[test]
    fn only_get_and_head() {
        assert_eq!(answer(&Site::BuiltIn, "", &Method::Post, "/").status, 405);
        assert_eq!(answer(&Site::BuiltIn, "", &Method::Head, "/").status, 200);
    }

    #[test]
    fn responses_are_printed_by_tiny_http_and_say_when_they_close() {
        let reply = || get(&Site::BuiltIn, "/");
        let mut answering = Answering {
            version: HTTPVersion(1, 1),
            headers: &[],
            head_only: false,
            close: false,
        };
        let kept = String::from_utf8(response_bytes(reply(), &answering)).unwrap();
        assert!(kept.starts_with("HTTP/1.1 200 OK\r\n"), "{kept}");
        assert!(!kept.contains("Connection:"));
        assert!(kept.ends_with("</html>\n"));
        answering.close = true;
        answering.head_only = true;
        let closing = String::from_utf8(response_bytes(reply(), &answering)).unwrap();
        assert!(closing.starts_with("HTTP/1.1 200 OK\r\nConnection: close\r\n"));
        assert!(closing.ends_with("\r\n\r\n"), "HEAD has no body");
        let refusal = String::from_utf8(refusal_bytes(503, "busy")).unwrap();
        assert!(refusal.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(refusal.ends_with("\r\n\r\nbusy\n"));
    }

    #[test]
    fn config_js_is_javascript() {
        let reply = get(&Site::BuiltIn, "/config.js?v=1");
        assert_eq!(reply.body, b"cfg");
        assert!(reply.content_type.starts_with("text/javascript"));
    }
}
