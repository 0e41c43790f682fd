//! TIME-WAIT without the socket: a closed connection's last 10 seconds kept as a record
//! of a few numbers, as Linux keeps an `inet_timewait_sock` (smoltcp would hold the
//! whole socket, buffers and all).
//!
//! A record is what it takes to answer a retransmitted FIN (RFC 9293 §3.10.7.4:
//! acknowledge it and restart the timer) and to keep the 4-tuple from being reused too
//! soon (RFC 9293 §3.6.1). The table holds at most [`MAX_TIME_WAIT`]; beyond, the oldest
//! goes, as Linux's `tcp_max_tw_buckets` does.
//!
//! A client that churns through connections keeps this table full, so every operation
//! on it is O(1): the records sit in a hash map by tuple, and a queue keeps them in the
//! order their waits end (the order they began: every wait is [`TIME_WAIT`] long). The
//! oldest record, the next to end, is always at the front. A record that leaves early
//! (reused, or ended by a new SYN) or whose wait restarts leaves its place in the queue
//! behind; such places are skipped when they come up. Both take their full size at the
//! first record, so churn leaves the stack's memory flat.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::wire::TcpSeqNumber;

use crate::watch::Tuple;

/// TIME-WAIT lasts as long as smoltcp's own (its `CLOSE_DELAY`): 10 s, short of RFC
/// 9293's 2 MSL, as many stacks choose.
pub(crate) const TIME_WAIT: Duration = Duration::from_secs(10);

/// The most records kept. As many as the ephemeral ports, so a client churning through
/// them all at once keeps each one's wait.
pub(crate) const MAX_TIME_WAIT: usize = 16_384;

/// Places in the queue: the records', and as many again as a quarter of them for places
/// left behind. When it is full, the places left behind are swept out (O(n), once in
/// `MAX_TIME_WAIT / 4` restarts or early exits at least).
const QUEUE_ROOM: usize = MAX_TIME_WAIT + MAX_TIME_WAIT / 4;

/// A connection in TIME-WAIT after its socket was freed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeWait {
    /// When the wait ends ([`TIME_WAIT`] after it began, or after the last FIN).
    pub(crate) until: Instant,
    /// Our next sequence number (one past our FIN) and the peer's (one past its FIN).
    pub(crate) snd_nxt: TcpSeqNumber,
    pub(crate) rcv_nxt: TcpSeqNumber,
    /// Our last window field, raw.
    pub(crate) window: u16,
    /// Which place in the queue is this record's: the stamp the place carries.
    stamp: u32,
}

/// The connections in TIME-WAIT.
#[derive(Default)]
pub(crate) struct TimeWaits {
    records: HashMap<Tuple, TimeWait>,
    /// Each record's place, by the stamp it was given, in the order the waits end.
    queue: VecDeque<(u32, Tuple)>,
    /// The next place's stamp.
    stamp: u32,
}

impl TimeWaits {
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(crate) fn contains(&self, tuple: &Tuple) -> bool {
        self.records.contains_key(tuple)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Tuple, &TimeWait)> {
        self.records.iter()
    }

    /// Keeps `tuple` in TIME-WAIT from `now` (the driver's clock, which only goes
    /// forward), with the numbers its FIN's ACK needs. A full table first lets its
    /// oldest record go.
    pub(crate) fn enter(
        &mut self,
        tuple: Tuple,
        now: Instant,
        snd_nxt: TcpSeqNumber,
        rcv_nxt: TcpSeqNumber,
        window: u16,
    ) {
        if self.records.capacity() == 0 {
            self.allocate(now);
        }
        if !self.records.contains_key(&tuple) && self.records.len() >= MAX_TIME_WAIT {
            let oldest = self.queue.pop_front().map(|(_, tuple)| tuple);
            if let Some(oldest) = oldest {
                self.records.remove(&oldest);
            }
        }
        let record = TimeWait {
            until: now + TIME_WAIT,
            snd_nxt,
            rcv_nxt,
            window,
            stamp: 0,
        };
        self.records.insert(tuple, record);
        self.queue_last(tuple);
    }

