//! The trace: one line per TCP segment in and out of the stack, one per state change with
//! its reason, and any narration a demo adds, all on one clock and in one stream.
//!
//! ```text
//!     0.000412  client  >  10.0.0.1:49152  → 10.0.0.2:7       [S]    seq 0          ack -          win 65535    len 0     mss 1460 ws 2 sackOK
//!     0.000633  server  <  10.0.0.1:49152  → 10.0.0.2:7       [S]    seq 0          ack -          win 65535    len 0     mss 1460 ws 2 sackOK
//!     0.000640  server  ◆  10.0.0.2:7      ↔ 10.0.0.1:49152   LISTEN → SYN-RECEIVED (SYN received)
//! ```
//!
//! `>` is a segment the stack sent, `<` one it received (as the stack sees it: after any
//! impairment on the way in, before any on the way out). Sequence and acknowledgment
//! numbers are relative to each end's initial sequence number, as tcpdump shows them;
//! windows are in bytes, scaled (RFC 7323 §2.2) once both SYNs are seen. A note in
//! parentheses says what the stack's watch made of the segment: a retransmission, a
//! keepalive or zero-window probe, an ACK salvaged from a segment outside the window.
//!
//! The driver formats lines only when a trace is configured
//! ([`crate::StackConfig::trace`]): off, tracing costs one branch per frame.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpOption, TcpPacket, TcpSeqNumber,
};

use crate::State;

/// Where trace lines go, and the clock they are timed by. Clones share both, so two
/// stacks in one process (a demo's client and server) write one interleaved trace; give
/// each a [`Trace::labelled`] clone to tell their lines apart.
#[derive(Clone)]
pub struct Trace {
    out: Arc<Mutex<Out>>,
    epoch: Instant,
    label: Arc<str>,
}

struct Out {
    writer: Box<dyn Write + Send>,
    colour: bool,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace").field("label", &self.label).finish()
    }
}

/// Two traces are equal when they write to the same place under the same label.
impl PartialEq for Trace {
    fn eq(&self, other: &Trace) -> bool {
        Arc::ptr_eq(&self.out, &other.out) && self.label == other.label
    }
}

impl Eq for Trace {}

/// ANSI colours, used only on a terminal.
const DIM: &str = "2";
const OUT: &str = "36";
const IN: &str = "32";
const RESET: &str = "31";
const STATE: &str = "1;33";
const NOTE: &str = "1";

impl Trace {
    /// A trace to stderr, coloured when stderr is a terminal (and `NO_COLOR` is unset).
    pub fn stderr() -> Trace {
        let colour = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Trace::to_writer(io::stderr(), colour)
    }

    /// A trace to any writer; `colour` adds ANSI colours.
    pub fn to_writer(writer: impl Write + Send + 'static, colour: bool) -> Trace {
        Trace {
            out: Arc::new(Mutex::new(Out {
                writer: Box::new(writer),
                colour,
            })),
            epoch: Instant::now(),
            label: "".into(),
        }
    }

    /// The same stream and clock, with `label` in every line this clone writes.
    pub fn labelled(&self, label: &str) -> Trace {
        Trace {
            label: label.into(),
            ..self.clone()
        }
    }

    /// A line of narration, in the stream's order.
    pub fn note(&self, text: &str) {
        self.line(NOTE, "#", text);
    }

    /// A state change of the connection `tuple` (local, remote), with why it happened.
    pub(crate) fn state(
        &self,
        tuple: (SocketAddrV4, SocketAddrV4),
        from: State,
        to: State,
        why: &str,
    ) {
        let (local, remote) = tuple;
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        let body = format!(
            "{:<15} ↔ {:<16} {from} → {to}{why}",
            local.to_string(),
            remote.to_string()
        );
        self.line(STATE, "◆", &body);
    }

    fn line(&self, colour: &str, mark: &str, body: &str) {
        let t = self.epoch.elapsed().as_secs_f64();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let line = if out.colour {
            format!(
                "\x1b[{DIM}m{t:>12.6}\x1b[0m  {:<7} \x1b[{colour}m{mark}  {body}\x1b[0m\n",
                &*self.label
            )
        } else {
            format!("{t:>12.6}  {:<7} {mark}  {body}\n", &*self.label)
        };
        // A trace that cannot be written (a closed pipe) must not stop the stack.
        let _ = out.writer.write_all(line.as_bytes());
        let _ = out.writer.flush();
    }
}

/// Whether a segment came in or went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    In,
    Out,
}

/// What the watch made of a segment, shown after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    Retransmission,
    KeepaliveProbe,
    ZeroWindowProbe,
    AckSalvaged,
    /// Data under an ACK older than one already taken: the data kept, the ACK ignored.
    OldAck,
    /// SACK shows the segment at SND.UNA lost: smoltcp fast-retransmits it.
    LossDetected,
    /// A SYN dropped because the listener's backlog is full.
    BacklogFull,
    /// A SYN held until its listener has a place for it (a half-open connection recycled,
    /// a socket armed).
    SynHeld,
}

