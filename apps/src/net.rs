//! The network an app runs on, and how it stops.
//!
//! Every app is written once against [`stack::Network`] and its `Conn` / `Listener`. By
//! default it runs on a tapnet stack on a TAP (`--tap`, default `tap0`, with every
//! device option of [`DeviceArgs`]); with `--kernel` the very same code runs on the
//! kernel's sockets, so the two stacks can be compared side by side.
//!
//! SIGINT and SIGTERM ask the app to stop ([`Ctx::stopping`], [`Ctx::on_stop`]): a
//! server closes its listener and returns, `ping` prints its summary. A second signal
//! ends the process at once. After the app returns, its closed connections get a few
//! seconds to deliver what they hold ([`stack::Stack::settle`]); then the stack is
//! stopped, which completes a `--pcap` file.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use netdev::{Tap, TapOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use stack::kernel::Kernel;
use stack::{Network, Stack};

use crate::device::DeviceArgs;

/// The TAP an app opens when no `--tap` is given.
pub const DEFAULT_TAP: &str = "tap0";
/// The address tapnet takes when no `--addr` is given.
pub const DEFAULT_ADDR: &str = "10.0.0.2/24";

/// How long an app's end waits for its closed connections to deliver what they hold.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Where an app runs: the device options, or `--kernel`.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Run on the kernel's sockets instead of a tapnet stack (no device options then)
    #[arg(long, conflicts_with_all = [
        "tap", "addrs", "gateway", "mac", "mtu", "pcap", "loss", "delay", "jitter",
        "reorder", "duplicate", "corrupt", "rate", "close_wait_warning", "trace",
        "max_sockets",
    ])]
    pub kernel: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl NetArgs {
    /// Opens the TAP and starts a stack on it, wrapped in the capture and impairment
    /// devices the options ask for.
    pub fn open_stack(&self) -> io::Result<Stack> {
        let dev = &self.device;
        let name = dev.tap.as_deref().unwrap_or(DEFAULT_TAP);
        let tap = Tap::open(
            name,
            &TapOptions {
                mtu: dev.mtu.map(usize::from),
            },
        )
        .map_err(|e| io::Error::new(e.kind(), format!("opening TAP {name}: {e}")))?;
        Stack::new(dev.wrap(tap, None)?, dev.stack_config(DEFAULT_ADDR))
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))
    }

    /// A one-line description of the network, for an app's first log line.
    pub fn describe(&self, stack: Option<&Stack>) -> String {
        match stack {
            None => "the kernel's sockets".into(),
            Some(stack) => {
                let addrs: Vec<String> =
                    stack.config().addrs.iter().map(|a| a.to_string()).collect();
                let tap = self.device.tap.as_deref().unwrap_or(DEFAULT_TAP);
                format!("tapnet on {tap} ({})", addrs.join(" "))
            }
        }
    }
}

/// An app: something that runs on any [`Network`].
pub trait App {
    /// Runs until done or until `ctx` says stop. `describe` names the network.
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode>;
}

/// Runs `app` on the network `args` names, with SIGINT and SIGTERM wired to `ctx`.
pub fn run<A: App>(args: &NetArgs, app: A) -> io::Result<ExitCode> {
    let ctx = Ctx::with_signals()?;
    if args.kernel {
        return app.run(Kernel, &ctx, &args.describe(None));
    }
    let stack = args.open_stack()?;
    // `tapnet ss` can look in until the stack stops (the guard outlives `stop` below).
    let _control = crate::control::serve(&stack, args.device.tap.as_deref().unwrap_or(DEFAULT_TAP));
    let result = app.run(stack.clone(), &ctx, &args.describe(Some(&stack)));
    // What the app closed may still be on its way: deliver it (bounded) before the stack
    // ends with the process, as the kernel would after the process is gone.
    if !stack.settle(SETTLE_LIMIT) {
        log::warn!("stopping with data not yet acknowledged by a peer");
    }
    // Stopping joins the driver, which drops the device and completes a pcap file.
    stack.stop();
    result
}

/// What an app may ask of its surroundings: whether it should stop, and what to do
/// when it must.
#[derive(Clone, Default)]
pub struct Ctx {
    inner: Arc<CtxInner>,
}

#[derive(Default)]
struct CtxInner {
    stopping: AtomicBool,
    hooks: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Ctx {
    /// A context that SIGINT and SIGTERM stop.
    fn with_signals() -> io::Result<Ctx> {
        let ctx = Ctx::default();
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let inner = ctx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut signals = signals.forever();
                if signals.next().is_some() {
                    inner.stop();
                }
                if signals.next().is_some() {
                    eprintln!("tapnet: second signal, exiting now");
                    std::process::exit(130);
                }
            })?;
        Ok(ctx)
    }

    /// Whether the app has been asked to stop.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Runs `hook` when the app is asked to stop (at once, if it already was): close a
    /// listener, say, to wake a blocked accept.
    pub fn on_stop(&self, hook: impl FnOnce() + Send + 'static) {
        let mut hooks = self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopping() {
            drop(hooks);
            hook();
        } else {
            hooks.push(Box::new(hook));
        }
    }

    /// Asks the app to stop, and runs the hooks.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        let hooks =
            std::mem::take(&mut *self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner()));
        for hook in hooks {
            hook();
        }
    }
}

/// Accepts connections until the app is asked to stop (which closes the listener), and
/// runs `handle` for each on a thread of its own, so clients are served at once. A
/// failing accept (a connection reset before it was taken) is logged and the loop goes
/// on; a closed listener ends it.
pub fn serve<L, F>(listener: L, ctx: &Ctx, handle: F) -> io::Result<()>
where
    L: stack::Listener + 'static,
    F: Fn(L::Conn, std::net::SocketAddr) + Send + Sync + 'static,
{
    let closer = listener.try_clone()?;
    ctx.on_stop(move || {
        let _ = stack::Listener::close(closer);
    });
    let handle = Arc::new(handle);
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                let handle = handle.clone();
                std::thread::Builder::new()
                    .name(format!("conn {peer}"))
                    .spawn(move || handle(conn, peer))?;
            }
            Err(_) if ctx.stopping() => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Err(e),
            Err(e) => {
                log::warn!("{e}");
                // A listener that fails every accept must not spin.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
