//! Turning Cloud Map instance attributes into socket addresses.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Attribute with the instance's IPv4 address.
pub const ATTR_IPV4: &str = "AWS_INSTANCE_IPV4";
/// Attribute with the instance's IPv6 address.
pub const ATTR_IPV6: &str = "AWS_INSTANCE_IPV6";
/// Attribute with the instance's port.
pub const ATTR_PORT: &str = "AWS_INSTANCE_PORT";

/// Why an instance yields no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("no {ATTR_IPV4} or {ATTR_IPV6} attribute")]
    NoAddress,
    #[error("invalid IP address {0:?}")]
    BadAddress(String),
    #[error("no {ATTR_PORT} attribute and no default port configured")]
    NoPort,
    #[error("invalid port {0:?}")]
    BadPort(String),
}

/// The socket address of one instance: `AWS_INSTANCE_IPV4` (else
/// `AWS_INSTANCE_IPV6`) and `AWS_INSTANCE_PORT` (else `default_port`).
pub fn endpoint_from_attributes(
    attributes: &HashMap<String, String>,
    default_port: Option<u16>,
) -> Result<SocketAddr, SkipReason> {
    let ip = if let Some(v4) = attributes.get(ATTR_IPV4) {
        let v4 = v4.trim();
        IpAddr::V4(
            v4.parse::<Ipv4Addr>()
                .map_err(|_| SkipReason::BadAddress(v4.to_owned()))?,
        )
    } else if let Some(v6) = attributes.get(ATTR_IPV6) {
        let v6 = v6.trim().trim_start_matches('[').trim_end_matches(']');
        IpAddr::V6(
            v6.parse::<Ipv6Addr>()
                .map_err(|_| SkipReason::BadAddress(v6.to_owned()))?,
        )
    } else {
        return Err(SkipReason::NoAddress);
    };
    let port = match attributes.get(ATTR_PORT) {
        Some(p) => match p.trim().parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(SkipReason::BadPort(p.clone())),
        },
        None => default_port.ok_or(SkipReason::NoPort)?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Sorts and deduplicates addresses (moto, for one, returns an instance
/// registered twice under the same id twice).
pub fn dedup(addresses: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    addresses
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ipv4_and_port() {
        let a = attrs(&[(ATTR_IPV4, "10.0.0.7"), (ATTR_PORT, "8080")]);
        assert_eq!(
            endpoint_from_attributes(&a, Some(1)),
            Ok("10.0.0.7:8080".parse().unwrap())
        );
    }

    #[test]
    fn ipv4_wins_over_ipv6_and_ipv6_is_used_alone() {
        let both = attrs(&[
            (ATTR_IPV4, "10.0.0.7"),
            (ATTR_IPV6, "::1"),
            (ATTR_PORT, "80"),
        ]);
        assert_eq!(
            endpoint_from_attributes(&both, None),
            Ok("10.0.0.7:80".parse().unwrap())
        );
        let v6 = attrs(&[(ATTR_IPV6, "2001:db8::5"), (ATTR_PORT, "80")]);
        assert_eq!(
            endpoint_from_attributes(&v6, None),
            Ok("[2001:db8::5]:80".parse().unwrap())
        );
    }

    #[test]
    fn default_port_is_the_fallback() {
        let a = attrs(&[(ATTR_IPV4, "10.0.0.7")]);
        assert_eq!(
            endpoint_from_attributes(&a, Some(9000)),
            Ok("10.0.0.7:9000".parse().unwrap())
        );
        assert_eq!(endpoint_from_attributes(&a, None), Err(SkipReason::NoPort));
    }

    #[test]
    fn bad_values_are_reported() {
        let no_ip = attrs(&[(ATTR_PORT, "80")]);
        assert_eq!(
            endpoint_from_attributes(&no_ip, None),
            Err(SkipReason::NoAddress)
        );
        let bad_ip = attrs(&[(ATTR_IPV4, "10.0.0"), (ATTR_PORT, "80")]);
        assert!(matches!(
            endpoint_from_attributes(&bad_ip, None),
            Err(SkipReason::BadAddress(_))
        ));
        for port in ["0", "65536", "http", ""] {
            let bad_port = attrs(&[(ATTR_IPV4, "10.0.0.1"), (ATTR_PORT, port)]);
            assert!(matches!(
                endpoint_from_attributes(&bad_port, Some(80)),
                Err(SkipReason::BadPort(_))
            ));
        }
    }

    #[test]
    fn dedup_sorts_and_removes_duplicates() {
        let a: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(dedup([a, b, a, b, a]), vec![b, a]);
    }
}