impl Note {
    fn text(self) -> &'static str {
        match self {
            Note::Retransmission => "retransmission",
            Note::KeepaliveProbe => "keepalive probe",
            Note::ZeroWindowProbe => "zero-window probe",
            Note::AckSalvaged => "ACK salvaged from outside the window",
            Note::OldAck => "old ACK ignored, data taken",
            Note::LossDetected => "SACK shows a loss: fast retransmit",
            Note::BacklogFull => "dropped: backlog full",
            Note::SynHeld => "held: the backlog makes room",
        }
    }
}

/// Each connection's initial sequence numbers, (ours, theirs), keyed by (local, remote),
/// so numbers print relative to them. Bounded: a flood of strangers cannot grow it.
#[derive(Default)]
pub(crate) struct Isns {
    map: HashMap<(SocketAddrV4, SocketAddrV4), (Option<TcpSeqNumber>, Option<TcpSeqNumber>)>,
}

const MAX_ISNS: usize = 4096;

impl Trace {
    /// One segment line for `frame`, a TCP segment in direction `dir`. `window` is the
    /// scaled window in bytes when the watch knows the scale.
    pub(crate) fn segment(
        &self,
        isns: &mut Isns,
        dir: Dir,
        frame: &[u8],
        window: Option<u32>,
        note: Option<Note>,
    ) {
        let Some(body) = segment_line(isns, dir, frame, window, note) else {
            return;
        };
        let colour = if body.contains("[R") {
            RESET
        } else if dir == Dir::Out {
            OUT
        } else {
            IN
        };
        self.line(colour, if dir == Dir::Out { ">" } else { "<" }, &body);
    }
}

/// The text of a segment line; `None` if `frame` is not an IPv4 TCP segment.
fn segment_line(
    isns: &mut Isns,
    dir: Dir,
    frame: &[u8],
    window: Option<u32>,
    note: Option<Note>,
) -> Option<String> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let src = SocketAddrV4::new(ip.src_addr(), tcp.src_port());
    let dst = SocketAddrV4::new(ip.dst_addr(), tcp.dst_port());
    let (key, ours) = match dir {
        Dir::Out => ((src, dst), true),
        Dir::In => ((dst, src), false),
    };
    if isns.map.len() >= MAX_ISNS && !isns.map.contains_key(&key) {
        isns.map.clear();
    }
    let entry = isns.map.entry(key).or_default();
    let (seq_isn, ack_isn) = if ours {
        (&mut entry.0, entry.1)
    } else {
        (&mut entry.1, entry.0)
    };
    let seq = tcp.seq_number();
    // The first segment seen from a sender (its SYN, normally) sets its base.
    let base = *seq_isn.get_or_insert(seq);
    // smoltcp's `SeqNumber - SeqNumber` panics below zero: a stray segment older than
    // the first one seen must print as a negative number, not stop the driver.
    let rel_seq = i64::from(seq.0.wrapping_sub(base.0));
    let len = tcp.payload().len();
    let mut flags = String::new();
    for (on, c) in [
        (tcp.syn(), 'S'),
        (tcp.fin(), 'F'),
        (tcp.rst(), 'R'),
        (tcp.psh(), 'P'),
        (tcp.urg(), 'U'),
        (tcp.ece(), 'E'),
        (tcp.cwr(), 'W'),
        (tcp.ack(), '.'),
    ] {
        if on {
            flags.push(c);
        }
    }
    let seq_text = if len > 0 {
        format!("{rel_seq}:{}", rel_seq + len as i64)
    } else {
        rel_seq.to_string()
    };
    let ack_text = match (tcp.ack(), ack_isn) {
        (true, Some(isn)) => tcp.ack_number().0.wrapping_sub(isn.0).to_string(),
        (true, None) => (tcp.ack_number().0 as u32).to_string(),
        (false, _) => "-".into(),
    };
    let win = window.unwrap_or(u32::from(tcp.window_len()));
    let mut line = format!(
        "{:<15} → {:<16} [{flags}]{:pad$} seq {seq_text:<10} ack {ack_text:<10} win {win:<8} len {len:<5}",
        src.to_string(),
        dst.to_string(),
        "",
        pad = 5usize.saturating_sub(flags.len()),
    );
    options(&mut line, tcp.options(), ack_isn);
    if let Some(note) = note {
        let _ = write!(line, " ({})", note.text());
    }
    Some(line.trim_end().to_string())
}

