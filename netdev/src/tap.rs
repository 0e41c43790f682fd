//! [`Tap`]: a Linux TAP device as a smoltcp device.
//!
//! Opened through the `tun-tap` crate without packet info, so each read or write is one
//! bare Ethernet frame. Unlike smoltcp's own `TunTapInterface`, it is `Send` (the driver
//! thread owns it), reuses its buffers, and turns I/O errors into counters, not panics.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tun_tap::{Iface, Mode};

use crate::fd::{FdDevice, FrameIo};
use crate::sys;

/// A TAP device: frames the kernel sends to it arrive here, frames sent here arrive at
/// the kernel as if from a wire.
pub type Tap = FdDevice<TapFd>;

/// The open TAP descriptor and the interface's name.
#[derive(Debug)]
pub struct TapFd {
    file: File,
    name: String,
}

impl AsFd for TapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// How to open a [`Tap`].
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// The IP MTU to use instead of the interface's own.
    pub mtu: Option<usize>,
}

impl FrameIo for TapFd {
    fn recv_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl Tap {
    /// Opens the TAP called `name`, creating it if it does not exist.
    ///
    /// A TAP made beforehand (`ip tuntap add dev NAME mode tap user $USER`) is attached
    /// to, which is how a normal user runs tapnet. The device is set non-blocking, and
    /// its MTU is read from the interface unless `options.mtu` overrides it.
    ///
    /// # Errors
    /// A clear message when `/dev/net/tun` may not be opened, the name is taken by a
    /// device of another kind, or another process holds the TAP.
    ///
    /// # Examples
    /// ```no_run
    /// use netdev::{Tap, TapOptions};
    /// let tap = Tap::open("tap0", &TapOptions::default())?;
    /// println!("{} has MTU {}", tap.name(), tap.mtu());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open(name: &str, options: &TapOptions) -> io::Result<Tap> {
        let iface = Iface::without_packet_info(name, Mode::Tap).map_err(|e| open_error(name, e))?;
        let tap = TapFd {
            name: iface.name().to_string(),
            file: File::from(sys::into_owned_fd(iface)),
        };
        fcntl(&tap.file, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("TAP {name}: set non-blocking: {e}"),
            )
        })?;
        let mtu = match options.mtu {
            Some(mtu) => mtu,
            None => sys::interface_mtu(&tap.name)
                .map_err(|e| io::Error::new(e.kind(), format!("TAP {name}: read MTU: {e}")))?,
        };
        if !(576..=65_000).contains(&mtu) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TAP {name}: MTU {mtu} is out of range (576 to 65000)"),
            ));
        }
        Ok(FdDevice::with_io(tap, mtu))
    }

    /// The interface's name as the kernel knows it.
    pub fn name(&self) -> &str {
        &self.io.name
    }
}

fn open_error(name: &str, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            ": run as root, or create the TAP for your user first: \
             sudo ip tuntap add dev {name} mode tap user $USER"
        ),
        Some(libc::EBUSY) => ": another process has it open".to_string(),
        Some(libc::EINVAL) => ": the name is taken by a device that is not a TAP \
                               (or a TAP with packet info or multi-queue)"
            .to_string(),
        Some(libc::ENOENT) => ": /dev/net/tun is missing (modprobe tun)".to_string(),
        _ => String::new(),
    };
    io::Error::new(e.kind(), format!("open TAP {name}: {e}{hint}"))
}
