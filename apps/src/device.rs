//! The device options every subcommand shares, and the device stack they build.
//!
//! `--tap`, `--addr`, `--gateway`, `--mac`, `--mtu`, `--pcap` and the impairment options
//! are defined once here and flattened into each subcommand. [`DeviceArgs::wrap`] stacks
//! the wrapping devices on a base device in one fixed order,
//! `Impair<Capture<base>>`, so the capture records what the link really carried.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use netdev::{Capture, FrameSink, Impair, ImpairConfig, Impairment, Link, PcapFile};
use stack::{Ipv4Net, Mac, StackConfig, Trace};

/// What every wrapped device looks like to the rest of the app.
pub type Wrapped<D> = Impair<Capture<D, Option<Box<dyn FrameSink>>>>;

/// Options for the link device and the host on it.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// TAP device to open, or create if it does not exist
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// Address with prefix length, e.g. 10.0.0.2/24 (repeatable)
    #[arg(long = "addr", value_name = "A.B.C.D/P")]
    pub addrs: Vec<Ipv4Net>,
    /// Default gateway, inside one of the --addr prefixes
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// Ethernet address [default: random, locally administered]
    #[arg(long, value_name = "MAC")]
    pub mac: Option<Mac>,
    /// IP MTU [default: the interface's own]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(576..=65000))]
    pub mtu: Option<u16>,
    /// Write every frame, both directions, to a pcap file
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Most TCP sockets the stack holds at once [default: 4096]: at the limit, dials fail
    /// and new SYNs go unanswered until sockets free up
    #[arg(long, value_name = "N")]
    pub max_sockets: Option<usize>,
    /// Print a line per TCP segment in and out, and per state change, to stderr
    #[arg(long)]
    pub trace: bool,
    /// Warn about (and mark in `tapnet ss`) a connection left in CLOSE-WAIT this long
    /// [default: 30s; 1s in `demo close-wait`]
    #[arg(long, value_name = "TIME", value_parser = netdev::parse_duration)]
    pub close_wait_warning: Option<Duration>,
    #[command(flatten)]
    pub impair: ImpairArgs,
}

/// netem-like link impairment. Each takes VALUE for both directions, or in=VALUE /
/// out=VALUE for one; repeat the option to give both.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Link impairment (VALUE, in=VALUE or out=VALUE)")]
pub struct ImpairArgs {
    /// Drop this share of frames, e.g. 5%
    #[arg(long, value_name = "PCT")]
    pub loss: Vec<Directed<Percent>>,
    /// Hold every frame this long, e.g. 20ms
    #[arg(long, value_name = "TIME")]
    pub delay: Vec<Directed<Time>>,
    /// Vary the delay uniformly by up to this much, e.g. 5ms
    #[arg(long, value_name = "TIME")]
    pub jitter: Vec<Directed<Time>>,
    /// Send this share of frames out of order, e.g. 5%
    #[arg(long, value_name = "PCT")]
    pub reorder: Vec<Directed<Percent>>,
    /// Send this share of frames twice, e.g. 1%
    #[arg(long, value_name = "PCT")]
    pub duplicate: Vec<Directed<Percent>>,
    /// Flip one bit in this share of frames' payloads, e.g. 0.1%
    #[arg(long, value_name = "PCT")]
    pub corrupt: Vec<Directed<Percent>>,
    /// Limit the rate, e.g. 10mbit (bits/s; kbit, mbit, gbit; kbps etc. are bytes/s)
    #[arg(long, value_name = "RATE")]
    pub rate: Vec<Directed<Rate>>,
    /// Seed for the impairment's random choices, so a run can be repeated
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
}

/// Which way an impairment applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Both directions.
    Both,
    /// Frames arriving from the link.
    In,
    /// Frames leaving for the link.
    Out,
}

/// A value with the direction it applies to: `5%`, `in=5%` or `out=5%`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Directed<T> {
    pub way: Way,
    pub value: T,
}