    /// Restarts `tuple`'s wait from `now` (a FIN came again); returns its record.
    pub(crate) fn restart(&mut self, tuple: Tuple, now: Instant) -> Option<TimeWait> {
        self.records.get_mut(&tuple)?.until = now + TIME_WAIT;
        self.queue_last(tuple);
        self.records.get(&tuple).copied()
    }

    /// Ends `tuple`'s wait now; whether it was waiting.
    pub(crate) fn remove(&mut self, tuple: &Tuple) -> bool {
        let was = self.records.remove(tuple).is_some();
        self.skip_left_places();
        was
    }

    /// The oldest record from `local_ip` to `remote`, for a dial that finds no port free.
    pub(crate) fn oldest_to(&self, local_ip: Ipv4Addr, remote: SocketAddrV4) -> Option<Tuple> {
        self.queue
            .iter()
            .find(|&&(stamp, (local, peer))| {
                *local.ip() == local_ip && peer == remote && self.holds(stamp, &(local, peer))
            })
            .map(|&(_, tuple)| tuple)
    }

    /// Ends the next wait that is over by `now`, if one is; returns its tuple.
    pub(crate) fn expire_next(&mut self, now: Instant) -> Option<Tuple> {
        let &(_, oldest) = self.queue.front()?;
        if self.records.get(&oldest)?.until > now {
            return None;
        }
        self.queue.pop_front();
        self.records.remove(&oldest);
        self.skip_left_places();
        Some(oldest)
    }

    /// When the next wait ends.
    pub(crate) fn next_end(&self) -> Option<Instant> {
        let (_, oldest) = self.queue.front()?;
        Some(self.records.get(oldest)?.until)
    }

    /// Whether the place stamped `stamp` is still `tuple`'s.
    fn holds(&self, stamp: u32, tuple: &Tuple) -> bool {
        self.records.get(tuple).is_some_and(|r| r.stamp == stamp)
    }

    /// Gives `tuple`'s record the last place in the queue (its wait ends last).
    fn queue_last(&mut self, tuple: Tuple) {
        if self.queue.len() >= QUEUE_ROOM {
            let records = &self.records;
            self.queue
                .retain(|(stamp, tuple)| records.get(tuple).is_some_and(|r| r.stamp == *stamp));
        }
        let stamp = self.stamp;
        self.stamp = self.stamp.wrapping_add(1);
        if let Some(record) = self.records.get_mut(&tuple) {
            record.stamp = stamp;
            self.queue.push_back((stamp, tuple));
        }
        self.skip_left_places();
    }

    /// Drops the places at the front that no record holds any more, so the front is the
    /// oldest record's.
    fn skip_left_places(&mut self) {
        while let Some(&(stamp, tuple)) = self.queue.front()
            && !self.holds(stamp, &tuple)
        {
            self.queue.pop_front();
        }
    }

    /// Takes the table's full size, written once so its memory is resident from the
    /// first record: churn then leaves the process's footprint flat.
    fn allocate(&mut self, now: Instant) {
        self.records.reserve(MAX_TIME_WAIT);
        self.queue.reserve(QUEUE_ROOM);
        let filler = TimeWait {
            until: now,
            snd_nxt: TcpSeqNumber(0),
            rcv_nxt: TcpSeqNumber(0),
            window: 0,
            stamp: 0,
        };
        for port in 0..MAX_TIME_WAIT as u16 {
            let end = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            self.records.insert((end, end), filler);
        }
        self.records.clear();
        let nowhere = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        self.queue.resize(QUEUE_ROOM, (0, (nowhere, nowhere)));
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 50_000);

