//! What a setting must be to start: shapes and ranges, then secrets long
//! enough outside dev mode.

use super::{err, ConfigError, Settings, MIN_RECORD_TTL, MIN_SECRET_LEN};

impl Settings {
    /// Checks that do not depend on the mode.
    pub(super) fn validate_shape(&self) -> Result<(), ConfigError> {
        if self.redis_urls.is_empty() {
            return Err(err("FLASHGATE_REDIS_URL", "no URL given"));
        }
        if !self.redis_cluster && self.redis_urls.len() > 1 {
            return Err(err(
                "FLASHGATE_REDIS_URL",
                "a list of nodes needs FLASHGATE_REDIS_CLUSTER=1",
            ));
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 32
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(
                "FLASHGATE_KEY_PREFIX",
                "1-32 characters of [A-Za-z0-9_-]",
            ));
        }
        if !(1..=16).contains(&self.confirm_writers) {
            // Each writer holds a Postgres connection of the pool while it commits.
            return Err(err("FLASHGATE_CONFIRM_WRITERS", "must be between 1 and 16"));
        }
        if !(1..=10_000).contains(&self.confirm_batch_max) {
            return Err(err(
                "FLASHGATE_CONFIRM_BATCH_MAX",
                "must be between 1 and 10000",
            ));
        }
        if self.confirm_queue == 0 {
            return Err(err("FLASHGATE_CONFIRM_QUEUE", "must be at least 1"));
        }
        if self.record_ttl < MIN_RECORD_TTL {
            return Err(err("FLASHGATE_RECORD_TTL_SECS", "must be at least 3600"));
        }
        if !(1..=8).contains(&self.worker_tasks) {
            return Err(err("FLASHGATE_WORKER_TASKS", "must be between 1 and 8"));
        }
        if self.worker_batch == 0 {
            return Err(err("FLASHGATE_WORKER_BATCH", "must be at least 1"));
        }
        if self.max_body_bytes < 256 {
            return Err(err("FLASHGATE_MAX_BODY_BYTES", "must be at least 256"));
        }
        if !(1..=1000).contains(&self.events_max_hz) {
            return Err(err("FLASHGATE_EVENTS_MAX_HZ", "must be between 1 and 1000"));
        }
        for origin in &self.cors_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.trim_end_matches('/').contains(['*', ' ']);
            if !ok {
                return Err(err(
                    "FLASHGATE_CORS_ORIGINS",
                    "a comma list of origins like https://shop.example (no wildcards)",
                ));
            }
        }
        if self.max_inflight == 0 {
            // No permit would ever be free: every request would wait for ever.
            return Err(err("FLASHGATE_MAX_INFLIGHT", "must be at least 1"));
        }
        Ok(())
    }

    /// Refuses to serve with missing or short secrets unless in dev mode.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        for (name, secret) in [
            ("FLASHGATE_ADMIN_TOKEN", &self.admin_token),
            ("FLASHGATE_JWT_SECRET", &self.jwt_secret),
        ] {
            if secret.is_empty() {
                return Err(err(
                    name,
                    "must be set (or start with --dev for a local trial)",
                ));
            }
            if !self.dev_mode && secret.expose().len() < MIN_SECRET_LEN {
                return Err(err(
                    name,
                    &format!("must be at least {MIN_SECRET_LEN} characters (or start with --dev)"),
                ));
            }
        }
        Ok(())
    }
}
