//! What `cal-relay spool …` prints: stats, the list of pending deliveries and dead letters,
//! one entry, and the dead letters replayed or purged.

use std::fmt::Write as _;
use std::path::Path;

use cal_relay_spool::admin;

use crate::AppError;

/// One `cal-relay spool` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolAction {
    Stats,
    List {
        json: bool,
    },
    Show {
        id: String,
    },
    /// Replay one dead letter, or every one (`None`).
    Replay {
        id: Option<String>,
    },
    /// Purge one dead letter, or every one (`None`).
    Purge {
        id: Option<String>,
    },
}

/// What a spool command printed to standard output, and why it failed if it did (for
/// standard error; the exit status is then 1).
#[derive(Debug, Default)]
pub struct SpoolOutput {
    pub stdout: String,
    pub failure: Option<String>,
}

fn cannot_read(dir: &Path) -> impl FnOnce(std::io::Error) -> AppError + '_ {
    move |e| AppError::io(format!("cannot read {}", dir.display()), e)
}

/// Run `action` on the spool in `dir` (read directly: the relay need not run).
pub fn run(dir: &Path, action: SpoolAction) -> Result<SpoolOutput, AppError> {
    let mut out = SpoolOutput::default();
    match action {
        SpoolAction::Stats => write_stats(&mut out.stdout, dir)?,
        SpoolAction::List { json } => {
            // One line per item as it is read: no body is kept.
            admin::list(dir, |item| {
                out.stdout.push_str(&list_line(&item, json));
                Ok(())
            })
            .map_err(cannot_read(dir))?;
        }
        SpoolAction::Show { id } => match admin::show(dir, &id).map_err(cannot_read(dir))? {
            Some(item) => writeln!(out.stdout, "{:#}", item.to_json(true))?,
            None => out.failure = Some(format!("no pending delivery or dead letter {id:?}")),
        },
        SpoolAction::Replay { id } => {
            let done = admin::replay(dir, id.as_deref()).map_err(cannot_read(dir))?;
            report(&mut out, done, "replaying", "no dead letter to replay")?;
        }
        SpoolAction::Purge { id } => {
            let done = admin::purge(dir, id.as_deref()).map_err(cannot_read(dir))?;
            report(&mut out, done, "purged", "no dead letter to purge")?;
        }
    }
    Ok(out)
}

fn report(
    out: &mut SpoolOutput,
    done: Vec<String>,
    verb: &str,
    none: &str,
) -> Result<(), AppError> {
    if done.is_empty() {
        out.failure = Some(none.to_owned());
    }
    for id in done {
        writeln!(out.stdout, "{verb} {id}")?;
    }
    Ok(())
}

fn write_stats(out: &mut String, dir: &Path) -> Result<(), AppError> {
    let s = admin::stats(dir).map_err(cannot_read(dir))?;
    let age = s
        .oldest
        .and_then(|t| t.elapsed().ok())
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    writeln!(out, "dir: {}", dir.display())?;
    writeln!(out, "pending: {}", s.entries)?;
    writeln!(out, "bytes: {} in {} segment(s)", s.bytes, s.segments)?;
    writeln!(out, "oldest pending age: {age}")?;
    writeln!(out, "dead letters: {}", s.dead_letters)?;
    writeln!(out, "inbox (replays not yet taken): {}", s.inbox)?;
    if s.unreadable_bytes > 0 {
        writeln!(
            out,
            "unreadable tail: {} bytes (cut off at the next start)",
            s.unreadable_bytes
        )?;
    }
    Ok(())
}

/// One line of `spool list`: the item's JSON (without its body), or a table row.
fn list_line(item: &admin::Item, json: bool) -> String {
    use admin::State;
    if json {
        return format!("{}\n", item.to_json(false));
    }
    let m = &item.entry.message;
    let state = match &item.state {
        State::Pending => format!("pending -> {}", item.entry.targets.join(",")),
        State::Dead {
            reason, attempts, ..
        } => format!("dead ({reason}, {attempts} attempts)"),
    };
    format!(
        "{:<16} {:<40} {:<32} key={} received={} {}\n",
        item.id,
        state,
        m.destination,
        m.key.as_deref().unwrap_or("-"),
        humantime::format_rfc3339_millis(m.received_at),
        &m.id[..m.id.len().min(16)]
    )
}
