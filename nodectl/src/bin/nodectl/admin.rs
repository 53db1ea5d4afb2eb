//! `nodectl cordon | uncordon | deregister`: requests the leader answers.

use fleet_client::Client;
use nodectl::Error;
use schemas::admin::AdminRequest;
use schemas::status::AdminOp;
use subjects::NodeId;

use crate::print::json_pretty;

async fn send(client: &Client, op: AdminOp, id: &str, reason: Option<String>) -> Result<(), Error> {
    let request = AdminRequest {
        op,
        node_id: NodeId::parse(id).map_err(|e| Error::Invalid(e.to_string()))?,
        reason,
    };
    let answer = client.admin(&request).await?;
    println!("{}", json_pretty(&answer)?);
    Ok(())
}

/// Into maintenance.
pub async fn cordon(client: &Client, id: &str) -> Result<(), Error> {
    send(client, AdminOp::Cordon, id, None).await
}

/// Out of maintenance.
pub async fn uncordon(client: &Client, id: &str) -> Result<(), Error> {
    send(client, AdminOp::Uncordon, id, None).await
}

/// The record removed.
pub async fn deregister(client: &Client, id: &str, reason: Option<String>) -> Result<(), Error> {
    send(client, AdminOp::Deregister, id, reason).await
}
