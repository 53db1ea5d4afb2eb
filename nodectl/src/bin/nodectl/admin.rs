//! `nodectl drain | resume | cordon | uncordon | deregister`: requests the
//! leader answers; and `nodectl profile ...` on the `profiles` bucket.

use fleet_client::Client;
use nodectl::Error;
use schemas::admin::AdminRequest;
use schemas::status::AdminOp;
use subjects::NodeId;

use crate::args::{Output, ProfileCommand};
use crate::print::{json_line, json_pretty};

/// What an admin request carries besides its op and node.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// Why.
    pub reason: Option<String>,
    /// Who asks.
    pub by: Option<String>,
    /// One GPU.
    pub gpu: Option<u32>,
    /// A drain's length.
    pub for_: Option<String>,
    /// A drain's end.
    pub until: Option<String>,
}

async fn send(client: &Client, op: AdminOp, id: &str, details: Details) -> Result<(), Error> {
    let request = AdminRequest {
        op,
        node_id: NodeId::parse(id).map_err(|e| Error::Invalid(e.to_string()))?,
        reason: details.reason,
        by: details.by,
        gpu: details.gpu,
        for_: details.for_,
        until: details.until,
    };
    let answer = client.admin(&request).await?;
    println!("{}", json_pretty(&answer)?);
    Ok(())
}

/// Sends one op to each node; every node is tried, the first failure is
/// returned (after the others were sent).
pub async fn each(
    client: &Client,
    op: AdminOp,
    ids: &[String],
    details: Details,
) -> Result<(), Error> {
    let mut first = None;
    for id in ids {
        if let Err(e) = send(client, op, id, details.clone()).await {
            eprintln!("nodectl: {id}: {e}");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// One node (or one of its GPUs) into maintenance.
pub async fn cordon(client: &Client, id: &str, details: Details) -> Result<(), Error> {
    send(client, AdminOp::Cordon, id, details).await
}

/// One node (or one of its GPUs) out of maintenance.
pub async fn uncordon(client: &Client, id: &str, details: Details) -> Result<(), Error> {
    send(client, AdminOp::Uncordon, id, details).await
}

/// The record removed.
pub async fn deregister(client: &Client, id: &str, details: Details) -> Result<(), Error> {
    send(client, AdminOp::Deregister, id, details).await
}

/// Runs one `nodectl profile` command.
pub async fn profile(client: &Client, command: ProfileCommand) -> Result<(), Error> {
    let kv = nodectl::profiles::open(client).await?;
    match command {
        ProfileCommand::Set { role, file } => {
            nodectl::profiles::check_role(&role)?;
            let profile = nodectl::profiles::read_file(&file)?;
            let revision = nodectl::profiles::set(&kv, &role, &profile).await?;
            println!("profile of role {role} set at revision {revision}");
        }
        ProfileCommand::Get { role } => match nodectl::profiles::get(&kv, &role).await? {
            Some(found) => println!("{}", json_pretty(&found)?),
            None => return Err(Error::NotFound(format!("no profile for role {role}"))),
        },
        ProfileCommand::List { output } => {
            let all = nodectl::profiles::list(&kv).await?;
            print_revisions(&all, output)?;
        }
        ProfileCommand::Rm { role } => {
            nodectl::profiles::remove(&kv, &role).await?;
            println!("profile of role {role} removed");
        }
        ProfileCommand::History { role, output } => {
            let all = nodectl::profiles::history(&kv, &role).await?;
            print_revisions(&all, output)?;
        }
    }
    Ok(())
}

fn print_revisions(revisions: &[nodectl::profiles::Revision], output: Output) -> Result<(), Error> {
    match output {
        Output::Json => {
            for revision in revisions {
                println!("{}", json_line(revision)?);
            }
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = revisions
                .iter()
                .map(|r| {
                    vec![
                        r.role.clone(),
                        r.revision.to_string(),
                        r.operation.to_owned(),
                        r.at.clone(),
                        r.profile
                            .as_ref()
                            .map(|p| p.to_string())
                            .unwrap_or_default()
                            .chars()
                            .take(60)
                            .collect(),
                    ]
                })
                .collect();
            print!(
                "{}",
                nodectl::table::render(&["ROLE", "REVISION", "OP", "AT", "PROFILE"], &rows)
            );
        }
    }
    Ok(())
}

/// Who asks, for the record: the name in the credentials' JWT, else the
/// local user.
pub fn who(creds: Option<&std::path::Path>) -> Option<String> {
    let from_creds = creds.and_then(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let jwt = fleet_auth::read_creds_jwt(&text)?;
        fleet_auth::jwt::decode(jwt).ok().map(|c| c.name)
    });
    from_creds
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .map(|name| name.chars().take(schemas::admin::MAX_BY_BYTES).collect())
}
