//! [`Impair`]: a wrapping device that impairs frames the way Linux `netem` does.
//!
//! Lab machines often lack `tc qdisc ... netem`, and a root shell to run it; tapnet brings
//! the same impairments into the stack's own device chain instead. `Impair<D>` wraps any
//! [`Link`] and treats each direction separately: *egress* is what the stack transmits,
//! *ingress* is what the link delivers to the stack. Each has its own [`Impairment`].
//!
//! # The pipeline
//!
//! Every frame that enters an impaired direction goes through the same steps, in netem's
//! order:
//!
//! 1. **Loss**: dropped with probability `loss`, counted in [`DirectionStats::lost`].
//! 2. **Corruption**: with probability `corrupt`, one bit chosen at random is flipped.
//!    The bit lies in the payload, after the 14-byte Ethernet header, so the frame still
//!    reaches the stack and the damage shows up where checksums catch it; a frame of 14
//!    bytes or fewer has no payload, and the bit is then chosen anywhere in it.
//! 3. **Duplication**: with probability `duplicate` the frame is sent twice. The copy is
//!    made after corruption, so it carries the same damage, and follows the same
//!    schedule as the original: the same delay, right behind it.
//! 4. **Scheduling**: the frame falls due `delay` later, plus an offset drawn uniformly
//!    from `[-jitter, +jitter]` (the sum clamped at zero). With a `rate`, the frame then
//!    occupies the link for `len * 8 / rate` seconds: frames take the link one after the
//!    other in the order they entered, each starting once its delay is over and the
//!    link is free, and each is due when its last bit has left.
//! 5. **Release**, in order of due time; frames due at the same time keep their order.
//!    Jitter can therefore reorder frames, as it does in netem.
//!
//! **Reordering** follows netem too: with probability `reorder` a frame is sent at once,
//! skipping both its delay and the rate-limited link (netem puts it at the head of its
//! queue), so it overtakes the frames still held. Without a delay there would be nothing
//! to overtake, so a chosen frame is instead held back for 1 ms and the frames after it
//! overtake it. Either way it is counted in [`DirectionStats::reordered`].
//!
//! At most `limit` frames (1000 when `limit` is 0, netem's default) wait in a direction;
//! a frame that would exceed it is dropped (drop-tail) and counted in
//! [`DirectionStats::overflowed`].
//!
//! # Repeatable runs
//!
//! Each direction draws from its own `fastrand` generator, seeded from
//! [`ImpairConfig::seed`] (egress with the seed itself, ingress with a value derived from
//! it). Every frame draws the same six numbers in the same order whatever the settings,
//! so the same seed, settings and frames give the same run, frame for frame and bit for
//! bit. The clock is the smoltcp [`Instant`] the caller passes: the device never reads the
//! system clock, which lets tests drive it through virtual time.
//!
//! # Never blocking the driver
//!
//! Held frames wait in the device's own queues, not in a sleeping thread.
//! [`Link::poll_at`] reports when the earliest falls due (a time already past while one
//! is due, so the driver does not sleep on it); [`Link::service`] and [`Link::flush`]
//! hand due egress frames to the inner device, and `receive` hands out due ingress frames
//! before it pulls new ones from the inner device.
//!
//! Frames are held in buffers taken from a pool that each direction reuses; a buffer is
//! allocated only when the pool is empty, and the pool keeps at most `limit` of them. A
//! direction whose [`Impairment::is_none`] costs nothing: its frames are never copied,
//! the inner device's own tokens are handed through.
//!
//! The transmit token that `receive` returns cannot reach the inner device, which the
//! receive token is still borrowing. A frame sent through it goes into the egress queue
//! (due at once if egress adds no delay) and leaves on the next `transmit`, `service` or
//! `flush`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smoltcp::phy::{self, Device, DeviceCapabilities, PacketMeta};
use smoltcp::time::Instant;

use crate::{Counters, ETHERNET_HEADER_LEN, Link};

/// Frames a direction holds when [`Impairment::limit`] is 0: netem's default limit.
const DEFAULT_LIMIT: usize = 1000;

/// How long a reordered frame is held back when no delay is configured.
const REORDER_HOLD_MICROS: i64 = 1_000;

/// Frames `receive` pulls from the inner device, at most, while none of them is due yet.
/// Bounds one call; the inner's descriptor stays readable for whatever is left.
const MAX_PULL_PER_RECEIVE: usize = 1024;

/// Impairments of one direction, as netem knows them. The default impairs nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// Percent of frames dropped, 0 to 100.
    pub loss: f64,
    /// Time every frame is held before it leaves.
    pub delay: Duration,
    /// Each frame's delay varies uniformly within `delay ± jitter`, never below zero.
    /// Frames are released by due time, so jitter can reorder them.
    pub jitter: Duration,
    /// Percent of frames sent at once, ahead of those held (held 1 ms when there is no
    /// delay to skip, so that the next frames overtake them).
    pub reorder: f64,
    /// Percent of frames sent twice.
    pub duplicate: f64,
    /// Percent of frames with one random bit flipped after the Ethernet header (anywhere
    /// in a frame of 14 bytes or fewer).
    pub corrupt: f64,
    /// Link rate in bits per second; `None` is unlimited.
    pub rate: Option<u64>,
    /// Frames held at most in this direction; 0 means 1000. Beyond it frames are dropped
    /// and counted in [`DirectionStats::overflowed`].
    pub limit: usize,
}

impl Impairment {
    /// True when this direction changes nothing: frames pass through without a copy.
    /// (`limit` alone does not count: with nothing to hold, there is nothing to limit.)
    ///
    /// # Examples
    /// ```
    /// use netdev::Impairment;
    ///
    /// assert!(Impairment::default().is_none());
    /// assert!(!Impairment { loss: 1.0, ..Impairment::default() }.is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        self.loss == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.reorder == 0.0
            && self.duplicate == 0.0
            && self.corrupt == 0.0
            && self.rate.is_none()
    }

    /// Checks that every percentage lies within 0 to 100 and that a rate is above zero.
    ///
    /// # Errors
    /// A message naming the setting, such as `loss 120% is out of range (0 to 100)`.
    ///
    /// # Examples
    /// ```
    /// use netdev::Impairment;
    ///
    /// let bad = Impairment { loss: 120.0, ..Impairment::default() };
    /// assert_eq!(bad.validate().unwrap_err(), "loss 120% is out of range (0 to 100)");
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
        ] {
            if value.is_nan() {
                return Err(format!("{name} is not a number"));
            }
            if !(0.0..=100.0).contains(&value) {
                return Err(format!("{name} {value}% is out of range (0 to 100)"));
            }
        }
        if self.rate == Some(0) {
            return Err(
                "rate 0 bit/s is invalid: it must be above 0 (no rate is unlimited)".into(),
            );
        }
        Ok(())
    }

    fn effective_limit(&self) -> usize {
        if self.limit == 0 {
            DEFAULT_LIMIT
        } else {
            self.limit
        }
    }
}

/// How an [`Impair`] device treats each direction, and the seed of its randomness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImpairConfig {
    /// Frames the stack transmits.
    pub egress: Impairment,
    /// Frames the link delivers to the stack.
    pub ingress: Impairment,
    /// Seeds both directions' random draws: the same seed and the same frames give the
    /// same run.
    pub seed: u64,
}

/// What happened to the frames of one direction.
///
/// Every frame that entered is, at any moment, lost, overflowed, delivered or still held;
/// a duplicate adds one frame to that account: `frames + duplicated = lost + overflowed +
/// delivered + held`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Frames that entered this direction.
    pub frames: u64,
    /// Frames handed on: to the inner device (egress) or to the stack (ingress). Copies
    /// made by duplication count too.
    pub delivered: u64,
    /// Frames dropped by `loss`.
    pub lost: u64,
    /// Copies made by `duplicate`.
    pub duplicated: u64,
    /// Frames with a bit flipped by `corrupt`.
    pub corrupted: u64,
    /// Frames chosen by `reorder`.
    pub reordered: u64,
    /// Frames dropped because `limit` frames were already held.
    pub overflowed: u64,
}

/// What an [`Impair`] device did, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpairStats {
    /// Frames the stack transmitted.
    pub egress: DirectionStats,
    /// Frames the link delivered.
    pub ingress: DirectionStats,
}