/// Appends the options worth seeing: MSS, window scale, SACK blocks (relative to
/// `sack_isn`, the other end's ISN, when known), timestamps.
fn options(line: &mut String, mut bytes: &[u8], sack_isn: Option<TcpSeqNumber>) {
    while !bytes.is_empty() {
        let Ok((rest, option)) = TcpOption::parse(bytes) else {
            line.push_str(" <bad options>");
            return;
        };
        match option {
            TcpOption::EndOfList => return,
            TcpOption::NoOperation => {}
            TcpOption::MaxSegmentSize(mss) => {
                let _ = write!(line, " mss {mss}");
            }
            TcpOption::WindowScale(shift) => {
                let _ = write!(line, " ws {shift}");
            }
            TcpOption::SackPermitted => line.push_str(" sackOK"),
            TcpOption::SackRange(ranges) => {
                let blocks: Vec<String> = ranges
                    .iter()
                    .flatten()
                    .map(|&(l, r)| match sack_isn {
                        Some(isn) => format!(
                            "{}-{}",
                            (l as i32).wrapping_sub(isn.0),
                            (r as i32).wrapping_sub(isn.0)
                        ),
                        None => format!("{l}-{r}"),
                    })
                    .collect();
                let _ = write!(line, " sack {}", blocks.join(","));
            }
            TcpOption::TimeStamp { tsval, tsecr } => {
                let _ = write!(line, " ts {tsval}/{tsecr}");
            }
            TcpOption::Unknown { kind, .. } => {
                let _ = write!(line, " opt{kind}");
            }
        }
        bytes = rest;
    }
}

