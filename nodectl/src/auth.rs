//! The auth directory's side of an operator's work: roles by name, and
//! pushing an account's new JWT to the servers after a revocation.

use fleet_auth::Role;
use fleet_client::Client;

use crate::Error;

/// The role `issue --role` names; `name` is the user's name (a node's id),
/// `node_role` a node's role (whose profile it may read).
pub fn role(role: &str, name: &str, node_role: Option<&str>) -> Result<Role, Error> {
    if let Some(bad) = node_role.filter(|r| !subjects::is_role_name(r)) {
        return Err(Error::Invalid(format!(
            "node role {bad:?}: 1 to 63 characters of a-z 0-9 - _, starting with a letter or digit"
        )));
    }
    if node_role.is_some() && role != "node" {
        return Err(Error::Invalid(
            "--node-role goes with --role node only".into(),
        ));
    }
    match role {
        "node" => Ok(Role::Node(
            subjects::NodeId::parse(name).map_err(|e| Error::Invalid(e.to_string()))?,
            node_role.map(str::to_owned),
        )),
        "reader" => Ok(Role::Reader),
        "admin" => Ok(Role::Admin),
        "registry" => Ok(Role::Registry),
        other => Err(Error::Invalid(format!(
            "unknown role {other:?}: node, reader, admin or registry"
        ))),
    }
}

/// Pushes an account's JWT to the servers `client` (the system user's) is
/// connected to: a revocation takes effect without a restart.
pub async fn push_account(client: &Client, account_jwt: String) -> Result<(), Error> {
    let reply = client
        .nats()
        .request(subjects::SYS_CLAIMS_UPDATE, account_jwt.into())
        .await
        .map_err(|e| Error::nats("pushing the account update")(e.to_string()))?;
    let reply: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(|e| Error::Corrupt {
            what: "the server's answer".into(),
            reason: e.to_string(),
        })?;
    match reply.get("error") {
        Some(error) => Err(Error::Refused(error.to_string())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_name() {
        assert!(matches!(
            role("node", "node-a", None),
            Ok(Role::Node(_, None))
        ));
        assert!(matches!(
            role("node", "node-a", Some("worker")),
            Ok(Role::Node(_, Some(r))) if r == "worker"
        ));
        assert!(role("node", "node-a", Some("a.b")).is_err());
        assert!(role("reader", "r", Some("worker")).is_err());
        assert!(matches!(
            role("node", "Not An Id", None),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(role("reader", "x", None), Ok(Role::Reader)));
        assert!(matches!(role("root", "x", None), Err(Error::Invalid(_))));
    }
}
