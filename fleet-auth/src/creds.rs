//! `.creds` files (a user's JWT and nkey seed, the form every NATS client
//! reads) and secret files written 0600.

use std::io::Write;
use std::path::Path;

use crate::AuthError;

/// The text of a `.creds` file for `jwt` and the user's `seed`.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The nkey seed in a `.creds` file's text.
pub fn read_creds_seed(text: &str) -> Option<&str> {
    let after = text.split("-----BEGIN USER NKEY SEED-----").nth(1)?;
    after.lines().map(str::trim).find(|l| l.starts_with("SU"))
}

/// The user JWT in a `.creds` file's text.
pub fn read_creds_jwt(text: &str) -> Option<&str> {
    let after = text.split("-----BEGIN NATS USER JWT-----").nth(1)?;
    after
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('-'))
}

/// Writes `contents` to `path` readable by its owner only (0600), replacing
/// it atomically; parent directories are created (0700).
pub fn write_secret(path: &Path, contents: &str) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        create_private_dir(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_round_trip_and_are_private() {
        assert_eq!(
            read_creds_jwt(&creds_file("eyJ.abc.def", "SUAX")),
            Some("eyJ.abc.def")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/n1.creds");
        let text = creds_file("eyJ0eXAi.abc.def", "SUAEXAMPLESEED");
        write_secret(&path, &text).expect("write");
        let read = std::fs::read_to_string(&path).expect("read");
        assert_eq!(read_creds_seed(&read), Some("SUAEXAMPLESEED"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