impl<T: FromStr<Err = String>> FromStr for Directed<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (way, value) = match s.split_once('=') {
            Some(("in", v)) => (Way::In, v),
            Some(("out", v)) => (Way::Out, v),
            Some((w, _)) => return Err(format!("direction {w:?} is not `in` or `out`")),
            None => (Way::Both, s),
        };
        Ok(Directed {
            way,
            value: value.parse()?,
        })
    }
}

macro_rules! value_type {
    ($(#[$doc:meta])* $name:ident($inner:ty) = $parse:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name(pub $inner);
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $parse(s).map($name)
            }
        }
    };
}
value_type!(
    /// A percentage, 0 to 100.
    Percent(f64) = netdev::parse_percent
);
value_type!(
    /// A duration such as 20ms.
    Time(Duration) = netdev::parse_duration
);
value_type!(
    /// A rate in bits per second.
    Rate(u64) = netdev::parse_rate
);

impl ImpairArgs {
    /// The impairment these options describe, per direction.
    pub fn config(&self) -> ImpairConfig {
        let mut config = ImpairConfig {
            seed: self.seed,
            ..ImpairConfig::default()
        };
        fn apply<T: Copy>(
            config: &mut ImpairConfig,
            values: &[Directed<T>],
            set: impl Fn(&mut Impairment, T),
        ) {
            for v in values {
                if v.way != Way::Out {
                    set(&mut config.ingress, v.value);
                }
                if v.way != Way::In {
                    set(&mut config.egress, v.value);
                }
            }
        }
        apply(&mut config, &self.loss, |i, v| i.loss = v.0);
        apply(&mut config, &self.delay, |i, v| i.delay = v.0);
        apply(&mut config, &self.jitter, |i, v| i.jitter = v.0);
        apply(&mut config, &self.reorder, |i, v| i.reorder = v.0);
        apply(&mut config, &self.duplicate, |i, v| i.duplicate = v.0);
        apply(&mut config, &self.corrupt, |i, v| i.corrupt = v.0);
        apply(&mut config, &self.rate, |i, v| i.rate = Some(v.0));
        config
    }
}

impl DeviceArgs {
    /// The stack config: the given addresses, or `default_addr` when none was given.
    pub fn stack_config(&self, default_addr: &str) -> StackConfig {
        let mut config = StackConfig::new();
        config.addrs = if self.addrs.is_empty() {
            vec![default_addr.parse().expect("built-in addresses parse")]
        } else {
            self.addrs.clone()
        };
        config.gateway = self.gateway;
        config.mac = self.mac;
        if let Some(max) = self.max_sockets {
            config.max_sockets = max;
        }
        if let Some(warning) = self.close_wait_warning {
            config.close_wait_warning = warning;
        }
        config.trace = self.trace.then(Trace::stderr);
        config
    }

    /// Stacks the capture and impairment devices on `base`. `log` is an extra frame
    /// sink (the demo's frame printer) that sees what the pcap file sees.
    pub fn wrap<D: Link>(
        &self,
        base: D,
        log: Option<Box<dyn FrameSink>>,
    ) -> io::Result<Wrapped<D>> {
        let pcap = self.pcap.as_ref().map(PcapFile::create).transpose()?;
        let sink: Option<Box<dyn FrameSink>> = match (pcap, log) {
            (Some(p), Some(l)) => Some(Box::new((p, l))),
            (Some(p), None) => Some(Box::new(p)),
            (None, l) => l,
        };
        Impair::new(Capture::new(base, sink), self.impair.config())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_fold_into_one_config() {
        let args = ImpairArgs {
            loss: vec!["5%".parse().unwrap(), "in=1".parse().unwrap()],
            delay: vec!["out=20ms".parse().unwrap()],
            ..ImpairArgs::default()
        };
        let config = args.config();
        assert_eq!(config.ingress.loss, 1.0);
        assert_eq!(config.egress.loss, 5.0);
        assert_eq!(config.egress.delay, Duration::from_millis(20));
        assert_eq!(config.ingress.delay, Duration::ZERO);
        assert!("up=5".parse::<Directed<Percent>>().is_err());
        assert!("in=500%".parse::<Directed<Percent>>().is_err());
    }
}