    fn peer(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port)
    }

    fn enter(table: &mut TimeWaits, port: u16, now: Instant) {
        table.enter((US, peer(port)), now, TcpSeqNumber(1), TcpSeqNumber(2), 100);
    }

    #[test]
    fn records_stop_at_16384_and_the_oldest_goes_first() {
        let (mut table, now) = (TimeWaits::default(), Instant::now());
        let tick = Duration::from_micros(1);
        for (i, port) in (1..=MAX_TIME_WAIT as u16 + 1).enumerate() {
            enter(&mut table, port, now + tick * i as u32);
        }
        // One more than the table holds: the record entered first made room.
        assert_eq!(table.records.len(), MAX_TIME_WAIT);
        assert!(!table.contains(&(US, peer(1))));
        assert!(table.contains(&(US, peer(2))));
        assert!(table.contains(&(US, peer(MAX_TIME_WAIT as u16 + 1))));
        assert_eq!(table.next_end(), Some(now + tick + TIME_WAIT));
    }

    #[test]
    fn waits_end_in_order_and_a_restarted_one_later() {
        let (mut table, now) = (TimeWaits::default(), Instant::now());
        let second = Duration::from_secs(1);
        for port in 1..=3 {
            enter(&mut table, port, now + second * u32::from(port));
        }
        // Port 1's FIN comes again at 5 s: its wait ends at 15 s, after the others'.
        assert_eq!(
            table
                .restart((US, peer(1)), now + second * 5)
                .unwrap()
                .until,
            now + second * 15
        );
        assert_eq!(table.next_end(), Some(now + second * 12));
        assert_eq!(table.expire_next(now + second * 11), None);
        let at_13 = now + second * 13;
        assert_eq!(table.expire_next(at_13), Some((US, peer(2))));
        assert_eq!(table.expire_next(at_13), Some((US, peer(3))));
        assert_eq!(table.expire_next(at_13), None);
        assert_eq!(table.next_end(), Some(now + second * 15));
        assert_eq!(table.expire_next(now + second * 15), Some((US, peer(1))));
        assert!(table.is_empty());
        assert_eq!(table.next_end(), None);
    }

    #[test]
    fn a_record_that_left_early_is_skipped() {
        let (mut table, now) = (TimeWaits::default(), Instant::now());
        for port in 1..=3 {
            enter(&mut table, port, now);
        }
        assert!(table.remove(&(US, peer(1))));
        assert!(!table.remove(&(US, peer(1))));
        assert_eq!(table.oldest_to(*US.ip(), peer(1)), None);
        assert_eq!(table.oldest_to(*US.ip(), peer(2)), Some((US, peer(2))));
        assert_eq!(table.oldest_to(Ipv4Addr::LOCALHOST, peer(2)), None);
        // Entered again, the tuple waits from its new start, not its old place.
        enter(&mut table, 1, now + Duration::from_secs(1));
        let later = now + TIME_WAIT;
        assert_eq!(table.expire_next(later), Some((US, peer(2))));
        assert_eq!(table.expire_next(later), Some((US, peer(3))));
        assert_eq!(table.expire_next(later), None);
        assert_eq!(table.records.len(), 1);
    }

    #[test]
    fn restarts_without_end_keep_the_queue_in_its_room() {
        let (mut table, now) = (TimeWaits::default(), Instant::now());
        for port in 1..=MAX_TIME_WAIT as u16 {
            enter(&mut table, port, now);
        }
        let room = table.queue.capacity();
        // A peer that sends its FIN again and again: each restart takes a new place.
        for i in 0..3 * QUEUE_ROOM as u32 {
            table.restart((US, peer(1)), now + Duration::from_micros(u64::from(i)));
        }
        assert!(table.queue.len() <= QUEUE_ROOM);
        assert_eq!(table.queue.capacity(), room, "the queue never grew");
        assert_eq!(table.records.len(), MAX_TIME_WAIT);
        // Port 1, restarted last, now ends last: the next to end is port 2.
        assert_eq!(table.next_end(), Some(now + TIME_WAIT));
        assert_eq!(table.oldest_to(*US.ip(), peer(1)), Some((US, peer(1))));
        assert_eq!(table.expire_next(now + TIME_WAIT), Some((US, peer(2))));
    }
}
