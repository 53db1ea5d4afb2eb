//! `nodectl token create | list | revoke`.

use std::path::Path;

use chrono::Utc;
use fleet_client::Client;
use nodectl::tokens::{self, Grant};
use nodectl::Error;

use crate::args::{Output, TokenCommand};
use crate::print::json_line;

/// Runs one token command.
pub async fn run(client: &Client, dir: &Path, command: TokenCommand) -> Result<(), Error> {
    let kv = nodectl::meta::open(client).await?;
    match command {
        TokenCommand::Create { role, labels, ttl } => {
            let token = tokens::create(&kv, dir, &Grant { role, labels, ttl }).await?;
            println!("{token}");
        }
        TokenCommand::List { output } => list(&tokens::list(&kv).await?, output)?,
        TokenCommand::Revoke { token } => {
            let id = tokens::revoke(&kv, &token).await?;
            println!("revoked join token {id}");
        }
    }
    Ok(())
}

/// Prints the tokens: a table, or JSON lines without the secret's digest.
fn list(listed: &[tokens::Listed], output: Output) -> Result<(), Error> {
    let now = Utc::now();
    let mut rows = Vec::with_capacity(listed.len());
    for tokens::Listed { id, record } in listed {
        let record = match record {
            Ok(record) => record,
            Err(reason) => {
                eprintln!("token {id}: unreadable record ({reason})");
                continue;
            }
        };
        if output == Output::Json {
            let mut line = serde_json::to_value(record)?;
            line["id"] = id.clone().into();
            line["state"] = record.state(now).to_string().into();
            if let Some(map) = line.as_object_mut() {
                map.remove("secret_sha256");
            }
            println!("{}", json_line(&line)?);
            continue;
        }
        let labels: Vec<String> = record
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        rows.push(vec![
            id.clone(),
            record.state(now).to_string(),
            record.role.clone(),
            labels.join(","),
            record.expires_at.clone(),
            record.node_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if output == Output::Table {
        print!(
            "{}",
            nodectl::table::render(&["ID", "STATE", "ROLE", "LABELS", "EXPIRES", "NODE"], &rows)
        );
    }
    Ok(())
}
