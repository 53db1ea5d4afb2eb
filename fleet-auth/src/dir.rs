//! All the fleet's identity material in one directory: what `nodectl auth`
//! manages.
//!
//! ```text
//! operator.nk operator.jwt      the operator (signs accounts)
//! sys.nk sys.jwt                the system account
//! fleet.nk fleet.jwt fleet.pub  the fleet's account (revocations live here)
//! fleet-signing.nk              the account's signing key (signs users; the registry holds it to serve joins)
//! creds/<name>.creds            issued credentials (0600)
//! issued.json                   every user issued: role, key, expiry, revocation
//! server.conf                   include this in nats-server's config
//! jwt/                          the server's account resolver store
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{creds_file, jwt, write_secret, AuthError, Role, UserIssuer};

/// One user issued from an [`AuthDir`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedUser {
    /// Its name (a node's is its node id).
    pub name: String,
    /// Its role's name.
    pub role: String,
    /// Its public user key.
    pub public_key: String,
    /// Issued at (Unix seconds).
    pub issued_at: i64,
    /// Expiry (Unix seconds), if any.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When it was revoked (Unix seconds), if it was.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// The directory of identity material.
#[derive(Debug)]
pub struct AuthDir {
    path: PathBuf,
    operator: KeyPair,
    sys: KeyPair,
    fleet: KeyPair,
    signing: KeyPair,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn seed(kp: &KeyPair) -> Result<String, AuthError> {
    kp.seed().map_err(|e| AuthError::Key(e.to_string()))
}

fn read_key(path: &Path) -> Result<KeyPair, AuthError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    KeyPair::from_seed(text.trim()).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
}

/// Limits that leave an account unlimited (JetStream on when `jetstream`).
fn unlimited(jetstream: bool) -> serde_json::Value {
    let js = if jetstream { -1 } else { 0 };
    json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
    })
}

