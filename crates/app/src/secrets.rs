//! A source's secrets: inline, from its file, from its environment variable, read once per
//! plan (at start-up, and again on every reload).
//!
//! The secrets file holds one secret per line; blank lines and `#` comments are skipped. A
//! secret being retired (`rotate-secret`) is preceded by the comment `# retire-after: TIME`
//! (RFC 3339): it is accepted until then, and a file without such comments reads as before.

use std::path::Path;
use std::time::SystemTime;

use cal_relay_config::SourceConfig;

use crate::AppError;

/// Largest secrets file read (a few secrets fit in far less; a path to a device or a huge file
/// is refused instead of read without end).
pub const MAX_SECRETS_FILE_BYTES: u64 = 64 * 1024;

/// The comment that marks the next secret of a secrets file as being retired.
const RETIRE_AFTER: &str = "# retire-after:";

/// A secret of a source, and when it stops being accepted while it is being retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSecret {
    pub value: String,
    pub retire_at: Option<SystemTime>,
}

impl SourceSecret {
    pub fn current(value: impl Into<String>) -> SourceSecret {
        SourceSecret {
            value: value.into(),
            retire_at: None,
        }
    }
}

/// The secrets of a secrets file's text, in order.
pub fn file_secrets(text: &str) -> Vec<SourceSecret> {
    let mut out = Vec::new();
    let mut retire_at = None;
    for line in text.lines().map(str::trim) {
        if let Some(at) = line.strip_prefix(RETIRE_AFTER) {
            retire_at = humantime::parse_rfc3339_weak(at.trim()).ok();
        } else if !line.is_empty() && !line.starts_with('#') {
            out.push(SourceSecret {
                value: line.to_owned(),
                retire_at: retire_at.take(),
            });
        }
    }
    out
}

/// The text of a secrets file holding `secrets` (as [`file_secrets`] reads it).
pub fn file_text(secrets: &[SourceSecret]) -> String {
    let mut text = String::new();
    for s in secrets {
        if let Some(at) = s.retire_at {
            text.push_str(&format!(
                "{RETIRE_AFTER} {}\n",
                humantime::format_rfc3339_seconds(at)
            ));
        }
        text.push_str(&s.value);
        text.push('\n');
    }
    text
}

/// Every secret of source `i`: inline, from its file, from its environment variable.
pub fn of(s: &SourceConfig, i: usize) -> Result<Vec<SourceSecret>, AppError> {
    let mut secrets: Vec<SourceSecret> = s
        .secrets
        .iter()
        .filter(|x| !x.is_empty())
        .map(SourceSecret::current)
        .collect();
    if let Some(file) = &s.secrets_file {
        let text = read_file(file).map_err(|e| {
            AppError::setting(
                format!("sources[{i}].secrets_file"),
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        secrets.extend(file_secrets(&text));
    }
    if let Some(var) = &s.secrets_env {
        let value = std::env::var(var).map_err(|_| {
            AppError::setting(
                format!("sources[{i}].secrets_env"),
                format!("environment variable {var} is not set"),
            )
        })?;
        secrets.extend(env_secrets(&value));
    }
    if secrets.is_empty() && !s.allow_unsigned {
        return Err(cal_relay_config::no_secret(i).into());
    }
    Ok(secrets)
}

/// What the source holds now, leniently (a missing or empty file, an unset variable: none yet),
/// for the commands that run before a first secret exists.
pub fn held(s: &SourceConfig) -> Vec<SourceSecret> {
    let mut out: Vec<SourceSecret> = s
        .secrets
        .iter()
        .filter(|x| !x.is_empty())
        .map(SourceSecret::current)
        .collect();
    if let Some(text) = s.secrets_file.as_deref().and_then(|f| read_file(f).ok()) {
        out.extend(file_secrets(&text));
    }
    if let Some(value) = s.secrets_env.as_ref().and_then(|v| std::env::var(v).ok()) {
        out.extend(env_secrets(&value));
    }
    out
}

fn env_secrets(value: &str) -> impl Iterator<Item = SourceSecret> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(SourceSecret::current)
}

/// A secrets file's text, bounded by [`MAX_SECRETS_FILE_BYTES`].
pub(crate) fn read_file(path: &Path) -> std::io::Result<String> {
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
        let values: Vec<String> = of(&s, 0).unwrap().into_iter().map(|s| s.value).collect();
        assert_eq!(values, ["0123", "old"]);
    }

    #[test]
    fn a_retiring_secret_keeps_its_time_through_the_file() {
        let at = humantime::parse_rfc3339("2026-12-24T10:00:00Z").unwrap();
        let secrets = vec![
            SourceSecret {
                value: "old".into(),
                retire_at: Some(at),
            },
            SourceSecret::current("new"),
        ];
        let text = file_text(&secrets);
        assert_eq!(text, "# retire-after: 2026-12-24T10:00:00Z\nold\nnew\n");
        assert_eq!(file_secrets(&text), secrets);
        // An older relay reads the same file as two secrets (the comment is skipped).
        assert_eq!(
            file_secrets("# a comment\nold\n")[0],
            SourceSecret::current("old")
        );
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
