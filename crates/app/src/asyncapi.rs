//! The AsyncAPI mapping: what a plan publishes, described for `cal_relay_contract::asyncapi`.

use cal_relay_config::SinkConfig;
use cal_relay_contract::asyncapi::{Description, Protocol, Published, Sink};
use cal_relay_core::trigger;

use crate::plan::Plan;

/// `host:port` of a broker URL: no scheme, credentials or path.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

fn mode(m: cal_relay_sink::cloudevents::Mode) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "off".into())
}

fn first(urls: &cal_relay_sink::OneOrMany) -> String {
    urls.to_vec()
        .first()
        .map(|u| host_of(u))
        .unwrap_or_default()
}

fn sink(name: &str, sink: &SinkConfig) -> Sink {
    let name = name.to_owned();
    match sink {
        SinkConfig::Kafka(c) => Sink {
            name,
            protocol: Protocol::Kafka,
            host: c.brokers.split(',').next().unwrap_or("").trim().to_owned(),
            cloudevents: mode(c.cloudevents),
            key_header: None,
            cloudevents_prefix: None,
        },
        SinkConfig::Amqp(c) => Sink {
            name,
            protocol: Protocol::Amqp {
                exchange: c.exchange.clone(),
                exchange_type: c.exchange_type.clone(),
                persistent: c.persistent,
            },
            host: first(&c.url),
            cloudevents: mode(c.cloudevents),
            key_header: Some(c.key_header.clone()),
            cloudevents_prefix: Some(c.cloudevents_prefix.clone()),
        },
        SinkConfig::Nats(c) => Sink {
            name,
            protocol: Protocol::Nats {
                jetstream: c.jetstream,
            },
            host: first(&c.url),
            cloudevents: mode(c.cloudevents),
            key_header: Some(c.key_header.clone()),
            cloudevents_prefix: None,
        },
        SinkConfig::File(c) => Sink {
            name,
            protocol: Protocol::File,
            host: c.path.clone(),
            cloudevents: "off".into(),
            key_header: None,
            cloudevents_prefix: None,
        },
    }
}

/// What the plan publishes: its sinks, and each known trigger's destination and sinks.
pub fn describe(plan: &Plan) -> Description {
    let config = &plan.config;
    let sinks = config.sinks.iter().map(|(n, s)| sink(n, s)).collect();
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
