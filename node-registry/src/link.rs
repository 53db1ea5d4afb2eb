//! The registry's NATS link as the client's connection events tell it.

/// Whether the link is up, and how often it dropped: a drop and its
/// reconnect can both happen between two looks (a local server restarts in
/// milliseconds), and each drop still means that whatever was in flight
/// (a pull, a reply) is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Connected now.
    pub up: bool,
    /// Disconnections since the client first connected.
    pub drops: u64,
}

impl Link {
    /// The link of a client that has just connected.
    pub fn connected() -> Self {
        Self { up: true, drops: 0 }
    }

    /// The link after a disconnection.
    pub fn dropped(&mut self) {
        self.up = false;
        self.drops += 1;
    }
}
