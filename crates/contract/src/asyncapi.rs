//! An AsyncAPI 3.0 document of what a configuration publishes: a server per sink (host and
//! protocol, never credentials), a channel per sink and destination its routes produce for
//! the known triggers (address = topic, routing key or subject), a message per trigger with
//! its payload schema and the headers the relay sets, `send` operations, and the Kafka, AMQP
//! and NATS bindings. Built from a plain description the caller makes of its configuration.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

pub use cal_relay_sink::Protocol;

/// One sink of the configuration.
#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub protocol: Protocol,
    /// `host:port` (the first, without credentials), or the file's path.
    pub host: String,
    /// `off`, `binary` or `structured`.
    pub cloudevents: String,
    /// The header carrying the key (AMQP, NATS), the prefix of CloudEvents headers (AMQP).
    pub key_header: Option<String>,
    pub cloudevents_prefix: Option<String>,
}

/// A trigger the routes publish: to these sinks, at this destination.
#[derive(Debug, Clone)]
pub struct Published {
    /// A known trigger, or `TEMPLATE` for template bodies.
    pub trigger: String,
    pub destination: String,
    pub sinks: Vec<String>,
}

/// What a configuration publishes.
#[derive(Debug, Clone)]
pub struct Description {
    pub title: String,
    pub version: String,
    pub sinks: Vec<Sink>,
    pub published: Vec<Published>,
}

fn protocol_name(p: &Protocol) -> &'static str {
    match p {
        Protocol::Kafka => "kafka",
        Protocol::Amqp { .. } => "amqp",
        Protocol::Nats { .. } => "nats",
        Protocol::File => "file",
    }
}

/// A component key: letters, digits, `.`, `_` and `-` only.
fn key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The payload schema of `trigger` as an AsyncAPI schema (JSON Schema without `$schema` and
/// `$id`); template bodies are anything.
fn payload_schema(trigger: &str) -> Value {
    let Some(text) = crate::schema(trigger) else {
        return json!({ "description": "a custom template's output, as Cal.com rendered it" });
    };
    let mut v: Value = serde_json::from_str(text).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
        o.remove("$id");
    }
    v
}

/// The headers a message of `trigger` carries through `sink`.
fn headers(sink: &Sink, trigger: &str) -> Value {
    let s = json!({ "type": "string" });
    let mut props = Map::new();
    if trigger != "TEMPLATE" {
        props.insert("cal-trigger".into(), json!({ "const": trigger }));
    }
    props.insert(
        "cal-webhook-version".into(),
        json!({ "type": "string", "description": "X-Cal-Webhook-Version as Cal.com sent it" }),
    );
    props.insert(
        "cal-delivery-id".into(),
        json!({ "type": "string", "description": "SHA-256 hex of the body Cal.com signed: a retry has the same id" }),
    );
    props.insert(
        "cal-received-at".into(),
        json!({ "type": "string", "format": "date-time" }),
    );
    props.insert("content-type".into(), s.clone());
    if let Some(k) = &sink.key_header {
        props.insert(
            k.clone(),
            json!({ "type": "string", "description": "the key (booking uid), when there is one" }),
        );
    }
    if matches!(sink.protocol, Protocol::Nats { jetstream: true }) {
        props.insert("Nats-Msg-Id".into(), s.clone());
    }
    if sink.cloudevents == "binary" {
        let prefix = match sink.protocol {
            Protocol::Kafka => "ce_".to_owned(),
            _ => sink
                .cloudevents_prefix
                .clone()
                .unwrap_or_else(|| "ce-".into()),
        };
        let mut attrs = vec![
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "subject",
            "partitionkey",
            "recordedtime",
            "calwebhookversion",
        ];
        if matches!(sink.protocol, Protocol::Nats { .. }) {
            attrs.push("datacontenttype");
        }
        for a in attrs {
            let schema = match a {
                "specversion" => json!({ "const": "1.0" }),
                "type" if trigger == "TEMPLATE" => s.clone(),
                "type" => json!({ "const": cal_relay_core::event_type(trigger) }),
                _ => s.clone(),
            };
            props.insert(format!("{prefix}{a}"), schema);
        }
    }
    json!({ "type": "object", "properties": props })
}

/// One server per sink: host and protocol.
fn servers(d: &Description) -> Map<String, Value> {
    let mut servers = Map::new();
    for s in &d.sinks {
        let mut server = json!({
            "host": s.host,
            "protocol": protocol_name(&s.protocol),
            "description": format!("sink {:?} of this configuration", s.name),
        });
        if let Protocol::Amqp { .. } = s.protocol {
            server["protocolVersion"] = json!("0.9.1");
        }
        servers.insert(key(&s.name), server);
    }
    servers
}

/// The message `trigger` becomes on `sink`: content type, headers, payload and bindings.
fn message(sink: &Sink, trigger: &str) -> Value {
    let structured = sink.cloudevents == "structured";
    let mut message = json!({
        "name": trigger,
        "title": format!("{trigger} through {}", sink.name),
        "contentType": if structured {
            "application/cloudevents+json; charset=UTF-8"
        } else {
            "application/json"
        },
        "headers": headers(sink, trigger),
        "payload": if structured {
            json!({
                "type": "object",
                "description": "a CloudEvent (structured mode) whose data is the message below",
                "properties": { "data": { "$ref": format!("#/components/schemas/{}", key(trigger)) } },
                "required": ["specversion", "id", "source", "type", "data"],
            })
        } else {
            json!({ "$ref": format!("#/components/schemas/{}", key(trigger)) })
        },
    });
    match &sink.protocol {
        Protocol::Kafka => {
            message["bindings"] = json!({ "kafka": {
                "key": { "type": "string", "description": "the booking uid (or OOO uuid, form id); absent when the delivery has none" },
                "bindingVersion": "0.5.0",
            }});
        }
        Protocol::Amqp { .. } => {
            let mut amqp = json!({ "bindingVersion": "0.3.0" });
            if sink.cloudevents == "binary" && trigger != "TEMPLATE" {
                amqp["messageType"] = json!(cal_relay_core::event_type(trigger));
            }
            message["bindings"] = json!({ "amqp": amqp });
        }
        _ => {}
    }
    message
}

