//! The driver's view of the wire: every TCP segment in and out passes [`Watch`] on its way
//! between the device and smoltcp.
//!
//! smoltcp keeps most of a connection's numbers to itself. What the stack promises on
//! top of it, it reads off the segments instead:
//!
//! - **when** a connection last heard from its peer and last spoke, so keepalive probes
//!   go out at exactly idle + n × interval (see `table.rs`);
//! - **why** a connection closed: an RST from the peer (reset, or refused in answer to a
//!   SYN), the peer's FIN, or neither (smoltcp gave up on a silent peer);
//! - **how** it is doing: retransmissions, keepalive probes, the windows both ends
//!   advertise (scaled by the shifts from the SYNs, RFC 7323 §2), and an RTT estimate
//!   (RFC 6298, timed on segments that were never retransmitted, per Karn);
//! - it holds the **gate** of each listener: a SYN for a listener whose backlog is
//!   full is dropped here, unanswered, so the client retries, as Linux does (smoltcp
//!   would otherwise answer it with RST). Only when its accept queue is full, though:
//!   while the backlog has places an accept is not needed to free (half-open
//!   connections, the oldest of which the driver recycles for it, RFC 4987 §3.4; or
//!   room not yet armed), the SYN is held for one of them, then handed to smoltcp;
//! - it **salvages ACKs** that smoltcp would throw away with the segment carrying
//!   them. smoltcp drops a segment outside the receive window whole, ACK included. But
//!   RFC 9293 §3.10.7.4 says a zero window must still take valid ACKs, and a Linux peer
//!   whose window we shrank by rounding (RFC 7323 §2.3: smoltcp rounds the free space
//!   down to its scale) stamps its pure ACKs a few bytes past our right edge. Were the
//!   ACK lost, a connection whose both windows are full (an echo server blocked in a
//!   write) would wait forever: it cannot read until the peer's ACK frees its send
//!   buffer. Behind the left edge it is the same: a pure ACK overtaken by the peer's
//!   later data, or one from a peer that went back to its oldest unacknowledged byte
//!   after a retransmission timeout (smoltcp does). Two smoltcp ends that time out at
//!   once would each drop every ACK of the other's, and stall until they gave up. So
//!   the watch hands smoltcp such an ACK again, as a bare segment at RCV.NXT, right
//!   after the original;
//! - it **mends data under an old ACK**: reordering can put a segment with data behind
//!   a later one whose ACK smoltcp already took, and smoltcp drops such a segment whole,
//!   where RFC 9293 §3.10.7.4 ignores only the ACK. smoltcp gets a copy under the newest
//!   ACK instead, so the peer need not send the data again;
//! - and it **detects losses from SACK**. smoltcp fast-retransmits only after three
//!   bare duplicate ACKs (RFC 5681 §3.2): a flight of two or three segments never
//!   brings three, nor does a peer that sends data of its own, and every such loss
//!   waits out a retransmission timeout of a second or more. The peer's SACK blocks
//!   (RFC 2018) say what it holds; when three segments sent after SND.UNA's arrived
//!   (RFC 6675 §4), or all of a smaller flight but that one (RFC 5827), the watch
//!   hands smoltcp the duplicate ACKs that make it send SND.UNA's segment again. Where
//!   the peer's segments cannot tell, a timer of the watch's does (RFC 8985, RACK-TLP):
//!   SND.UNA's segment is lost when data sent after it was SACKed a reordering window
//!   ago (a quarter RTT), and its retransmission is lost when no ACK came for it
//!   within twice the RTT; either way the driver hands smoltcp the duplicate ACKs at
//!   that moment, rather than leave the loss to smoltcp's timeout (a second at least).
//!
//! It also **screens** what smoltcp would mishandle (see `tests/tests/hostile.rs`):
//!
//! - Segments are parsed as smoltcp parses them, checksums included, before they move
//!   any number of the watch's: a bit flipped on the link must not pass for news.
//! - ARP replies for addresses the stack did not ask about are dropped. smoltcp fills
//!   its neighbour cache from any ARP packet aimed at it, so one unsolicited reply would
//!   redirect the stack's traffic for an address to any MAC.
//! - An RST inside the receive window but not at RCV.NXT, or any SYN, on a synchronized
//!   connection gets a challenge ACK (RFC 5961 §3.2, §4.2), not a reset: smoltcp resets
//!   on any in-window RST and ignores an in-window SYN. The watch drops the segment and
//!   hands smoltcp a bare ACK of data never sent instead, which smoltcp answers with its
//!   own challenge ACK (rate-limited to one per second, RFC 5961 §7).
//! - IPv4 fragments are reassembled here (`reassembly.rs`), and the whole datagram
//!   goes through the watch like any other frame.
//!
//! Only tuples the stack owns are tracked (connections and listeners' half-open ones), so
//! a flood of strangers costs a header parse and a hash lookup per frame, nothing more.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use netdev::arp_of;
use smoltcp::phy::{self, Device, DeviceCapabilities};

use crate::reassembly::{self, Reassembly};
use crate::time_wait::{TimeWait, TimeWaits};
use crate::trace::{Dir, Isns, Note, Trace};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// The most ranges a connection's SACK scoreboard keeps (the lowest, which matter).
const MAX_SACKED_RANGES: usize = 16;
/// The most segments in flight the watch remembers for SACK loss detection (a 256 KiB
/// window holds about 180 full ones).
const MAX_FLIGHT: usize = 1024;

/// The most SYNs held at once while listeners recycle half-open connections; beyond,
/// the longest held is dropped (its client retries), so that when a flood ends the
/// clients who came after it are among those held. As many as a 10,000-a-second flood
/// brings in 25 ms, however far the driver lags behind it (about 20 KiB).
const MAX_HELD: usize = 256;
/// How long a SYN may be held; then it is dropped, as its client is about to retry.
const MAX_HOLD: Duration = Duration::from_secs(1);

/// How long an ARP request of ours makes a reply for its address welcome.
const ARP_ASKED_FOR: Duration = Duration::from_secs(10);

/// A connection's two ends: (local, remote).
pub(crate) type Tuple = (SocketAddrV4, SocketAddrV4);

/// What the wire has shown of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    pub(crate) last_rx: Instant,
    pub(crate) last_tx: Instant,
    /// The peer sent RST (after which smoltcp has closed the socket).
    pub(crate) rst_rx: bool,
    /// The peer sent FIN.
    pub(crate) fin_rx: bool,
    /// Keepalive probes sent since the peer last spoke.
    pub(crate) probes_out: u32,
    pub(crate) probes: u64,
    pub(crate) retransmits: u64,
    pub(crate) zero_window_probes: u64,
    pub(crate) segs_in: u64,
    pub(crate) segs_out: u64,
    /// Window shifts from the SYNs, once both were seen (RFC 7323 §2.2).
    our_shift: Option<u8>,
    peer_shift: Option<u8>,
    /// The last window each end advertised, in bytes.
    pub(crate) our_window: u32,
    pub(crate) peer_window: u32,
    /// One past the highest sequence number sent.
    snd_max: Option<TcpSeqNumber>,
    /// The segment being timed for RTT: (sequence number that acknowledges it, when sent).
    timing: Option<(TcpSeqNumber, Instant)>,
    pub(crate) srtt: Option<Duration>,
    rttvar: Duration,
    touched: bool,
    /// Let in by a listener's gate, and not yet a connection of the stack's.
    half_open: bool,
    /// The ACK number we last sent: RCV.NXT, as far as the peer knows.
    rcv_nxt: Option<TcpSeqNumber>,
    /// The last (ACK, raw window) of the peer's that smoltcp took, as far as the watch
    /// can tell: a segment repeating it needs no salvage.
    taken: Option<(TcpSeqNumber, u16)>,
    /// ACKs salvaged from segments outside our window.
    pub(crate) acks_salvaged: u64,
    /// One past our SYN, once sent.
    syn_end: Option<TcpSeqNumber>,
    /// The peer has acknowledged our SYN: RFC 5961 applies from here on.
    synced: bool,
    /// The largest window we have advertised, in bytes: how far behind RCV.NXT a
    /// peer's sequence number may lag and its ACK still be taken (RFC 5961 §5.2 bounds
    /// ACKs by MAX.SND.WND the same way).
    our_window_max: u32,
    /// The largest window the peer has advertised (RFC 5961's MAX.SND.WND).
    peer_window_max: u32,
    /// Where each segment of new data we sent ends, oldest first, while unacknowledged:
    /// what the SACK scoreboard is counted in.
    flight: VecDeque<TcpSeqNumber>,
    /// The (ACK, raw window) of the last segment of the peer's that smoltcp took.
    last_ack: Option<(TcpSeqNumber, u16)>,
    /// The peer's bare duplicate ACKs in a row (RFC 5681 §2), as smoltcp counts them.
    dup_acks: u8,
    /// The last loss signal, while acted on.
    recovery: Option<Recovery>,
    /// Later data SACKed while SND.UNA's segment is not, too little of it to call that
    /// segment lost by count: the SND.UNA, when first seen so, and the peer's segment
    /// that showed it, bare (the template of duplicate ACKs).
    suspect: Option<(TcpSeqNumber, Instant, Vec<u8>)>,
    /// What the peer's SACK blocks say it holds above SND.UNA (RFC 6675 §3's
    /// scoreboard): sorted, disjoint ranges [left, right).
    sacked: Vec<(TcpSeqNumber, TcpSeqNumber)>,
    /// Fast retransmissions sent: smoltcp's own (three duplicate ACKs) and those the
    /// watch set off when SACK showed a loss.
    pub(crate) fast_retransmits: u64,
}

/// A loss signal: smoltcp was made to send SND.UNA's segment again.
#[derive(Debug, Clone)]
struct Recovery {
    /// The SND.UNA whose segment is to go again.
    una: TcpSeqNumber,
    /// When the signal was given.
    at: Instant,
    /// When the retransmission went out, once it has.
    sent: Option<Instant>,
    /// Signals given again because no ACK came for the retransmission (see
    /// [`Wire::recheck_due`]).
    rechecks: u8,
    /// The peer's segment that gave the signal, bare: the template of the duplicate
    /// ACKs a recheck hands smoltcp. Empty when there is none.
    template: Vec<u8>,
}

/// How many times in a row the watch signals a loss again for one SND.UNA by its own
/// timer; after that smoltcp's retransmission timeout takes over.
const MAX_RECHECKS: u8 = 3;

impl Wire {
    fn new(now: Instant) -> Wire {
        Wire {
            last_rx: now,
            last_tx: now,
            rst_rx: false,
            fin_rx: false,
            probes_out: 0,
            probes: 0,
            retransmits: 0,
            zero_window_probes: 0,
            segs_in: 0,
            segs_out: 0,
            our_shift: None,
            peer_shift: None,
            our_window: 0,
            peer_window: 0,
            snd_max: None,
            timing: None,
            srtt: None,
            rttvar: Duration::ZERO,
            touched: false,
            half_open: false,
            rcv_nxt: None,
            taken: None,
            acks_salvaged: 0,
            syn_end: None,
            synced: false,
            our_window_max: 0,
            peer_window_max: 0,
            flight: VecDeque::new(),
            last_ack: None,
            dup_acks: 0,
            recovery: None,
            suspect: None,
            sacked: Vec::new(),
            fast_retransmits: 0,
        }
    }

