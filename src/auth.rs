//! Who is calling: the admin (a static bearer token, compared in constant
//! time) or a buyer (an HS256 JWT whose `sub` is the user id).

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::Settings;
use crate::ids::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid or expired token")]
    Invalid,
    #[error("the token's subject is not a valid user id")]
    BadSubject,
    #[error("admin token required")]
    NotAdmin,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

pub struct Auth {
    admin_token: Vec<u8>,
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(settings: &Settings) -> Self {
        // HS256 only: `alg: none`, other HMACs and RS/HS confusion are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 5;
        // A token not valid yet (`nbf` in the future, beyond the same
        // leeway as `exp`) is refused.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &settings.jwt_issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &settings.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Self {
            admin_token: settings.admin_token.expose().as_bytes().to_vec(),
            key: DecodingKey::from_secret(settings.jwt_secret.expose().as_bytes()),
            validation,
        }
    }

    pub fn is_admin(&self, token: &str) -> bool {
        !self.admin_token.is_empty() && bool::from(token.as_bytes().ct_eq(&self.admin_token))
    }

    pub fn buyer(&self, token: &str) -> Result<UserId, AuthError> {
        if names_critical_extensions(token) {
            return Err(AuthError::Invalid);
        }
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|_| AuthError::Invalid)?;
        UserId::parse(&data.claims.sub).map_err(|_| AuthError::BadSubject)
    }
}

/// True when the token's header carries `crit` (or cannot be read, which
/// `decode` refuses anyway). RFC 7515 4.1.11: a recipient that does not
/// understand every extension `crit` names must refuse the token, and
/// flashgate understands none; `jsonwebtoken` parses the field but does
/// not act on it.
fn names_critical_extensions(token: &str) -> bool {
    jsonwebtoken::decode_header(token).map_or(true, |h| h.crit.is_some())
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

/// Mints a buyer token (the `flashgate token` command, tests, the demo).
pub fn mint(secret: &str, sub: &str, ttl_secs: u64) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = jsonwebtoken::get_current_timestamp() + ttl_secs;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const SECRET: &str = "test-secret-0123456789abcdef0123456789";

    fn auth() -> Auth {
        let s = Settings {
            admin_token: Secret::new("admin-token-0123456789abcdef0123456789"),
            jwt_secret: Secret::new(SECRET),
            ..Settings::default()
        };
        Auth::new(&s)
    }

    #[test]
    fn a_valid_token_names_the_buyer() {
        let t = mint(SECRET, "alice", 60).expect("mint");
        assert_eq!(auth().buyer(&t).expect("valid").as_str(), "alice");
    }

    #[test]
    fn wrong_signature_expired_and_none_are_refused() {
        let a = auth();
        assert_eq!(
            a.buyer(&mint("another-secret-0123456789abcdef012345", "alice", 60).expect("mint")),
            Err(AuthError::Invalid)
        );
        let exp = jsonwebtoken::get_current_timestamp() - 120;
        let claims = serde_json::json!({ "sub": "alice", "exp": exp });
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("mint");
        assert_eq!(a.buyer(&expired), Err(AuthError::Invalid));
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, exp + 1000).as_bytes());
        assert_eq!(
            a.buyer(&format!("{header}.{body}.")),
            Err(AuthError::Invalid)
        );
        let hs512 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS512),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("mint");
        assert_eq!(a.buyer(&hs512), Err(AuthError::Invalid));
        assert_eq!(a.buyer("garbage"), Err(AuthError::Invalid));
    }

    fn sign_with_header(header: jsonwebtoken::Header, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("mint")
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_beyond_the_leeway() {
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |nbf: u64| {
            sign_with_header(
                jsonwebtoken::Header::new(Algorithm::HS256),
                serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": nbf}),
            )
        };
        assert_eq!(auth().buyer(&sign(now + 120)), Err(AuthError::Invalid));
        assert!(auth().buyer(&sign(now + 2)).is_ok(), "within the leeway");
        assert!(auth().buyer(&sign(now - 60)).is_ok());
    }

    #[test]
    fn a_token_naming_critical_extensions_is_refused() {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = serde_json::json!({"sub": "alice", "exp": exp, "b64": false});
        let plain = sign_with_header(jsonwebtoken::Header::new(Algorithm::HS256), claims.clone());
        assert!(auth().buyer(&plain).is_ok(), "the same token without crit");
        for crit in [vec!["b64".to_string()], vec!["x-unknown".into()], vec![]] {
            let header = jsonwebtoken::Header {
                crit: Some(crit.clone()),
                ..jsonwebtoken::Header::new(Algorithm::HS256)
            };
            let t = sign_with_header(header, claims.clone());
            assert_eq!(auth().buyer(&t), Err(AuthError::Invalid), "crit {crit:?}");
        }
    }

    #[test]
    fn a_token_without_exp_or_with_a_bad_subject_is_refused() {
        let no_exp = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({ "sub": "alice" }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("mint");
        assert_eq!(auth().buyer(&no_exp), Err(AuthError::Invalid));
        assert_eq!(
            auth().buyer(&mint(SECRET, "has space", 60).expect("mint")),
            Err(AuthError::BadSubject)
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let s = Settings {
            admin_token: Secret::new("admin-token-0123456789abcdef0123456789"),
            jwt_secret: Secret::new(SECRET),
            jwt_issuer: Some("shop".into()),
            jwt_audience: Some("flashgate".into()),
            ..Settings::default()
        };
        let a = Auth::new(&s);
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("mint")
        };
        assert!(a
            .buyer(&sign(
                serde_json::json!({"sub": "alice", "exp": exp, "iss": "shop", "aud": "flashgate"})
            ))
            .is_ok());
        assert_eq!(
            a.buyer(&sign(
                serde_json::json!({"sub": "alice", "exp": exp, "iss": "other", "aud": "flashgate"})
            )),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.buyer(&sign(
                serde_json::json!({"sub": "alice", "exp": exp, "iss": "shop", "aud": "other"})
            )),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.buyer(&sign(serde_json::json!({"sub": "alice", "exp": exp}))),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn admin_token_and_bearer_parsing() {
        let a = auth();
        assert!(a.is_admin("admin-token-0123456789abcdef0123456789"));
        assert!(!a.is_admin("admin-token-0123456789abcdef012345678"));
        assert!(!a.is_admin(""));
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Missing));
        assert_eq!(bearer(None), Err(AuthError::Missing));
    }
}