/// The channel of `destination` on `sink`, carrying `triggers`.
fn channel(sink: &Sink, destination: &str, triggers: &[String]) -> Value {
    let messages: Map<String, Value> = triggers
        .iter()
        .map(|t| (key(t), message(sink, t)))
        .collect();
    let mut channel = json!({
        "address": destination,
        "title": format!("{destination} on {}", sink.name),
        "servers": [{ "$ref": format!("#/servers/{}", key(&sink.name)) }],
        "messages": messages,
    });
    if let Protocol::Amqp {
        exchange,
        exchange_type,
        ..
    } = &sink.protocol
    {
        channel["bindings"] = json!({ "amqp": {
            "is": "routingKey",
            "exchange": { "name": exchange, "type": exchange_type, "durable": true, "autoDelete": false, "vhost": "/" },
            "bindingVersion": "0.3.0",
        }});
    }
    channel
}

/// The `send` operation of a channel.
fn operation(sink: &Sink, destination: &str, channel_key: &str, triggers: &[String]) -> Value {
    let refs: Vec<Value> = triggers
        .iter()
        .map(|t| json!({ "$ref": format!("#/channels/{channel_key}/messages/{}", key(t)) }))
        .collect();
    let mut operation = json!({
        "action": "send",
        "title": format!("cal-relay publishes to {destination} on {}", sink.name),
        "channel": { "$ref": format!("#/channels/{channel_key}") },
        "messages": refs,
    });
    match &sink.protocol {
        Protocol::Amqp { persistent, .. } => {
            operation["bindings"] = json!({ "amqp": {
                "deliveryMode": if *persistent { 2 } else { 1 },
                "mandatory": true,
                "bindingVersion": "0.3.0",
            }});
        }
        Protocol::Kafka => {
            operation["bindings"] = json!({ "kafka": { "bindingVersion": "0.5.0" } });
        }
        Protocol::Nats { .. } => {
            operation["bindings"] = json!({ "nats": { "bindingVersion": "0.1.0" } });
        }
        Protocol::File => {}
    }
    operation
}

/// The document, as JSON (AsyncAPI accepts JSON as well as YAML).
pub fn document(d: &Description) -> Value {
    let by_name: BTreeMap<&str, &Sink> = d.sinks.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut schemas = Map::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    // (sink, destination) -> triggers, in order.
    let mut grouped: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for p in &d.published {
        schemas
            .entry(p.trigger.clone())
            .or_insert_with(|| payload_schema(&p.trigger));
        for sink in &p.sinks {
            grouped
                .entry((sink.clone(), p.destination.clone()))
                .or_default()
                .push(p.trigger.clone());
        }
    }
    for ((sink_name, destination), triggers) in grouped {
        let Some(sink) = by_name.get(sink_name.as_str()) else {
            continue;
        };
        let channel_key = key(&format!("{sink_name}.{destination}"));
        let op = operation(sink, &destination, &channel_key, &triggers);
        channels.insert(channel_key.clone(), channel(sink, &destination, &triggers));
        operations.insert(key(&format!("send.{channel_key}")), op);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": d.title,
            "version": d.version,
            "description": "What this cal-relay configuration publishes: Cal.com webhook deliveries, one message per delivery, on the destinations its routes give each trigger.",
        },
        "defaultContentType": "application/json",
        "servers": servers(d),
        "channels": channels,
        "operations": operations,
        "components": { "schemas": schemas },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_per_sink_and_destination_with_its_bindings() {
        let d = Description {
            title: "t".into(),
            version: "1".into(),
            sinks: vec![Sink {
                name: "rabbit".into(),
                protocol: Protocol::Amqp {
                    exchange: "cal".into(),
                    exchange_type: "topic".into(),
                    persistent: true,
                },
                host: "rabbit:5672".into(),
                cloudevents: "binary".into(),
                key_header: Some("cal-key".into()),
                cloudevents_prefix: None,
            }],
            published: vec![Published {
                trigger: "BOOKING_CREATED".into(),
                destination: "cal.booking.created".into(),
                sinks: vec!["rabbit".into()],
            }],
        };
        let doc = document(&d);
        let ch = &doc["channels"]["rabbit.cal.booking.created"];
        assert_eq!(ch["address"], "cal.booking.created");
        assert_eq!(ch["bindings"]["amqp"]["exchange"]["name"], "cal");
        let m = &ch["messages"]["BOOKING_CREATED"];
        assert_eq!(
            m["headers"]["properties"]["ce-type"]["const"],
            "com.cal.booking_created"
        );
        assert_eq!(
            doc["components"]["schemas"]["BOOKING_CREATED"]["properties"]["triggerEvent"]["const"],
            "BOOKING_CREATED"
        );
        assert_eq!(
            doc["operations"]["send.rabbit.cal.booking.created"]["action"],
            "send"
        );
    }
}
