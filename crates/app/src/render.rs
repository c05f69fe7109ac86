//! What `check-config` prints: the plan's effective settings, secrets redacted (their number
//! and where they come from only), and where each known trigger goes.

use std::fmt::Write as _;

use cal_relay_config::DeliveryMode;
use cal_relay_core::trigger;

use crate::plan::Plan;
use crate::AppError;

/// The effective configuration, as `check-config` prints it.
pub fn render(plan: &Plan) -> Result<String, AppError> {
    let config = &plan.config;
    let mut out = String::new();
    writeln!(out, "configuration is valid")?;
    writeln!(out, "listen: {}", config.server.listen)?;
    let d = &config.delivery;
    if d.mode == DeliveryMode::Spool {
        writeln!(
            out,
            "delivery: spool dir={} max_bytes={} fsync={} max_attempts={} lanes={}",
            d.dir.display(),
            d.max_bytes,
            d.fsync,
            d.max_attempts,
            d.lanes
        )?;
    } else {
        writeln!(out, "delivery: confirm (2xx once every sink confirmed)")?;
    }
    writeln!(
        out,
        "dedup: window={}s max_entries={} file={}",
        d.dedup_window_secs.as_secs(),
        d.dedup_max_entries,
        d.dedup_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(memory only)".into())
    )?;
    let t = &config.tracing;
    match &t.otlp_endpoint {
        Some(endpoint) => writeln!(
            out,
            "tracing: OTLP/HTTP to {} service={} sample_ratio={} queue_size={}",
            cal_relay_sink::redact_url(endpoint),
            t.service_name,
            t.sample_ratio,
            t.queue_size
        )?,
        None => writeln!(out, "tracing: off")?,
    }
    writeln!(out, "sources:")?;
    for i in 0..config.sources.len() {
        write_source(&mut out, plan, i)?;
    }
    writeln!(out, "sinks:")?;
    for (name, sink) in &plan.sinks {
        writeln!(out, "  {name}: {} {}", sink.kind(), sink.summary())?;
    }
    write_routes(&mut out, plan)?;
    Ok(out)
}

/// The routes as written, then the effective routing of every known trigger.
fn write_routes(out: &mut String, plan: &Plan) -> Result<(), AppError> {
    writeln!(out, "routes (first match wins):")?;
    for r in &plan.config.routes {
        writeln!(
            out,
            "  {} -> {} destination={}",
            r.triggers.join(","),
            r.sinks.join(","),
            r.destination.as_deref().unwrap_or("(naming rule)")
        )?;
    }
    writeln!(out, "effective routing of known triggers:")?;
    let templates = std::iter::once(trigger::TEMPLATE);
    for t in trigger::KNOWN.iter().copied().chain(templates) {
        match plan.routes.find(t) {
            Some(route) => {
                let dest = match (&route.destination, t) {
                    (_, trigger::TEMPLATE) => "(source template_destination)".into(),
                    (Some(d), _) => d.clone(),
                    (None, _) => trigger::default_destination(t),
                };
                writeln!(out, "  {t:<46} {dest:<34} -> {}", route.sinks.join(","))?;
            }
            None => writeln!(out, "  {t:<46} (no route: 422)")?,
        }
    }
    Ok(())
}

/// Every effective setting of source `i`, one per line.
fn write_source(out: &mut String, plan: &Plan, i: usize) -> Result<(), AppError> {
    let config = &plan.config;
    let s = &config.sources[i];
    writeln!(out, "  {} at {}", s.name, s.path)?;
    let mut from = vec![format!("{} inline", s.secrets.len())];
    if let Some(file) = &s.secrets_file {
        from.push(format!("file {}", file.display()));
    }
    if let Some(var) = &s.secrets_env {
        from.push(format!("env {var}"));
    }
    writeln!(
        out,
        "    secrets: {} [redacted] ({}), allow_unsigned={}",
        plan.endpoints[i].source.verifier.secret_count(),
        from.join(", "),
        s.allow_unsigned
    )?;
    let allow_from = if s.allow_from.is_empty() {
        "(any client)".to_owned()
    } else {
        s.allow_from.join(",")
    };
    writeln!(out, "    allow_from: {allow_from}")?;
    writeln!(
        out,
        "    template_destination: {}",
        s.template_destination
            .as_deref()
            .unwrap_or("(none: templates 400, envelope-like templates by their triggerEvent)")
    )?;
    let dedup = config.delivery.dedup_window_secs.as_secs();
    match &plan.endpoints[i].source.freshness {
        Some(f) => writeln!(
            out,
            "    replay: replay_window_secs={} scheduled_allowance_secs={} (envelopes by createdAt within {} s; MEETING_STARTED/ENDED by startTime/endTime and FORM_SUBMITTED_NO_EVENT by createdAt within {} s; the rest by de-duplication, window {dedup} s)",
            s.replay_window_secs.as_secs(),
            s.scheduled_allowance_secs.as_secs(),
            f.window.as_secs(),
            f.longest().as_secs(),
        )?,
        None => writeln!(
            out,
            "    replay: replay_window_secs=0 (no freshness check: de-duplication only, window {dedup} s)",
        )?,
    }
    writeln!(
        out,
        "    cloudevents: event_source={} template_event_type={}",
        s.event_source, s.template_event_type
    )?;
    Ok(())
}

/// A short hash of the effective configuration as `check-config` prints it (no secrets).
pub fn hash(plan: &Plan) -> String {
    let text = render(plan).unwrap_or_default();
    cal_relay_core::pipeline::delivery_id(text.as_bytes())[..12].to_owned()
}
