//! `nodectl dashboard`: serves the fleet page until interrupted.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;

use fleet_dashboard::{Dashboard, PageConfig, PageNames};
use nodectl::Error;
use tokio_util::sync::CancellationToken;

/// The most a `.creds` file may hold (a JWT and a seed are under 4 KiB).
const MAX_CREDS_BYTES: u64 = 64 * 1024;

/// Reads a `.creds` file for the page: size-checked, and it must look like one.
fn read_creds(path: &Path) -> Result<String, Error> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut text = String::new();
    file.take(MAX_CREDS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(Error::io(path))?;
    if text.len() as u64 > MAX_CREDS_BYTES {
        return Err(Error::Invalid(format!(
            "{}: larger than {MAX_CREDS_BYTES} bytes; not a .creds file",
            path.display()
        )));
    }
    if !text.contains("BEGIN NATS USER JWT") || !text.contains("BEGIN USER NKEY SEED") {
        return Err(Error::Invalid(format!(
            "{}: not a NATS .creds file (no user JWT and seed)",
            path.display()
        )));
    }
    Ok(text)
}

/// Serves the page on `listen` until Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr, ws_url: &str, creds: Option<&Path>) -> Result<(), Error> {
    let page = PageConfig {
        ws_url: ws_url.to_owned(),
        creds: creds.map(read_creds).transpose()?,
        names: PageNames::from(&subjects::Names::default()),
    };
    let dashboard = Dashboard::bind(listen, &page).await?;
    let addr = dashboard
        .local_addr()
        .map_err(Error::io(Path::new("listen socket")))?;
    if !fleet_dashboard::PAGE_BUILT {
        eprintln!(
            "nodectl: this build has no fleet page (run scripts/dashboard.sh, then build again)"
        );
    }
    if !addr.ip().is_loopback() && page.creds.is_some() {
        eprintln!(
            "nodectl: warning: serving on {addr}, not loopback: anyone who can reach it gets the page's credentials"
        );
    }
    println!("dashboard: http://{addr}/  (NATS over {ws_url})");
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        runtime_support::shutdown_signal().await;
        signal.cancel();
    });
    dashboard.serve(stop).await?;
    Ok(())
}
