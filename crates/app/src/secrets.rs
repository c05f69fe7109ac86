//! A source's secrets: inline, from its file, from its environment variable, read once per
//! plan (at start-up, and again on every reload).

use std::path::Path;

use cal_relay_config::SourceConfig;

use crate::AppError;

/// Largest secrets file read (a few secrets fit in far less; a path to a device or a huge file
/// is refused instead of read without end).
pub const MAX_SECRETS_FILE_BYTES: u64 = 64 * 1024;

/// Every secret of source `i`: inline, from its file, from its environment variable.
pub fn of(s: &SourceConfig, i: usize) -> Result<Vec<String>, AppError> {
    let mut secrets: Vec<String> = s
        .secrets
        .iter()
        .filter(|x| !x.is_empty())
        .cloned()
        .collect();
    if let Some(file) = &s.secrets_file {
        let text = read_file(file).map_err(|e| {
            AppError::setting(
                format!("sources[{i}].secrets_file"),
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        secrets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if let Some(var) = &s.secrets_env {
        let value = std::env::var(var).map_err(|_| {
            AppError::setting(
                format!("sources[{i}].secrets_env"),
                format!("environment variable {var} is not set"),
            )
        })?;
        secrets.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned),
        );
    }
    if secrets.is_empty() && !s.allow_unsigned {
        return Err(cal_relay_config::no_secret(i).into());
    }
    Ok(secrets)
}

fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_SECRETS_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRETS_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SECRETS_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(toml: &str) -> SourceConfig {
        let text = format!(
            "[[sources]]\nname = \"cal\"\npath = \"/c\"\n{toml}\n[sinks.f]\ntype = \"file\"\npath = \"-\"\n[[routes]]\ntriggers = [\"*\"]\nsinks = [\"f\"]\n"
        );
        cal_relay_config::Config::from_toml(&text)
            .unwrap()
            .config
            .sources
            .remove(0)
    }

    #[test]
    fn secrets_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "# rotated 2026\n0123\n\nold\n").unwrap();
        let s = source(&format!("secrets_file = {:?}", file.display().to_string()));
        assert_eq!(of(&s, 0).unwrap(), ["0123", "old"]);
    }

    #[test]
    fn an_empty_secrets_file_is_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "# none yet\n").unwrap();
        let s = source(&format!("secrets_file = {:?}", file.display().to_string()));
        let e = of(&s, 0).unwrap_err().to_string();
        assert!(
            e.starts_with("sources[0].secrets: no secret configured"),
            "{e}"
        );
    }
}