/// A device that impairs its inner device's frames like netem: loss, delay with jitter,
/// reordering, duplication, corruption and a rate limit, per direction.
///
/// Each direction runs every frame through netem's steps, in netem's order: loss, then
/// corruption (one bit flipped after the Ethernet header), then duplication (the copy
/// follows right behind the original), then scheduling: `delay ± jitter`, clamped at zero,
/// then the `rate`-limited link, one frame after another. Frames leave in order of due
/// time, so jitter can reorder them. A frame chosen by `reorder` skips its delay and the
/// rate limit and leaves at once, overtaking those held; without a delay it is held
/// 1 ms instead, so that the next frames overtake it. Beyond `limit` held frames, new
/// ones are dropped. [`DirectionStats`] counts each outcome.
///
/// Held frames wait in the device itself, never in a sleeping thread: [`Link::poll_at`]
/// says when the next falls due, [`Link::service`] and [`Link::flush`] send due egress
/// frames, and `receive` hands out due ingress frames before it pulls new ones. The clock
/// is the [`Instant`] the caller passes (for `flush`, the latest seen), never the system
/// clock. The same [`ImpairConfig::seed`] and the same frames give the same run. A
/// direction whose [`Impairment::is_none`] hands the inner device's tokens through
/// without a copy.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use netdev::{Device, Impair, ImpairConfig, Impairment, Instant, Link, WireOptions, wire};
/// use smoltcp::phy::{RxToken, TxToken};
///
/// let (a, mut b) = wire(&WireOptions::default())?;
/// let egress = Impairment { delay: Duration::from_millis(20), ..Impairment::default() };
/// let mut a = Impair::new(a, ImpairConfig { egress, ..ImpairConfig::default() })?;
///
/// let t0 = Instant::from_millis(0);
/// a.transmit(t0).unwrap().consume(60, |frame| frame.fill(7));
/// assert!(b.receive(t0).is_none(), "held back");
/// assert_eq!(a.poll_at(), Some(Instant::from_millis(20)));
///
/// a.service(Instant::from_millis(20));
/// let (rx, _tx) = b.receive(Instant::from_millis(20)).expect("delivered after 20 ms");
/// assert_eq!(rx.consume(|frame| frame.len()), 60);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Impair<D: Link> {
    inner: D,
    config: ImpairConfig,
    control: ImpairControl,
    egress: Pipe,
    ingress: Pipe,
    /// The latest timestamp a caller passed: the clock of `flush`, which has none.
    last_now: Option<Instant>,
}

impl<D: Link> Impair<D> {
    /// Wraps `inner`, impairing its frames as `config` says.
    ///
    /// # Errors
    /// `InvalidInput` when a direction fails [`Impairment::validate`]; the message names
    /// the direction, e.g. `egress loss 120% is out of range (0 to 100)`.
    pub fn new(inner: D, config: ImpairConfig) -> io::Result<Self> {
        for (direction, impairment) in [("egress", &config.egress), ("ingress", &config.ingress)] {
            impairment.validate().map_err(|message| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{direction} {message}"),
                )
            })?;
        }
        Ok(Impair {
            egress: Pipe::new(config.egress.clone(), config.seed),
            ingress: Pipe::new(config.ingress.clone(), ingress_seed(config.seed)),
            inner,
            config,
            control: ImpairControl::default(),
            last_now: None,
        })
    }

    /// A handle that changes this device's impairment while it runs, from any thread.
    pub fn control(&self) -> ImpairControl {
        self.control.clone()
    }

    /// Applies what the control asked for since the last frame.
    fn take_changes(&mut self) {
        if !self.control.changed.swap(false, AtomicOrdering::Acquire) {
            return;
        }
        let changes = std::mem::take(&mut *self.control.lock());
        if let Some(egress) = changes.egress {
            self.config.egress = egress.clone();
            self.egress.set(egress);
        }
        if let Some(ingress) = changes.ingress {
            self.config.ingress = ingress.clone();
            self.ingress.set(ingress);
        }
        self.egress.drop_next(changes.drop_egress);
        self.ingress.drop_next(changes.drop_ingress);
    }

    /// What happened to the frames so far, per direction.
    pub fn stats(&self) -> ImpairStats {
        ImpairStats {
            egress: self.egress.stats,
            ingress: self.ingress.stats,
        }
    }

    /// The configuration this device was built with.
    pub fn config(&self) -> &ImpairConfig {
        &self.config
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Returns the wrapped device. Frames still held are dropped.
    pub fn into_inner(self) -> D {
        self.inner
    }

    fn note_time(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |last| last.max(now)));
    }
}

/// Changes a running [`Impair`] device, as `tc qdisc change` changes netem: a demo
/// cuts a link (loss 100%) or drops exactly one frame while its stack runs. Changes take
/// effect at the device's next frame; frames already held keep their schedule.
///
/// # Examples
/// ```
/// use netdev::{Impair, ImpairConfig, Impairment, WireOptions, wire};
///
/// let (a, _b) = wire(&WireOptions::default())?;
/// let a = Impair::new(a, ImpairConfig::default())?;
/// let control = a.control();
/// // Later, from any thread: the link goes silent both ways.
/// let cut = Impairment { loss: 100.0, ..Impairment::default() };
/// control.set_egress(cut.clone())?;
/// control.set_ingress(cut)?;
/// assert!(control.set_egress(Impairment { loss: 120.0, ..Impairment::default() }).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ImpairControl {
    changes: Arc<Mutex<Changes>>,
    changed: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Changes {
    egress: Option<Impairment>,
    ingress: Option<Impairment>,
    drop_egress: u32,
    drop_ingress: u32,
}

impl ImpairControl {
    /// Replaces the impairment of frames the stack transmits.
    ///
    /// # Errors
    /// The message of [`Impairment::validate`]; nothing changes then.
    pub fn set_egress(&self, impairment: Impairment) -> Result<(), String> {
        impairment.validate()?;
        self.change(|c| c.egress = Some(impairment));
        Ok(())
    }

    /// Replaces the impairment of frames the link delivers.
    ///
    /// # Errors
    /// The message of [`Impairment::validate`]; nothing changes then.
    pub fn set_ingress(&self, impairment: Impairment) -> Result<(), String> {
        impairment.validate()?;
        self.change(|c| c.ingress = Some(impairment));
        Ok(())
    }

    /// Drops the next `n` frames the stack transmits (counted as lost).
    pub fn drop_next_egress(&self, n: u32) {
        self.change(|c| c.drop_egress = c.drop_egress.saturating_add(n));
    }

    /// Drops the next `n` frames the link delivers (counted as lost).
    pub fn drop_next_ingress(&self, n: u32) {
        self.change(|c| c.drop_ingress = c.drop_ingress.saturating_add(n));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, f: impl FnOnce(&mut Changes)) {
        f(&mut self.lock());
        self.changed.store(true, AtomicOrdering::Release);
    }
}

/// The ingress generator's seed: a different stream from egress's, derived from the same
/// seed (one splitmix64 step).
fn ingress_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hands due egress frames to the inner device until none is due or it refuses one.
fn push_due<D: Link>(inner: &mut D, pipe: &mut Pipe, now: Instant) {
    while pipe.is_due(now) {
        let Some(token) = inner.transmit(now) else {
            break; // The frame stays queued; poll_at keeps reporting it.
        };
        let Some(frame) = pipe.pop_due(now) else {
            break;
        };
        phy::TxToken::consume(token, frame.len(), |buf| buf.copy_from_slice(&frame));
        pipe.stats.delivered += 1;
        pipe.recycle(frame);
    }
}

impl<D: Link> Device for Impair<D> {
    type RxToken<'a>
        = ImpairRxToken<'a, D>
    where
        Self: 'a;
    type TxToken<'a>
        = ImpairTxToken<'a, D>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.note_time(now);
        self.take_changes();
        let Impair {
            inner,
            egress,
            ingress,
            ..
        } = self;

        if ingress.passthrough {
            // Nothing to do to the frame: hand the inner device's token through.
            let (rx, tx) = inner.receive(now)?;
            ingress.stats.frames += 1;
            ingress.stats.delivered += 1;
            let tx = if egress.passthrough && egress.held.is_empty() {
                TxInner::Direct {
                    token: tx,
                    stats: &mut egress.stats,
                }
            } else {
                TxInner::Queue {
                    pipe: egress,
                    now,
                    out: Out::Token(tx),
                }
            };
            return Some((ImpairRxToken(RxInner::Inner(rx)), ImpairTxToken(tx)));
        }

        // Frames already due go first; otherwise pull from the inner device until one is.
        if !ingress.is_due(now) {
            for _ in 0..MAX_PULL_PER_RECEIVE {
                let Some((rx, _tx)) = inner.receive(now) else {
                    break;
                };
                let mut frame = ingress.take_buffer();
                phy::RxToken::consume(rx, |bytes| frame.extend_from_slice(bytes));
                ingress.admit(now, frame);
                if ingress.is_due(now) {
                    break;
                }
            }
        }
        let frame = ingress.pop_due(now)?;
        ingress.stats.delivered += 1;

