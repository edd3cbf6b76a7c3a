//! SIGINT and SIGTERM: the first one asks the run to stop, tear down and write its report, marked
//! interrupted; a second one kills the server's process group and exits at once.
//!
//! The handler only touches atomics and calls async-signal-safe functions (write, kill, unlink,
//! _exit). The run notices the first signal through a wake pipe it polls, or at its next check.
//!
//! # References
//! signal-safety(7), sigaction(2), pipe2(2).

use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::OnceLock;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static GROUP: AtomicI32 = AtomicI32::new(0);
static WAKE: AtomicI32 = AtomicI32::new(-1);
static TEMPORARY: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// The handler. Raw libc in it: signal-safety(7) names the calls a handler may make, and libc's
/// functions are those calls with nothing around them.
extern "C" fn on_signal(sig: libc::c_int) {
    if RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        // SAFETY: kill(2), unlink(2) and _exit(2) are async-signal-safe; `tmp` is null or a
        // C string leaked by `guard_temporary`, never freed while it is stored.
        unsafe {
            let group = GROUP.load(Ordering::SeqCst);
            if group > 0 {
                libc::kill(-group, libc::SIGKILL);
            }
            let tmp = TEMPORARY.load(Ordering::SeqCst);
            if !tmp.is_null() {
                libc::unlink(tmp);
            }
            libc::_exit(128 + sig);
        }
    }
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe, the buffer is a live one-byte array, and the
        // descriptor is the pipe's write end, which is never closed; a full pipe already holds
        // a wake-up.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

static WAKE_READ: OnceLock<OwnedFd> = OnceLock::new();

/// The read end of the wake pipe, once [`install`] has run: it becomes readable when the first
/// signal arrives.
pub fn wake() -> Option<BorrowedFd<'static>> {
    WAKE_READ.get().map(|fd| fd.as_fd())
}

/// Installs the handlers for SIGINT and SIGTERM. Once per process; later calls do nothing.
pub fn install() -> std::io::Result<()> {
    if WAKE_READ.get().is_some() {
        return Ok(());
    }
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use rustix::pipe::{pipe_with, PipeFlags};
    let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // The write end lives as long as the process: the handler may write to it at any time.
    WAKE.store(write.into_raw_fd(), Ordering::SeqCst);
    // No SA_RESTART, so blocking calls return EINTR and the run can look at what arrived. nix:
    // rustix installs no signal handler.
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler does only async-signal-safe things (atomics, kill, unlink, write,
        // _exit), and replaces no handler another part of the process relies on.
        unsafe { sigaction(sig, &action) }?;
    }
    let _ = WAKE_READ.set(read);
    Ok(())
}

/// The first signal received, if any: `SIGINT` (2) or `SIGTERM` (15).
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The signal's name.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The process group a second signal kills (0: none).
pub fn guard_group(pgid: i32) {
    GROUP.store(pgid, Ordering::SeqCst);
}

/// The temporary file a second signal removes while a report is being written.
pub fn guard_temporary(path: Option<&std::ffi::CStr>) {
    let p = path.map_or(std::ptr::null_mut(), |p| p.to_owned().into_raw());
    let old = TEMPORARY.swap(p, Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from CString::into_raw above.
        drop(unsafe { std::ffi::CString::from_raw(old) });
    }
}
