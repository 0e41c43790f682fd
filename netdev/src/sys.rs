//! The only unsafe code in tapnet: the ioctl that reads an interface's MTU.
//!
//! Everything else reaches the kernel through `std`, `nix` and `tun-tap`'s safe calls.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Reads the MTU of the interface `name` in the calling thread's network namespace.
///
/// Asked through an ioctl rather than `/sys/class/net`, because sysfs shows the namespace
/// it was mounted in, not the one a thread may have moved to.
pub(crate) fn interface_mtu(name: &str) -> io::Result<usize> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is a plain C struct of byte arrays and integers; all zeroes is a
    // valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads `ifr_name` (NUL-terminated: checked above, and the rest of
    // the struct is zero) and writes only `ifr_mtu` inside the `req` we own, which lives
    // for the whole call. `sock` is an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFMTU the kernel has set the `ifru_mtu` member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    usize::try_from(mtu)
        .map_err(|_| io::Error::other(format!("interface {name} reports MTU {mtu}")))
}

/// Takes ownership of the descriptor inside a `tun_tap::Iface`, which implements only
/// `AsRawFd`/`IntoRawFd`, so the rest of the crate can use the safe `AsFd` world.
pub(crate) fn into_owned_fd(iface: tun_tap::Iface) -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up the Iface's ownership of an open descriptor, so the
    // OwnedFd becomes its only owner and closes it exactly once.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(iface.into_raw_fd()) }
}
