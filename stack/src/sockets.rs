//! The socket table: every TCP socket a stack holds, as `ss -tan` would list it.
//!
//! [`Stack::sockets`] takes the stack's lock once, copies what it needs from the
//! connection table ([`crate::table::Tcp`]) and smoltcp's sockets, and lets go, so a
//! caller such as the control socket of `tapnet ss` never holds up the driver for longer
//! than one snapshot. It lists:
//!
//! - each listener, in LISTEN, with the length of its accept queue (completed handshakes
//!   not yet accepted) and its backlog, which Linux's `ss -l` shows as Recv-Q and Send-Q;
//! - each connection, with its full [`TcpInfo`]: the ones the application holds, the ones
//!   completed by a listener and waiting to be accepted, and the orphans that the stack
//!   still drives to the end after the application closed them (FIN-WAIT-1/2, CLOSING,
//!   LAST-ACK, TIME-WAIT);
//! - each half-open connection still inside a listener (SYN-RECEIVED: the SYN-ACK is
//!   out, the handshake's last ACK not in), with its buffers and segment counts, as
//!   `ss` lists SYN-RECV; under a SYN flood, these are the backlog.
//!
//! A connection in CLOSE-WAIT for at least [`StackConfig::close_wait_warning`] is flagged:
//! the peer has closed, and the application has not, which is the classic leak of a
//! server that forgets to close (the stack logs a warning for it as well).
//!
//! [`StackConfig::close_wait_warning`]: crate::StackConfig::close_wait_warning

use std::net::SocketAddr;
use std::time::Instant;

use crate::Stack;
use crate::tcp::{State, TcpInfo, conn_info};
use crate::time_wait::TIME_WAIT;

/// One row of the socket table.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketEntry {
    /// A listener, in LISTEN.
    Listener {
        /// The address it listens on (`0.0.0.0` for every address).
        local: SocketAddr,
        /// Completed handshakes waiting for `accept` (`ss -l`'s Recv-Q).
        accept_queue: usize,
        /// The most it queues (`ss -l`'s Send-Q).
        backlog: usize,
    },
    /// A connection.
    Conn {
        /// Its snapshot, as [`crate::TcpStream::info`] gives it (boxed: a listener's
        /// entry is a fraction of its size).
        info: Box<TcpInfo>,
        /// No handle holds it any more: the stack drives it to the end on its own.
        orphan: bool,
        /// In CLOSE-WAIT for at least the stack's `close_wait_warning`.
        close_wait_overdue: bool,
    },
}

impl SocketEntry {
    /// The TCP state (`LISTEN` for a listener).
    pub fn state(&self) -> State {
        match self {
            SocketEntry::Listener { .. } => State::Listen,
            SocketEntry::Conn { info, .. } => info.state,
        }
    }

    /// This end's address.
    pub fn local(&self) -> SocketAddr {
        match self {
            SocketEntry::Listener { local, .. } => *local,
            SocketEntry::Conn { info, .. } => info.local,
        }
    }

    /// The peer's address; `None` for a listener.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            SocketEntry::Listener { .. } => None,
            SocketEntry::Conn { info, .. } => Some(info.peer),
        }
    }

    /// Recv-Q as `ss` shows it: bytes received and not yet read, or, for a listener,
    /// connections waiting to be accepted.
    pub fn recv_q(&self) -> usize {
        match self {
            SocketEntry::Listener { accept_queue, .. } => *accept_queue,
            SocketEntry::Conn { info, .. } => info.recv_queue,
        }
    }

    /// Send-Q as `ss` shows it: bytes sent and not yet acknowledged, or, for a listener,
    /// its backlog.
    pub fn send_q(&self) -> usize {
        match self {
            SocketEntry::Listener { backlog, .. } => *backlog,
            SocketEntry::Conn { info, .. } => info.send_queue,
        }
    }

    /// Whether this is a listener.
    pub fn is_listener(&self) -> bool {
        matches!(self, SocketEntry::Listener { .. })
    }
}

