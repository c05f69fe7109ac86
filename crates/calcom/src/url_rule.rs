//! The subscriber URL rule Cal.com applies on create (and on update when the URL changes):
//! `https:` only, and not `localhost`, a cloud metadata host, or a literal private, loopback,
//! link-local or unspecified address (IPv4 and IPv6, `::ffff:`-mapped included). A DNS name
//! that resolves to a private address passes, as it does at Cal.com.

use std::net::{Ipv4Addr, Ipv6Addr};

use url::Url;

/// Hosts Cal.com refuses by name.
const BLOCKED_HOSTS: &[&str] = &["localhost", "metadata.google.internal", "metadata"];

/// `Ok` when Cal.com would accept `url` as a subscriber URL; else its message.
pub fn check_subscriber_url(url: &str) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("Webhook URL is not valid: {e}"))?;
    if parsed.scheme() != "https" {
        return Err("Webhook URL is not allowed: Only HTTPS URLs are allowed".into());
    }
    let blocked = match parsed.host() {
        None => true,
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            BLOCKED_HOSTS
                .iter()
                .any(|b| name == *b || name.ends_with(&format!(".{b}")))
        }
        Some(url::Host::Ipv4(ip)) => private_v4(ip),
        Some(url::Host::Ipv6(ip)) => private_v6(ip),
    };
    if blocked {
        let host = parsed.host_str().unwrap_or("");
        return Err(format!(
            "Webhook URL is not allowed: the host {host} is a blocked host (localhost, metadata or a private address)"
        ));
    }
    Ok(())
}

fn private_v4(ip: Ipv4Addr) -> bool {
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        // Carrier-grade NAT, 100.64.0.0/10.
        || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
}

fn private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
}

#[cfg(test)]
mod tests {
    use super::check_subscriber_url as check;

    #[test]
    fn what_cal_com_refuses() {
        for bad in [
            "http://relay.example.com/webhooks/cal",
            "https://localhost/x",
            "https://api.localhost/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.9:8443/x",
            "https://172.16.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://metadata.google.internal/x",
            "not a url",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check("http://relay.example.com/").unwrap_err(),
            "Webhook URL is not allowed: Only HTTPS URLs are allowed"
        );
    }

    #[test]
    fn what_it_accepts() {
        for good in [
            "https://relay.example.com/webhooks/cal",
            "https://relay.example.com:8443/webhooks/cal",
            "https://8.8.8.8/x",
            "https://[2001:db8::1]/x",
            // A name resolving to a private address passes at registration.
            "https://cal-relay.internal.example/x",
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
    }
}