impl AuthDir {
    /// Creates fresh material in `path` (refusing to overwrite any): the
    /// operator, the system and fleet accounts, and credentials for the
    /// registry, an admin, a reader, the bootstrap user and the system user.
    pub fn init(path: &Path) -> Result<Self, AuthError> {
        if path.join("operator.nk").exists() {
            return Err(AuthError::Exists(path.display().to_string()));
        }
        let dir = Self {
            path: path.to_path_buf(),
            operator: KeyPair::new_operator(),
            sys: KeyPair::new_account(),
            fleet: KeyPair::new_account(),
            signing: KeyPair::new_account(),
        };
        for (name, kp) in [
            ("operator.nk", &dir.operator),
            ("sys.nk", &dir.sys),
            ("fleet.nk", &dir.fleet),
            ("fleet-signing.nk", &dir.signing),
        ] {
            write_secret(&path.join(name), &format!("{}\n", seed(kp)?))?;
        }
        std::fs::create_dir_all(path.join("jwt")).map_err(io(path))?;
        write_secret(&path.join("issued.json"), "[]\n")?;
        dir.write_jwts()?;
        for (name, role) in [
            ("registry", Role::Registry),
            ("admin", Role::Admin),
            ("reader", Role::Reader),
            ("bootstrap", Role::Bootstrap),
        ] {
            dir.issue(&role, name, None)?;
        }
        // The system user: pushes account updates (revocations) to servers.
        let user = KeyPair::new_user();
        let claims = jwt::Claims::new(
            "sys",
            &user.public_key(),
            json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}),
        );
        let token = jwt::encode(claims, &dir.sys)?;
        write_secret(&dir.creds_path("sys"), &creds_file(&token, &seed(&user)?))?;
        Ok(dir)
    }

    /// Opens material made by [`AuthDir::init`].
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        Ok(Self {
            path: path.to_path_buf(),
            operator: read_key(&path.join("operator.nk"))?,
            sys: read_key(&path.join("sys.nk"))?,
            fleet: read_key(&path.join("fleet.nk"))?,
            signing: read_key(&path.join("fleet-signing.nk"))?,
        })
    }

    /// Where the auth material lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the credentials of user `name` are written.
    pub fn creds_path(&self, name: &str) -> PathBuf {
        self.path.join("creds").join(format!("{name}.creds"))
    }

    /// The fleet account's public key.
    pub fn account(&self) -> String {
        self.fleet.public_key()
    }

    /// The issuer of user credentials (what the registry needs for joins).
    pub fn issuer(&self) -> Result<UserIssuer, AuthError> {
        UserIssuer::new(&seed(&self.signing)?, &self.account())
    }

    /// Every user issued.
    pub fn issued(&self) -> Result<Vec<IssuedUser>, AuthError> {
        let path = self.path.join("issued.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| AuthError::Jwt(format!("{}: {e}", path.display())))
    }

    fn save_issued(&self, users: &[IssuedUser]) -> Result<(), AuthError> {
        let text =
            serde_json::to_string_pretty(users).map_err(|e| AuthError::Encode(e.to_string()))?;
        write_secret(&self.path.join("issued.json"), &format!("{text}\n"))
    }

    /// Issues credentials for a new user `name` in `role` (a fresh user
    /// key), writes them to [`AuthDir::creds_path`] and returns that path.
    pub fn issue(
        &self,
        role: &Role,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<PathBuf, AuthError> {
        let user = KeyPair::new_user();
        let token = self.issuer()?.issue(role, name, &user.public_key(), ttl)?;
        self.record(role, name, &token)?;
        let path = self.creds_path(name);
        write_secret(&path, &creds_file(&token, &seed(&user)?))?;
        Ok(path)
    }

    /// Records a user JWT issued elsewhere (by the registry, for a join).
    pub fn record(&self, role: &Role, name: &str, user_jwt: &str) -> Result<(), AuthError> {
        let claims = jwt::decode(user_jwt)?;
        let mut users = self.issued()?;
        users.push(IssuedUser {
            name: name.to_owned(),
            role: role.name().to_owned(),
            public_key: claims.sub,
            issued_at: claims.iat,
            expires_at: claims.exp,
            revoked_at: None,
        });
        self.save_issued(&users)
    }

    /// Revokes every credential issued to `name` (or with that public key);
    /// returns the fleet account's new JWT, to push to the servers.
    pub fn revoke(&self, name_or_key: &str) -> Result<String, AuthError> {
        let mut users = self.issued()?;
        let now = chrono::Utc::now().timestamp();
        let mut found = false;
        for user in users
            .iter_mut()
            .filter(|u| u.name == name_or_key || u.public_key == name_or_key)
        {
            found = true;
            user.revoked_at.get_or_insert(now);
        }
        if !found {
            return Err(AuthError::UnknownUser(name_or_key.to_owned()));
        }
        self.save_issued(&users)?;
        self.write_jwts()
    }

    /// Revokes a key issued elsewhere (a node that joined through the
    /// registry) under `name`; returns the fleet account's new JWT.
    pub fn revoke_key(&self, name: &str, public_key: &str) -> Result<String, AuthError> {
        let mut users = self.issued()?;
        let now = chrono::Utc::now().timestamp();
        match users.iter_mut().find(|u| u.public_key == public_key) {
            Some(user) => {
                user.revoked_at.get_or_insert(now);
            }
            None => users.push(IssuedUser {
                name: name.to_owned(),
                role: "node".to_owned(),
                public_key: public_key.to_owned(),
                issued_at: now,
                expires_at: None,
                revoked_at: Some(now),
            }),
        }
        self.save_issued(&users)?;
        self.write_jwts()
    }

    /// The fleet account's JWT as it stands (with every revocation).
    fn fleet_jwt(&self) -> Result<String, AuthError> {
        let revocations: BTreeMap<String, i64> = self
            .issued()?
            .into_iter()
            .filter_map(|u| Some((u.public_key, u.revoked_at?)))
            .collect();
        let fleet = self.account();
        let imports: Vec<serde_json::Value> = ["CONNECT", "DISCONNECT"]
            .iter()
            .map(|kind| {
                json!({
                    "name": format!("connection {kind}"),
                    "subject": format!("$SYS.ACCOUNT.{fleet}.{kind}"),
                    "account": self.sys.public_key(),
                    "type": "stream",
                })
            })
            .collect();
        let claims = jwt::Claims::new(
            "FLEET",
            &fleet,
            json!({
                "type": "account", "version": 2,
                "limits": unlimited(true),
                "signing_keys": [self.signing.public_key()],
                "default_permissions": {"pub": {}, "sub": {}},
                "imports": imports,
                "revocations": revocations,
            }),
        );
        jwt::encode(claims, &self.operator)
    }

    /// Writes the operator and account JWTs and `server.conf`; returns the
    /// fleet account's JWT.
    fn write_jwts(&self) -> Result<String, AuthError> {
        let fleet = self.account();
        let exports: Vec<serde_json::Value> = ["CONNECT", "DISCONNECT"]
            .iter()
            .map(|kind| {
                json!({
                    "name": format!("fleet connection {kind}"),
                    "subject": format!("$SYS.ACCOUNT.{fleet}.{kind}"),
                    "type": "stream",
                })
            })
            .collect();
        let sys_jwt = jwt::encode(
            jwt::Claims::new(
                "SYS",
                &self.sys.public_key(),
                json!({"type": "account", "version": 2, "limits": unlimited(false), "exports": exports}),
            ),
            &self.operator,
        )?;
        let operator_jwt = jwt::encode(
            jwt::Claims::new(
                "fleet-operator",
                &self.operator.public_key(),
                json!({"type": "operator", "version": 2, "system_account": self.sys.public_key()}),
            ),
            &self.operator,
        )?;
        let fleet_jwt = self.fleet_jwt()?;
        let write = |name: &str, text: &str| {
            let path = self.path.join(name);
            std::fs::write(&path, text).map_err(io(&path))
        };
        write("operator.jwt", &operator_jwt)?;
        write("sys.jwt", &sys_jwt)?;
        write("fleet.jwt", &fleet_jwt)?;
        write("fleet.pub", &format!("{fleet}\n"))?;
        let absolute = std::fs::canonicalize(&self.path).map_err(io(&self.path))?;
        let config = format!(
            "# Generated by `nodectl auth`: decentralised JWT auth for the fleet.\n\
             # Include it in nats-server's config; it replaces accounts.conf.\n\
             operator: \"{op}\"\n\
             system_account: {sys}\n\
             resolver: {{\n  type: full\n  dir: \"{jwt_dir}\"\n  allow_delete: false\n  interval: \"2m\"\n}}\n\
             resolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {fleet}: \"{fleet_jwt}\"\n}}\n",
            op = absolute.join("operator.jwt").display(),
            sys = self.sys.public_key(),
            jwt_dir = absolute.join("jwt").display(),
        );
        write("server.conf", &config)?;
        Ok(fleet_jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issues_the_standard_users_and_revoke_lands_in_the_account() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = AuthDir::init(tmp.path()).expect("init");
        assert!(matches!(
            AuthDir::init(tmp.path()),
            Err(AuthError::Exists(_))
        ));
        let names: Vec<String> = dir
            .issued()
            .expect("issued")
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["registry", "admin", "reader", "bootstrap"]);
        let id = subjects::NodeId::parse("node-a").expect("id");
        dir.issue(
            &Role::Node(id, None),
            "node-a",
            Some(Duration::from_secs(60)),
        )
        .expect("issue");
        let reopened = AuthDir::open(tmp.path()).expect("open");
        let account = reopened.revoke("node-a").expect("revoke");
        let claims = jwt::decode(&account).expect("account JWT");
        let node = reopened
            .issued()
            .expect("issued")
            .into_iter()
            .find(|u| u.name == "node-a")
            .expect("node-a");
        assert!(claims.nats["revocations"][&node.public_key].is_i64());
        assert_eq!(node.expires_at, Some(node.issued_at + 60));
        assert!(matches!(
            reopened.revoke("nobody"),
            Err(AuthError::UnknownUser(_))
        ));
    }
}