    /// The segment smoltcp should see instead of `seg` when `seg` calls for a challenge
    /// ACK (see the module doc), or `None` to pass `seg` on as it is.
    fn challenge(&self, seg: &Segment, frame: &[u8]) -> Option<Vec<u8>> {
        let (Some(rcv_nxt), Some(snd_max)) = (self.rcv_nxt, self.snd_max) else {
            return None;
        };
        if !self.synced || self.half_open {
            return None;
        }
        // RFC 5961 §4.2: any SYN in a synchronized state. §3.2: an RST inside the window
        // but not at RCV.NXT (one outside it smoltcp drops silently, as it should).
        let suspect = seg.syn
            || (seg.rst && rcv_nxt < seg.seq && seg.seq < rcv_nxt + self.our_window as usize);
        if !suspect {
            return None;
        }
        // An ACK far beyond anything sent: smoltcp answers it with a challenge ACK
        // (RFC 5961 §5.2) and changes nothing else.
        challenge_trigger(frame, rcv_nxt, snd_max + (1usize << 30))
    }

    /// Whether smoltcp will drop `seg` for lying outside our receive window while its
    /// ACK is news, so that the ACK must be handed to smoltcp again (see the module
    /// doc). Mirrors smoltcp's acceptance test (RFC 9293 §3.10.7.4) against the window
    /// we last advertised; where that guess is off, it errs towards "acceptable", which
    /// costs at most a missed salvage, never a duplicate ACK.
    fn needs_salvage(&mut self, seg: &Segment) -> bool {
        let (Some(ack), Some(rcv_nxt)) = (seg.ack, self.rcv_nxt) else {
            return false;
        };
        if seg.syn || seg.rst {
            return false;
        }
        let news = self
            .taken
            .is_none_or(|(a, w)| ack > a || (ack == a && seg.window != w));
        // An ACK for data never sent is smoltcp's to challenge, not ours to pass on.
        if !news || self.snd_max.is_some_and(|max| ack > max) {
            return false;
        }
        let acceptable = self.acceptable(seg, rcv_nxt);
        if !acceptable && !self.in_reach(seg, rcv_nxt) {
            return false;
        }
        self.taken = Some((ack, seg.window));
        !acceptable
    }

    /// Whether `seg` lies where an honest peer's segment may, though outside the window
    /// that starts at `rcv_nxt`: its ACK is then worth taking.
    fn in_reach(&self, seg: &Segment, rcv_nxt: TcpSeqNumber) -> bool {
        let (start, win_start) = (seg.seq, rcv_nxt);
        let win_end = rcv_nxt + self.our_window as usize;
        // Beyond the right edge by more than the rounding of one scale unit, a segment
        // is no peer's honest mistake: let smoltcp drop it, ACK and all (RFC 5961 §5).
        let slop = 1usize << self.our_shift.unwrap_or(0).min(14);
        let near = win_start <= start && start <= win_end + slop;
        // Behind the left edge, within the largest window we advertised: a pure ACK
        // overtaken by the peer's later data, or one from a peer that went back to its
        // oldest unacknowledged byte after a retransmission timeout (smoltcp does).
        // Were both ends to do that at once, each would drop every ACK of the other's,
        // and the connection would stall until it timed out.
        let behind = lag(start, win_start).is_some_and(|n| n <= self.our_window_max);
        near || behind
    }

    /// Whether smoltcp finds `seg` inside the receive window that starts at `rcv_nxt`
    /// (RFC 9293 §3.10.7.4's acceptability test, as smoltcp implements it).
    fn acceptable(&self, seg: &Segment, rcv_nxt: TcpSeqNumber) -> bool {
        let (start, end) = (seg.seq, seg.seq + seg.payload_len);
        let (win_start, win_end) = (rcv_nxt, rcv_nxt + self.our_window as usize);
        match (seg.payload_len == 0, win_start == win_end) {
            // A keepalive probe: smoltcp answers it and looks no further.
            (true, _) if end + 1 == win_start => false,
            (true, true) => start == win_start,
            (true, false) => win_start <= start && start < win_end,
            (false, true) => false,
            (false, false) => {
                (win_start <= start && start < win_end) || (win_start < end && end <= win_end)
            }
        }
    }

    /// The segment smoltcp should see instead of `seg` when `seg` brings data (or a
    /// FIN) under an ACK older than one smoltcp already took: reordering put it behind
    /// a later segment. smoltcp drops such a segment whole, data and all, where RFC 9293
    /// §3.10.7.4 ignores only the old ACK; the peer would have to send the data again.
    /// The copy carries the newest ACK and window instead. An ACK further back than the
    /// peer's largest window is no honest peer's (RFC 5961 §5.2): smoltcp drops that.
    fn mend_old_ack(&self, seg: &Segment, frame: &[u8]) -> Option<Vec<u8>> {
        let (ack, (una, window)) = (seg.ack?, self.taken?);
        let carries = seg.payload_len > 0 || seg.fin;
        if ack >= una || !carries || seg.syn || seg.rst || !self.synced {
            return None;
        }
        if lag(ack, una).is_none_or(|n| n > self.peer_window_max) {
            return None;
        }
        copy_segment(frame, false, |tcp| {
            tcp.set_ack_number(una);
            tcp.set_window_len(window);
        })
    }

    /// Whether `seg`, as smoltcp takes it, shows that the segment at SND.UNA was lost,
    /// so that smoltcp should fast-retransmit it now rather than wait a retransmission
    /// timeout of a second or more. smoltcp counts only bare duplicate ACKs (RFC 5681
    /// §3.2), so a flight of two or three segments, or a peer that sends data of its
    /// own, never makes three. The peer's SACK blocks (RFC 2018) say more: SND.UNA's
    /// segment is lost once three segments sent after it arrived whole (RFC 6675 §4's
    /// DupThresh), or all of a flight under four but that segment did (RFC 5827's early
    /// retransmit). Once per segment, and again only if its retransmission seems lost
    /// too: no ACK for it after an RTT and a quarter (RFC 8985's reordering window).
    ///
    /// `took` is the (ACK, raw window, bare) of the segment smoltcp takes for `seg`: the
    /// segment itself, its salvaged ACK, or its mended copy; `smoltcp_takes` is false
    /// when smoltcp drops it, and only its SACK blocks count.
    fn loss_detected(
        &mut self,
        seg: &Segment,
        frame: &[u8],
        took: (TcpSeqNumber, u16, bool),
        smoltcp_takes: bool,
        now: Instant,
    ) -> bool {
        let (ack, window, bare) = took;
        let Some(max) = self.snd_max else {
            return false;
        };
        // smoltcp's own count: bare segments repeating the ACK and window (RFC 5681 §2).
        if smoltcp_takes {
            let repeat = self.last_ack == Some((ack, window));
            self.last_ack = Some((ack, window));
            if bare && repeat && ack < max {
                self.dup_acks = self.dup_acks.saturating_add(1);
                if self.dup_acks == 3 {
                    self.signal(ack, headers_of(frame), now);
                    return false;
                }
            } else {
                self.dup_acks = 0;
            }
        }
        while self.flight.front().is_some_and(|&end| end <= ack) {
            self.flight.pop_front();
        }
        if self.taken.is_none_or(|(una, _)| ack != una) || ack >= max {
            self.sacked.clear();
            return false;
        }
        self.note_sack(seg, ack, max);
        if self.sacked.is_empty() {
            return false;
        }
        // Segments sent after SND.UNA's that the peer holds whole.
        let (mut held, mut start) = (0, ack);
        for &end in &self.flight {
            if self.sacked.iter().any(|&(l, r)| l <= start && end <= r) {
                held += 1;
            }
            start = end;
        }
        let in_flight = self.flight.len();
        if held < 3 && !(in_flight < 4 && held > 0 && held + 1 >= in_flight) {
            // Data sent after SND.UNA's segment arrived: it is lost if no ACK for it
            // comes within a reordering window (RFC 8985 §6.2), which the timer keeps.
            if self.recovery.as_ref().is_none_or(|r| r.una != ack)
                && self.suspect.as_ref().is_none_or(|(una, ..)| *una != ack)
            {
                self.suspect = Some((ack, now, headers_of(frame)));
            }
            return false;
        }
        if let Some(Recovery { una, at, .. }) = self.recovery
            && una == ack
        {
            let rtt = self.srtt.unwrap_or(Duration::from_secs(1));
            let wait = rtt + (rtt / 4).max(Duration::from_millis(5));
            if now.saturating_duration_since(at) < wait {
                return false;
            }
        }
        self.signal(ack, headers_of(frame), now);
        true
    }

    /// Notes a loss signal for `una`'s segment; `template` is the peer's segment that
    /// gave it, bare.
    fn signal(&mut self, una: TcpSeqNumber, template: Vec<u8>, now: Instant) {
        let rechecks = match &self.recovery {
            Some(r) if r.una == una => r.rechecks,
            _ => 0,
        };
        self.recovery = Some(Recovery {
            una,
            at: now,
            sent: None,
            rechecks,
            template,
        });
    }

    /// When the watch's timer signals a loss the peer's segments have not: SND.UNA's
    /// segment, once a reordering window (a quarter of the smoothed RTT, RFC 8985 §6.2)
    /// has passed since data sent after it was SACKed; or the retransmission of a loss
    /// signal, when no ACK came for it within twice the smoothed RTT (RFC 8985 §7.2's
    /// probe timeout), doubled for each recheck before. Either is otherwise found only
    /// if more data goes out for the peer to SACK, and in a small flight, or with the
    /// peer's window full, none does: smoltcp would wait out its retransmission
    /// timeout, a second at least.
    fn recheck_due(&self) -> Option<Instant> {
        let (una, _) = self.taken?;
        let srtt = self.srtt?;
        match (&self.recovery, &self.suspect) {
            (Some(r), _) if r.una == una => {
                if r.rechecks >= MAX_RECHECKS || r.template.is_empty() {
                    return None;
                }
                let pto = (2 * srtt).max(Duration::from_millis(10));
                Some(r.sent? + pto * (1 << r.rechecks))
            }
            (_, Some((at, since, template)))
                if *at == una && !template.is_empty() && !self.sacked.is_empty() =>
            {
                Some(*since + (srtt / 4).max(Duration::from_millis(5)))
            }
            _ => None,
        }
    }