        push_due(inner, egress, now);
        let tx = if egress.passthrough && egress.held.is_empty() {
            match inner.transmit(now) {
                Some(token) => TxInner::Direct {
                    token,
                    stats: &mut egress.stats,
                },
                None => TxInner::Queue {
                    pipe: egress,
                    now,
                    out: Out::Later,
                },
            }
        } else {
            TxInner::Queue {
                pipe: egress,
                now,
                out: Out::Device(inner),
            }
        };
        let rx = RxInner::Held(HeldFrame {
            frame,
            pipe: ingress,
        });
        Some((ImpairRxToken(rx), ImpairTxToken(tx)))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.note_time(now);
        self.take_changes();
        let Impair { inner, egress, .. } = self;
        push_due(inner, egress, now);
        if egress.passthrough && egress.held.is_empty() {
            return inner.transmit(now).map(|token| {
                ImpairTxToken(TxInner::Direct {
                    token,
                    stats: &mut egress.stats,
                })
            });
        }
        // Always accepted: a frame beyond the limit is dropped and counted, as netem does.
        Some(ImpairTxToken(TxInner::Queue {
            pipe: egress,
            now,
            out: Out::Device(inner),
        }))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<D: Link> Link for Impair<D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }

    /// The earliest of the inner device's own time and the next held frame's due time. A
    /// time already past means a frame is due now.
    fn poll_at(&self) -> Option<Instant> {
        [
            self.inner.poll_at(),
            self.egress.next_due(),
            self.ingress.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn service(&mut self, now: Instant) {
        self.note_time(now);
        self.take_changes();
        self.inner.service(now);
        push_due(&mut self.inner, &mut self.egress, now);
    }

    fn flush(&mut self) {
        if let Some(now) = self.last_now {
            push_due(&mut self.inner, &mut self.egress, now);
        }
        self.inner.flush();
    }

    fn counters(&self) -> &Arc<Counters> {
        self.inner.counters()
    }

    fn is_broken(&self) -> bool {
        self.inner.is_broken()
    }
}

/// The receive token of an [`Impair`]: the inner device's own token when ingress is not
/// impaired, otherwise a frame the device held.
pub struct ImpairRxToken<'a, D: Link + 'a>(RxInner<'a, D>);

enum RxInner<'a, D: Link + 'a> {
    Inner(D::RxToken<'a>),
    Held(HeldFrame<'a>),
}

/// A held ingress frame; its buffer goes back to the pool once the stack has read it.
struct HeldFrame<'a> {
    frame: Vec<u8>,
    pipe: &'a mut Pipe,
}

impl Drop for HeldFrame<'_> {
    fn drop(&mut self) {
        self.pipe.recycle(std::mem::take(&mut self.frame));
    }
}

impl<D: Link> phy::RxToken for ImpairRxToken<'_, D> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self.0 {
            RxInner::Inner(token) => token.consume(f),
            RxInner::Held(held) => f(&held.frame),
        }
    }

    fn meta(&self) -> PacketMeta {
        match &self.0 {
            RxInner::Inner(token) => token.meta(),
            RxInner::Held(_) => PacketMeta::default(),
        }
    }
}

/// The transmit token of an [`Impair`]: the inner device's own token when egress is not
/// impaired, otherwise a place in the egress queue.
pub struct ImpairTxToken<'a, D: Link + 'a>(TxInner<'a, D>);

enum TxInner<'a, D: Link + 'a> {
    /// Egress passes through: straight to the inner device, counted on the way.
    Direct {
        token: D::TxToken<'a>,
        stats: &'a mut DirectionStats,
    },
    /// Into the egress pipeline, then on through `out` if it is due at once.
    Queue {
        pipe: &'a mut Pipe,
        now: Instant,
        out: Out<'a, D>,
    },
}

/// Where a queued frame that is due at once can go right away.
enum Out<'a, D: Link + 'a> {
    /// The inner device: every due frame is pushed.
    Device(&'a mut D),
    /// One transmit token of the inner device (from its `receive`): one due frame.
    Token(D::TxToken<'a>),
    /// Nowhere yet: the next `transmit`, `service` or `flush` sends it.
    Later,
}

impl<D: Link> phy::TxToken for ImpairTxToken<'_, D> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.0 {
            TxInner::Direct { token, stats } => {
                stats.frames += 1;
                stats.delivered += 1;
                token.consume(len, f)
            }
            TxInner::Queue { pipe, now, out } => {
                let mut frame = pipe.take_buffer();
                frame.resize(len, 0);
                let result = f(&mut frame);
                pipe.admit(now, frame);
                match out {
                    Out::Device(inner) => push_due(inner, pipe, now),
                    Out::Token(token) => {
                        if let Some(frame) = pipe.pop_due(now) {
                            token.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
                            pipe.stats.delivered += 1;
                            pipe.recycle(frame);
                        }
                    }
                    Out::Later => {}
                }
                result
            }
        }
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        if let TxInner::Direct { token, .. } = &mut self.0 {
            token.set_meta(meta);
        }
    }
}

/// A frame waiting in a direction's queue.
#[derive(Debug)]
struct Held {
    /// Microseconds since the clock's zero.
    due: i64,
    /// Order of entry, to keep frames due at the same time in order.
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Reversed, so that `BinaryHeap`, a max-heap, yields the earliest frame first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The random numbers one frame draws, always all of them and always in this order, so
/// that a run depends only on the seed and the frames.
struct Draws {
    loss: u64,
    corrupt: u64,
    corrupt_bit: u64,
    duplicate: u64,
    reorder: u64,
    jitter: u64,
}

impl Draws {
    fn new(rng: &mut fastrand::Rng) -> Self {
        Draws {
            loss: rng.u64(..),
            corrupt: rng.u64(..),
            corrupt_bit: rng.u64(..),
            duplicate: rng.u64(..),
            reorder: rng.u64(..),
            jitter: rng.u64(..),
        }
    }
}

/// True with probability `percent` / 100 for a uniformly drawn `draw`.
fn happens(draw: u64, percent: f64) -> bool {
    // The top 53 bits make a uniform f64 in [0, 1): 100% always happens, 0% never.
    let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
    unit * 100.0 < percent
}

/// Scales a uniform `draw` to `0..n` (for `n` > 0) without a second draw.
fn scale_draw(draw: u64, n: u128) -> u128 {
    (u128::from(draw) * n) >> 64
}

/// A duration in whole microseconds, rounded up so that no delay is cut short, and
/// saturating at what an [`Instant`] can hold.
fn micros_ceil(d: Duration) -> i64 {
    i64::try_from(d.as_nanos().div_ceil(1_000)).unwrap_or(i64::MAX)
}

/// Flips one bit chosen by `draw`: after the Ethernet header, or anywhere in a frame that
/// has no payload. False for an empty frame, which has no bit to flip.
fn flip_one_bit(frame: &mut [u8], draw: u64) -> bool {
    let start = if frame.len() > ETHERNET_HEADER_LEN {
        ETHERNET_HEADER_LEN
    } else {
        0
    };
    let region = &mut frame[start..];
    if region.is_empty() {
        return false;
    }
    let bits = region.len() as u128 * 8;
    let bit = scale_draw(draw, bits) as usize; // < bits, so it fits.
    region[bit / 8] ^= 1 << (bit % 8);
    true
}

/// One direction: its impairment, randomness, held frames and buffer pool.
#[derive(Debug)]
struct Pipe {
    impairment: Impairment,
    passthrough: bool,
    /// Delay or jitter is configured: reordering skips it rather than holding 1 ms.
    delayed: bool,
    limit: usize,
    rng: fastrand::Rng,
    held: BinaryHeap<Held>,
    /// Empty buffers to reuse.
    pool: Vec<Vec<u8>>,
    /// Buffers this direction ever allocated: stays small once the pool is warm.
    allocated: usize,
    /// Frames still to drop outright ([`ImpairControl`]).
    drop_next: u32,
    /// With a rate: when the link has sent the last frame scheduled on it, in
    /// nanoseconds (finer than the clock, so rounding does not add up over frames).
    link_free_nanos: i128,
    next_seq: u64,
    stats: DirectionStats,
}

impl Pipe {
    fn new(impairment: Impairment, seed: u64) -> Self {
        Pipe {
            passthrough: impairment.is_none(),
            delayed: !impairment.delay.is_zero() || !impairment.jitter.is_zero(),
            limit: impairment.effective_limit(),
            impairment,
            rng: fastrand::Rng::with_seed(seed),
            held: BinaryHeap::new(),
            pool: Vec::new(),
            allocated: 0,
            drop_next: 0,
            link_free_nanos: i128::MIN,
            next_seq: 0,
            stats: DirectionStats::default(),
        }
    }

