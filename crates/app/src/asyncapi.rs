//! The AsyncAPI mapping: what a plan publishes, described for `cal_relay_contract::asyncapi`.

use cal_relay_contract::asyncapi::{Description, Published, Sink};
use cal_relay_core::trigger;
use cal_relay_sink::SinkSettings;

use crate::plan::Plan;

fn mode(m: cal_relay_sink::cloudevents::Mode) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "off".into())
}

fn sink(name: &str, settings: &dyn SinkSettings) -> Sink {
    let d = settings.described();
    Sink {
        name: name.to_owned(),
        protocol: d.protocol,
        host: d.host,
        cloudevents: mode(settings.cloudevents()),
        key_header: d.key_header,
        cloudevents_prefix: d.cloudevents_prefix,
    }
}

/// What the plan publishes: its sinks, and each known trigger's destination and sinks.
pub fn describe(plan: &Plan) -> Description {
    let config = &plan.config;
    let sinks = plan
        .sinks
        .iter()
        .map(|(n, s)| sink(n, s.as_ref()))
        .collect();
    let mut published = Vec::new();
    for t in trigger::KNOWN {
        if let Some(route) = plan.routes.find(t) {
            published.push(Published {
                trigger: (*t).to_owned(),
                destination: route
                    .destination
                    .clone()
                    .unwrap_or_else(|| trigger::default_destination(t)),
                sinks: route.sinks.clone(),
            });
        }
    }
    if let Some(route) = plan.routes.find(trigger::TEMPLATE) {
        for source in &config.sources {
            if let Some(destination) = &source.template_destination {
                published.push(Published {
                    trigger: trigger::TEMPLATE.to_owned(),
                    destination: destination.clone(),
                    sinks: route.sinks.clone(),
                });
            }
        }
    }
    Description {
        title: "cal-relay".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sinks,
        published,
    }
}

/// The AsyncAPI 3.0 document of the plan.
pub fn document(plan: &Plan) -> serde_json::Value {
    cal_relay_contract::asyncapi::document(&describe(plan))
}