    /// Signals the loss, if its recheck is due by `now`: the duplicate ACKs that make
    /// smoltcp send SND.UNA's segment, for the watch to hand it.
    fn recheck(&mut self, now: Instant) -> Option<Vec<Vec<u8>>> {
        if self.recheck_due()? > now {
            return None;
        }
        let (seq, (_, window), (una, _)) = (self.rcv_nxt?, self.last_ack?, self.taken?);
        match &mut self.recovery {
            Some(r) if r.una == una => {
                (r.at, r.sent) = (now, None);
                r.rechecks += 1;
            }
            _ => {
                let (_, _, template) = self.suspect.take()?;
                self.signal(una, template, now);
            }
        }
        let r = self.recovery.as_ref()?;
        Some(dup_acks(&r.template, seq, una, window))
    }

    /// Adds `seg`'s SACK blocks to the scoreboard, which keeps only what lies between
    /// SND.UNA (`una`) and what was sent (`max`). A block of the peer's says it holds
    /// those bytes; it need not repeat older blocks (RFC 2018 §4 sends the newest first,
    /// and ACKs get lost), so the scoreboard remembers them.
    fn note_sack(&mut self, seg: &Segment, una: TcpSeqNumber, max: TcpSeqNumber) {
        self.sacked.retain_mut(|range| {
            if range.1 <= una {
                return false;
            }
            if range.0 < una {
                range.0 = una;
            }
            true
        });
        for &(left, right) in seg.sack.iter().flatten() {
            let (mut left, mut right) = (
                if left < una { una } else { left },
                if right > max { max } else { right },
            );
            if left >= right {
                continue;
            }
            // Merge with every range it touches.
            self.sacked.retain(|&(l, r)| {
                if r < left || l > right {
                    return true;
                }
                if l < left {
                    left = l;
                }
                if r > right {
                    right = r;
                }
                false
            });
            let at = self
                .sacked
                .iter()
                .position(|&(l, _)| l > left)
                .unwrap_or(self.sacked.len());
            self.sacked.insert(at, (left, right));
            self.sacked.truncate(MAX_SACKED_RANGES);
        }
    }

    /// The retransmission timeout RFC 6298 §2 derives from the samples (1 s floor).
    pub(crate) fn rto(&self) -> Option<Duration> {
        self.srtt
            .map(|srtt| (srtt + 4 * self.rttvar).max(Duration::from_secs(1)))
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        // RFC 6298 §2.2 and §2.3, with alpha = 1/8 and beta = 1/4.
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }
}

/// A listener's gate: how many more SYNs it can take right now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gate {
    /// The listening address; unspecified means every local address.
    pub(crate) addr: Ipv4Addr,
    pub(crate) port: u16,
    /// SYNs it may still let through before the driver re-arms it.
    pub(crate) open: u32,
    /// How many SYNs it may hold when none can go through: the places in its backlog
    /// that free up without an accept (half-open connections, which the driver
    /// recycles; room not yet armed). None when its accept queue is full.
    pub(crate) waiting: u32,
    /// SYNs dropped because the backlog was full, at once or after being held.
    pub(crate) dropped: u64,
}

/// The per-connection wire records and the listeners' gates.
#[derive(Default)]
pub(crate) struct Watch {
    conns: HashMap<Tuple, Wire>,
    gates: Vec<Gate>,
    touched: Vec<Tuple>,
    /// A segment reached a listener's port outside any tracked tuple, or a SYN went
    /// through a gate: its pool needs a look before the next frame.
    pub(crate) rearm: bool,
    /// Whether anything is tracked at all (skips the parse for a stack with no TCP).
    active: bool,
    /// Entries let in by a gate and not yet connections.
    half_open: usize,
    /// Segments for smoltcp to take next, in order, before the device's next frame:
    /// ACKs salvaged from dropped segments, challenge triggers, mended copies, and
    /// duplicate ACKs that start a fast retransmission.
    salvaged: VecDeque<Vec<u8>>,
    /// Where segment lines go, when the stack is traced.
    pub(crate) trace: Option<Trace>,
    isns: Isns,
    /// Addresses our ARP requests asked about, and when (a reply is welcome a while).
    arp_asked: HashMap<Ipv4Addr, Instant>,
    /// Closed connections in TIME-WAIT, kept as a few numbers instead of a socket.
    time_wait: TimeWaits,
    /// Frames the watch itself sends (the ACK of a FIN in TIME-WAIT), for the driver.
    replies: Vec<Vec<u8>>,
    /// SYNs for a listener that can take none right now, held for the places its
    /// backlog frees without an accept (`Gate::waiting`): (tuple, when held, frame),
    /// oldest first; one per tuple.
    held: Vec<(Tuple, Instant, Vec<u8>)>,
    /// Frames for smoltcp to take next, through the watch again: held SYNs released,
    /// and datagrams reassembled from fragments.
    replay: VecDeque<Replay>,
    /// IPv4 datagrams being reassembled.
    reassembly: Reassembly,
    /// A released SYN is on its way through: it is not held twice.
    replaying: bool,
    /// Connections whose loss timer may be armed (see [`Wire::recheck_due`]).
    rechecking: Vec<Tuple>,
}

/// What the watch made of one segment, for its trace line.
#[derive(Default)]
struct Seen {
    /// The window in bytes, scaled, once the watch knows the scale.
    window: Option<u32>,
    note: Option<Note>,
}

/// A frame the watch hands smoltcp through itself again.
pub(crate) enum Replay {
    /// A SYN held while its listener made room, and where it goes.
    Held(SocketAddrV4, Vec<u8>),
    /// An IPv4 datagram reassembled from fragments.
    Reassembled(Vec<u8>),
}

impl Replay {
    fn frame(&self) -> &[u8] {
        match self {
            Replay::Held(_, frame) | Replay::Reassembled(frame) => frame,
        }
    }
}

/// What to do with an arriving frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

impl Watch {
    /// A watch that traces segments to `trace`, if given.
    pub(crate) fn new(trace: Option<Trace>) -> Watch {
        Watch {
            trace,
            ..Watch::default()
        }
    }

    pub(crate) fn track(&mut self, tuple: Tuple, now: Instant) {
        let wire = self.conns.entry(tuple).or_insert_with(|| Wire::new(now));
        if std::mem::take(&mut wire.half_open) {
            self.half_open -= 1;
        }
        self.active = true;
    }

    /// Entries let in by a gate that are not yet connections.
    pub(crate) fn half_open(&self) -> usize {
        self.half_open
    }

    /// Forgets half-open entries whose listener socket is gone (reset, timed out),
    /// keeping those `alive` says are still in SYN-RECEIVED.
    pub(crate) fn prune_half_open(&mut self, alive: impl Fn(&Tuple) -> bool) {
        self.conns
            .retain(|tuple, wire| !wire.half_open || alive(tuple));
        self.half_open = self.conns.values().filter(|w| w.half_open).count();
    }

    pub(crate) fn forget(&mut self, tuple: &Tuple) {
        if self.conns.remove(tuple).is_some_and(|w| w.half_open) {
            self.half_open -= 1;
        }
        self.update_active();
    }

    fn update_active(&mut self) {
        self.active =
            !self.conns.is_empty() || !self.gates.is_empty() || !self.time_wait.is_empty();
    }

    /// Keeps the connection `tuple`, whose socket is about to be freed in TIME-WAIT, as a
    /// [`TimeWait`] record until `now + TIME_WAIT`. False if the wire never showed
    /// enough of it (then the socket should stay).
    pub(crate) fn enter_time_wait(&mut self, tuple: Tuple, now: Instant) -> bool {
        let Some(wire) = self.conns.get(&tuple) else {
            return false;
        };
        let (Some(snd_nxt), Some(rcv_nxt)) = (wire.snd_max, wire.rcv_nxt) else {
            return false;
        };
        let shift = wire.our_shift.unwrap_or(0).min(14);
        let window = (wire.our_window >> shift).min(u32::from(u16::MAX)) as u16;
        self.time_wait.enter(tuple, now, snd_nxt, rcv_nxt, window);
        self.active = true;
        true
    }

    /// Whether `tuple` is in TIME-WAIT (so a dial must not reuse it).
    pub(crate) fn in_time_wait(&self, tuple: &Tuple) -> bool {
        self.time_wait.contains(tuple)
    }

    /// Gives up the oldest TIME-WAIT from `local_ip` to `remote`, for a dial that finds
    /// no other port; returns its tuple.
    pub(crate) fn reuse_time_wait(
        &mut self,
        local_ip: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> Option<Tuple> {
        let tuple = self.time_wait.oldest_to(local_ip, remote)?;
        self.time_wait.remove(&tuple);
        self.update_active();
        Some(tuple)
    }

    /// The connections in TIME-WAIT, for the socket table.
    pub(crate) fn time_waits(&self) -> impl Iterator<Item = (&Tuple, &TimeWait)> {
        self.time_wait.iter()
    }

    /// Ends the next TIME-WAIT that is over by `now`, if one is; returns its tuple.
    pub(crate) fn expire_time_wait(&mut self, now: Instant) -> Option<Tuple> {
        let over = self.time_wait.expire_next(now);
        self.update_active();
        over
    }

    /// When the next TIME-WAIT ends.
    pub(crate) fn next_time_wait_end(&self) -> Option<Instant> {
        self.time_wait.next_end()
    }

    /// Frames the watch sends itself, for the driver to put on the wire.
    pub(crate) fn take_replies(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.replies)
    }

    /// A segment for a connection in TIME-WAIT (RFC 9293 §3.10.7.4): a FIN is
    /// acknowledged and restarts the timer; a SYN may open a new connection (the
    /// listener decides), and ends this one's wait (RFC 6191's spirit); anything else
    /// (an RST, RFC 1337; an old duplicate) is dropped.
    fn time_wait_segment(
        &mut self,
        tuple: Tuple,
        seg: &Segment,
        frame: &[u8],
        now: Instant,
    ) -> Verdict {
        if !self.time_wait.contains(&tuple) {
            return Verdict::Pass;
        }
        if seg.syn && seg.ack.is_none() && !seg.rst {
            self.time_wait.remove(&tuple);
            self.update_active();
            return Verdict::Pass;
        }
        if seg.fin
            && !seg.rst
            && let Some(tw) = self.time_wait.restart(tuple, now)
        {
            if let Some(ack) = reply_ack(frame, tw.snd_nxt, tw.rcv_nxt, tw.window) {
                self.replies.push(ack);
            }
        }
        Verdict::Drop
    }

    pub(crate) fn get(&self, tuple: &Tuple) -> Option<&Wire> {
        self.conns.get(tuple)
    }

    /// Sets how many SYNs the listener on `addr:port` may take, and hold (adding its gate).
    pub(crate) fn set_gate(&mut self, addr: Ipv4Addr, port: u16, open: u32, waiting: u32) {
        match self.gate_mut(addr, port) {
            Some(gate) => (gate.open, gate.waiting) = (open, waiting),
            None => self.gates.push(Gate {
                addr,
                port,
                open,
                waiting,
                dropped: 0,
            }),
        }
        self.active = true;
    }

