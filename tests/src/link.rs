//! A TCP link that a test can cut and mend: a loopback proxy in front of a
//! port (a hub's leaf-node port), standing in for the network between two
//! sites. Cut, it drops every connection through it and refuses new ones,
//! as a failed WAN link would; mended, it forwards again.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy from a local port to `127.0.0.1:<target>`.
#[derive(Debug)]
pub struct CuttableLink {
    port: u16,
    up: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableLink {
    /// Starts forwarding a free local port to `target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the link's port");
        let port = listener.local_addr().expect("the link's address").port();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let accepting = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*accepting.borrow() {
                    // Cut: the far side is unreachable.
                    drop(inbound);
                    continue;
                }
                let mut state = accepting.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up, task }
    }

    /// The local port to dial instead of the target.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection through it and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forwards again.
    pub fn mend(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
