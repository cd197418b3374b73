//! Abuse limits: a request rate per buyer (on by default), per client IP
//! (off by default: deployments sit behind a gateway, and a load test comes
//! from one address), and — in the gate — a cap on one buyer's active holds.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::config::RateSettings;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

pub struct Limits {
    per_user: Option<Keyed<String>>,
    per_ip: Option<Keyed<IpAddr>>,
    trusted: Vec<IpAddr>,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate)))
}

impl Limits {
    pub fn new(s: &RateSettings) -> Self {
        Self {
            per_user: quota(s.per_user_per_sec, s.per_user_burst).map(RateLimiter::keyed),
            per_ip: quota(s.per_ip_per_sec, s.per_ip_burst).map(RateLimiter::keyed),
            trusted: s.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    fn refused(
        &self,
        scope: &'static str,
        not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
    ) -> ApiError {
        crate::metrics::rate_limited(scope);
        ApiError::retry_after(not_until.wait_time_from(self.clock.now()))
    }

    pub fn check_user(&self, user: &str) -> Result<(), ApiError> {
        match &self.per_user {
            Some(l) => l
                .check_key(&user.to_string())
                .map_err(|n| self.refused("user", n)),
            None => Ok(()),
        }
    }

    pub fn check_ip(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(l) = &self.per_ip else { return Ok(()) };
        let Some(ip) = client_ip(req, &self.trusted) else {
            return Ok(());
        };
        l.check_key(&ip).map_err(|n| self.refused("ip", n))
    }

    /// The client's address, as the limits see it (see [`client_ip`]).
    pub fn client(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip(req, &self.trusted)
    }

    /// Forgets keys whose quota is whole again, so the limiters' memory stays
    /// bounded (called every 5 s: a buyer is forgotten ~4 s after its last burst).
    pub fn prune(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    pub fn tracked_keys(&self) -> usize {
        self.per_user.as_ref().map_or(0, |l| l.len()) + self.per_ip.as_ref().map_or(0, |l| l.len())
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

/// Prunes the limiters every `every` until the process ends.
pub async fn prune(limits: Arc<Limits>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => limits.prune(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_buyer_gets_a_burst_then_429_with_retry_after() {
        let l = Limits::new(&RateSettings {
            per_user_per_sec: 1,
            per_user_burst: 3,
            ..RateSettings::default()
        });
        for _ in 0..3 {
            assert!(l.check_user("alice").is_ok());
        }
        match l.check_user("alice") {
            Err(ApiError::RateLimited { retry_after_secs }) => {
                assert!((1..=2).contains(&retry_after_secs))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(l.check_user("bob").is_ok(), "limits are per buyer");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let l = Limits::new(&RateSettings {
            per_user_per_sec: 0,
            ..RateSettings::default()
        });
        for _ in 0..1000 {
            assert!(l.check_user("alice").is_ok());
        }
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let req = TestRequest::default()
            .peer_addr("10.0.0.1:5000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "203.0.113.9, 10.0.0.1"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[proxy]),
            Some("203.0.113.9".parse().expect("ip"))
        );
        assert_eq!(
            client_ip(&req, &[]),
            Some(proxy),
            "an untrusted peer's header is ignored"
        );
        let direct = TestRequest::default()
            .peer_addr("198.51.100.7:5000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .to_http_request();
        assert_eq!(
            client_ip(&direct, &[proxy]),
            Some("198.51.100.7".parse().expect("ip"))
        );
    }

    #[test]
    fn per_ip_limit_applies_when_enabled() {
        let l = Limits::new(&RateSettings {
            per_ip_per_sec: 1,
            per_ip_burst: 1,
            ..RateSettings::default()
        });
        let req = TestRequest::default()
            .peer_addr("198.51.100.7:5000".parse().expect("addr"))
            .to_http_request();
        assert!(l.check_ip(&req).is_ok());
        assert!(matches!(
            l.check_ip(&req),
            Err(ApiError::RateLimited { .. })
        ));
    }
}
