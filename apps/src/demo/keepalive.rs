//! `tapnet demo keepalive`: TCP keepalive (RFC 1122 §4.2.3.6) on an idle connection.
//! After `idle` without a segment from the peer, the client sends a probe: an ACK with a
//! sequence number one below what the peer expects (with one byte of garbage, as BSD
//! sent it and smoltcp does), which the peer must answer with an ACK of what it has. While the peer answers, the connection lives on. Then
//! the peer goes silent (the impairment device drops everything, both ways) and the
//! probes go unanswered, every `interval`; after `count` of them, idle + interval × count
//! after the peer was last heard, the connection fails and a blocked read returns the
//! error.

use std::io::{self, Read};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netdev::Impairment;
use stack::{KeepAlive, State};

use super::{DemoArgs, Lab, SERVER};

/// Short settings, so that the demo takes seconds (Go's defaults are 15 s, 15 s, 9).
const KEEPALIVE: KeepAlive = KeepAlive::new()
    .with_idle(Duration::from_secs(1))
    .with_interval(Duration::from_millis(500))
    .with_count(3);
/// Probes the peer answers before it goes silent.
const ANSWERED: u64 = 2;

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| c)?;
    let client = lab.client()?;
    let server_addr = SERVER;
    let listener = lab
        .server
        .listen_config()
        .keepalive(None)
        .listen(server_addr)?;
    let conn = client
        .dialer()
        .keepalive(Some(KEEPALIVE))
        .timeout(Duration::from_secs(5))
        .dial(server_addr)?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    lab.say(&format!(
        "Connected. The client has keepalive on: idle {:.1} s, interval {:.1} s, count {} \
         (Go's defaults are 15 s, 15 s, 9; Linux's 2 h, 75 s, 9). The server has it off. \
         The client blocks in a read; nobody sends anything.",
        KEEPALIVE.idle().as_secs_f64(),
        KEEPALIVE.interval().as_secs_f64(),
        KEEPALIVE.count()
    ));
    let reader = conn.try_clone()?;
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let outcome = (&reader).read(&mut buf);
        let _ = done.send((outcome, Instant::now()));
    });

    let bound = |probes: u64| KEEPALIVE.idle() + KEEPALIVE.interval() * probes as u32;
    let deadline = Instant::now() + bound(ANSWERED) + Duration::from_secs(2);
    while conn.info()?.keepalive_probes < ANSWERED {
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "the client sent {} keepalive probes within {:.1} s, not {ANSWERED}",
                conn.info()?.keepalive_probes,
                (bound(ANSWERED) + Duration::from_secs(2)).as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let the last answer arrive before the peer goes silent.
    std::thread::sleep(Duration::from_millis(50));
    lab.say(&format!(
        "{ANSWERED} probes, each after {:.1} s of quiet: seq is one below what the server \
         expects, so the server answers with an ACK of what it has, and the quiet starts \
         over. The connection is alive and the application saw nothing.",
        KEEPALIVE.idle().as_secs_f64()
    ));

    lab.say(
        "Now the server's end of the wire drops every frame, both ways: as if the server \
         lost power, or a NAT on the path forgot the connection.",
    );
    let silent = Impairment {
        loss: 100.0,
        ..Impairment::default()
    };
    let link = &lab.server_link;
    link.set_egress(silent.clone()).map_err(io::Error::other)?;
    link.set_ingress(silent).map_err(io::Error::other)?;
    let went_silent = Instant::now();
    let limit = KEEPALIVE.give_up_after() + Duration::from_secs(2);
    let (outcome, ended) = result.recv_timeout(limit).map_err(|_| {
        io::Error::other(format!(
            "the client's blocked read did not fail within {:.1} s of the peer going \
             silent (keepalive should give up after {:.1} s)",
            limit.as_secs_f64(),
            KEEPALIVE.give_up_after().as_secs_f64()
        ))
    })?;
    let took = ended.saturating_duration_since(went_silent);
    let err = match outcome {
        Err(err) => err,
        Ok(n) => {
            return Err(io::Error::other(format!(
                "the client's blocked read returned Ok({n}) when the peer went silent, not \
                 an error"
            )));
        }
    };
    if err.kind() != io::ErrorKind::TimedOut {
        return Err(io::Error::other(format!(
            "the client's blocked read failed with {:?} ({err}), not TimedOut",
            err.kind()
        )));
    }
    let probes = conn.info().map_or(0, |i| i.keepalive_probes);
    lab.say(&format!(
        "The blocked read returned, {:.2} s after the peer went silent: {err} ({:?}).",
        took.as_secs_f64(),
        err.kind()
    ));
    lab.say(&format!(
        "The bound is idle + interval × count = {:.1} + {:.1} × {} = {:.1} s after the peer \
         was last heard (its answer to probe {ANSWERED}, just before the silence): {} \
         probes in all, the last {} unanswered.",
        KEEPALIVE.idle().as_secs_f64(),
        KEEPALIVE.interval().as_secs_f64(),
        KEEPALIVE.count(),
        KEEPALIVE.give_up_after().as_secs_f64(),
        probes,
        probes.saturating_sub(ANSWERED)
    ));
    let state = accepted.info()?.state;
    lab.say(&format!(
        "The server, without keepalive, never noticed: its end is still {state}. A peer \
         that vanishes is only found by the side that sends something."
    ));
    if state != State::Established {
        return Err(io::Error::other(format!(
            "the server's end is in {state}, not ESTABLISHED, after the silent link"
        )));
    }
    link.set_egress(Impairment::default())
        .map_err(io::Error::other)?;
    link.set_ingress(Impairment::default())
        .map_err(io::Error::other)?;
    lab.say(
        "The wire works again and the server closes: its FIN reaches a client stack that \
         has forgotten the connection, which answers with RST.",
    );
    accepted.close()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !lab.server.sockets().iter().all(|e| e.is_listener()) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(
                "the server's connection was not reset within 3 s of the link coming back",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(conn);
    drop(listener);
    lab.finish(&[
        "Keepalive probes an idle connection; a live peer answers each with an ACK, and \
         the application notices nothing.",
        "A silent peer leaves the probes unanswered: after idle + interval × count the \
         connection fails, and a blocked read returns \"connection timed out\".",
        "Only the probing side finds out; the other side learns when it next sends.",
    ])
}