/// Why a connection went from `from` to `to`, from what the stack saw: the peer's RST or
/// FIN, our own close, or neither. RFC 9293 §3.3.2 (Figure 5) names the transitions.
pub(crate) fn reason(
    from: State,
    to: State,
    rst_rx: bool,
    aborted: bool,
    closed: bool,
) -> &'static str {
    use State::*;
    if to == Closed {
        return match from {
            _ if rst_rx => "RST received",
            _ if aborted => "we sent RST",
            LastAck | Closing => "ACK of our FIN received",
            TimeWait => "2 MSL passed",
            SynSent | SynReceived => "handshake timed out",
            _ => "timed out: the peer stopped answering",
        };
    }
    match (from, to) {
        (Closed, SynSent) => "dial: SYN sent",
        (Listen, SynReceived) => "SYN received",
        (SynSent, Established) => "SYN-ACK received",
        (SynReceived, Established) => "ACK of our SYN received",
        (Established | SynReceived, FinWait1) if closed => "close: FIN sent",
        (Established | SynReceived, FinWait1) => "shutdown(Write): FIN sent",
        (Established, CloseWait) => "FIN received",
        (FinWait1, FinWait2) => "ACK of our FIN received",
        (FinWait1, Closing) => "FIN received: simultaneous close",
        (Established, Closing) => "FIN sent and FIN received: simultaneous close",
        (FinWait1, TimeWait) => "FIN and ACK of our FIN received",
        (FinWait2, TimeWait) => "FIN received",
        (Closing, TimeWait) => "ACK of our FIN received",
        (CloseWait, LastAck) if closed => "close: FIN sent",
        (CloseWait, LastAck) => "shutdown(Write): FIN sent",
        _ => "",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Stack, StackConfig};
    use netdev::{WireOptions, wire};
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    pub(crate) struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    pub(crate) fn lines(out: &Shared) -> String {
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// A client (10.0.0.1) and a server (10.0.0.2) on the wire, both traced into one
    /// stream under their labels.
    fn traced_pair() -> (Shared, Stack, Stack) {
        let out = Shared::default();
        let trace = Trace::to_writer(out.clone(), false);
        let (a, b) = wire(&WireOptions::default()).unwrap();
        let config = |addr: &str, label: &str| {
            StackConfig::new()
                .with_addr(addr.parse().unwrap())
                .with_trace(trace.labelled(label))
        };
        let client = Stack::new(a, config("10.0.0.1/24", "client")).unwrap();
        let server = Stack::new(b, config("10.0.0.2/24", "server")).unwrap();
        (out, client, server)
    }

    #[test]
    fn a_connection_is_traced_segment_by_segment_with_its_state_changes() {
        let (out, client, server) = traced_pair();
        let addr = SocketAddr::from(([10, 0, 0, 2], 7));
        let listener = server.listen(addr).unwrap();
        let mut conn = client.dial_timeout(addr, Duration::from_secs(5)).unwrap();
        let (mut accepted, _) = listener.accept_timeout(Duration::from_secs(5)).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).unwrap();
        conn.close().unwrap();
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).unwrap();
        // A pause in CLOSE-WAIT, so the client's FIN is acknowledged alone (FIN-WAIT-2).
        std::thread::sleep(Duration::from_millis(100));
        accepted.close().unwrap();
        assert!(client.settle(Duration::from_secs(5)) && server.settle(Duration::from_secs(5)));
        let text = lines(&out);
        let has = |parts: &[&str]| text.lines().any(|l| parts.iter().all(|p| l.contains(p)));
        for parts in [
            &[
                "client", ">", "[S]", "seq 0 ", "ack -", "mss 1460", "ws ", "sackOK",
            ][..],
            &["server", "<", "[S]", "seq 0 "],
            &["server", ">", "[S.]", "seq 0 ", "ack 1 "],
            &["client", ">", "[P.]", "seq 1:6 ", "len 5"],
            &["server", ">", "[.]", "ack 7 "],
            &["server", ">", "[F.]", "seq 1 ", "ack 7 "],
            &["client", "CLOSED → SYN-SENT (dial: SYN sent)"],
            &["server", "LISTEN → SYN-RECEIVED (SYN received)"],
            &["client", "SYN-SENT → ESTABLISHED (SYN-ACK received)"],
            &[
                "server",
                "SYN-RECEIVED → ESTABLISHED (ACK of our SYN received)",
            ],
            &["client", "ESTABLISHED → FIN-WAIT-1 (close: FIN sent)"],
            &["server", "ESTABLISHED → CLOSE-WAIT (FIN received)"],
            &[
                "client",
                "FIN-WAIT-1 → FIN-WAIT-2 (ACK of our FIN received)",
            ],
            &["server", "CLOSE-WAIT → LAST-ACK (close: FIN sent)"],
            &["client", "FIN-WAIT-2 → TIME-WAIT (FIN received)"],
            &["server", "LAST-ACK → CLOSED (ACK of our FIN received)"],
        ] {
            assert!(has(parts), "no line with {parts:?} in:\n{text}");
        }
        // The server's line for a state change comes after the segment that caused it.
        let fin_in = text
            .lines()
            .position(|l| l.contains("server") && l.contains(" <  ") && l.contains("[F"));
        let close_wait = text.lines().position(|l| l.contains("→ CLOSE-WAIT"));
        assert!(fin_in < close_wait, "FIN after CLOSE-WAIT:\n{text}");
    }

    #[test]
    fn a_syn_beyond_a_full_backlog_is_traced_as_dropped() {
        let (out, client, server) = traced_pair();
        let addr = SocketAddr::from(([10, 0, 0, 2], 7));
        let listener = server.listen_backlog(addr, 1).unwrap();
        // One completed connection nobody accepts fills the backlog...
        let _first = client.dial_timeout(addr, Duration::from_secs(5)).unwrap();
        // ...so the next SYN is dropped unanswered, and says why.
        let err = client
            .dial_timeout(addr, Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(listener.dropped_syns().unwrap() >= 1);
        let text = lines(&out);
        assert!(
            text.lines().any(|l| l.contains("server")
                && l.contains("[S]")
                && l.contains("(dropped: backlog full)")),
            "{text}"
        );
    }

    #[test]
    fn a_segment_older_than_the_first_seen_prints_below_zero() {
        let mut isns = Isns::default();
        let frame = |seq: u32, ack: u32| {
            let mut f = vec![0u8; 54];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&40u16.to_be_bytes());
            f[23] = 6;
            f[38..42].copy_from_slice(&seq.to_be_bytes());
            f[42..46].copy_from_slice(&ack.to_be_bytes());
            f[46] = 0x50;
            f[47] = 0x10; // ACK
            f
        };
        // Our first segment sets our base; the peer's, acknowledging below it, and ours
        // again, older still.
        let out = segment_line(&mut isns, Dir::Out, &frame(1000, 5), None, None).unwrap();
        assert!(out.contains("seq 0 "), "{out}");
        let inb = segment_line(&mut isns, Dir::In, &frame(5, 990), None, None).unwrap();
        assert!(inb.contains("ack -10 "), "{inb}");
        let old = segment_line(&mut isns, Dir::Out, &frame(900, 5), None, None).unwrap();
        assert!(old.contains("seq -100 "), "{old}");
    }

    #[test]
    fn any_bytes_make_a_line_or_none_and_never_a_panic() {
        let mut isns = Isns::default();
        let mut rng = fastrand::Rng::with_seed(5);
        // An IPv4 TCP frame header to mutate, so most frames get deep into the parse.
        let mut base = vec![0u8; 80];
        base[12..14].copy_from_slice(&[0x08, 0x00]);
        base[14] = 0x45;
        base[16..18].copy_from_slice(&66u16.to_be_bytes());
        base[23] = 6;
        base[46] = 0xf0; // Data offset 15: 40 bytes of options.
        for _ in 0..20_000 {
            let mut frame = base.clone();
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(..frame.len());
                frame[i] = rng.u8(..);
            }
            frame.truncate(rng.usize(..=frame.len()));
            let _ = segment_line(&mut isns, Dir::In, &frame, None, None);
        }
    }
}