    /// SYNs held for the listener at `addr`:`port` while it makes room (see `held`).
    pub(crate) fn held_for(&self, addr: Ipv4Addr, port: u16) -> usize {
        self.held
            .iter()
            .filter(|((dst, _), _, _)| for_listener(*dst, addr, port))
            .count()
    }

    /// The listener at `addr`:`port` has room for `open` more SYNs: as many of those
    /// held for it go to smoltcp ahead of the device's next frame, through the gate
    /// again, newest first (when a flood ends, the clients that came after it are
    /// served before what it left). Those held too long, and the oldest of those its
    /// gate no longer has places for (connections became ready to accept), are
    /// dropped and counted.
    pub(crate) fn release_held(&mut self, addr: Ipv4Addr, port: u16, now: Instant, open: u32) {
        // Those released before and still on their way take their places first.
        let on_the_way = self
            .replay
            .iter()
            .filter(|r| matches!(r, Replay::Held(dst, _) if for_listener(*dst, addr, port)))
            .count();
        let mut n = (open as usize).saturating_sub(on_the_way);
        // Places for the rest: the open ones, then those freed without an accept.
        let mut keep = (open as usize + self.gate(addr, port).map_or(0, |g| g.waiting as usize))
            .saturating_sub(on_the_way);
        let mut dropped = 0;
        let mut i = self.held.len();
        while i > 0 {
            i -= 1;
            let ((dst, _), at, _) = &self.held[i];
            if !for_listener(*dst, addr, port) {
                continue;
            }
            let expired = now.saturating_duration_since(*at) >= MAX_HOLD;
            if n > 0 && !expired {
                let ((dst, _), _, frame) = self.held.remove(i);
                self.replay.push_back(Replay::Held(dst, frame));
                n -= 1;
                keep = keep.saturating_sub(1);
            } else if keep > 0 && !expired {
                keep -= 1;
            } else {
                self.held.remove(i);
                dropped += 1;
            }
        }
        if let Some(gate) = self.gate_mut(addr, port) {
            gate.dropped += dropped;
        }
    }

    pub(crate) fn remove_gate(&mut self, addr: Ipv4Addr, port: u16) {
        self.gates.retain(|g| !(g.addr == addr && g.port == port));
        self.held
            .retain(|((dst, _), _, _)| !for_listener(*dst, addr, port));
        self.active = !self.conns.is_empty() || !self.gates.is_empty();
    }

    pub(crate) fn gate(&self, addr: Ipv4Addr, port: u16) -> Option<&Gate> {
        self.gates.iter().find(|g| g.addr == addr && g.port == port)
    }

    fn gate_mut(&mut self, addr: Ipv4Addr, port: u16) -> Option<&mut Gate> {
        self.gates
            .iter_mut()
            .find(|g| g.addr == addr && g.port == port)
    }

    /// Tuples that saw a segment since the last call, each once.
    pub(crate) fn take_touched(&mut self) -> Vec<Tuple> {
        for tuple in &self.touched {
            if let Some(wire) = self.conns.get_mut(tuple) {
                wire.touched = false;
            }
        }
        std::mem::take(&mut self.touched)
    }

    /// Signals each loss whose timer is due (see [`Wire::recheck_due`]): the duplicate
    /// ACKs go to smoltcp ahead of the device's next frame.
    pub(crate) fn recheck_losses(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&tuple) = self.rechecking.get(i) {
            let Some(wire) = self.conns.get_mut(&tuple) else {
                self.rechecking.swap_remove(i);
                continue;
            };
            match wire.recheck_due() {
                Some(due) if due > now => i += 1,
                Some(_) => {
                    if let Some(dups) = wire.recheck(now) {
                        log::debug!(
                            "{} -> {}: loss timer: {} lost, fast retransmit",
                            tuple.0,
                            tuple.1,
                            wire.taken.map_or(0, |(una, _)| una.0)
                        );
                        self.salvaged.extend(dups);
                    }
                    self.rechecking.swap_remove(i);
                }
                None => {
                    self.rechecking.swap_remove(i);
                }
            }
        }
    }

    /// When [`Watch::recheck_losses`] must next run.
    pub(crate) fn next_loss_recheck(&self) -> Option<Instant> {
        self.rechecking
            .iter()
            .filter_map(|tuple| self.conns.get(tuple)?.recheck_due())
            .min()
    }

    /// Has the driver bring `tuple`'s record up to date after the next pass, as if a
    /// segment had come.
    pub(crate) fn look_again(&mut self, tuple: &Tuple) {
        if let Some(wire) = self.conns.get_mut(tuple) {
            Self::touch(&mut self.touched, *tuple, wire);
        }
    }

    /// Whether the peer has been silent long enough for the next keepalive probe.
    pub(crate) fn probe_due(
        &self,
        tuple: &Tuple,
        idle: Duration,
        interval: Duration,
    ) -> Option<Instant> {
        let wire = self.conns.get(tuple)?;
        let quiet_since = wire.last_rx.max(wire.last_tx);
        Some(quiet_since + if wire.probes_out == 0 { idle } else { interval })
    }

    fn touch(touched: &mut Vec<Tuple>, tuple: Tuple, wire: &mut Wire) {
        if !wire.touched {
            wire.touched = true;
            touched.push(tuple);
        }
    }

    fn inbound(&mut self, frame: &[u8], now: Instant) -> Verdict {
        if reassembly::is_fragment(frame) {
            // smoltcp takes no fragments: the whole datagram, once here, goes through
            // the watch like any other frame.
            if let Some(whole) = self.reassembly.fragment(frame, now) {
                self.replay.push_back(Replay::Reassembled(whole));
            }
            return Verdict::Drop;
        }
        let mut seen = Seen::default();
        let verdict = if self.screen_out(frame, now) {
            Verdict::Drop
        } else {
            self.observe_in(frame, now, &mut seen)
        };
        if let Some(trace) = &self.trace {
            trace.segment(&mut self.isns, Dir::In, frame, seen.window, seen.note);
        }
        verdict
    }

    /// A frame of the watch's own making on its way in: a held SYN, released, meets the
    /// gates again (its trace line is written already); a reassembled datagram is seen
    /// as if it had just arrived.
    fn replayed(&mut self, replay: &Replay, now: Instant) -> Verdict {
        match replay {
            Replay::Held(_, frame) => {
                self.replaying = true;
                let verdict = self.observe_in(frame, now, &mut Seen::default());
                self.replaying = false;
                verdict
            }
            Replay::Reassembled(frame) => self.inbound(frame, now),
        }
    }

    fn outbound(&mut self, frame: &[u8], now: Instant) {
        if let Some((ArpOperation::Request, _, target)) = arp_of(frame) {
            self.arp_asked
                .retain(|_, at| now.saturating_duration_since(*at) < ARP_ASKED_FOR);
            self.arp_asked.insert(target, now);
        }
        let mut seen = Seen::default();
        self.observe_out(frame, now, &mut seen);
        if let Some(trace) = &self.trace {
            trace.segment(&mut self.isns, Dir::Out, frame, seen.window, seen.note);
        }
    }

    /// Whether `frame` is one smoltcp would mishandle, to be dropped (module doc).
    fn screen_out(&mut self, frame: &[u8], now: Instant) -> bool {
        let Some((ArpOperation::Reply, sender, _)) = arp_of(frame) else {
            return false;
        };
        let asked = self
            .arp_asked
            .get(&sender)
            .is_some_and(|at| now.saturating_duration_since(*at) < ARP_ASKED_FOR);
        if !asked {
            log::debug!("dropped an ARP reply for {sender}, which nobody asked about");
        }
        !asked
    }

    fn observe_in(&mut self, frame: &[u8], now: Instant, seen: &mut Seen) -> Verdict {
        if !self.active {
            return Verdict::Pass;
        }
        let Some(seg) = Segment::arriving(frame) else {
            return Verdict::Pass;
        };
        // Arriving, the segment's destination is our end.
        let tuple = (seg.dst, seg.src);
        if !self.time_wait.is_empty() && self.time_wait.contains(&tuple) {
            return self.time_wait_segment(tuple, &seg, frame, now);
        }
        if let Some(wire) = self.conns.get_mut(&tuple) {
            if let Some(trigger) = wire.challenge(&seg, frame) {
                log::debug!(
                    "{} -> {}: challenge ACK for an in-window {} (RFC 5961)",
                    seg.src,
                    seg.dst,
                    if seg.syn { "SYN" } else { "RST" }
                );
                self.salvaged.push_back(trigger);
                return Verdict::Drop;
            }
            if !seg.rst
                && let (Some(ack), Some(syn_end)) = (seg.ack, wire.syn_end)
                && ack >= syn_end
            {
                wire.synced = true;
            }
            if wire.half_open {
                // Perhaps the ACK that completes the handshake: the listener looks.
                self.rearm = true;
            }
            wire.last_rx = now;
            wire.segs_in += 1;
            wire.probes_out = 0;
            if seg.rst {
                wire.rst_rx = true;
            }
            if seg.fin {
                wire.fin_rx = true;
            }
            if seg.syn {
                wire.peer_shift = Some(seg.wscale.unwrap_or(0));
                if seg.wscale.is_none() {
                    wire.our_shift = Some(0); // No scaling unless both ends offer it.
                }
            }
            let shift = if seg.syn {
                0
            } else {
                wire.peer_shift.unwrap_or(0)
            };
            wire.peer_window = u32::from(seg.window) << shift.min(14);
            wire.peer_window_max = wire.peer_window_max.max(wire.peer_window);
            seen.window = wire.peer_shift.map(|_| wire.peer_window);
            if let (Some(ack), Some((until, sent))) = (seg.ack, wire.timing)
                && ack >= until
            {
                wire.sample_rtt(now.saturating_duration_since(sent));
                wire.timing = None;
            }
            let mut verdict = Verdict::Pass;
            if let (Some(rcv_nxt), Some(ack)) = (wire.rcv_nxt, seg.ack)
                && !seg.syn
                && !seg.rst
            {
                // What smoltcp takes of the segment: (ACK, window, bare), and where the
                // next segment from the peer would start.
                let after = seg.seq + seg.payload_len;
                let (mut took, mut seen_only) = (None, false);
                if wire.needs_salvage(&seg) {
                    if let Some(bare) = bare_ack(frame, rcv_nxt) {
                        wire.acks_salvaged += 1;
                        seen.note = Some(Note::AckSalvaged);
                        log::debug!(
                            "{} -> {}: salvaged ACK {} from a segment outside our window",
                            seg.src,
                            seg.dst,
                            ack.0
                        );
                        self.salvaged.push_back(bare);
                        took = Some((ack, seg.window, true, rcv_nxt));
                    }
                } else if let Some(copy) = wire.mend_old_ack(&seg, frame)
                    && let Some((una, window)) = wire.taken
                {
                    seen.note = Some(Note::OldAck);
                    self.salvaged.push_back(copy);
                    verdict = Verdict::Drop;
                    took = Some((una, window, false, after));
                } else if wire.acceptable(&seg, rcv_nxt) {
                    if wire.taken.is_none_or(|(una, _)| ack >= una) {
                        let bare = seg.payload_len == 0 && !seg.fin;
                        took = Some((ack, seg.window, bare, after));
                    }
                } else if wire.in_reach(&seg, rcv_nxt) {
                    // smoltcp drops it, and its ACK is old news; its SACK blocks are
                    // not (a pure ACK overtaken by the peer's data is common).
                    seen_only = true;
                    took = Some((ack, seg.window, true, rcv_nxt));
                }
                if let Some((ack, window, bare, seq)) = took
                    && !seg.fin
                    && wire.loss_detected(&seg, frame, (ack, window, bare), !seen_only, now)
                {
                    seen.note = seen.note.or(Some(Note::LossDetected));
                    log::debug!(
                        "{} -> {}: SACK shows {} lost: fast retransmit",
                        seg.dst,
                        seg.src,
                        ack.0
                    );
                    self.salvaged.extend(dup_acks(frame, seq, ack, window));
                }
                arm_recheck(&mut self.rechecking, tuple, wire);
            }
            Self::touch(&mut self.touched, tuple, wire);
            return verdict;
        }
        let syn_only = seg.syn && seg.ack.is_none() && !seg.rst;
        let Some(gate) = gate_for(&mut self.gates, seg.dst) else {
            return Verdict::Pass;
        };
        if !syn_only {
            // Perhaps the ACK that completes a half-open connection of a listener's.
            self.rearm = true;
            return Verdict::Pass;
        }
        // A SYN sent again takes the place of one held before for the same connection:
        // the older, let through once this one had opened and closed the connection,
        // would open a stale half-open one.
        self.held.retain(|(held, _, _)| *held != tuple);
        if gate.open == 0 && gate.waiting > 0 && !self.replaying {
            // The backlog has places that free up without an accept: the oldest
            // half-open connection makes room for this SYN (RFC 4987 §3.4) once it has
            // had time to complete, or the driver arms a socket, and the SYN waits here
            // meanwhile, so that a client arriving right after a SYN flood (or within
            // a burst) is answered at once rather than after its first retransmission.
            // With more SYNs than places, the one held longest is dropped: when a flood
            // ends, the clients who came after it are among those held.
            seen.note = Some(Note::SynHeld);
            let (addr, port, waiting) = (gate.addr, gate.port, gate.waiting as usize);
            let mine =
                |((dst, _), _, _): &(Tuple, Instant, Vec<u8>)| for_listener(*dst, addr, port);
            let oldest = if self.held.iter().filter(|h| mine(h)).count() >= waiting {
                self.held.iter().position(mine)
            } else {
                (self.held.len() == MAX_HELD).then_some(0)
            };
            if let Some(i) = oldest {
                let ((dst, _), _, _) = self.held.remove(i);
                if let Some(gate) = gate_for(&mut self.gates, dst) {
                    gate.dropped += 1;
                }
            }
            self.held.push((tuple, now, frame.to_vec()));
            self.rearm = true;
            return Verdict::Drop;
        }
        if gate.open == 0 {
            gate.dropped += 1;
            seen.note = Some(Note::BacklogFull);
            log::debug!(
                "listener {}:{} is full: dropped a SYN from {}",
                gate.addr,
                gate.port,
                seg.src
            );
            return Verdict::Drop;
        }
        gate.open -= 1;
        self.rearm = true;
        let mut wire = Wire::new(now);
        wire.half_open = true;
        self.half_open += 1;
        wire.segs_in = 1;
        wire.peer_shift = Some(seg.wscale.unwrap_or(0));
        if seg.wscale.is_none() {
            wire.our_shift = Some(0);
        }
        self.conns.insert(tuple, wire);
        Verdict::Pass
    }

    fn observe_out(&mut self, frame: &[u8], now: Instant, seen: &mut Seen) {
        if !self.active {
            return;
        }
        let Some(seg) = Segment::leaving(frame) else {
            return;
        };
        let tuple = (seg.src, seg.dst);
        let Some(wire) = self.conns.get_mut(&tuple) else {
            return;
        };
        if wire.half_open && seg.rst {
            self.rearm = true;
        }
        wire.last_tx = now;
        wire.segs_out += 1;
        if seg.syn {
            wire.syn_end = Some(seg.seq + 1);
            if wire.our_shift.is_none() {
                wire.our_shift = Some(seg.wscale.unwrap_or(0));
            }
            if seg.wscale.is_none() {
                wire.peer_shift = Some(0);
            }
        }
        let shift = if seg.syn {
            0
        } else {
            wire.our_shift.unwrap_or(0)
        };
        wire.our_window = u32::from(seg.window) << shift.min(14);
        wire.our_window_max = wire.our_window_max.max(wire.our_window);
        seen.window = wire.our_shift.map(|_| wire.our_window);
        if let Some(ack) = seg.ack
            && !seg.rst
        {
            wire.rcv_nxt = Some(ack);
        }
        let len = seg.payload_len as u32 + u32::from(seg.syn) + u32::from(seg.fin);
        if len > 0 && !seg.rst {
            let end = seg.seq + len as usize;
            match wire.snd_max {
                // RFC 1122 §4.2.3.6: a keepalive probe is one old byte just below snd_max.
                // Into a zero window, smoltcp probes with one new byte, then sends that
                // same byte again at each probe (RFC 9293 §3.8.6.1): never a retransmission.
                Some(max)
                    if seg.payload_len == 1
                        && end == max
                        && (wire.timing.is_none() || wire.peer_window == 0) =>
                {
                    if wire.peer_window == 0 {
                        wire.timing = None; // Karn: a probe byte sent again is not timed.
                        wire.zero_window_probes += 1;
                        seen.note = Some(Note::ZeroWindowProbe);
                    } else {
                        wire.probes += 1;
                        wire.probes_out += 1;
                        seen.note = Some(Note::KeepaliveProbe);
                    }
                }
                Some(max) if end <= max => {
                    wire.retransmits += 1;
                    if let Some(r) = &mut wire.recovery
                        && r.una == seg.seq
                        && r.sent.is_none()
                    {
                        // The retransmission a loss signal asked for, before any timer.
                        r.sent = Some(now);
                        wire.fast_retransmits += 1;
                        arm_recheck(&mut self.rechecking, tuple, wire);
                    }
                    seen.note = Some(Note::Retransmission);
                    wire.timing = None; // Karn: never time a retransmitted segment.
                }
                _ => {
                    if wire.peer_window == 0 && seg.payload_len == 1 && wire.snd_max.is_some() {
                        wire.zero_window_probes += 1;
                        seen.note = Some(Note::ZeroWindowProbe);
                    }
                    if wire.timing.is_none() {
                        wire.timing = Some((end, now));
                    }
                    wire.snd_max = Some(end);
                    // Where its data ends: a FIN takes a sequence number, but no SACK
                    // block can cover it (RFC 2018 §3 speaks of data only).
                    let data_end = end - usize::from(seg.fin);
                    if data_end != seg.seq {
                        if wire.flight.len() == MAX_FLIGHT {
                            wire.flight.pop_front();
                        }
                        wire.flight.push_back(data_end);
                    }
                }
            }
        }
        Self::touch(&mut self.touched, tuple, wire);
    }
}

