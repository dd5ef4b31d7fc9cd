//! One load-generating client: a raw WebSocket connection with hand-written framing, so
//! the generator spends as little CPU per message as possible.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;

/// Opens a TCP connection from `127.0.0.<source>`, so that many clients do not exhaust
/// one source address's ephemeral ports, and performs the WebSocket handshake.
/// Returns the socket and whatever arrived after the handshake's response.
pub fn connect(server: SocketAddr, source: u8) -> io::Result<(TcpStream, Vec<u8>)> {
    connect_asking(server, source, None)
}

/// [`connect`], asking for the subprotocol `protocol` if given.
pub fn connect_asking(
    server: SocketAddr,
    source: u8,
    protocol: Option<&str>,
) -> io::Result<(TcpStream, Vec<u8>)> {
    let socket = bound_socket(Ipv4Addr::new(127, 0, 0, source))?;
    let addr = match server {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => return Err(io::Error::other("IPv4 only")),
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid socket and a sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            socket,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    // SAFETY: we own the descriptor; TcpStream closes it on drop.
    let mut stream = unsafe { TcpStream::from_raw_fd(socket) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_nodelay(true)?;
    let asking = protocol.map_or_else(String::new, |p| format!("Sec-WebSocket-Protocol: {p}\r\n"));
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{asking}\r\n"
    )?;
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("closed during the handshake"));
        }
        got.extend_from_slice(&chunk[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if !got.starts_with(b"HTTP/1.1 101") {
                return Err(io::Error::other(String::from_utf8_lossy(&got).into_owned()));
            }
            return Ok((stream, got.split_off(end + 4)));
        }
    }
}

fn bound_socket(source: Ipv4Addr) -> io::Result<i32> {
    // SAFETY: plain socket(2) and bind(2) with a sockaddr_in of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(source).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let err = io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        Ok(fd)
    }
}

/// A masked client frame. The key is fixed: masking protects proxies, not secrets, and
/// a fixed key keeps the generator cheap.
pub fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
}

/// Takes one whole server frame off the front of `buf`: (opcode, payload range).
pub fn next_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= start + len).then_some((opcode, start..start + len))
}