impl Stack {
    /// Connections in TIME-WAIT whose socket is freed (the stack keeps a record of each;
    /// at most 16,384, see `docs/tcp.md`).
    pub fn time_wait_count(&self) -> usize {
        self.shared().lock().tcp.watch.borrow().time_waits().count()
    }

    /// The socket table: one entry per listener, then one per connection the stack holds
    /// (half-open ones in SYN-RECEIVED, and orphans in FIN-WAIT, CLOSING, LAST-ACK and
    /// TIME-WAIT included), each group in address order. A consistent snapshot, taken
    /// under the stack's lock once.
    ///
    /// # Examples
    /// ```
    /// use netdev::{WireOptions, wire};
    /// use stack::{SocketEntry, Stack, StackConfig, State};
    ///
    /// let (a, b) = wire(&WireOptions::default())?;
    /// let client = Stack::new(a, StackConfig::new().with_addr("10.0.0.1/24".parse()?))?;
    /// let server = Stack::new(b, StackConfig::new().with_addr("10.0.0.2/24".parse()?))?;
    /// let listener = server.listen("0.0.0.0:80".parse()?)?;
    /// let conn = client.dial("10.0.0.2:80".parse()?)?;
    /// let table = client.sockets();
    /// assert_eq!(table.len(), 1);
    /// assert_eq!(table[0].state(), State::Established);
    /// assert_eq!(table[0].peer(), Some("10.0.0.2:80".parse()?));
    /// assert_eq!(server.sockets()[0].state(), State::Listen);
    /// # drop((listener, conn));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sockets(&self) -> Vec<SocketEntry> {
        let warning = self.config().close_wait_warning;
        let now = Instant::now();
        let core = self.shared().lock();
        let mut listeners: Vec<SocketEntry> = core
            .tcp
            .listeners
            .values()
            .map(|l| SocketEntry::Listener {
                local: SocketAddr::V4(l.addr),
                accept_queue: l.ready.len(),
                backlog: l.backlog,
            })
            .collect();
        let mut conns: Vec<SocketEntry> = core
            .tcp
            .conns
            .iter()
            .filter_map(|(&handle, meta)| {
                let info = conn_info(&core, handle, now)?;
                let close_wait_overdue =
                    info.state == State::CloseWait && info.time_in_state >= warning;
                Some(SocketEntry::Conn {
                    info: Box::new(info),
                    orphan: meta.orphan,
                    close_wait_overdue,
                })
            })
            .collect();
        // Half-open connections, inside their listeners (ss's SYN-RECV).
        let watch = core.tcp.watch.borrow();
        conns.extend(core.tcp.half_opens(&core.sockets, now).into_iter().map(
            |(tuple, age, opts)| SocketEntry::Conn {
                info: Box::new(TcpInfo::half_open(tuple, age, opts, watch.get(&tuple))),
                orphan: false,
                close_wait_overdue: false,
            },
        ));
        drop(watch);
        // Connections whose socket is gone, still in TIME-WAIT.
        conns.extend(
            core.tcp
                .watch
                .borrow()
                .time_waits()
                .map(|(&(local, peer), tw)| SocketEntry::Conn {
                    info: Box::new(TcpInfo::time_wait(
                        SocketAddr::V4(local),
                        SocketAddr::V4(peer),
                        // The wait restarts with a retransmitted FIN: time since it (re)began.
                        TIME_WAIT.saturating_sub(tw.until.saturating_duration_since(now)),
                    )),
                    orphan: true,
                    close_wait_overdue: false,
                }),
        );
        drop(core);
        listeners.sort_by_key(|e| e.local());
        conns.sort_by_key(|e| (e.local(), e.peer()));
        listeners.append(&mut conns);
        listeners
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::time::Duration;

    use netdev::{WireOptions, wire};

    use super::*;
    use crate::StackConfig;

