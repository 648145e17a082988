//! Calls to third parties made for the catalog: deliveries to providers, polled APIs
//! and OAuth2 token endpoints. One place decides where such a call may go and which
//! client certificate and trust roots it uses.
//!
//! The guard refuses, by default, every address a catalog should never reach:
//! loopback, private (RFC 1918, IPv6 ULA), link-local (cloud metadata lives at
//! 169.254.169.254), CGNAT, multicast, broadcast, reserved and unspecified addresses.
//! `outbound.allow` opens ranges (an internal provider), `outbound.deny` closes more
//! and wins over `allow`.
//!
//! The check is made on the addresses a name resolves to, by the resolver of the HTTP
//! client itself, so the addresses checked are the only ones it can connect to: a
//! name that resolves to 10.0.0.5 is refused, and a DNS answer that changes between a
//! check and the connection (rebinding) cannot slip through, because there is no
//! second lookup. URLs with a literal address skip resolution, so they are checked
//! where they are configured (at apply time and when a client is built) and on every
//! redirect. Proxies are not used: a proxy would resolve the name where the guard
//! cannot see it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
    time::Duration,
};

use ipnet::IpNet;
use secrecy::ExposeSecret;

mod failure;

pub use self::failure::{Failure, FailureKind};
use crate::{
    Error,
    catalog::{Auth, Catalog, ClientTls, FieldError, Poll, Provider, ValidationErrors},
    config::OutboundSettings,
    secrets::SecretSource,
};

/// Ranges refused unless allowed, each with the name used in refusals; the more
/// specific first.
static REFUSED: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("255.255.255.255/32", "broadcast"),
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "CGNAT"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (ULA)"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .map(|(net, class)| (net.parse().expect("a valid built-in range"), class))
    .collect()
});

/// NAT64 (RFC 6052): an IPv6 address that reaches the IPv4 address in its last 32 bits.
static NAT64: LazyLock<IpNet> = LazyLock::new(|| "64:ff9b::/96".parse().expect("valid"));

/// Why an address may not be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The address.
    pub address: IpAddr,
    /// `loopback`, `private`, … or `listed in outbound.deny`.
    pub class: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.class == DENIED {
            write!(f, "{} is {DENIED}", self.address)
        } else {
            write!(
                f,
                "{} is a {} address, which outbound.allow does not permit",
                self.address, self.class
            )
        }
    }
}

const DENIED: &str = "listed in outbound.deny";

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("blocked by the outbound guard: ")?;
        let literal = self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        if literal {
            write!(f, "{}", self.refused)
        } else if self.refused.class == DENIED {
            write!(
                f,
                "{} resolves to {}, which is {DENIED}",
                self.host, self.refused.address
            )
        } else {
            write!(
                f,
                "{} resolves to {}, a {} address, which outbound.allow does not permit",
                self.host, self.refused.address, self.refused.class
            )
        }
    }
}

impl std::error::Error for Blocked {}

/// A request refused by the guard: the name and what it resolved to, or the literal
/// address.
#[derive(Debug)]
pub struct Blocked {
    /// The host name or address in the URL.
    pub host: String,
    /// The (first) address refused.
    pub refused: Refused,
}

/// Decides which addresses outbound requests may reach; cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    ranges: Arc<Ranges>,
}

