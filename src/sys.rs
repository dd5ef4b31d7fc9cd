//! What the standard library cannot do for a server: wait for SIGINT/SIGTERM, raise the
//! open-file limit, tune malloc for many threads, send without blocking, and wait for many
//! sockets at once (epoll). Thin calls into libc.

use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// SIGINT and SIGTERM, blocked in every thread so that one thread can wait for them.
pub struct ShutdownSignals(libc::sigset_t);

impl ShutdownSignals {
    /// Blocks the signals. Call it before starting any thread: new threads inherit the
    /// mask, so the signals reach only [`ShutdownSignals::wait`].
    pub fn block() -> io::Result<ShutdownSignals> {
        // SAFETY: `set` is initialised by sigemptyset before any other use, and every
        // pointer passed is to a live local.
        unsafe {
            let mut set = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            let mut set = set.assume_init();
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(ShutdownSignals(set)),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    /// Sleeps until SIGINT or SIGTERM arrives, and returns its number.
    pub fn wait(&self) -> i32 {
        let mut signal = 0;
        // SAFETY: the set was initialised in `block`; `signal` is a live local.
        unsafe { libc::sigwait(&self.0, &mut signal) };
        signal
    }
}

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
/// Each client holds one socket, so this limit, not memory, usually caps the room.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live local of the type the calls expect.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// glibc gives busy threads their own malloc arenas, up to eight per core. With one
/// thread per client, each arena keeps the holes its threads' freed handshakes leave;
/// two arenas are plenty on a small machine and keep memory per client down.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tuning parameter; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the heap that freed clients left behind back to the system. glibc keeps freed
/// memory in its arenas for reuse, so after a storm of joins and leaves the heap would stay
/// at its peak.
pub fn give_back_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back the pages of the calling thread's stack below the current frame. Call it
/// last thing in a thread: glibc keeps exited threads' stacks for reuse, with every page
/// they touched still in memory, so after a storm the cache would hold thousands of them.
pub fn release_unused_stack() {
    // SAFETY: the attribute is initialised by pthread_getattr_np before use and destroyed
    // after. The pages given back lie below the current frame, where nothing is live: the
    // thread is about to exit, and signals are handled on their own stack or not at all.
    unsafe {
        let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return;
        }
        let mut attr = attr.assume_init();
        let mut lowest: *mut libc::c_void = std::ptr::null_mut();
        let mut size = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut lowest, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if got != 0 {
            return;
        }
        let page = 4096;
        let here = &lowest as *const _ as usize;
        // Keep two pages under this frame for the calls still to come.
        let below = here.saturating_sub(2 * page) & !(page - 1);
        let lowest = lowest as usize;
        if below > lowest {
            libc::madvise(
                lowest as *mut libc::c_void,
                below - lowest,
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// One `sendmsg` that fails with `WouldBlock` rather than wait, on a socket that stays
/// blocking for its reader thread.
pub fn send_nonblocking(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid; IoSlice is ABI-compatible with iovec, and the slices
    // outlive the call.
    let sent = unsafe {
        let mut message: libc::msghdr = mem::zeroed();
        message.msg_iov = slices.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = slices.len() as _;
        libc::sendmsg(
            socket.as_raw_fd(),
            &message,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match sent {
        n if n >= 0 => Ok(n as usize),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Lets the kernel hold up to `connections` (capped by `net.core.somaxconn`) connections the
/// accept loop has not taken yet. std listens with 128, which the reconnecting clients of a
/// restart overflow: each SYN dropped then costs its client a one-second retransmission.
pub fn deepen_accept_queue(listener: &TcpListener, connections: i32) -> io::Result<()> {
    // SAFETY: listen(2) again on our own listening socket only changes its backlog.
    match unsafe { libc::listen(listener.as_raw_fd(), connections) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Lets a full socket's send buffer take `bytes` more, if the system allows a buffer that size
/// (`net.core.wmem_max`). Linux counts the buffer at twice the size asked, for its own
/// bookkeeping, and charges each piece of data more than its length; hence the slack.
pub fn grow_send_buffer(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut now: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a live local of the type the option returns, and its length.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut now as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    let wanted = usize::try_from(now)
        .unwrap_or(0)
        .saturating_add(2 * bytes)
        .saturating_add(64 * 1024)
        / 2;
    let wanted = libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX);
    // SAFETY: a live local of the type the option expects.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&wanted as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Bytes handed to the socket that the peer has not yet acknowledged.
pub fn unsent_bytes(socket: &TcpStream) -> usize {
    let mut count: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int to a live local.
    let got = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut count) };
    if got == 0 {
        usize::try_from(count).unwrap_or(0)
    } else {
        0
    }
}

/// The socket's send buffer size (`SO_SNDBUF`): at most this much of what was handed to the
/// kernel can still have been on its way to the peer when the connection dropped.
pub fn send_buffer_bytes(socket: &TcpStream) -> u64 {
    let mut size: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_SNDBUF writes one int to a live local, whose size is passed.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut size as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if got == 0 {
        u64::try_from(size).unwrap_or(0)
    } else {
        0
    }
}

/// Starts a thread named `name` (every thread has a name, for `top -H` and a debugger), or
/// says which could not start.
pub fn spawn_named<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>, String> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// Tells systemd `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) when it started the server
/// as a `Type=notify` service, through the datagram socket it names in `NOTIFY_SOCKET` (a
/// path, or `@name` in the abstract namespace). Otherwise it does nothing.
pub fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    static NOTIFY: std::sync::OnceLock<Option<(UnixDatagram, SocketAddr)>> =
        std::sync::OnceLock::new();
    let target = NOTIFY.get_or_init(|| {
        let name = std::env::var("NOTIFY_SOCKET").ok()?;
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name).ok()?,
            None => SocketAddr::from_pathname(&name).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        // The room thread sends: it must never wait on systemd.
        socket.set_nonblocking(true).ok()?;
        Some((socket, addr))
    });
    if let Some((socket, addr)) = target {
        let _ = socket.send_to_addr(state.as_bytes(), addr);
    }
}

/// For tests: closes `socket` with a reset (linger on, with no time to linger), as a peer
/// that vanishes in the middle of a conversation does.
#[cfg(test)]
pub fn close_with_reset(socket: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live local of the type the option expects.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(socket);
}

/// How a reader notices a peer that is gone. With pings, a read fails after `silence`: a
/// deadline, not polling, since an idle reader sleeps in `read` until a frame or a pong
/// arrives, and the room pings more often than that. Without pings (`None`) there is nothing
/// to answer, so silence is no sign of a dead peer and there is no deadline: the kernel's
/// keep-alive probes find a peer that vanished (a laptop lid closed, a NAT that forgot it),
/// after about two minutes of silence, then six probes.
pub fn notice_silence(socket: &TcpStream, silence: Option<std::time::Duration>) -> io::Result<()> {
    socket.set_read_timeout(silence)?;
    match silence {
        Some(_) => Ok(()),
        None => keep_alive(socket, 60, 10, 6),
    }
}

/// Lets the kernel find a peer that died without a word: after `idle` of silence it probes
/// every `interval`, and after `probes` unanswered ones the connection fails.
pub fn keep_alive(socket: &TcpStream, idle: u32, interval: u32, probes: u32) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let set = |level, name, value: u32| {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: a live local of the type the option expects.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, probes)
}

/// An epoll set plus an eventfd: how one thread sleeps until one of many sockets has room
/// to send again, or another thread wakes it.
pub struct Poller {
    epoll: OwnedFd,
    wake: OwnedFd,
}

/// The token the eventfd reports under; sockets use any other.
const WAKE_TOKEN: u64 = u64::MAX;

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain system calls; each result is checked, then owned here alone.
        let (epoll, wake) = unsafe {
            let epoll = OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let wake = cvt(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
            (epoll, OwnedFd::from_raw_fd(wake))
        };
        let poller = Poller { epoll, wake };
        poller.control(
            libc::EPOLL_CTL_ADD,
            poller.wake.as_raw_fd(),
            libc::EPOLLIN,
            WAKE_TOKEN,
        )?;
        Ok(poller)
    }

    /// Reports `token` whenever the socket's send buffer, once full, has room again
    /// (edge-triggered: nothing is reported while it simply stays writable).
    pub fn watch_writable(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.control(
            libc::EPOLL_CTL_ADD,
            fd,
            libc::EPOLLOUT | libc::EPOLLET,
            token,
        )
    }

    pub fn forget(&self, fd: RawFd) {
        let _ = self.control(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Ends a [`Poller::wait`] in progress, or the next one.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our own eventfd. It can only fail when
        // the counter is full, and then a wake-up is pending anyway.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Sleeps until a watched socket has room, a wake-up, or the timeout (`None`: no
    /// timeout). Puts the tokens of the sockets with room in `ready`.
    pub fn wait(
        &self,
        timeout: Option<std::time::Duration>,
        events: &mut [libc::epoll_event],
        ready: &mut Vec<u64>,
    ) {
        let timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: the buffer is live and its length is passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len().min(i32::MAX as usize) as i32,
                timeout_ms,
            )
        };
        ready.clear();
        for event in &events[..usize::try_from(n).unwrap_or(0)] {
            match event.u64 {
                WAKE_TOKEN => {
                    let mut count: u64 = 0;
                    // SAFETY: reads 8 bytes into a live local from our non-blocking eventfd.
                    unsafe {
                        libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8)
                    };
                }
                token => ready.push(token),
            }
        }
    }

    fn control(&self, op: i32, fd: RawFd, events: i32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `event` is a live local; the kernel checks the descriptors.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) }).map(|_| ())
    }
}

fn cvt(result: i32) -> io::Result<i32> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