    fn pair(server_config: StackConfig) -> (Stack, Stack) {
        let (a, b) = wire(&WireOptions::default()).unwrap();
        let client = Stack::new(
            a,
            StackConfig::new().with_addr("10.0.0.1/24".parse().unwrap()),
        )
        .unwrap();
        let server =
            Stack::new(b, server_config.with_addr("10.0.0.2/24".parse().unwrap())).unwrap();
        (client, server)
    }

    /// Polls `cond` every 5 ms for up to 5 s.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn conn_for(table: &[SocketEntry], peer: SocketAddr) -> &SocketEntry {
        table
            .iter()
            .find(|e| e.peer() == Some(peer))
            .unwrap_or_else(|| panic!("no connection to {peer} in {table:#?}"))
    }

    #[test]
    fn lists_listeners_accepted_waiting_and_dialed_connections() {
        let (client, server) = pair(StackConfig::new());
        let listener = server
            .listen_backlog("0.0.0.0:7".parse().unwrap(), 16)
            .unwrap();
        // One the server accepts, one left in the accept queue.
        let first = client.dial("10.0.0.2:7".parse().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let waiting = client.dial("10.0.0.2:7".parse().unwrap()).unwrap();
        // The server dials out too: a connection of its own, to the client's listener.
        let client_listener = client.listen("0.0.0.0:9000".parse().unwrap()).unwrap();
        let dialed = server.dial("10.0.0.1:9000".parse().unwrap()).unwrap();
        let (client_side, _) = client_listener.accept().unwrap();
        // Data in flight: 5 bytes in the accepted connection's receive queue.
        (&first).write_all(b"hello").unwrap();
        eventually("the accept queue and the 5 bytes", || {
            let table = server.sockets();
            table.iter().any(|e| e.is_listener() && e.recv_q() == 1)
                && conn_for(&table, first.local_addr().unwrap()).recv_q() == 5
        });

        let table = server.sockets();
        assert_eq!(table.len(), 4, "{table:#?}");
        assert_eq!(
            table[0],
            SocketEntry::Listener {
                local: "0.0.0.0:7".parse().unwrap(),
                accept_queue: 1,
                backlog: 16,
            }
        );
        let local7: SocketAddr = "10.0.0.2:7".parse().unwrap();
        for (peer, recv_q) in [
            (first.local_addr().unwrap(), 5),
            (waiting.local_addr().unwrap(), 0),
        ] {
            let entry = conn_for(&table, peer);
            assert_eq!(entry.state(), State::Established);
            assert_eq!(entry.local(), local7);
            assert_eq!(entry.recv_q(), recv_q);
            assert_eq!(entry.send_q(), 0);
            assert!(!entry.is_listener());
        }
        let out = conn_for(&table, "10.0.0.1:9000".parse().unwrap());
        assert_eq!(out.state(), State::Established);
        assert_eq!(out.local(), dialed.local_addr().unwrap());
        let SocketEntry::Conn {
            info,
            orphan,
            close_wait_overdue,
        } = out
        else {
            panic!("not a connection: {out:?}");
        };
        assert!(!orphan && !close_wait_overdue);
        // The entry is the connection's own info, taken a moment later.
        let direct = dialed.info().unwrap();
        assert_eq!((info.local, info.peer), (direct.local, direct.peer));
        assert_eq!(info.read_buffer, direct.read_buffer);
        assert!(info.time_in_state <= direct.time_in_state);
        // Listeners come first, connections in address order.
        let order: Vec<_> = table.iter().map(|e| (e.local(), e.peer())).collect();
        let mut sorted = order[1..].to_vec();
        sorted.sort();
        assert_eq!(order[1..], sorted[..]);

        // The client's side lists its listener and the three connections it holds.
        let client_table = client.sockets();
        assert_eq!(client_table.len(), 4, "{client_table:#?}");
        assert_eq!(client_table[0].local(), "0.0.0.0:9000".parse().unwrap());
        assert_eq!(client_table[0].recv_q(), 0);
        assert_eq!(client_table[0].send_q(), crate::DEFAULT_BACKLOG);
        drop((accepted, client_side));
    }

    #[test]
    fn close_wait_is_reported_and_flagged_when_overdue() {
        let (client, server) =
            pair(StackConfig::new().with_close_wait_warning(Duration::from_millis(50)));
        let listener = server.listen("0.0.0.0:80".parse().unwrap()).unwrap();
        let conn = client.dial("10.0.0.2:80".parse().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!((&accepted).read(&mut buf).unwrap(), 0, "the FIN arrives");
        let entry = conn_for(&server.sockets(), peer).clone();
        assert_eq!(entry.state(), State::CloseWait);
        eventually("CLOSE-WAIT to be overdue", || {
            matches!(
                conn_for(&server.sockets(), peer),
                SocketEntry::Conn {
                    close_wait_overdue: true,
                    info,
                    ..
                } if info.state == State::CloseWait
                    && info.time_in_state >= Duration::from_millis(50)
            )
        });
        // The client's side waits for our FIN.
        assert_eq!(
            conn_for(&client.sockets(), "10.0.0.2:80".parse().unwrap()).state(),
            State::FinWait2
        );
        // Closing ends it: LAST-ACK, then gone; the client's orphan is listed until done.
        accepted.close().unwrap();
        drop(conn);
        eventually("the server's side to finish", || {
            server.sockets().iter().all(|e| e.is_listener())
        });
        let orphan = client.sockets();
        assert_eq!(orphan.len(), 1, "{orphan:#?}");
        assert!(
            orphan.iter().all(|e| matches!(
                e,
                SocketEntry::Conn { orphan: true, info, .. } if info.state == State::TimeWait
            )),
            "{orphan:#?}"
        );
    }

    #[test]
    fn a_half_open_connection_is_listed_in_syn_received() {
        use netdev::{Impair, ImpairConfig};
        let (a, b) = wire(&WireOptions::default()).unwrap();
        let server_link = Impair::new(b, ImpairConfig::default()).unwrap();
        let control = server_link.control();
        let client = Stack::new(
            a,
            StackConfig::new().with_addr("10.0.0.1/24".parse().unwrap()),
        )
        .unwrap();
        let server = Stack::new(
            server_link,
            StackConfig::new().with_addr("10.0.0.2/24".parse().unwrap()),
        )
        .unwrap();
        let addr: SocketAddr = "10.0.0.2:7".parse().unwrap();
        let listener = server.listen(addr).unwrap();
        // A first connection, so both ends know each other's link address.
        let _first = client.dial_timeout(addr, Duration::from_secs(5)).unwrap();
        let _first_accepted = listener.accept_timeout(Duration::from_secs(5)).unwrap();
        // The server's SYN-ACK is lost: its end stays half-open until the client's SYN
        // comes again (after a second).
        control.drop_next_egress(1);
        let dialer = std::thread::spawn({
            let client = client.clone();
            move || client.dial_timeout(addr, Duration::from_secs(5))
        });
        eventually("a SYN-RECEIVED entry", || {
            server.sockets().iter().any(|e| {
                e.state() == State::SynReceived
                    && e.local() == addr
                    && e.peer()
                        .is_some_and(|p| p.ip() == "10.0.0.1".parse::<std::net::IpAddr>().unwrap())
            })
        });
        let half = server
            .sockets()
            .into_iter()
            .find(|e| e.state() == State::SynReceived)
            .unwrap();
        let SocketEntry::Conn { info, orphan, .. } = &half else {
            panic!("{half:?}");
        };
        assert!(!orphan);
        assert_eq!(info.read_buffer, server.config().read_buffer);
        assert!(info.segments_in >= 1 && info.segments_out >= 1, "{info:?}");
        // The handshake completes: the entry becomes the accepted connection's.
        let conn = dialer.join().unwrap().unwrap();
        let (_accepted, peer) = listener.accept_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(Some(peer), conn.local_addr().ok());
        assert!(
            !server
                .sockets()
                .iter()
                .any(|e| e.state() == State::SynReceived),
            "{:#?}",
            server.sockets()
        );
    }
}