/// How far `a` lies before `b` in sequence space, if it does (RFC 9293 §3.4's modular
/// comparison). smoltcp's `b - a` panics when they are 2^31 apart, which a hostile
/// segment can arrange.
fn lag(a: TcpSeqNumber, b: TcpSeqNumber) -> Option<u32> {
    let n = b.0.wrapping_sub(a.0);
    (n > 0).then_some(n as u32)
}

/// Whether a segment to `dst` is for the listener at `addr`:`port`.
fn for_listener(dst: SocketAddrV4, addr: Ipv4Addr, port: u16) -> bool {
    dst.port() == port && (addr.is_unspecified() || addr == *dst.ip())
}

/// The gate among `gates` that a segment to `dst` meets, if any listener holds that port.
fn gate_for(gates: &mut [Gate], dst: SocketAddrV4) -> Option<&mut Gate> {
    gates
        .iter_mut()
        .find(|g| g.port == dst.port() && (g.addr.is_unspecified() || g.addr == *dst.ip()))
}

/// The fields of a TCP segment the watch needs, from a checked parse of the frame.
struct Segment {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: TcpSeqNumber,
    ack: Option<TcpSeqNumber>,
    syn: bool,
    fin: bool,
    rst: bool,
    window: u16,
    wscale: Option<u8>,
    /// The peer's SACK blocks (RFC 2018), as sequence ranges [left, right).
    sack: [Option<(TcpSeqNumber, TcpSeqNumber)>; 3],
    payload_len: usize,
}

impl Segment {
    /// An arriving segment, only if smoltcp will take it as one: checksums right,
    /// options and flags well-formed, the same parse smoltcp makes. A segment damaged on
    /// the link must not move the watch's numbers (a flipped bit in an ACK field would
    /// make every later ACK look old).
    fn arriving(frame: &[u8]) -> Option<Segment> {
        Segment::parse(frame, &ChecksumCapabilities::default())
    }

    /// A segment smoltcp sent: well-formed by construction, so checksums go unchecked.
    fn leaving(frame: &[u8]) -> Option<Segment> {
        Segment::parse(frame, &ChecksumCapabilities::ignored())
    }

    fn parse(frame: &[u8], caps: &ChecksumCapabilities) -> Option<Segment> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if packet.next_header() != IpProtocol::Tcp
            || packet.more_frags()
            || packet.frag_offset() != 0
        {
            return None;
        }
        let ip = Ipv4Repr::parse(&packet, caps).ok()?;
        let tcp = TcpPacket::new_checked(packet.payload()).ok()?;
        let (src, dst) = (ip.src_addr.into(), ip.dst_addr.into());
        let repr = TcpRepr::parse(&tcp, &src, &dst, caps).ok()?;
        let flag = |control| repr.control == control;
        let sack = repr.sack_ranges.map(|range| {
            range.map(|(left, right)| (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32)))
        });
        Some(Segment {
            src: SocketAddrV4::new(ip.src_addr, repr.src_port),
            dst: SocketAddrV4::new(ip.dst_addr, repr.dst_port),
            seq: repr.seq_number,
            ack: repr.ack_number,
            syn: flag(TcpControl::Syn),
            fin: flag(TcpControl::Fin),
            rst: flag(TcpControl::Rst),
            window: repr.window_len,
            wscale: repr.window_scale,
            sack,
            payload_len: repr.payload.len(),
        })
    }
}