    /// Takes a new impairment; held frames keep their schedule.
    fn set(&mut self, impairment: Impairment) {
        // Frames still held must come out the impaired way, so stay on it.
        self.passthrough = impairment.is_none() && self.drop_next == 0 && self.held.is_empty();
        self.delayed = !impairment.delay.is_zero() || !impairment.jitter.is_zero();
        self.limit = impairment.effective_limit();
        self.impairment = impairment;
    }

    /// Drops the next `n` frames too.
    fn drop_next(&mut self, n: u32) {
        if n > 0 {
            self.drop_next = self.drop_next.saturating_add(n);
            self.passthrough = false;
        }
    }

    /// An empty buffer: from the pool, or new when the pool is empty.
    fn take_buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_else(|| {
            self.allocated += 1;
            Vec::new()
        })
    }

    /// Returns a buffer to the pool, which keeps at most `limit` of them.
    fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.pool.len() < self.limit {
            buffer.clear();
            self.pool.push(buffer);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|held| Instant::from_micros(held.due))
    }

    fn is_due(&self, now: Instant) -> bool {
        self.held
            .peek()
            .is_some_and(|held| held.due <= now.total_micros())
    }

    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.is_due(now) {
            self.held.pop().map(|held| held.frame)
        } else {
            None
        }
    }

    /// Runs one frame through loss, corruption, duplication and scheduling.
    fn admit(&mut self, now: Instant, mut frame: Vec<u8>) {
        let draws = Draws::new(&mut self.rng);
        let Impairment {
            loss,
            delay,
            jitter,
            reorder,
            duplicate,
            corrupt,
            ..
        } = self.impairment;
        self.stats.frames += 1;

        if self.drop_next > 0 {
            self.drop_next -= 1;
            self.passthrough =
                self.impairment.is_none() && self.drop_next == 0 && self.held.is_empty();
            self.stats.lost += 1;
            self.recycle(frame);
            return;
        }
        if happens(draws.loss, loss) {
            self.stats.lost += 1;
            self.recycle(frame);
            return;
        }
        if happens(draws.corrupt, corrupt) && flip_one_bit(&mut frame, draws.corrupt_bit) {
            self.stats.corrupted += 1;
        }
        let duplicate = happens(draws.duplicate, duplicate);
        let reorder = happens(draws.reorder, reorder);

        let now_us = i128::from(now.total_micros());
        let ready = if reorder {
            self.stats.reordered += 1;
            if self.delayed {
                now_us // Skip the delay, overtaking what is held (netem).
            } else {
                now_us + i128::from(REORDER_HOLD_MICROS) // Let the next frames overtake.
            }
        } else {
            // delay + uniform offset in [-jitter, +jitter], clamped at zero.
            let jitter = i128::from(micros_ceil(jitter));
            let offset = scale_draw(draws.jitter, (2 * jitter + 1) as u128) as i128 - jitter;
            now_us + (i128::from(micros_ceil(delay)) + offset).max(0)
        };
        let ready = ready.min(i128::from(i64::MAX)) as i64;

        let copy = duplicate.then(|| {
            self.stats.duplicated += 1;
            let mut copy = self.take_buffer();
            copy.extend_from_slice(&frame);
            copy
        });
        self.schedule(ready, reorder, frame);
        if let Some(copy) = copy {
            self.schedule(ready, reorder, copy);
        }
    }

    /// Queues a frame that is ready to leave at `ready`, after the rate limit unless
    /// `skip_rate` (a reordered frame), or drops it if `limit` frames are held.
    fn schedule(&mut self, ready: i64, skip_rate: bool, frame: Vec<u8>) {
        if self.held.len() >= self.limit {
            self.stats.overflowed += 1;
            self.recycle(frame);
            return;
        }
        let due = match self.impairment.rate {
            Some(rate) if !skip_rate => {
                // The frame takes the link once its delay is over and the link is free,
                // and is due when its last bit has left: len * 8 / rate seconds later.
                let bits = frame.len() as u128 * 8;
                let airtime = (bits * 1_000_000_000).div_ceil(u128::from(rate.max(1)));
                let start = self.link_free_nanos.max(i128::from(ready) * 1_000);
                let end = start.saturating_add(i128::try_from(airtime).unwrap_or(i128::MAX));
                self.link_free_nanos = end;
                let end_us = end.saturating_add(999).div_euclid(1_000);
                end_us.min(i128::from(i64::MAX)) as i64
            }
            _ => ready,
        };
        self.held.push(Held {
            due,
            seq: self.next_seq,
            frame,
        });
        self.next_seq += 1;
    }
}

/// Parses a percentage: `5`, `5%`, `0.1%`, from 0 to 100.
///
/// # Errors
/// A message saying what was wrong: not a number, negative, or above 100.
///
/// # Examples
/// ```
/// assert_eq!(netdev::parse_percent("0.1%"), Ok(0.1));
/// assert!(netdev::parse_percent("120%").is_err());
/// ```
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let text = s.trim();
    let number = text.strip_suffix('%').unwrap_or(text).trim_end();
    if number.starts_with('-') {
        return Err(format!("percentage {s:?} is negative: expected 0 to 100"));
    }
    if parse_decimal(number).is_none() {
        return Err(format!(
            "invalid percentage {s:?}: expected a number from 0 to 100, such as 5, 5% or 0.1%"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid percentage {s:?}: expected a number from 0 to 100"))?;
    if value > 100.0 {
        return Err(format!("percentage {s:?} is out of range (0 to 100)"));
    }
    Ok(value)
}

/// Parses a duration: `20ms`, `1.5s`, `250us`, `0`; a bare number is milliseconds, as in
/// `tc`. Units: `ns`, `us` (`usec`, `µs`), `ms` (`msec`), `s` (`sec`).
///
/// # Errors
/// A message saying what was wrong: not a number, negative, unknown unit, or too long.
///
/// # Examples
/// ```
/// use std::time::Duration;
///
/// assert_eq!(netdev::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(netdev::parse_duration("20"), Ok(Duration::from_millis(20)));
/// assert!(netdev::parse_duration("-1ms").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    let (number, unit) = split_number(text);
    let Some((mantissa, decimals)) = parse_decimal(number) else {
        return Err(format!(
            "invalid duration {s:?}: expected a number and a unit, such as 20ms, 1.5s or 250us"
        ));
    };
    let nanos_per_unit: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "msec" | "msecs" => 1_000_000,
        "ns" | "nsec" | "nsecs" => 1,
        "us" | "usec" | "usecs" | "µs" => 1_000,
        "s" | "sec" | "secs" => 1_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit {:?} in duration {s:?}: use ns, us, ms or s",
                unit.trim()
            ));
        }
    };
    let too_long = || format!("duration {s:?} is too long");
    let nanos = scale_decimal(mantissa, decimals, nanos_per_unit).ok_or_else(too_long)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Parses a rate in bits per second: a bare number, or a number with a `tc` unit.
/// `bit`, `kbit`, `mbit`, `gbit`, `tbit` are bits per second (powers of 1000; `kibit`,
/// `mibit`, ... powers of 1024); `bps`, `kbps`, `mbps`, `gbps`, `tbps` are *bytes* per
/// second, as in `tc`, and are multiplied by 8. Units ignore case.
///
/// # Errors
/// A message saying what was wrong: not a number, unknown unit, zero, or too large.
///
/// # Examples
/// ```
/// assert_eq!(netdev::parse_rate("10mbit"), Ok(10_000_000));
/// assert_eq!(netdev::parse_rate("1kbps"), Ok(8_000));
/// assert!(netdev::parse_rate("0").is_err());
/// ```
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.starts_with('-') {
        return Err(format!("rate {s:?} is negative"));
    }
    let (number, unit) = split_number(text);
    let Some((mantissa, decimals)) = parse_decimal(number) else {
        return Err(format!(
            "invalid rate {s:?}: expected bits per second, such as 1000000, 10kbit or 1.5mbit"
        ));
    };
    const K: u128 = 1000;
    const KI: u128 = 1024;
    let bits_per_unit: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "bit" => 1,
        "kbit" => K,
        "mbit" => K.pow(2),
        "gbit" => K.pow(3),
        "tbit" => K.pow(4),
        "kibit" => KI,
        "mibit" => KI.pow(2),
        "gibit" => KI.pow(3),
        "tibit" => KI.pow(4),
        "bps" => 8,
        "kbps" => 8 * K,
        "mbps" => 8 * K.pow(2),
        "gbps" => 8 * K.pow(3),
        "tbps" => 8 * K.pow(4),
        "kibps" => 8 * KI,
        "mibps" => 8 * KI.pow(2),
        "gibps" => 8 * KI.pow(3),
        "tibps" => 8 * KI.pow(4),
        _ => {
            return Err(format!(
                "unknown unit {:?} in rate {s:?}: use bit, kbit, mbit, gbit (bits/s) \
                 or bps, kbps, mbps, gbps (bytes/s)",
                unit.trim()
            ));
        }
    };
    let too_large = || format!("rate {s:?} is too large");
    let bits = scale_decimal(mantissa, decimals, bits_per_unit).ok_or_else(too_large)?;
    match u64::try_from(bits) {
        Ok(0) => Err(format!(
            "rate {s:?} is below 1 bit/s: it must be above 0 (leave the rate unset for unlimited)"
        )),
        Ok(bits) => Ok(bits),
        Err(_) => Err(too_large()),
    }
}

