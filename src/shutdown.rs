//! Stop signals for a graceful shutdown of either role.
//!
//! actix-server 2.10 stops gracefully on SIGTERM but at once on SIGINT, so
//! both roles turn its signal handling off and wait for [`Signals`] instead.
//! SIGTERM (systemd's stop) and SIGINT (Ctrl-C) both start the same ordered
//! stop, which each role's `run_until` carries out.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Handlers for SIGTERM and SIGINT.
///
/// Installing them early matters: until they exist, SIGTERM kills the
/// process with its default action. Create them before binding listeners.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside a tokio runtime, such as an
    /// actix system.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the first signal and returns its name.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
