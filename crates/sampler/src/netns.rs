//! A private network namespace for the calling thread, with loopback up: a socket table nothing
//! else on the machine shares, so counts are exact.
//!
//! # References
//! unshare(2) (`CLONE_NEWNET` moves only the calling thread: do it before any thread starts if
//! the whole process is to live there), network_namespaces(7), netdevice(7) (`SIOCSIFFLAGS`).

use std::io;

/// Moves the calling thread into a new network namespace and brings its loopback up.
pub fn enter_private() -> io::Result<()> {
    // SAFETY: unshare(2) with a flag; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()
}

/// Brings `lo` up with SIOCSIFFLAGS, as `ip link set lo up` does, without the `ip` binary.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket used only for the ioctls below, closed before returning.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is open and ifr is a valid ifreq for these requests.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            Err(io::Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}