/// Our ACK in answer to the TCP segment in `frame`: addresses and ports swapped, `seq`,
/// `ack`, the raw `window`, no options. `None` if `frame` is not an IPv4 TCP segment.
fn reply_ack(frame: &[u8], seq: TcpSeqNumber, ack: TcpSeqNumber, window: u16) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let tcp_repr = TcpRepr {
        src_port: tcp.dst_port(),
        dst_port: tcp.src_port(),
        control: TcpControl::None,
        seq_number: seq,
        ack_number: Some(ack),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip_repr = Ipv4Repr {
        src_addr: ip.dst_addr(),
        dst_addr: ip.src_addr(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp_repr.buffer_len(),
        hop_limit: 64,
    };
    let eth_repr = EthernetRepr {
        src_addr: eth.dst_addr(),
        dst_addr: eth.src_addr(),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut out = vec![0; eth_repr.buffer_len() + ip_repr.buffer_len() + tcp_repr.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut e = EthernetFrame::new_unchecked(&mut out[..]);
    eth_repr.emit(&mut e);
    let mut i = Ipv4Packet::new_unchecked(e.payload_mut());
    ip_repr.emit(&mut i, &caps);
    let (src, dst) = (ip_repr.src_addr.into(), ip_repr.dst_addr.into());
    tcp_repr.emit(
        &mut TcpPacket::new_unchecked(i.payload_mut()),
        &src,
        &dst,
        &caps,
    );
    Some(out)
}

/// A copy of the TCP segment in `frame` cut down to its bare ACK: no payload, no FIN,
/// PSH or URG, sequence number `seq`, checksums filled. `None` if `frame` is not a
/// well-formed IPv4 TCP segment.
fn bare_ack(frame: &[u8], seq: TcpSeqNumber) -> Option<Vec<u8>> {
    copy_segment(frame, true, |tcp| tcp.set_seq_number(seq))
}

/// The duplicate ACKs that make smoltcp fast-retransmit (see `Wire::loss_detected`):
/// bare copies of the segment in `frame` at `seq`, acknowledging `ack`. smoltcp starts
/// when its count of bare ACKs repeating ACK and window reaches exactly three, so a
/// window one unit off comes first and resets the count, then the true window and
/// three repeats of it.
fn dup_acks(frame: &[u8], seq: TcpSeqNumber, ack: TcpSeqNumber, window: u16) -> Vec<Vec<u8>> {
    [window ^ 1, window, window, window, window]
        .into_iter()
        .filter_map(|window| {
            copy_segment(frame, true, |tcp| {
                tcp.set_seq_number(seq);
                tcp.set_ack_number(ack);
                tcp.set_window_len(window);
            })
        })
        .collect()
}

/// Keeps `tuple` among the connections the loss timer looks at, if its timer is armed.
fn arm_recheck(rechecking: &mut Vec<Tuple>, tuple: Tuple, wire: &Wire) {
    if wire.recheck_due().is_some() && !rechecking.contains(&tuple) {
        rechecking.push(tuple);
    }
}

/// The TCP segment in `frame` cut down to its headers (see [`copy_segment`]); empty if
/// `frame` is not a well-formed IPv4 TCP segment.
fn headers_of(frame: &[u8]) -> Vec<u8> {
    copy_segment(frame, true, |_| {}).unwrap_or_default()
}

/// A copy of the TCP segment in `frame`, changed by `edit`, checksums filled; `bare`
/// cuts it down to its headers (no payload, no FIN, PSH or URG). `None` if `frame` is
/// not a well-formed IPv4 TCP segment.
fn copy_segment(
    frame: &[u8],
    bare: bool,
    edit: impl FnOnce(&mut TcpPacket<&mut [u8]>),
) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let ip_len = usize::from(ip.header_len());
    let eth_len = frame.len() - eth.payload().len();
    let ip_total = if bare {
        ip_len + usize::from(tcp.header_len())
    } else {
        usize::from(ip.total_len())
    };
    let mut copy = frame[..eth_len + ip_total].to_vec();
    let mut ip = Ipv4Packet::new_unchecked(&mut copy[eth_len..]);
    ip.set_total_len(ip_total as u16);
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut tcp = TcpPacket::new_unchecked(&mut copy[eth_len + ip_len..]);
    if bare {
        tcp.set_fin(false);
        tcp.set_psh(false);
        tcp.set_urg(false);
        tcp.set_urgent_at(0);
    }
    edit(&mut tcp);
    tcp.fill_checksum(&src.into(), &dst.into());
    Some(copy)
}

/// The segment that makes smoltcp send a challenge ACK for the one in `frame`: its
/// headers without options or payload, flags only ACK, sequence number `seq`, ACK
/// number `ack`, checksums filled. `None` if smoltcp would drop `frame` anyway (a bad
/// checksum, malformed options, flags it rejects): then it earns no answer.
fn challenge_trigger(frame: &[u8], seq: TcpSeqNumber, ack: TcpSeqNumber) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let ip_repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let (src, dst) = (ip_repr.src_addr.into(), ip_repr.dst_addr.into());
    TcpRepr::parse(&tcp, &src, &dst, &caps).ok()?;
    let ip_len = usize::from(ip.header_len());
    let eth_len = frame.len() - eth.payload().len();
    let mut out = frame[..eth_len + ip_len + 20].to_vec();
    let mut ip = Ipv4Packet::new_unchecked(&mut out[eth_len..]);
    ip.set_total_len((ip_len + 20) as u16);
    ip.fill_checksum();
    let mut tcp = TcpPacket::new_unchecked(&mut out[eth_len + ip_len..]);
    tcp.set_header_len(20);
    for flag in [
        TcpPacket::set_syn,
        TcpPacket::set_rst,
        TcpPacket::set_fin,
        TcpPacket::set_psh,
        TcpPacket::set_urg,
    ] {
        flag(&mut tcp, false);
    }
    tcp.set_ack(true);
    tcp.set_seq_number(seq);
    tcp.set_ack_number(ack);
    tcp.set_urgent_at(0);
    tcp.fill_checksum(&src, &dst);
    Some(out)
}

/// The device as smoltcp sees it during a pass: the driver's device, with every frame
/// shown to the [`Watch`] on the way. (A `RefCell`, because smoltcp holds a receive
/// token and its paired transmit token at once, and both report to the watch.)
pub(crate) struct Watched<'a, D> {
    pub(crate) device: D,
    pub(crate) watch: &'a RefCell<Watch>,
    pub(crate) now: Instant,
}

impl<D: Device> Device for Watched<'_, D> {
    type RxToken<'a>
        = RxToken<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(
        &mut self,
        timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A salvaged ACK goes in right after the segment it came from, and a released
        // SYN before the device's next frame.
        let ours = {
            let mut watch = self.watch.borrow_mut();
            match watch.salvaged.pop_front() {
                Some(bare) => Some(RxToken::Salvaged(bare)),
                None => watch.replay.pop_front().map(|replay| RxToken::Replay {
                    replay,
                    watch: self.watch,
                    now: self.now,
                }),
            }
        };
        if let Some(rx) = ours {
            return Some((
                rx,
                TxToken {
                    inner: self.device.transmit(timestamp)?,
                    watch: self.watch,
                    now: self.now,
                },
            ));
        }
        let (rx, tx) = self.device.receive(timestamp)?;
        Some((
            RxToken::Device {
                inner: rx,
                watch: self.watch,
                now: self.now,
            },
            TxToken {
                inner: tx,
                watch: self.watch,
                now: self.now,
            },
        ))
    }

    fn transmit(&mut self, timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            inner: self.device.transmit(timestamp)?,
            watch: self.watch,
            now: self.now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.device.capabilities()
    }
}

/// An arriving frame, shown to the watch before smoltcp sees it; an ACK the watch
/// salvaged, which it has seen already; or a SYN it held, which meets the gates again.
pub(crate) enum RxToken<'a, T> {
    Device {
        inner: T,
        watch: &'a RefCell<Watch>,
        now: Instant,
    },
    Salvaged(Vec<u8>),
    Replay {
        replay: Replay,
        watch: &'a RefCell<Watch>,
        now: Instant,
    },
}

impl<T: phy::RxToken> phy::RxToken for RxToken<'_, T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let (inner, watch, now) = match self {
            RxToken::Device { inner, watch, now } => (inner, watch, now),
            RxToken::Salvaged(bare) => return f(&bare),
            RxToken::Replay { replay, watch, now } => {
                let verdict = watch.borrow_mut().replayed(&replay, now);
                return match verdict {
                    Verdict::Pass => f(replay.frame()),
                    Verdict::Drop => f(&[]),
                };
            }
        };
        inner.consume(|frame| {
            let verdict = watch.borrow_mut().inbound(frame, now);
            match verdict {
                Verdict::Pass => f(frame),
                // An empty frame is one smoltcp discards as malformed, without a reply:
                // exactly what a SYN beyond the backlog deserves.
                Verdict::Drop => f(&[]),
            }
        })
    }
}

/// A frame on its way out, shown to the watch once smoltcp has written it.
pub(crate) struct TxToken<'a, T> {
    inner: T,
    watch: &'a RefCell<Watch>,
    now: Instant,
}