#[derive(Debug)]
pub(crate) struct Ranges {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Parses `outbound.allow` and `outbound.deny`, naming every entry that is not a
/// range.
pub(crate) fn parse_ranges(settings: &OutboundSettings) -> Result<Ranges, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut parse = |key: &str, entries: &[String]| {
        entries
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                let entry = entry.trim();
                match entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                {
                    Ok(net) => Some(net.trunc()),
                    Err(_) => {
                        errors.push(FieldError {
                            path: format!("outbound.{key}[{i}]"),
                            message: format!(
                                "{entry:?} is not an address range (write e.g. 10.20.0.0/16, fd00::/8 or 203.0.113.7)"
                            ),
                        });
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    };
    let allow = parse("allow", &settings.allow);
    let deny = parse("deny", &settings.deny);
    if errors.is_empty() {
        Ok(Ranges { allow, deny })
    } else {
        Err(errors)
    }
}

/// How long a client keeps an idle connection. The number it keeps per host is the
/// requests it makes at once (`ClientOptions::max_in_flight`): fewer, and steady
/// traffic at that concurrency keeps closing connections and opening new ones (a
/// fixed 16 against a provider taking 256 at once cost delivery 16% of its CPU in
/// connects); unbounded, a burst (a backlog after a stall) left every connection it
/// opened, about 30 KiB each, for good: a 1.5 s NATS stall left delivery with 190
/// open connections and 5 MiB more. 30 s is also shorter than the idle timeout of
/// common load balancers (60 s), so a pooled connection is rarely one the provider's
/// side already closed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How one HTTP client for a third party behaves.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions<'a> {
    /// Who the client calls for, for errors: `provider crm`, `source shop`.
    pub owner: &'a str,
    /// Longest time for a whole request; `None` when each request sets its own.
    pub timeout: Option<Duration>,
    /// Longest time to connect.
    pub connect_timeout: Duration,
    /// Redirects followed (each checked by the guard); 0 follows none.
    pub redirects: usize,
    /// Requests made at once; as many idle connections per host are kept.
    pub max_in_flight: usize,
    /// Client certificate and extra trust roots.
    pub tls: Option<&'a ClientTls>,
    /// Where the secrets `tls` names are read.
    pub secrets: &'a SecretSource,
}

impl Guard {
    /// The guard `settings` describe; fails naming a bad entry.
    pub fn new(settings: &OutboundSettings) -> Result<Self, Error> {
        let ranges = parse_ranges(settings)
            .map_err(|errors| Error::Config(ValidationErrors(errors).to_string()))?;
        Ok(Self {
            ranges: Arc::new(ranges),
        })
    }

    /// Whether `address` may be called.
    pub fn check(&self, address: IpAddr) -> Result<(), Refused> {
        let address = address.to_canonical();
        let refuse = |class| {
            Err(Refused {
                address: address.to_owned(),
                class,
            })
        };
        if self.ranges.deny.iter().any(|net| net.contains(&address)) {
            return refuse(DENIED);
        }
        if self.ranges.allow.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        if let Some((_, class)) = REFUSED.iter().find(|(net, _)| net.contains(&address)) {
            return refuse(class);
        }
        if let IpAddr::V6(v6) = address
            && NAT64.contains(&address)
        {
            let [.., a, b] = v6.segments();
            let embedded = IpAddr::V4(std::net::Ipv4Addr::from(
                (u32::from(a) << 16) | u32::from(b),
            ));
            return self.check(embedded).map_err(|refused| Refused {
                address,
                class: refused.class,
            });
        }
        Ok(())
    }

    /// Checks the host of `url` when it is a literal address (names are checked when
    /// they are resolved, at connect time).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Blocked> {
        let address = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        self.check(address).map_err(|refused| Blocked {
            host: url.host_str().unwrap_or_default().to_owned(),
            refused,
        })
    }

