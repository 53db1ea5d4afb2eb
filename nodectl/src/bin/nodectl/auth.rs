//! `nodectl auth init | issue | revoke | list`: the auth directory.

use std::path::Path;

use fleet_auth::{AuthDir, Role};
use fleet_client::Client;
use nodectl::Error;

use crate::args::{AuthCommand, Cli};

/// The auth directory, with a hint when it is not there yet.
fn open(dir: &Path) -> Result<AuthDir, Error> {
    AuthDir::open(dir).map_err(|e| Error::Invalid(format!("{e} (run `nodectl auth init` first?)")))
}

/// Runs one auth command.
pub async fn run(cli: &Cli, dir: &Path, command: &AuthCommand) -> Result<(), Error> {
    match command {
        AuthCommand::Init => init(dir),
        AuthCommand::Issue {
            role,
            name,
            node_role,
            ttl,
            out,
        } => {
            let role = nodectl::auth::role(role, name, node_role.as_deref())?;
            issue(cli, dir, role, name, *ttl, out.as_deref()).await
        }
        AuthCommand::Revoke { name, no_push } => revoke(cli, dir, name, *no_push).await,
        AuthCommand::List => list(dir),
    }
}

fn init(dir: &Path) -> Result<(), Error> {
    let made = AuthDir::init(dir)?;
    println!("auth material in {}", made.path().display());
    println!(
        "  server config to include: {}",
        dir.join("server.conf").display()
    );
    for name in ["registry", "admin", "reader", "bootstrap", "sys"] {
        println!("  {name:9} {}", made.creds_path(name).display());
    }
    println!(
        "  account signing key (give to the registry to serve joins): {}",
        dir.join("fleet-signing.nk").display()
    );
    println!("  fleet account: {}", made.account());
    Ok(())
}

async fn issue(
    cli: &Cli,
    dir: &Path,
    role: Role,
    name: &str,
    ttl: Option<std::time::Duration>,
    out: Option<&Path>,
) -> Result<(), Error> {
    let dir = open(dir)?;
    let path = dir.issue(&role, name, ttl)?;
    // The registry checks a node's event signatures against the key it
    // knows for it: tell it (with --creds, an admin's).
    if matches!(role, Role::Node(..)) {
        let key = dir
            .issued()?
            .into_iter()
            .rev()
            .find(|u| u.name == name)
            .map(|u| u.public_key)
            .ok_or_else(|| Error::NotFound("the issued user is missing from issued.json".into()))?;
        if cli.auth.creds.is_some() {
            let kv = nodectl::meta::open(&crate::connect(cli).await?).await?;
            nodectl::node_keys::remember(&kv, name, &key).await?;
        } else {
            eprintln!(
                "note: without --creds the registry is not told {name}'s key; its events go unchecked until it is"
            );
        }
    }
    let path = match out {
        Some(out) => {
            let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
            fleet_auth::write_secret(out, &text)?;
            std::fs::remove_file(&path).map_err(Error::io(&path))?;
            out.to_path_buf()
        }
        None => path,
    };
    println!("{}", path.display());
    Ok(())
}

async fn revoke(cli: &Cli, dir: &Path, name: &str, no_push: bool) -> Result<(), Error> {
    let dir = open(dir)?;
    let account = match dir.revoke(name) {
        Ok(account) => account,
        // Not issued here: a node that joined through the registry, whose
        // key the registry remembers.
        Err(fleet_auth::AuthError::UnknownUser(_)) => {
            let kv = nodectl::meta::open(&crate::connect(cli).await?).await?;
            let key = nodectl::node_keys::take(&kv, name).await?;
            dir.revoke_key(name, &key)?
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "revoked {name} in {}",
        dir.path().join("fleet.jwt").display()
    );
    if !no_push {
        let sys = runtime_support::NatsAuth {
            creds: Some(dir.creds_path("sys")),
            ..crate::nats_auth(cli)
        };
        let client = Client::connect_with(&cli.nats_url, &sys).await?;
        nodectl::auth::push_account(&client, account).await?;
        println!("pushed to {}", cli.nats_url);
    }
    Ok(())
}

fn list(dir: &Path) -> Result<(), Error> {
    let users = open(dir)?.issued()?;
    let time = |t: Option<i64>| {
        t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
    };
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.clone(),
                u.public_key.clone(),
                time(Some(u.issued_at)),
                time(u.expires_at),
                time(u.revoked_at),
            ]
        })
        .collect();
    print!(
        "{}",
        nodectl::table::render(
            &["NAME", "ROLE", "KEY", "ISSUED", "EXPIRES", "REVOKED"],
            &rows
        )
    );
    Ok(())
}