/// Splits `"1.5ms"` into `("1.5", "ms")`.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Reads a plain decimal number (`12`, `1.5`, `.5`, `5.`) exactly, as `mantissa /
/// 10^decimals`. `None` for anything else, or for more than 24 significant digits.
fn parse_decimal(number: &str) -> Option<(u128, u32)> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() + frac.len() > 24 {
        return None;
    }
    let mantissa = int
        .bytes()
        .chain(frac.bytes())
        .fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0'));
    Some((mantissa, frac.len() as u32))
}

/// `mantissa / 10^decimals * unit`, truncated; `None` on overflow.
fn scale_decimal(mantissa: u128, decimals: u32, unit: u128) -> Option<u128> {
    Some(mantissa.checked_mul(unit)? / 10u128.checked_pow(decimals)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{WireEnd, WireOptions, wire};
    use smoltcp::phy::{RxToken, TxToken};

    const HDR: usize = ETHERNET_HEADER_LEN;

    fn ms(t: i64) -> Instant {
        Instant::from_millis(t)
    }

    /// A frame carrying `seq` right after a fake Ethernet header, then a pattern.
    fn frame(seq: u32, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(HDR + 4)];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]); // Local experimental EtherType.
        f[HDR..HDR + 4].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in f[HDR + 4..].iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
        }
        f
    }

    fn seq_of(f: &[u8]) -> u32 {
        u32::from_be_bytes(f[HDR..HDR + 4].try_into().unwrap())
    }

    fn send<T: Device>(dev: &mut T, now: Instant, f: &[u8]) {
        dev.transmit(now)
            .expect("a transmit token")
            .consume(f.len(), |buf| buf.copy_from_slice(f));
    }

    /// Every frame `dev` has for us now (bounded).
    fn recv_all<T: Device>(dev: &mut T, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            match dev.receive(now) {
                Some((rx, _tx)) => out.push(rx.consume(|f| f.to_vec())),
                None => return out,
            }
        }
        panic!("receive never ran dry");
    }

    fn wire_pair() -> (WireEnd, WireEnd) {
        wire(&WireOptions {
            mtu: 1500,
            queue_bytes: 4 << 20,
        })
        .expect("a wire")
    }

    fn egress(egress: Impairment, seed: u64) -> ImpairConfig {
        ImpairConfig {
            egress,
            seed,
            ..ImpairConfig::default()
        }
    }

    /// End A impaired on egress, end B plain, and virtual time stepped from one due time
    /// to the next, recording when each frame reaches B.
    struct Sim {
        a: Impair<WireEnd>,
        b: WireEnd,
        now: Instant,
        arrived: Vec<(Instant, Vec<u8>)>,
    }

    impl Sim {
        fn new(config: ImpairConfig) -> Self {
            let (a, b) = wire_pair();
            Sim {
                a: Impair::new(a, config).expect("a valid config"),
                b,
                now: ms(0),
                arrived: Vec::new(),
            }
        }

        fn drain(&mut self) {
            let now = self.now;
            for f in recv_all(&mut self.b, now) {
                self.arrived.push((now, f));
            }
        }

        fn send(&mut self, f: &[u8]) {
            send(&mut self.a, self.now, f);
            self.a.flush();
            self.drain();
        }

        /// Runs every event due up to `t`, then stops the clock at `t`.
        fn advance_to(&mut self, t: Instant) {
            for _ in 0..1_000_000 {
                self.a.service(self.now);
                self.a.flush();
                self.drain();
                match self.a.poll_at() {
                    Some(next) if next <= self.now => {
                        panic!("a frame due at {next} is still held at {}", self.now)
                    }
                    Some(next) if next <= t => self.now = next,
                    _ => {
                        self.now = self.now.max(t);
                        return;
                    }
                }
            }
            panic!("too many events before {t}");
        }

        /// Runs until nothing is held (bounded by `limit`).
        fn finish(&mut self, limit: Instant) {
            self.advance_to(limit);
            assert_eq!(self.a.poll_at(), None, "frames still held at {limit}");
        }

        fn arrived_seqs(&self) -> Vec<u32> {
            self.arrived.iter().map(|(_, f)| seq_of(f)).collect()
        }
    }

    fn has_inversion(seqs: &[u32]) -> bool {
        seqs.windows(2).any(|w| w[1] < w[0])
    }

    /// Checks the account of DirectionStats against what is still held.
    fn check_account(stats: &DirectionStats, held: usize) {
        assert_eq!(
            stats.frames + stats.duplicated,
            stats.lost + stats.overflowed + stats.delivered + held as u64,
            "{stats:?} with {held} held"
        );
    }

    #[test]
    fn impair_loss_drops_about_the_configured_fraction() {
        let imp = Impairment {
            loss: 10.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 1));
        const N: u32 = 10_000;
        for seq in 0..N {
            sim.send(&frame(seq, 64));
        }
        let delivered = sim.arrived.len() as f64 / f64::from(N);
        // Binomial: sd = sqrt(0.1 * 0.9 / 10000) = 0.3 points; 1.5 points is 5 sd.
        assert!((delivered - 0.90).abs() <= 0.015, "delivered {delivered}");
        let stats = sim.a.stats().egress;
        assert_eq!(stats.frames, u64::from(N));
        assert_eq!(stats.delivered, sim.arrived.len() as u64);
        assert_eq!(stats.lost, u64::from(N) - stats.delivered);
        check_account(&stats, sim.a.egress.held.len());
        // What survives is unchanged and in order.
        let seqs = sim.arrived_seqs();
        assert!(!has_inversion(&seqs));
        for (_, f) in &sim.arrived {
            assert_eq!(f, &frame(seq_of(f), 64));
        }
    }

    #[test]
    fn impair_delay_measured_with_the_real_clock() {
        let epoch = std::time::Instant::now();
        let clock = || Instant::from_micros(epoch.elapsed().as_micros() as i64);
        let delay = Duration::from_millis(30);
        let imp = Impairment {
            delay,
            ..Impairment::default()
        };
        let (a, mut b) = wire_pair();
        let mut a = Impair::new(a, egress(imp, 1)).unwrap();

        let sent_real = std::time::Instant::now();
        let sent = clock();
        send(&mut a, sent, &frame(7, 60));
        assert_eq!(a.poll_at(), Some(sent + delay.into()));

        let mut checks_before = 0;
        let mut arrival = None;
        for _ in 0..1000 {
            let now = clock();
            a.service(now);
            a.flush();
            if let Some((rx, _tx)) = b.receive(now) {
                arrival = Some((sent_real.elapsed(), rx.consume(|f| f.to_vec())));
                break;
            }
            // Not there yet: that must be because 30 ms have not passed.
            assert!(
                sent_real.elapsed() < delay + Duration::from_millis(200),
                "still not delivered after {:?}",
                sent_real.elapsed()
            );
            assert!(now < sent + delay.into(), "due at {now} but not delivered");
            checks_before += 1;
            let wake = a.poll_at().expect("the frame is held");
            let wait = (wake - clock().min(wake)).total_micros();
            std::thread::sleep(Duration::from_micros(wait.min(50_000)));
        }
        let (elapsed, f) = arrival.expect("the frame arrived");
        assert!(checks_before >= 1, "the frame was never seen missing");
        assert!(elapsed >= delay, "arrived after {elapsed:?}");
        assert!(
            elapsed < delay + Duration::from_millis(200),
            "arrived after {elapsed:?}"
        );
        assert_eq!(f, frame(7, 60));
        assert_eq!(a.poll_at(), None);
    }

    #[test]
    fn impair_jitter_keeps_delays_within_bounds_and_reorders() {
        let imp = Impairment {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 3));
        for seq in 0..2000u32 {
            sim.advance_to(ms(i64::from(seq)));
            sim.send(&frame(seq, 64));
        }
        sim.finish(ms(5000));
        assert_eq!(sim.arrived.len(), 2000);
        let delays: Vec<i64> = sim
            .arrived
            .iter()
            .map(|(t, f)| t.total_micros() - i64::from(seq_of(f)) * 1000)
            .collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min >= 30_000 && *max <= 70_000, "delays {min}..{max} us");
        // Uniform over 40 ms: 2000 frames reach both ends of the range.
        assert!(*min < 32_000 && *max > 68_000, "delays {min}..{max} us");
        assert!(has_inversion(&sim.arrived_seqs()), "jitter reorders frames");
    }

    #[test]
    fn impair_jitter_larger_than_delay_clamps_at_zero() {
        let imp = Impairment {
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(100),
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 4));
        for seq in 0..1000u32 {
            sim.advance_to(ms(i64::from(seq)));
            sim.send(&frame(seq, 64));
        }
        sim.finish(ms(5000));
        let delays: Vec<i64> = sim
            .arrived
            .iter()
            .map(|(t, f)| t.total_micros() - i64::from(seq_of(f)) * 1000)
            .collect();
        assert_eq!(delays.len(), 1000);
        assert!(delays.iter().all(|d| (0..=101_000).contains(d)));
        // About half the offsets fall below -1 ms and are clamped to no delay at all.
        let zero = delays.iter().filter(|&&d| d == 0).count();
        assert!((400..=600).contains(&zero), "{zero} undelayed");
    }

    #[test]
    fn impair_reorder_with_delay_sends_chosen_frames_at_once() {
        let imp = Impairment {
            delay: Duration::from_millis(10),
            reorder: 25.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 5));
        for seq in 0..1000u32 {
            sim.advance_to(ms(i64::from(seq)));
            sim.send(&frame(seq, 64));
        }
        sim.finish(ms(2000));
        assert_eq!(sim.arrived.len(), 1000);
        assert!(has_inversion(&sim.arrived_seqs()));
        let stats = sim.a.stats().egress;
        // Binomial: sd = sqrt(1000 * 0.25 * 0.75) = 13.7; 5 sd either side.
        assert!((181..=319).contains(&stats.reordered), "{stats:?}");
        let mut at_once = 0;
        for (t, f) in &sim.arrived {
            match t.total_micros() - i64::from(seq_of(f)) * 1000 {
                0 => at_once += 1,
                10_000 => {}
                d => panic!("frame {} delayed {d} us", seq_of(f)),
            }
        }
        assert_eq!(at_once, stats.reordered);
    }

    #[test]
    fn impair_reorder_without_delay_holds_chosen_frames_back() {
        let imp = Impairment {
            reorder: 20.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 6));
        for seq in 0..1000u32 {
            sim.advance_to(Instant::from_micros(i64::from(seq) * 200));
            sim.send(&frame(seq, 64));
        }
        sim.finish(ms(1000));
        assert_eq!(sim.arrived.len(), 1000);
        assert!(has_inversion(&sim.arrived_seqs()));
        let held = sim
            .arrived
            .iter()
            .filter(|(t, f)| t.total_micros() - i64::from(seq_of(f)) * 200 == 1000)
            .count() as u64;
        assert_eq!(held, sim.a.stats().egress.reordered);
        assert!(held > 100, "{held}");
    }

    #[test]
    fn impair_duplicate_sends_some_frames_twice() {
        let imp = Impairment {
            duplicate: 10.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 7));
        for seq in 0..1000u32 {
            sim.send(&frame(seq, 80));
        }
        let mut count = vec![0u32; 1000];
        for (_, f) in &sim.arrived {
            assert_eq!(f, &frame(seq_of(f), 80), "a copy is exact");
            count[seq_of(f) as usize] += 1;
        }
        assert!(
            count.iter().all(|&c| c == 1 || c == 2),
            "each once or twice"
        );
        let twice = count.iter().filter(|&&c| c == 2).count() as u64;
        // Binomial: sd = sqrt(1000 * 0.1 * 0.9) = 9.5; 5 sd either side.
        assert!((53..=147).contains(&twice), "{twice} duplicated");
        let stats = sim.a.stats().egress;
        assert_eq!(stats.duplicated, twice);
        assert_eq!(stats.delivered, 1000 + twice);
        // The copy follows right behind the original.
        assert!(!has_inversion(&sim.arrived_seqs()));
    }

    /// Indexes of the bits in which `a` and `b` differ.
    fn differing_bits(a: &[u8], b: &[u8]) -> Vec<usize> {
        assert_eq!(a.len(), b.len());
        (0..a.len() * 8)
            .filter(|&bit| (a[bit / 8] ^ b[bit / 8]) & (1 << (bit % 8)) != 0)
            .collect()
    }

    #[test]
    fn impair_corrupt_flips_exactly_one_payload_bit() {
        let imp = Impairment {
            corrupt: 30.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 8));
        let mut corrupted = 0u64;
        for seq in 0..2000u32 {
            let sent = frame(seq, 100);
            let before = sim.arrived.len();
            sim.send(&sent);
            assert_eq!(sim.arrived.len(), before + 1, "delivered at once");
            let got = &sim.arrived[before].1;
            let bits = differing_bits(&sent, got);
            match bits.as_slice() {
                [] => {}
                [bit] => {
                    assert!(bit / 8 >= HDR, "bit {bit} is in the Ethernet header");
                    corrupted += 1;
                }
                more => panic!("{} bits flipped", more.len()),
            }
        }
        assert_eq!(sim.a.stats().egress.corrupted, corrupted);
        // Binomial: sd = sqrt(2000 * 0.3 * 0.7) = 20.5; 5 sd either side.
        assert!((498..=702).contains(&corrupted), "{corrupted}");
    }

    #[test]
    fn impair_corrupt_short_frames_anywhere_and_empty_frames_not_at_all() {
        let imp = Impairment {
            corrupt: 100.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 9));
        for len in 1..=HDR {
            let sent: Vec<u8> = (0..len as u8).collect();
            let before = sim.arrived.len();
            sim.send(&sent);
            assert_eq!(sim.arrived.len(), before + 1);
            assert_eq!(differing_bits(&sent, &sim.arrived[before].1).len(), 1);
        }
        sim.send(&[]); // Nothing to flip; must not panic.
        assert_eq!(sim.a.stats().egress.corrupted, HDR as u64);
        assert_eq!(sim.a.stats().egress.frames, HDR as u64 + 1);
    }

    /// One run under every random impairment at once: what arrived, when, bytes and all.
    fn random_run(seed: u64) -> Vec<(i64, Vec<u8>)> {
        let imp = Impairment {
            loss: 10.0,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            reorder: 20.0,
            duplicate: 10.0,
            corrupt: 10.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, seed));
        for seq in 0..500u32 {
            sim.advance_to(ms(i64::from(seq)));
            sim.send(&frame(seq, 100));
        }
        sim.finish(ms(2000));
        sim.arrived
            .into_iter()
            .map(|(t, f)| (t.total_micros(), f))
            .collect()
    }

    #[test]
    fn impair_same_seed_same_run() {
        let first = random_run(42);
        assert!(first.len() > 400, "{}", first.len());
        assert_eq!(first, random_run(42));
        assert_ne!(first, random_run(43));
    }

    #[test]
    fn impair_ingress_and_egress_draw_different_streams() {
        // The same impairment both ways, one seed: the two directions lose different frames.
        let lossy = Impairment {
            loss: 50.0,
            ..Impairment::default()
        };
        let config = ImpairConfig {
            egress: lossy.clone(),
            ingress: lossy,
            seed: 18,
        };
        let (a, mut b) = wire_pair();
        let mut a = Impair::new(a, config).unwrap();
        let (mut out, mut back) = (Vec::new(), Vec::new());
        for seq in 0..200u32 {
            send(&mut a, ms(0), &frame(seq, 64));
            out.extend(recv_all(&mut b, ms(0)).iter().map(|f| seq_of(f)));
            send(&mut b, ms(0), &frame(seq, 64));
            back.extend(recv_all(&mut a, ms(0)).iter().map(|f| seq_of(f)));
        }
        assert!(!out.is_empty() && !back.is_empty());
        assert_ne!(out, back);
    }

    #[test]
    fn impair_flush_uses_the_latest_timestamp_seen() {
        let imp = Impairment {
            delay: Duration::from_millis(5),
            ..Impairment::default()
        };
        let (a, mut b) = wire_pair();
        let mut a = Impair::new(a, egress(imp, 19)).unwrap();
        send(&mut a, ms(0), &frame(1, 64));
        a.flush();
        assert!(recv_all(&mut b, ms(0)).is_empty(), "not due at 0 ms");
        assert!(a.receive(ms(10)).is_none(), "nothing to receive");
        assert!(recv_all(&mut b, ms(10)).is_empty(), "receive does not send");
        a.flush(); // The clock is now 10 ms: the frame is due.
        assert_eq!(recv_all(&mut b, ms(10)), vec![frame(1, 64)]);
    }

    #[test]
    fn impair_rate_spaces_frames_by_their_serialization_time() {
        let imp = Impairment {
            rate: Some(1_000_000),
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 10));
        for seq in 0..100u32 {
            sim.send(&frame(seq, 1250));
        }
        sim.finish(ms(5000));
        assert_eq!(sim.arrived_seqs(), (0..100).collect::<Vec<_>>());
        // 1250 bytes are 10,000 bits: 10 ms each at 1 Mbit/s.
        for (t, f) in &sim.arrived {
            let slot_end = (i64::from(seq_of(f)) + 1) * 10_000;
            assert!(t.total_micros() >= slot_end, "frame {} at {t}", seq_of(f));
        }
        let last = sim.arrived.last().unwrap().0.total_micros();
        assert!((990_000..=1_010_000).contains(&last), "last at {last} us");
    }

    #[test]
    fn impair_rate_starts_after_the_delay() {
        let imp = Impairment {
            rate: Some(8_000_000), // 1 byte per us.
            delay: Duration::from_millis(5),
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 11));
        sim.send(&frame(0, 1000));
        sim.send(&frame(1, 1000));
        sim.finish(ms(100));
        let times: Vec<i64> = sim.arrived.iter().map(|(t, _)| t.total_micros()).collect();
        assert_eq!(times, [6_000, 7_000]);
    }

    #[test]
    fn impair_limit_overflow_is_dropped_and_counted() {
        let imp = Impairment {
            delay: Duration::from_millis(100),
            limit: 10,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 12));
        for seq in 0..25u32 {
            sim.send(&frame(seq, 64));
        }
        assert_eq!(sim.a.stats().egress.overflowed, 15);
        sim.finish(ms(1000));
        assert_eq!(sim.arrived_seqs(), (0..10).collect::<Vec<_>>());
        assert!(sim.a.egress.pool.len() <= 10);
        check_account(&sim.a.stats().egress, 0);
    }

    #[test]
    fn impair_default_limit_is_1000() {
        let imp = Impairment {
            delay: Duration::from_millis(100),
            ..Impairment::default()
        };
        let (a, _b) = wire_pair();
        let mut a = Impair::new(a, egress(imp, 13)).unwrap();
        for seq in 0..1005u32 {
            send(&mut a, ms(0), &frame(seq, 20));
        }
        assert_eq!(a.stats().egress.overflowed, 5);
        assert_eq!(a.egress.held.len(), 1000);
    }

    #[test]
    fn impair_buffers_are_reused() {
        let imp = Impairment {
            delay: Duration::from_millis(10),
            duplicate: 5.0,
            ..Impairment::default()
        };
        let mut sim = Sim::new(egress(imp, 14));
        for seq in 0..10_000u32 {
            sim.advance_to(ms(i64::from(seq)));
            sim.send(&frame(seq, 64));
        }
        sim.finish(ms(20_000));
        // At most ~11 frames (and their copies) wait at a time; 10,000 went through.
        assert!(sim.a.egress.allocated <= 30, "{}", sim.a.egress.allocated);
        assert!(sim.arrived.len() >= 10_000);
    }

    #[test]
    fn impair_ingress_loses_and_delays_received_frames() {
        let (mut a, b) = wire_pair();
        let config = ImpairConfig {
            ingress: Impairment {
                loss: 20.0,
                delay: Duration::from_millis(20),
                ..Impairment::default()
            },
            seed: 15,
            ..ImpairConfig::default()
        };
        let mut b = Impair::new(b, config).unwrap();
        let mut arrived = Vec::new();
        for t in 0..1100i64 {
            let now = ms(t);
            if t < 1000 {
                send(&mut a, now, &frame(t as u32, 64));
            }
            b.service(now);
            for f in recv_all(&mut b, now) {
                arrived.push((t, f));
            }
            if t == 0 {
                // Frame 0 was pulled in, and is held unless it was lost.
                let lost = b.stats().ingress.lost == 1;
                assert_eq!(b.poll_at(), (!lost).then(|| ms(20)));
            }
        }
        assert_eq!(b.poll_at(), None);
        for (t, f) in &arrived {
            assert_eq!(t - i64::from(seq_of(f)), 20, "frame {}", seq_of(f));
            assert_eq!(f, &frame(seq_of(f), 64));
        }
        assert!(!has_inversion(
            &arrived.iter().map(|(_, f)| seq_of(f)).collect::<Vec<_>>()
        ));
        // Binomial: sd = sqrt(1000 * 0.2 * 0.8) = 12.6; 5 sd either side.
        assert!((737..=863).contains(&arrived.len()), "{}", arrived.len());
        let stats = b.stats().ingress;
        assert_eq!(stats.frames, 1000);
        assert_eq!(stats.delivered, arrived.len() as u64);
        check_account(&stats, 0);
        assert_eq!(b.stats().egress, DirectionStats::default());
    }

    #[test]
    fn impair_reply_from_a_receive_token_waits_in_the_egress_queue() {
        for ingress in [
            Impairment::default(),
            Impairment {
                loss: 0.001,
                ..Impairment::default()
            },
        ] {
            let (mut a, b) = wire_pair();
            let config = ImpairConfig {
                egress: Impairment {
                    delay: Duration::from_millis(5),
                    ..Impairment::default()
                },
                ingress,
                seed: 16,
            };
            let mut b = Impair::new(b, config).unwrap();
            send(&mut a, ms(0), &frame(1, 64));
            let (rx, tx) = b.receive(ms(0)).expect("a frame");
            let request = rx.consume(|f| f.to_vec());
            tx.consume(request.len(), |buf| buf.copy_from_slice(&request));
            assert_eq!(b.poll_at(), Some(ms(5)));
            b.service(ms(4));
            assert!(recv_all(&mut a, ms(4)).is_empty(), "not before 5 ms");
            b.service(ms(5));
            assert_eq!(recv_all(&mut a, ms(5)), vec![frame(1, 64)]);
        }
    }

    #[test]
    fn impair_reply_from_a_receive_token_due_at_once_is_not_lost() {
        // Egress impaired but not delayed, ingress not impaired: the reply leaves through
        // the inner device's own transmit token.
        let (mut a, b) = wire_pair();
        let config = ImpairConfig {
            egress: Impairment {
                corrupt: 0.001,
                ..Impairment::default()
            },
            ..ImpairConfig::default()
        };
        let mut b = Impair::new(b, config).unwrap();
        send(&mut a, ms(0), &frame(1, 64));
        let (rx, tx) = b.receive(ms(0)).expect("a frame");
        let request = rx.consume(|f| f.to_vec());
        tx.consume(request.len(), |buf| buf.copy_from_slice(&request));
        assert_eq!(recv_all(&mut a, ms(0)), vec![frame(1, 64)]);
        assert_eq!(b.poll_at(), None);
    }

    #[test]
    fn impair_pass_through_changes_nothing_and_copies_nothing() {
        let (a, mut b) = wire_pair();
        let mut a = Impair::new(a, ImpairConfig::default()).unwrap();
        let mut back = Vec::new();
        for seq in 0..200u32 {
            let len = 18 + (seq as usize * 37) % 1496;
            send(&mut a, ms(0), &frame(seq, len));
            let got = recv_all(&mut b, ms(0));
            assert_eq!(got, vec![frame(seq, len)]);
            send(&mut b, ms(0), &frame(seq, len));
            back.extend(recv_all(&mut a, ms(0)));
        }
        let want: Vec<Vec<u8>> = (0..200u32)
            .map(|seq| frame(seq, 18 + (seq as usize * 37) % 1496))
            .collect();
        assert_eq!(back, want);
        let stats = a.stats();
        for d in [stats.egress, stats.ingress] {
            assert_eq!((d.frames, d.delivered), (200, 200));
        }
        assert_eq!(
            (a.egress.allocated, a.ingress.allocated),
            (0, 0),
            "no copies"
        );
        assert_eq!(a.poll_at(), None);
    }

    #[test]
    fn impair_never_panics_on_extremes() {
        let extreme = Impairment {
            loss: 50.0,
            delay: Duration::MAX,
            jitter: Duration::MAX,
            reorder: 50.0,
            duplicate: 100.0,
            corrupt: 100.0,
            rate: Some(1),
            limit: 3,
        };
        let slow = Impairment {
            rate: Some(1),
            jitter: Duration::MAX,
            duplicate: 100.0,
            corrupt: 100.0,
            ..Impairment::default()
        };
        for imp in [extreme, slow] {
            let (a, mut b) = wire_pair();
            let config = ImpairConfig {
                egress: imp.clone(),
                ingress: imp,
                seed: u64::MAX,
            };
            let mut a = Impair::new(a, config).unwrap();
            for (i, now) in [0, 1, i64::MAX / 2, i64::MAX - 1, i64::MAX]
                .into_iter()
                .enumerate()
            {
                let now = Instant::from_micros(now);
                for len in [0, 1, 13, 14, 15, 1514] {
                    send(&mut a, now, &vec![i as u8; len]);
                    send(&mut b, now, &vec![i as u8; len]);
                }
                a.service(now);
                a.flush();
                let _ = recv_all(&mut a, now);
                let _ = recv_all(&mut b, now);
                let _ = a.poll_at();
            }
            let stats = a.stats();
            check_account(&stats.egress, a.egress.held.len());
            check_account(&stats.ingress, a.ingress.held.len());
            assert!(a.egress.held.len() <= 3 && a.ingress.held.len() <= 3);
        }
    }

    #[test]
    fn impair_new_rejects_invalid_settings() {
        let cases = [
            (
                Impairment {
                    loss: 120.0,
                    ..Impairment::default()
                },
                "loss 120% is out of range (0 to 100)",
            ),
            (
                Impairment {
                    reorder: -1.0,
                    ..Impairment::default()
                },
                "reorder -1% is out of range (0 to 100)",
            ),
            (
                Impairment {
                    duplicate: f64::NAN,
                    ..Impairment::default()
                },
                "duplicate is not a number",
            ),
            (
                Impairment {
                    corrupt: f64::INFINITY,
                    ..Impairment::default()
                },
                "corrupt inf% is out of range (0 to 100)",
            ),
            (
                Impairment {
                    rate: Some(0),
                    ..Impairment::default()
                },
                "rate 0 bit/s is invalid",
            ),
        ];
        for (imp, message) in cases {
            let error = imp.validate().unwrap_err();
            assert!(error.starts_with(message), "{error:?} for {imp:?}");
            let (a, _b) = wire_pair();
            let config = ImpairConfig {
                ingress: imp.clone(),
                ..ImpairConfig::default()
            };
            let error = Impair::new(a, config).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(
                error.to_string().starts_with(&format!("ingress {message}")),
                "{error}"
            );
        }
        assert_eq!(Impairment::default().validate(), Ok(()));
        let full = Impairment {
            loss: 100.0,
            reorder: 0.0,
            rate: Some(1),
            ..Impairment::default()
        };
        assert_eq!(full.validate(), Ok(()));
    }

    #[test]
    fn impair_is_none_only_without_impairments() {
        assert!(Impairment::default().is_none());
        assert!(
            Impairment {
                limit: 5,
                ..Impairment::default()
            }
            .is_none()
        );
        let some = [
            Impairment {
                loss: 1.0,
                ..Impairment::default()
            },
            Impairment {
                delay: Duration::from_micros(1),
                ..Impairment::default()
            },
            Impairment {
                jitter: Duration::from_micros(1),
                ..Impairment::default()
            },
            Impairment {
                reorder: 1.0,
                ..Impairment::default()
            },
            Impairment {
                duplicate: 1.0,
                ..Impairment::default()
            },
            Impairment {
                corrupt: 1.0,
                ..Impairment::default()
            },
            Impairment {
                rate: Some(1),
                ..Impairment::default()
            },
        ];
        for imp in some {
            assert!(!imp.is_none(), "{imp:?}");
        }
    }

    #[test]
    fn impair_loss_of_100_and_0_percent_are_exact() {
        for (loss, want) in [(100.0, 0), (0.0, 1000)] {
            let imp = Impairment {
                loss,
                corrupt: 0.0001, // Impaired, so frames take the pipeline.
                ..Impairment::default()
            };
            let mut sim = Sim::new(egress(imp, 17));
            for seq in 0..1000u32 {
                sim.send(&frame(seq, 64));
            }
            assert_eq!(sim.arrived.len(), want, "loss {loss}%");
        }
    }

    #[test]
    fn parse_percent_table() {
        let good = [
            ("5", 5.0),
            ("5%", 5.0),
            ("0.1%", 0.1),
            (" 0 ", 0.0),
            ("100%", 100.0),
            ("12.5 %", 12.5),
            (".5", 0.5),
        ];
        for (input, want) in good {
            assert_eq!(parse_percent(input), Ok(want), "{input:?}");
        }
        let bad = [
            ("120%", "out of range"),
            ("100.01", "out of range"),
            ("abc", "invalid percentage"),
            ("-1", "negative"),
            ("", "invalid percentage"),
            ("%", "invalid percentage"),
            ("1.2.3", "invalid percentage"),
            ("nan", "invalid percentage"),
            ("inf", "invalid percentage"),
            ("1e2", "invalid percentage"),
            ("5%%", "invalid percentage"),
        ];
        for (input, message) in bad {
            let error = parse_percent(input).unwrap_err();
            assert!(error.contains(message), "{input:?}: {error}");
        }
    }

    #[test]
    fn parse_duration_table() {
        let good = [
            ("20ms", Duration::from_millis(20)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("0", Duration::ZERO),
            ("20", Duration::from_millis(20)),
            ("0.5", Duration::from_micros(500)),
            ("7ns", Duration::from_nanos(7)),
            ("2 sec", Duration::from_secs(2)),
            ("10MS", Duration::from_millis(10)),
            ("0.000001s", Duration::from_micros(1)),
        ];
        for (input, want) in good {
            assert_eq!(parse_duration(input), Ok(want), "{input:?}");
        }
        let bad = [
            ("-1ms", "negative"),
            ("abc", "invalid duration"),
            ("", "invalid duration"),
            ("ms", "invalid duration"),
            ("5 parsecs", "unknown unit"),
            ("1.2.3s", "invalid duration"),
            ("99999999999999999999999s", "too long"),
            ("1e3ms", "unknown unit"),
        ];
        for (input, message) in bad {
            let error = parse_duration(input).unwrap_err();
            assert!(error.contains(message), "{input:?}: {error}");
        }
    }

    #[test]
    fn parse_rate_table() {
        let good = [
            ("1000000", 1_000_000),
            ("10kbit", 10_000),
            ("10mbit", 10_000_000),
            ("10Mbit", 10_000_000),
            ("1gbit", 1_000_000_000),
            ("1.5mbit", 1_500_000),
            ("1kibit", 1024),
            ("1bps", 8),
            ("1kbps", 8_000),
            ("1mbps", 8_000_000),
            ("1gbps", 8_000_000_000),
            ("1", 1),
            ("100bit", 100),
        ];
        for (input, want) in good {
            assert_eq!(parse_rate(input), Ok(want), "{input:?}");
        }
        let bad = [
            ("0", "below 1 bit/s"),
            ("0.5", "below 1 bit/s"),
            ("0kbit", "below 1 bit/s"),
            ("-1mbit", "negative"),
            ("fast", "invalid rate"),
            ("", "invalid rate"),
            ("10 furlongs", "unknown unit"),
            ("99999999999tbps", "too large"),
        ];
        for (input, message) in bad {
            let error = parse_rate(input).unwrap_err();
            assert!(error.contains(message), "{input:?}: {error}");
        }
    }

    #[test]
    fn control_drops_exactly_the_next_frames_then_changes_the_impairment() {
        let (a, mut b) = wire_pair();
        let mut a = Impair::new(a, ImpairConfig::default()).unwrap();
        let control = a.control();
        control.drop_next_egress(2);
        for seq in 0..5 {
            send(&mut a, ms(0), &frame(seq, 100));
        }
        let got: Vec<u32> = recv_all(&mut b, ms(0)).iter().map(|f| seq_of(f)).collect();
        assert_eq!(got, [2, 3, 4], "the first two dropped, the rest untouched");
        assert_eq!(a.stats().egress.lost, 2);

        // A cut link: everything lost, both ways, until the control restores it.
        let cut = Impairment {
            loss: 100.0,
            ..Impairment::default()
        };
        control.set_egress(cut).unwrap();
        send(&mut a, ms(1), &frame(5, 100));
        assert!(recv_all(&mut b, ms(1)).is_empty());
        control.set_egress(Impairment::default()).unwrap();
        send(&mut a, ms(2), &frame(6, 100));
        let got: Vec<u32> = recv_all(&mut b, ms(2)).iter().map(|f| seq_of(f)).collect();
        assert_eq!(got, [6]);
        assert_eq!(a.config().egress, Impairment::default());
        assert!(
            control
                .set_ingress(Impairment {
                    loss: 101.0,
                    ..Impairment::default()
                })
                .is_err()
        );
    }
}
