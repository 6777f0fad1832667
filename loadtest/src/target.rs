//! The `ws://` URL of the server under test. Only loopback targets are
//! accepted: this tool is for benchmarking on one machine.

use std::net::{Ipv4Addr, SocketAddrV4};

/// A parsed `ws://host:port/path` on 127.0.0.0/8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Socket address to connect to.
    pub addr: SocketAddrV4,
    /// Value of the `Host` header (as written in the URL).
    pub host: String,
    /// Request path, `/` when absent.
    pub path: String,
}

impl Target {
    /// Parses `url`; refuses anything but plain `ws://` on a loopback IPv4
    /// address (`localhost` means 127.0.0.1).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port {p:?}"))?,
            ),
            None => (authority, 80),
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse::<Ipv4Addr>()
                .map_err(|_| format!("{url}: host must be localhost or a 127.x.y.z address"))?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "{url}: only loopback (127.0.0.0/8) targets are allowed"
            ));
        }
        Ok(Target {
            addr: SocketAddrV4::new(ip, port),
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The same server with another path (e.g. `/healthz`).
    pub fn with_path(&self, path: &str) -> Target {
        Target {
            path: path.to_owned(),
            ..self.clone()
        }
    }
}

/// Parses `127.0.0.1,127.0.0.2,...` (also `127.0.0.1-4` for a range of the
/// last octet); every address must be loopback.
pub fn parse_source_addrs(list: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.parse().map_err(|_| format!("bad address {a:?}"))?;
                let b: u8 = b.parse().map_err(|_| format!("bad range end {b:?}"))?;
                (a, b)
            }
            None => {
                let a: Ipv4Addr = item.parse().map_err(|_| format!("bad address {item:?}"))?;
                (a, a.octets()[3])
            }
        };
        let o = first.octets();
        if o[3] > last {
            return Err(format!("empty range {item:?}"));
        }
        for x in o[3]..=last {
            let ip = Ipv4Addr::new(o[0], o[1], o[2], x);
            if !ip.is_loopback() {
                return Err(format!("{ip}: source addresses must be loopback"));
            }
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:9502/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9502".parse().unwrap());
        assert_eq!(t.path, "/echo");
        assert_eq!(t.host, "127.0.0.1:9502");
        let t = Target::parse("ws://localhost").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
    }

    #[test]
    fn refuses_non_loopback() {
        assert!(Target::parse("ws://10.0.0.1:80/").is_err());
        assert!(Target::parse("wss://127.0.0.1/").is_err());
        assert!(Target::parse("ws://example.com/").is_err());
    }

    #[test]
    fn source_address_lists() {
        let v = parse_source_addrs("127.0.0.1, 127.0.0.5-7").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3], Ipv4Addr::new(127, 0, 0, 7));
        assert!(parse_source_addrs("192.168.1.1").is_err());
    }
}
