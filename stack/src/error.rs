//! [`OpError`]: every error from a connection or listener names the operation and both
//! endpoints, as Go's `*net.OpError` does: `read tcp 10.0.0.2:7->10.0.0.1:50000: i/o
//! timeout`.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;

/// What went wrong, on which operation, between which endpoints. It travels inside an
/// [`io::Error`] whose [`io::ErrorKind`] is that of the cause, so callers can match on
/// the kind and still print the whole story.
#[derive(Debug)]
pub struct OpError {
    /// The operation: `dial`, `listen`, `accept`, `read`, `write`, `close`, `shutdown`, `set`.
    pub op: &'static str,
    /// The local endpoint, when there is one.
    pub local: Option<SocketAddr>,
    /// The remote endpoint (or, for `listen` and `accept`, the listening address).
    pub addr: Option<SocketAddr>,
    /// The cause.
    pub err: io::Error,
}

impl OpError {
    /// Wraps `err` as an [`io::Error`] of the same kind, naming `op` and the endpoints.
    pub fn wrap(
        op: &'static str,
        local: Option<SocketAddr>,
        addr: Option<SocketAddr>,
        err: io::Error,
    ) -> io::Error {
        // Already wrapped (by a lower layer): keep the innermost story.
        if err.get_ref().is_some_and(|e| e.is::<OpError>()) {
            return err;
        }
        let kind = err.kind();
        io::Error::new(
            kind,
            OpError {
                op,
                local,
                addr,
                err,
            },
        )
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tcp ", self.op)?;
        match (self.local, self.addr) {
            (Some(local), Some(addr)) => write!(f, "{local}->{addr}")?,
            (None, Some(addr)) | (Some(addr), None) => write!(f, "{addr}")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.err)
    }
}

impl Error for OpError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.err)
    }
}

/// The causes, with Go's words for them.
pub(crate) mod cause {
    use std::io::{Error, ErrorKind};

    /// A deadline passed.
    pub(crate) fn timeout() -> Error {
        Error::new(ErrorKind::TimedOut, "i/o timeout")
    }

    /// The connection or listener was closed by this side.
    pub(crate) fn closed() -> Error {
        Error::new(ErrorKind::NotConnected, "use of closed network connection")
    }

    /// The peer answered a SYN with RST.
    pub(crate) fn refused() -> Error {
        Error::new(ErrorKind::ConnectionRefused, "connection refused")
    }

    /// The peer reset an open connection.
    pub(crate) fn reset() -> Error {
        Error::new(ErrorKind::ConnectionReset, "connection reset by peer")
    }

    /// A write after our own shutdown, or after the peer reset.
    pub(crate) fn broken_pipe() -> Error {
        Error::new(ErrorKind::BrokenPipe, "broken pipe")
    }

    /// Keepalive or retransmission gave up on a silent peer.
    pub(crate) fn gave_up() -> Error {
        Error::new(ErrorKind::TimedOut, "connection timed out")
    }

    /// The stack's driver is gone.
    pub(crate) fn stopped() -> Error {
        Error::new(ErrorKind::NotConnected, "the stack is stopped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_go() {
        let err = OpError::wrap(
            "read",
            Some("10.0.0.2:7".parse().unwrap()),
            Some("10.0.0.1:50000".parse().unwrap()),
            cause::timeout(),
        );
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            err.to_string(),
            "read tcp 10.0.0.2:7->10.0.0.1:50000: i/o timeout"
        );
        let again = OpError::wrap("write", None, None, err);
        assert!(again.to_string().starts_with("read tcp"));
    }
}
