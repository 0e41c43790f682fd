//! `tapnet demo retransmit`: the impairment device drops one segment, and TCP sends it
//! again. A lone segment is resent when the retransmission timer expires (RTO, RFC 6298);
//! a segment lost in the middle of a burst is resent as soon as three duplicate ACKs say
//! the segments after it arrived (fast retransmit, RFC 5681 §3.2).

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use stack::TcpStream;

use super::{DemoArgs, Lab, SERVER};

/// The data of the RTO case: one small segment.
const LONE: usize = 100;
/// Data sent before the burst, to open the congestion window.
const WARM_UP: usize = 16 << 10;
/// Segments of the burst behind the lost one: their duplicate ACKs trigger the fast
/// retransmit.
const AFTER: usize = 5;
/// A full segment's payload on the wire's 1500-byte MTU.
const MSS: usize = 1460;

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| c)?;
    let client = lab.client()?;
    let link = lab.client_link()?;
    let server_addr = SERVER;
    let listener = lab.server.listen(server_addr)?;
    let conn = client.dial_timeout(server_addr, Duration::from_secs(5))?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    accepted.set_read_deadline(Some(Instant::now() + Duration::from_secs(10)))?;

    // The fast-retransmit case.
    lab.say(&format!(
        "The client sends {WARM_UP} bytes first. A new connection may have only a couple of \
         segments in flight; each ACK lets it send more (slow start, RFC 5681 §3.1), so that \
         a burst can follow."
    ));
    let warm_up: Vec<u8> = (0..WARM_UP).map(|i| (i % 241) as u8).collect();
    (&conn).write_all(&warm_up)?;
    check(&read_exactly(&accepted, WARM_UP)?, &warm_up)?;
    lab.say(&format!(
        "Now the client writes {} bytes at once, a burst of segments, and the link drops \
         the first. Those behind it arrive out of order: for each, the server repeats its \
         ACK for the missing bytes (a duplicate ACK; its sack option names what did arrive).",
        (AFTER + 1) * MSS
    ));
    let burst: Vec<u8> = (0..(AFTER + 1) * MSS).map(|i| (i % 253) as u8).collect();
    link.drop_next_egress(1);
    let started = Instant::now();
    (&conn).write_all(&burst)?;
    check(&read_exactly(&accepted, burst.len())?, &burst)?;
    let fast_took = started.elapsed();
    let retransmits = conn.info()?.retransmits;
    if retransmits < 1 {
        return Err(io::Error::other(
            "the burst arrived, but the client counted no retransmission",
        ));
    }
    let rto = conn.info()?.rto.unwrap_or(Duration::from_secs(1));
    if fast_took >= rto / 2 {
        return Err(io::Error::other(format!(
            "the segment lost from the burst took {} ms to recover, no sooner than the \
             retransmission timer ({} ms): no fast retransmit",
            fast_took.as_millis(),
            rto.as_millis()
        )));
    }
    lab.say(&format!(
        "The third duplicate ACK triggered the fast retransmit, marked (retransmission): \
         only the missing segment went again, and the server's next ACK jumped over \
         everything it had kept behind the hole. The burst was complete {} after the \
         write, without waiting for the retransmission timer ({} ms).",
        ms(fast_took),
        rto.as_millis()
    ));

    // The RTO case.
    lab.say(&format!(
        "Now the client writes {LONE} bytes, and the link drops that segment. Nothing follows \
         it, so no duplicate ACK tells the client it was lost: it waits for its \
         retransmission timer (RTO, {} ms).",
        rto.as_millis()
    ));
    let lone: Vec<u8> = (0..LONE).map(|i| (i % 251) as u8).collect();
    link.drop_next_egress(1);
    let started = Instant::now();
    (&conn).write_all(&lone)?;
    check(&read_exactly(&accepted, LONE)?, &lone)?;
    let rto_took = started.elapsed();
    let info = conn.info()?;
    if info.retransmits <= retransmits {
        return Err(io::Error::other(
            "the lone segment arrived, but the client counted no retransmission",
        ));
    }
    if rto_took < rto / 2 {
        return Err(io::Error::other(format!(
            "the lone segment was resent after {} ms, before its RTO of {} ms",
            rto_took.as_millis(),
            rto.as_millis()
        )));
    }
    lab.say(&format!(
        "The timer fired and the segment went again, marked (retransmission): the {LONE} \
         bytes arrived {} after the write. (Had more segments been in flight, an RTO \
         resends them all, from the oldest unacknowledged byte on.)",
        ms(rto_took)
    ));
    lab.say(&format!(
        "All {} bytes arrived intact and in order; the client counted {} retransmitted \
         segments.",
        WARM_UP + burst.len() + LONE,
        info.retransmits
    ));
    conn.close()?;
    thread::sleep(Duration::from_millis(20));
    accepted.close()?;
    drop(listener);
    lab.finish(&[
        &format!(
            "A segment lost in a burst is resent after three duplicate ACKs, without \
             waiting: {} here (RFC 5681 §3.2).",
            ms(fast_took)
        ),
        &format!(
            "A lone lost segment waits for the retransmission timeout: {} here (RFC 6298 \
             sets a 1 s minimum, as smoltcp does).",
            ms(rto_took)
        ),
        "The receiver holds what arrived after the hole and delivers everything in order \
         once it is filled: the application sees no loss, only delay.",
    ])
}

/// Reads exactly `n` bytes from `conn` (within its read deadline).
fn read_exactly(conn: &TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    let mut reader = conn;
    reader
        .read_exact(&mut buf)
        .map_err(|e| io::Error::new(e.kind(), format!("the server reading {n} bytes: {e}")))?;
    Ok(buf)
}

/// Fails unless the server read what the client wrote.
fn check(got: &[u8], sent: &[u8]) -> io::Result<()> {
    if got == sent {
        Ok(())
    } else {
        Err(io::Error::other(
            "the bytes the server read differ from those written",
        ))
    }
}

/// A duration in milliseconds, to a tenth.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