    /// Refuses the outbound URLs in `urls` (a path for errors, the URL) whose literal
    /// address is refused, naming each; URLs that do not parse are left to catalog
    /// validation.
    fn refuse<'a>(
        &self,
        urls: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<(), ValidationErrors> {
        let errors: Vec<FieldError> = urls
            .into_iter()
            .filter_map(|(path, url)| {
                let refused = self.check_url(&url.parse().ok()?).err()?.refused;
                Some(FieldError {
                    path,
                    message: format!(
                        "{refused}; outbound requests may not go there (allow the range with outbound.allow if it is an internal service you trust)"
                    ),
                })
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// Refuses a catalog that names a refused address literally, naming each field.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), ValidationErrors> {
        let mut urls = Vec::new();
        for (i, provider) in catalog.providers.iter().enumerate() {
            urls.extend(provider_urls(provider, &format!("providers[{i}]")));
        }
        for (i, source) in catalog.sources.iter().enumerate() {
            if let Some(poll) = &source.poll {
                urls.extend(poll_urls(poll, &format!("sources[{i}].poll")));
            }
        }
        self.refuse(urls)
    }

    /// Refuses a provider whose URLs name a refused address.
    pub fn check_provider(&self, provider: &Provider) -> Result<(), ValidationErrors> {
        self.refuse(provider_urls(provider, ""))
    }

    /// Refuses a polled source whose URLs name a refused address.
    pub fn check_poll(&self, poll: &Poll) -> Result<(), ValidationErrors> {
        self.refuse(poll_urls(poll, "poll"))
    }

    /// An HTTP client whose every connection the guard has checked, with the
    /// certificate and roots of `options.tls`. Fails (at start-up or when the catalog
    /// changes, never per request) when a secret is missing or is not PEM.
    pub fn client(&self, options: ClientOptions<'_>) -> Result<reqwest::Client, Error> {
        let guard = self.clone();
        let limit = options.redirects;
        let redirect = if limit == 0 {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > limit {
                    return attempt.error(format!("more than {limit} redirects"));
                }
                match guard.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(blocked) => attempt.error(blocked),
                }
            })
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(self.clone())))
            .connect_timeout(options.connect_timeout)
            .redirect(redirect)
            .pool_max_idle_per_host(options.max_in_flight)
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")));
        if let Some(timeout) = options.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(tls) = options.tls {
            builder = with_tls(builder, tls, options.owner, options.secrets)?;
        }
        builder
            .build()
            .map_err(|err| Error::Config(format!("{}: HTTP client: {err}", options.owner)))
    }
}

/// A path under `at` (no leading dot when `at` is empty).
fn under(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// The URL at `at.url` and, with OAuth2, the token URL of `auth`: where an endpoint's
/// requests go.
fn endpoint_urls<'a>(url: &'a str, auth: Option<&'a Auth>, at: &str) -> Vec<(String, &'a str)> {
    let mut urls = vec![(under(at, "url"), url)];
    if let Some(Auth::Oauth2(oauth)) = auth {
        urls.push((under(at, "auth.oauth2.token_url"), &oauth.token_url));
    }
    urls
}

fn provider_urls<'a>(provider: &'a Provider, at: &str) -> Vec<(String, &'a str)> {
    endpoint_urls(&provider.url, provider.auth.as_ref(), at)
}

fn poll_urls<'a>(poll: &'a Poll, at: &str) -> Vec<(String, &'a str)> {
    endpoint_urls(&poll.url, poll.auth.as_ref(), at)
}

