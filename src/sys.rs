//! What the standard library cannot do for a server: wait for SIGINT/SIGTERM, raise the
//! open-file limit, and tune malloc for many threads. Thin calls into libc.

use std::io;
use std::mem::MaybeUninit;

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