impl<T: phy::TxToken> phy::TxToken for TxToken<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (watch, now) = (self.watch, self.now);
        self.inner.consume(len, |buf| {
            let result = f(buf);
            watch.borrow_mut().outbound(buf, now);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::tests::ipv4_frame;
    use smoltcp::wire::IpAddress;

    const US: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7);
    const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);

    /// One segment from `src` to `dst`, as an Ethernet frame.
    struct Seg {
        seq: i32,
        ack: Option<i32>,
        window: u16,
        len: usize,
        syn: bool,
        wscale: Option<u8>,
        sack: [Option<(u32, u32)>; 3],
    }

    fn seg(seq: i32, ack: i32, window: u16, len: usize) -> Seg {
        Seg {
            seq,
            ack: Some(ack),
            window,
            len,
            syn: false,
            wscale: None,
            sack: [None; 3],
        }
    }

    /// A pure ACK of the peer's with one SACK block.
    fn sack(seq: i32, ack: i32, window: u16, left: u32, right: u32) -> Seg {
        Seg {
            sack: [Some((left, right)), None, None],
            ..seg(seq, ack, window, 0)
        }
    }

    fn frame(src: SocketAddrV4, dst: SocketAddrV4, s: &Seg) -> Vec<u8> {
        let payload = vec![0xabu8; s.len];
        let tcp = TcpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
            control: if s.syn {
                TcpControl::Syn
            } else {
                TcpControl::None
            },
            seq_number: TcpSeqNumber(s.seq),
            ack_number: s.ack.map(TcpSeqNumber),
            window_len: s.window,
            window_scale: s.wscale,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: s.sack,
            timestamp: None,
            payload: &payload,
        };
        let ends = (*src.ip(), *dst.ip());
        ipv4_frame(ends, IpProtocol::Tcp, tcp.buffer_len(), |payload| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(payload),
                &IpAddress::from(ends.0),
                &IpAddress::from(ends.1),
                &ChecksumCapabilities::default(),
            )
        })
    }

    /// A watch tracking one connection whose SYNs agreed on shifts 3 (ours) and 7, and
    /// which has sent 100 bytes from 5000 and last advertised `window` (raw) at ACK 1000.
    fn watch(window: u16) -> (Watch, Instant) {
        let now = Instant::now();
        let mut watch = Watch::default();
        watch.track((US, PEER), now);
        let mut syn = seg(999, 0, 64, 0);
        (syn.ack, syn.syn, syn.wscale) = (None, true, Some(7));
        assert_eq!(watch.inbound(&frame(PEER, US, &syn), now), Verdict::Pass);
        let mut syn_ack = seg(4999, 1000, 64, 0);
        (syn_ack.syn, syn_ack.wscale) = (true, Some(3));
        watch.outbound(&frame(US, PEER, &syn_ack), now);
        watch.outbound(&frame(US, PEER, &seg(5000, 1000, window, 100)), now);
        (watch, now)
    }

    /// What the watch salvages from the peer's segment `s`.
    fn salvage(watch: &mut Watch, now: Instant, s: Seg) -> Option<Vec<u8>> {
        assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
        let mut salvaged = std::mem::take(&mut watch.salvaged);
        assert!(salvaged.len() <= 1);
        salvaged.pop_front()
    }

    #[test]
    fn a_zero_window_still_takes_the_ack_of_a_probe_with_data() {
        let (mut watch, now) = watch(0);
        // A window probe carrying data at RCV.NXT: smoltcp drops it, ACK and all.
        let bare = salvage(&mut watch, now, seg(1000, 5100, 681, 4)).expect("salvaged");
        let eth = EthernetFrame::new_checked(&bare[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(tcp.seq_number(), TcpSeqNumber(1000));
        assert_eq!(tcp.ack_number(), TcpSeqNumber(5100));
        assert_eq!(tcp.window_len(), 681);
        assert!(tcp.ack() && !tcp.fin() && !tcp.psh() && !tcp.syn() && !tcp.rst());
        assert!(tcp.payload().is_empty());
        assert_eq!(watch.get(&(US, PEER)).unwrap().acks_salvaged, 1);
        // The same ACK again is no news: smoltcp has it.
        assert!(salvage(&mut watch, now, seg(1000, 5100, 681, 4)).is_none());
        // A new window is.
        assert!(salvage(&mut watch, now, seg(1000, 5100, 700, 4)).is_some());
    }

    #[test]
    fn a_pure_ack_just_past_a_rounded_window_is_salvaged_and_one_far_past_is_not() {
        let (mut watch, now) = watch(0);
        // Linux stamps pure ACKs with SND.NXT when it overshoots by less than a unit.
        let bare = salvage(&mut watch, now, seg(1004, 5050, 681, 0)).expect("salvaged");
        let ip = Ipv4Packet::new_checked(&bare[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.seq_number(), TcpSeqNumber(1000));
        // Past the edge by more than one unit of our scale (8 bytes): left to smoltcp.
        assert!(salvage(&mut watch, now, seg(1009, 5060, 681, 0)).is_none());
        // An ACK of data never sent: smoltcp's to challenge.
        assert!(salvage(&mut watch, now, seg(1004, 5200, 681, 0)).is_none());
        // A keepalive probe (RCV.NXT - 1) is behind the window: smoltcp answers it and
        // drops it, so an ACK it carries that is news must be handed on.
        assert!(salvage(&mut watch, now, seg(999, 5070, 681, 0)).is_some());
        // Once taken, the same ACK is no news.
        assert!(salvage(&mut watch, now, seg(999, 5070, 681, 0)).is_none());
    }

    /// Everything the watch queued for smoltcp, parsed (checksums checked).
    fn queued(watch: &mut Watch) -> Vec<Segment> {
        std::mem::take(&mut watch.salvaged)
            .iter()
            .map(|frame| Segment::arriving(frame).expect("a well-formed segment"))
            .collect()
    }

    #[test]
    fn an_ack_behind_the_window_is_salvaged_within_a_window() {
        let (mut watch, now) = watch(10);
        // A pure ACK overtaken by the peer's data, or from a peer that went back after
        // a retransmission timeout: 50 bytes behind RCV.NXT, our window is 80.
        let bare = salvage(&mut watch, now, seg(950, 5050, 681, 0)).expect("salvaged");
        let bare = Segment::arriving(&bare).unwrap();
        assert_eq!(
            (bare.seq, bare.ack),
            (TcpSeqNumber(1000), Some(TcpSeqNumber(5050)))
        );
        // Further behind than any window we advertised: no peer's honest mistake.
        assert!(salvage(&mut watch, now, seg(900, 5100, 681, 0)).is_none());
        // Exactly half the sequence space away: neither behind nor ahead (smoltcp's own
        // subtraction would panic here; the fuzzer found it).
        let opposite = 1000i32.wrapping_add(i32::MIN);
        assert!(salvage(&mut watch, now, seg(opposite, 5100, 681, 0)).is_none());
        let late = seg(1000, 5050i32.wrapping_add(i32::MIN), 681, 4);
        assert_eq!(watch.inbound(&frame(PEER, US, &late), now), Verdict::Pass);
    }

    #[test]
    fn data_under_an_old_ack_is_mended_not_lost() {
        let (mut watch, now) = watch(10);
        assert!(salvage(&mut watch, now, seg(1000, 5100, 700, 0)).is_none());
        // Reordered: data sent before that ACK, carrying an older one. smoltcp would drop
        // it whole; smoltcp gets a copy under the newest ACK and window instead.
        let late = seg(1000, 5050, 690, 40);
        assert_eq!(watch.inbound(&frame(PEER, US, &late), now), Verdict::Drop);
        let copies = queued(&mut watch);
        assert_eq!(copies.len(), 1);
        let copy = &copies[0];
        assert_eq!((copy.seq, copy.payload_len), (TcpSeqNumber(1000), 40));
        assert_eq!((copy.ack, copy.window), (Some(TcpSeqNumber(5100)), 700));
        // An ACK further back than any window the peer advertised is no honest peer's:
        // left to smoltcp, which drops it (RFC 5961 §5.2).
        let blind = seg(1000, 5100 - 200_000, 700, 40);
        assert_eq!(watch.inbound(&frame(PEER, US, &blind), now), Verdict::Pass);
        assert!(queued(&mut watch).is_empty());
        // Data under the current ACK passes as it is.
        let fresh = seg(1040, 5100, 700, 40);
        assert_eq!(watch.inbound(&frame(PEER, US, &fresh), now), Verdict::Pass);
        assert!(queued(&mut watch).is_empty());
    }

    #[test]
    fn a_damaged_segment_moves_nothing() {
        let (mut watch, now) = watch(0);
        // The probe of the first test, with a bit flipped in its ACK number: its checksum
        // fails, smoltcp drops it, and the watch must not take that ACK as news.
        let mut damaged = frame(PEER, US, &seg(1000, 5100, 681, 4));
        damaged[14 + 20 + 9] ^= 0x01;
        assert_eq!(watch.inbound(&damaged, now), Verdict::Pass);
        assert!(queued(&mut watch).is_empty());
        let wire = watch.get(&(US, PEER)).unwrap();
        assert_eq!((wire.segs_in, wire.acks_salvaged), (1, 0));
        // The true ACK still counts as news.
        assert!(salvage(&mut watch, now, seg(1000, 5100, 681, 4)).is_some());
    }

    /// A watch whose end has sent 100 more bytes in each of four segments (5100 to
    /// 5500, window 80), the first 100 acknowledged: five segments from 5100 in flight.
    fn in_flight() -> (Watch, Instant) {
        let (mut watch, now) = watch(10);
        for seq in [5100, 5200, 5300, 5400] {
            watch.outbound(&frame(US, PEER, &seg(seq, 1000, 10, 100)), now);
        }
        assert!(salvage(&mut watch, now, seg(1000, 5100, 700, 0)).is_none());
        (watch, now)
    }

    /// The peer's segment at `seq` carrying 10 bytes of its own data, acknowledging
    /// 5100 with one SACK block: what it queued for smoltcp. smoltcp never counts a
    /// segment with data as a duplicate ACK.
    fn data_with_sack(watch: &mut Watch, seq: i32, right: u32, at: Instant) -> Vec<Segment> {
        let s = Seg {
            len: 10,
            ..sack(seq, 5100, 700, 5200, right)
        };
        assert_eq!(watch.inbound(&frame(PEER, US, &s), at), Verdict::Pass);
        queued(watch)
    }

    /// The peer SACKs the three segments after 5100, one by one: 5100 is lost, and the
    /// watch has queued the duplicate ACKs that make smoltcp send it again.
    fn sack_three_after_5100(watch: &mut Watch, now: Instant) {
        assert!(data_with_sack(watch, 1000, 5300, now).is_empty());
        assert!(data_with_sack(watch, 1010, 5400, now).is_empty());
        assert_eq!(data_with_sack(watch, 1020, 5500, now).len(), 5);
    }

    #[test]
    fn sack_of_three_later_segments_sets_off_a_fast_retransmit() {
        let (mut watch, now) = in_flight();
        // 5100..5200 missing. One, then two later segments held: could be reordering.
        assert!(data_with_sack(&mut watch, 1000, 5300, now).is_empty());
        assert!(data_with_sack(&mut watch, 1010, 5400, now).is_empty());
        // Three: lost (RFC 6675). smoltcp counts only bare duplicate ACKs repeating ACK
        // and window, and starts at exactly the third: one off-window ACK resets its
        // count, then three repeats, each just past the data smoltcp took.
        let dups = data_with_sack(&mut watch, 1020, 5500, now);
        let windows: Vec<u16> = dups.iter().map(|d| d.window).collect();
        assert_eq!(windows, [701, 700, 700, 700, 700]);
        for dup in &dups {
            assert_eq!(dup.ack, Some(TcpSeqNumber(5100)));
            assert_eq!((dup.seq, dup.payload_len), (TcpSeqNumber(1030), 0));
        }
        // Counted once smoltcp sends it.
        let fast = |watch: &Watch| watch.get(&(US, PEER)).unwrap().fast_retransmits;
        assert_eq!(fast(&watch), 0);
        let again = frame(US, PEER, &seg(5100, 1030, 10, 100));
        watch.outbound(&again, now);
        assert_eq!(fast(&watch), 1);
        // Once per loss...
        assert!(data_with_sack(&mut watch, 1030, 5500, now).is_empty());
        // ...unless its retransmission is lost too: no ACK after an RTT and a quarter.
        let later = now + Duration::from_secs(2);
        assert_eq!(data_with_sack(&mut watch, 1040, 5500, later).len(), 5);
        watch.outbound(&again, later);
        assert_eq!(fast(&watch), 2);
        // The hole filled: nothing more.
        let s = seg(1050, 5500, 700, 0);
        assert_eq!(watch.inbound(&frame(PEER, US, &s), later), Verdict::Pass);
        assert!(queued(&mut watch).is_empty());
    }

    #[test]
    fn a_retransmission_without_an_ack_is_signalled_again_by_the_timer() {
        let (mut watch, now) = in_flight();
        sack_three_after_5100(&mut watch, now);
        assert_eq!(watch.next_loss_recheck(), None, "armed once it goes out");
        let fast = |watch: &Watch| watch.get(&(US, PEER)).unwrap().fast_retransmits;
        let again = frame(US, PEER, &seg(5100, 1030, 10, 100));
        // The peer's window is full: nothing more goes out for it to SACK, and no ACK
        // comes. Each time the timer signals again, after twice as long as before.
        let mut sent = now;
        let mut waits = Vec::new();
        for n in 1..=MAX_RECHECKS {
            watch.outbound(&again, sent);
            assert_eq!(fast(&watch), u64::from(n));
            let due = watch.next_loss_recheck().expect("a recheck armed");
            waits.push(due - sent);
            watch.recheck_losses(due - Duration::from_micros(1));
            assert!(queued(&mut watch).is_empty(), "not before it is due");
            watch.recheck_losses(due);
            let dups = queued(&mut watch);
            let windows: Vec<u16> = dups.iter().map(|d| d.window).collect();
            assert_eq!(windows, [701, 700, 700, 700, 700]);
            for dup in &dups {
                assert_eq!(dup.ack, Some(TcpSeqNumber(5100)));
                assert_eq!((dup.seq, dup.payload_len), (TcpSeqNumber(1030), 0));
            }
            sent = due + Duration::from_millis(1);
        }
        assert_eq!(waits[1], waits[0] * 2);
        assert_eq!(waits[2], waits[0] * 4);
        // Then smoltcp's own retransmission timeout takes over.
        watch.outbound(&again, sent);
        assert_eq!(watch.next_loss_recheck(), None);
        watch.recheck_losses(sent + Duration::from_secs(5));
        assert!(queued(&mut watch).is_empty());
    }

    #[test]
    fn a_segment_behind_sacked_data_is_lost_after_a_reordering_window() {
        let (mut watch, now) = in_flight();
        // One later segment arrived: too few to call 5100 lost by count (RFC 6675), but
        // it is if no ACK for 5100 comes within a quarter RTT more (RFC 8985).
        assert!(data_with_sack(&mut watch, 1000, 5300, now).is_empty());
        let due = watch
            .next_loss_recheck()
            .expect("a reordering window armed");
        assert!(due > now);
        watch.recheck_losses(due - Duration::from_micros(1));
        assert!(queued(&mut watch).is_empty());
        watch.recheck_losses(due);
        let dups = queued(&mut watch);
        assert_eq!(dups.len(), 5);
        assert!(dups.iter().all(|d| d.ack == Some(TcpSeqNumber(5100))));
        let fast = |watch: &Watch| watch.get(&(US, PEER)).unwrap().fast_retransmits;
        watch.outbound(&frame(US, PEER, &seg(5100, 1010, 10, 100)), due);
        assert_eq!(fast(&watch), 1);
        // Reordering after all: the segment comes, the ACK moves, nothing more.
        let (mut watch, now) = in_flight();
        data_with_sack(&mut watch, 1000, 5300, now);
        let s = seg(1010, 5300, 700, 0);
        assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
        assert_eq!(watch.next_loss_recheck(), None);
        watch.recheck_losses(now + Duration::from_secs(1));
        assert!(queued(&mut watch).is_empty());
    }

    #[test]
    fn an_ack_for_the_retransmission_stops_the_recheck() {
        let (mut watch, now) = in_flight();
        sack_three_after_5100(&mut watch, now);
        watch.outbound(&frame(US, PEER, &seg(5100, 1030, 10, 100)), now);
        assert!(watch.next_loss_recheck().is_some());
        let s = seg(1030, 5500, 700, 0);
        assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
        assert_eq!(watch.next_loss_recheck(), None);
        watch.recheck_losses(now + Duration::from_secs(5));
        assert!(queued(&mut watch).is_empty());
        assert!(watch.rechecking.is_empty());
    }

    #[test]
    fn three_bare_duplicate_acks_are_smoltcps_own_to_act_on() {
        let (mut watch, now) = in_flight();
        for right in [5300, 5400, 5500] {
            let s = sack(1000, 5100, 700, 5200, right);
            assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
            assert!(queued(&mut watch).is_empty());
        }
        // smoltcp's third duplicate ACK starts it: nothing added, and counted when sent.
        let fast = |watch: &Watch| watch.get(&(US, PEER)).unwrap().fast_retransmits;
        assert_eq!(fast(&watch), 0);
        watch.outbound(&frame(US, PEER, &seg(5100, 1000, 10, 100)), now);
        assert_eq!(fast(&watch), 1);
    }

    #[test]
    fn sack_remembers_blocks_the_peer_does_not_repeat() {
        let (mut watch, now) = in_flight();
        // smoltcp reports its newest block only; the scoreboard joins them.
        let blocks = [(5200, 5300, false), (5400, 5500, false), (5300, 5400, true)];
        for (seq, (left, right, lost)) in (1000..).step_by(10).zip(blocks) {
            let s = Seg {
                len: 10,
                ..sack(seq, 5100, 700, left, right)
            };
            assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
            assert_eq!(!queued(&mut watch).is_empty(), lost, "{left}..{right}");
        }
    }

    #[test]
    fn early_retransmit_when_all_of_a_small_flight_but_the_first_arrived() {
        let (mut watch, now) = watch(10);
        for seq in [5100, 5200, 5300] {
            watch.outbound(&frame(US, PEER, &seg(seq, 1000, 10, 100)), now);
        }
        assert!(salvage(&mut watch, now, seg(1000, 5100, 700, 0)).is_none());
        // Three in flight from 5100; one later held: perhaps reordering.
        let s = sack(1000, 5100, 700, 5200, 5300);
        assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
        assert!(queued(&mut watch).is_empty());
        // Both later ones held: no third can come to make three (RFC 5827).
        let s = sack(1000, 5100, 700, 5300, 5400);
        assert_eq!(watch.inbound(&frame(PEER, US, &s), now), Verdict::Pass);
        assert_eq!(queued(&mut watch).len(), 5);
    }

    #[test]
    fn acceptable_segments_need_no_salvage() {
        let (mut watch, now) = watch(0);
        // A pure ACK at RCV.NXT fits a zero window.
        assert!(salvage(&mut watch, now, seg(1000, 5100, 681, 0)).is_none());
        // Data in an open window (10 << 3 = 80 bytes).
        watch.outbound(&frame(US, PEER, &seg(5100, 1000, 10, 0)), now);
        assert!(salvage(&mut watch, now, seg(1000, 5100, 700, 40)).is_none());
        assert_eq!(watch.get(&(US, PEER)).unwrap().acks_salvaged, 0);
    }

    /// A SYN from the peer at `port`.
    fn syn_from(port: u16) -> Vec<u8> {
        let mut syn = seg(999, 0, 64, 0);
        (syn.ack, syn.syn) = (None, true);
        frame(SocketAddrV4::new(*PEER.ip(), port), US, &syn)
    }

    #[test]
    fn syns_are_held_only_for_places_that_free_up_without_an_accept() {
        let now = Instant::now();
        let mut watch = Watch::default();
        // The listener can take no SYN now; two places in its backlog will free up
        // without an accept (half-open connections to recycle, room not yet armed).
        watch.set_gate(*US.ip(), US.port(), 0, 2);
        for port in 1..=3 {
            assert_eq!(watch.inbound(&syn_from(port), now), Verdict::Drop);
        }
        let gate = |watch: &Watch| *watch.gate(*US.ip(), US.port()).unwrap();
        assert_eq!(watch.held_for(*US.ip(), US.port()), 2);
        assert_eq!(
            gate(&watch).dropped,
            1,
            "a third has no place: the oldest goes"
        );
        // One place opens, and the half-open connections became ready to accept: the
        // newest held SYN goes on, the other no longer has a place and is dropped.
        watch.set_gate(*US.ip(), US.port(), 1, 0);
        watch.release_held(*US.ip(), US.port(), now, 1);
        assert_eq!(watch.held_for(*US.ip(), US.port()), 0);
        assert_eq!(gate(&watch).dropped, 2);
        assert!(matches!(
            watch.replay.front(),
            Some(Replay::Held(dst, frame)) if *dst == US && *frame == syn_from(3)
        ));
        // An accept queue that is full holds nothing; a SYN held too long is dropped.
        watch.replay.clear();
        watch.set_gate(*US.ip(), US.port(), 0, 0);
        assert_eq!(watch.inbound(&syn_from(4), now), Verdict::Drop);
        assert_eq!(gate(&watch).dropped, 3);
        watch.set_gate(*US.ip(), US.port(), 0, 1);
        assert_eq!(watch.inbound(&syn_from(5), now), Verdict::Drop);
        watch.release_held(*US.ip(), US.port(), now + MAX_HOLD, 0);
        assert_eq!(watch.held_for(*US.ip(), US.port()), 0);
        assert_eq!(gate(&watch).dropped, 4);
    }

    #[test]
    fn a_syn_sent_again_takes_the_place_of_the_one_held_for_its_connection() {
        let now = Instant::now();
        let mut watch = Watch::default();
        let (addr, port) = (*US.ip(), US.port());
        watch.set_gate(addr, port, 0, 4);
        for syn in [syn_from(1), syn_from(1), syn_from(2)] {
            assert_eq!(watch.inbound(&syn, now), Verdict::Drop);
        }
        assert_eq!(watch.held_for(addr, port), 2, "one SYN held per connection");
        assert_eq!(watch.gate(addr, port).unwrap().dropped, 0);
        // A place opens and the second client's SYN, sent again, goes through: the copy
        // held before must never follow it (it would open a stale half-open connection).
        watch.set_gate(addr, port, 1, 4);
        assert_eq!(watch.inbound(&syn_from(2), now), Verdict::Pass);
        assert_eq!(watch.held_for(addr, port), 1);
        let ((_, peer), _, _) = &watch.held[0];
        assert_eq!(peer.port(), 1);
    }

    #[test]
    fn a_held_syn_is_traced_as_held() {
        use crate::trace::tests::{Shared, lines};
        let out = Shared::default();
        let now = Instant::now();
        let mut watch = Watch::new(Some(Trace::to_writer(out.clone(), false)));
        watch.set_gate(*US.ip(), US.port(), 0, 1);
        assert_eq!(watch.inbound(&syn_from(1), now), Verdict::Drop);
        let text = lines(&out);
        assert!(
            text.lines()
                .any(|l| l.contains("[S]") && l.contains("(held: the backlog makes room)")),
            "{text}"
        );
    }
}