/// Adds the client certificate and trust roots of `tls`.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &ClientTls,
    owner: &str,
    secrets: &SecretSource,
) -> Result<reqwest::ClientBuilder, Error> {
    // Errors name the secret, never its content.
    let unusable = |field: &str, name: &str, what: &str| {
        Error::Config(format!("{owner}: tls.{field}: secret {name} is not {what}"))
    };
    if let Some(ca) = &tls.ca {
        let pem = secrets.read(&ca.secret)?;
        let roots = reqwest::Certificate::from_pem_bundle(pem.expose_secret().as_bytes())
            .ok()
            .filter(|roots| !roots.is_empty())
            .ok_or_else(|| unusable("ca", &ca.secret, "a PEM certificate"))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let chain = secrets.read(&cert.secret)?;
        let private = secrets.read(&key.secret)?;
        if !chain
            .expose_secret()
            .contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(unusable(
                "client_cert",
                &cert.secret,
                "a PEM certificate chain",
            ));
        }
        let pem = format!("{}\n{}\n", chain.expose_secret(), private.expose_secret());
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|_| unusable("client_key", &key.secret, "a PEM private key"))?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// Resolves names with the system resolver and keeps only the addresses the guard
/// permits; a name left with none fails with [`Blocked`].
struct Resolver(Guard);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match guard.check(address.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if permitted.is_empty()
                && let Some(refused) = refused
            {
                return Err(Box::new(Blocked { host, refused }) as _);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{failure::strip_credentials, *};

    fn guard(allow: &[&str], deny: &[&str]) -> Guard {
        Guard::new(&OutboundSettings {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    /// Requests the test client makes at once.
    const IN_FLIGHT: usize = 16;

    /// A client of `guard` for a provider without TLS settings.
    fn client(guard: &Guard) -> reqwest::Client {
        guard
            .client(ClientOptions {
                owner: "provider test",
                timeout: Some(Duration::from_secs(5)),
                connect_timeout: Duration::from_secs(5),
                redirects: 0,
                max_in_flight: IN_FLIGHT,
                tls: None,
                secrets: &SecretSource::new("/nonexistent"),
            })
            .unwrap()
    }

    fn class(guard: &Guard, address: &str) -> Option<&'static str> {
        guard.check(address.parse().unwrap()).err().map(|r| r.class)
    }

    #[test]
    fn every_private_kind_of_address_is_refused_by_default() {
        let guard = guard(&[], &[]);
        for (address, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("fd12:3456::1", "private (ULA)"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.254", "CGNAT"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            // The same addresses written as IPv6.
            ("::ffff:10.0.0.5", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(class(&guard, address), Some(expected), "{address}");
        }
        for public in [
            "93.184.215.14",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::5db8:d70e",
        ] {
            assert_eq!(class(&guard, public), None, "{public}");
        }
    }

    #[test]
    fn allow_opens_ranges_and_deny_closes_them_and_wins() {
        let guard = guard(
            &["10.20.0.0/16", "127.0.0.1"],
            &["10.20.3.0/24", "93.184.215.0/24"],
        );
        assert_eq!(class(&guard, "10.20.1.1"), None);
        assert_eq!(class(&guard, "127.0.0.1"), None);
        assert_eq!(class(&guard, "127.0.0.2"), Some("loopback"));
        assert_eq!(class(&guard, "10.21.0.1"), Some("private"));
        assert_eq!(class(&guard, "10.20.3.4"), Some(DENIED));
        assert_eq!(class(&guard, "93.184.215.14"), Some(DENIED));
    }

    #[test]
    fn bad_ranges_are_named() {
        let err = Guard::new(&OutboundSettings {
            allow: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
            deny: vec!["example.com".into()],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("outbound.allow[1]"), "{err}");
        assert!(err.contains("outbound.deny[0]"), "{err}");
    }

    #[test]
    fn literal_addresses_in_a_catalog_are_refused_by_field() {
        let catalog = Catalog::parse_yaml(
            r#"
providers:
  - name: ok
    url: https://crm.example.com/contacts
  - name: metadata
    url: http://169.254.169.254/latest/meta-data
  - name: decimal
    url: http://2130706433:8080/
    auth:
      oauth2:
        token_url: http://[::ffff:10.0.0.1]/token
        client_id: x
        client_secret: { secret: X }
"#,
        )
        .unwrap();
        let errors = guard(&[], &[]).check_catalog(&catalog).unwrap_err().0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers[1].url",
                "providers[2].url",
                "providers[2].auth.oauth2.token_url"
            ]
        );
        assert!(errors[0].message.contains("link-local"), "{errors:?}");
        assert!(
            errors[1].message.contains("127.0.0.1 is a loopback"),
            "{errors:?}"
        );
        assert!(
            guard(&["0.0.0.0/0", "::/0"], &[])
                .check_catalog(&catalog)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_refused_address_is_blocked_before_connecting() {
        let client = client(&guard(&[], &[]));
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        let failure = Failure::of(&err);
        assert_eq!(failure.kind, FailureKind::Blocked, "{failure:?}");
        assert!(
            failure.message.contains("localhost resolves to")
                && failure.message.contains("loopback"),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn a_burst_leaves_at_most_the_idle_bound_of_connections_open() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // A provider that answers each request after 300 ms and counts its open
        // connections.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let open = counted.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if socket.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let client = client(&guard(&["127.0.0.0/8"], &[]));

        let burst = (0..64).map(|_| client.get(&url).send());
        for answer in futures::future::join_all(burst).await {
            assert_eq!(answer.unwrap().status(), 200);
        }
        // Every request had its own connection; the pool keeps only its bound of them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while open.load(Ordering::SeqCst) > IN_FLIGHT {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} connections still open after the burst",
                open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(open.load(Ordering::SeqCst), IN_FLIGHT);
        // The kept ones serve the next requests.
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(open.load(Ordering::SeqCst), IN_FLIGHT);
    }

    #[test]
    fn credentials_in_urls_are_not_repeated() {
        assert_eq!(
            strip_credentials("error sending request for url (http://user:pw@host/x)"),
            "error sending request for url (http://host/x)"
        );
    }
}
