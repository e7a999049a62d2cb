//! Who a request comes from: the peer, or behind trusted proxies (`server.trusted_proxies`) the
//! address they forwarded; and the request's id, for the access log and the response.

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::auth::ConnectionMemo;
use crate::config::{Config, Validator};

/// `X-Request-Id`, taken from trusted proxies and sent back on every answer.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the public listener keeps per connection: its peer, and what it proved.
#[derive(Clone)]
pub struct Peer {
    /// The address the connection came from.
    pub addr: SocketAddr,
    /// The token the connection proved.
    pub memo: ConnectionMemo,
}

/// What `[server]` needs for client identity: networks that parse.
pub(crate) fn check(config: &Config, v: &mut Validator) {
    for (i, net) in config.server.trusted_proxies.iter().enumerate() {
        if parse_net(net).is_none() {
            v.problem(
                format!("server.trusted_proxies[{i}]"),
                format!("{net:?} is not an address or a network like \"10.0.0.0/8\""),
            );
        }
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From a validated config.
    pub fn new(config: &Config) -> TrustedProxies {
        TrustedProxies(
            (config.server.trusted_proxies.iter())
                .filter_map(|n| parse_net(n))
                .collect(),
        )
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client of one request.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its address: the peer's, or the one trusted proxies forwarded.
    pub addr: Option<IpAddr>,
    /// The request id: a trusted proxy's `X-Request-Id`, or a new one.
    pub request_id: HeaderValue,
}

/// Who sent a request that came from `peer` with `headers`. Forwarding headers count only when
/// the peer is a trusted proxy: then `X-Forwarded-For` (else `Forwarded`) is read from the right,
/// past every trusted hop, to the first address that is not one.
pub fn identify(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &TrustedProxies) -> Client {
    let from_proxy = peer.is_some_and(|ip| trusted.trusts(ip));
    let mut addr = peer.map(|ip| ip.to_canonical());
    if from_proxy {
        let hops = forwarded_for(headers);
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    addr = Some(*ip);
                    if !trusted.trusts(*ip) {
                        break;
                    }
                }
                // `unknown`, an obfuscated name, garbage: nothing further left is to be believed.
                None => break,
            }
        }
    }
    let request_id = (headers.get(&X_REQUEST_ID))
        .filter(|id| from_proxy && is_request_id(id.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id);
    Client { addr, request_id }
}

/// The hops of `X-Forwarded-For`, or of `Forwarded`'s `for=` when there is none, left to right.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        (headers.get_all(name).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let xff = values(http::header::HeaderName::from_static("x-forwarded-for"));
    if !xff.is_empty() {
        return xff.iter().map(|hop| parse_node(hop)).collect();
    }
    values(http::header::FORWARDED)
        .iter()
        .map(|element| {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then_some(value.trim())
            })?;
            parse_node(node.trim_matches('"'))
        })
        .collect()
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:5678`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    node.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<IpAddr>()
        .ok()
}

/// 1 to 128 characters of letters, digits and `-_.:` (UUIDs, hex, what proxies generate).
fn is_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A new request id: 8 random hex digits for this process, then a count in 12 more (one
/// allocation: this runs for every request).
fn new_request_id() -> HeaderValue {
    static PROCESS: LazyLock<u32> = LazyLock::new(|| getrandom::u32().unwrap_or(0));
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let value = (u128::from(*PROCESS) << 48) | u128::from(n & ((1 << 48) - 1));
    let mut id = [0u8; 20];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((value >> (4 * (19 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| parse_net(n).unwrap()).collect())
    }

    fn client(peer: &str, headers: &[(&str, &str)], nets: &[&str]) -> Client {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        identify(Some(peer.parse().unwrap()), &map, &trusted(nets))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let xff = [("x-forwarded-for", "203.0.113.7")];
        assert_eq!(
            client("10.0.0.2", &xff, &["10.0.0.0/8"]).addr,
            ip("203.0.113.7")
        );
        assert_eq!(
            client("192.0.2.1", &xff, &["10.0.0.0/8"]).addr,
            ip("192.0.2.1")
        );
        assert_eq!(client("10.0.0.2", &xff, &[]).addr, ip("10.0.0.2"));
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        // A client that forges the left of the list does not choose its address.
        let headers = [("x-forwarded-for", "1.1.1.1, 198.51.100.9, 10.0.0.5")];
        let c = client("10.0.0.2", &headers, &["10.0.0.0/8"]);
        assert_eq!(c.addr, ip("198.51.100.9"));
        // Every hop trusted: the leftmost.
        let c = client(
            "10.0.0.2",
            &[("x-forwarded-for", "10.1.1.1, 10.0.0.5")],
            &["10.0.0.0/8"],
        );
        assert_eq!(c.addr, ip("10.1.1.1"));
        // Garbage stops the walk at the last good hop.
        let c = client(
            "10.0.0.2",
            &[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.5")],
            &["10.0.0.0/8"],
        );
        assert_eq!(c.addr, ip("10.0.0.5"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let headers = [(
            "forwarded",
            "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.5:1234",
        )];
        let c = client("10.0.0.2", &headers, &["10.0.0.0/8"]);
        assert_eq!(c.addr, ip("2001:db8:cafe::17"));
        let c = client("10.0.0.2", &[("forwarded", "for=unknown")], &["10.0.0.0/8"]);
        assert_eq!(c.addr, ip("10.0.0.2"));
    }

    #[test]
    fn request_ids_come_from_trusted_proxies_or_are_new() {
        let id = [("x-request-id", "abc-123")];
        assert_eq!(
            client("10.0.0.2", &id, &["10.0.0.0/8"]).request_id,
            "abc-123"
        );
        let new = client("192.0.2.1", &id, &["10.0.0.0/8"]).request_id;
        assert_ne!(new, "abc-123");
        assert_eq!(new.len(), 20);
        let bad = [("x-request-id", "has spaces in it")];
        assert_ne!(
            client("10.0.0.2", &bad, &["10.0.0.0/8"]).request_id,
            "has spaces in it"
        );
        let (a, b) = (client("1.1.1.1", &[], &[]), client("1.1.1.1", &[], &[]));
        assert_ne!(a.request_id, b.request_id);
    }

    #[test]
    fn mapped_addresses_match_v4_networks() {
        let xff = [("x-forwarded-for", "203.0.113.7")];
        assert_eq!(
            client("::ffff:10.0.0.2", &xff, &["10.0.0.0/8"]).addr,
            ip("203.0.113.7")
        );
    }
}
