//! Request extractors: who is calling, and ids checked before use.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::auth::{bearer, AuthError};
use crate::domain::{Actor, AdminOrigin};
use crate::ids::{IdempotencyKey, SaleId, UserId};

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

fn token(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))
        })
        .transpose()?;
    bearer(value).map_err(|_| ApiError::Unauthorized("missing bearer token"))
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Missing => ApiError::Unauthorized("missing bearer token"),
        AuthError::Invalid => ApiError::Unauthorized("invalid or expired token"),
        AuthError::BadSubject => {
            ApiError::Unauthorized("the token's subject is not a valid user id")
        }
        AuthError::NotAdmin => ApiError::Unauthorized("admin token required"),
    }
}

/// Who a request is from, decided from its `Authorization` header alone.
trait FromToken: Sized {
    fn from_token(auth: &crate::auth::Auth, token: &str) -> Result<Self, ApiError>;
}

/// An extractor for each [`FromToken`]: state, bearer token, decision.
macro_rules! from_token {
    ($($t:ty),*) => {$(
        impl FromRequest for $t {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready(state(req).and_then(|st| <$t>::from_token(&st.auth, token(req)?)))
            }
        }
    )*};
}

/// The admin (bearer = `FLASHGATE_ADMIN_TOKEN`).
pub struct Admin;

impl FromToken for Admin {
    fn from_token(auth: &crate::auth::Auth, token: &str) -> Result<Self, ApiError> {
        if auth.is_admin(token) {
            Ok(Admin)
        } else {
            Err(auth_error(AuthError::NotAdmin))
        }
    }
}

/// A buyer (bearer = HS256 JWT, user = `sub`).
pub struct Buyer(pub UserId);

impl FromToken for Buyer {
    fn from_token(auth: &crate::auth::Auth, token: &str) -> Result<Self, ApiError> {
        auth.buyer(token).map(Buyer).map_err(auth_error)
    }
}

/// The owner of a reservation or the admin (a payment service).
pub enum Caller {
    Admin,
    Buyer(UserId),
}

impl Caller {
    pub fn actor(&self) -> Actor<'_> {
        match self {
            Caller::Admin => Actor::Admin,
            Caller::Buyer(u) => Actor::Buyer(u),
        }
    }
}

impl FromToken for Caller {
    fn from_token(auth: &crate::auth::Auth, token: &str) -> Result<Self, ApiError> {
        if auth.is_admin(token) {
            return Ok(Caller::Admin);
        }
        auth.buyer(token).map(Caller::Buyer).map_err(auth_error)
    }
}

from_token!(Admin, Buyer, Caller);

/// Who asked for an admin change, for its audit row: the request's id (the
/// `X-Request-Id` it is answered with) and the client's address (behind a
/// trusted proxy, the one it forwarded).
pub fn origin(req: &HttpRequest) -> AdminOrigin {
    AdminOrigin {
        request_id: req
            .extensions()
            .get::<tracing_actix_web::RequestId>()
            .map(ToString::to_string),
        client: state(req)
            .ok()
            .and_then(|s| s.limits.client(req))
            .map(|ip| ip.to_string()),
    }
}

/// A JSON object body as `T`. Unlike `web::Json<T>`, a JSON array is
/// refused too (serde would read a struct from `[1]`): bodies are objects
/// whose fields are all known, each once. Over `max_body_bytes`: 413.
pub struct JsonObject<T>(pub T);

impl<T: serde::de::DeserializeOwned + 'static> FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map_or(16 * 1024, |s| s.max_body_bytes);
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<actix_web::mime::Mime>().ok())
            .is_some_and(|m| {
                m.subtype() == actix_web::mime::JSON || m.suffix() == Some(actix_web::mime::JSON)
            });
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !json {
                return Err(ApiError::invalid("expected Content-Type: application/json").into());
            }
            let body = body.await.map_err(|e| match e.as_error::<PayloadError>() {
                Some(PayloadError::Overflow) => ApiError::PayloadTooLarge { limit },
                _ => ApiError::invalid("could not read the request body"),
            })?;
            parse_object(&body).map(JsonObject).map_err(Into::into)
        })
    }
}

impl<T> std::ops::Deref for JsonObject<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A JSON object as `T`: arrays are refused (serde would read a struct
/// from `[1]`), and unknown or duplicate fields by `T`'s own rules.
pub fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "invalid JSON body: expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

pub fn sale_id(raw: &str) -> Result<SaleId, ApiError> {
    SaleId::parse(raw).map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid sale id: {}", e.reason),
        details: serde_json::json!({ "field": "sale_id" }),
    })
}

pub fn reservation_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::InvalidRequest {
        message: "invalid reservation id: expected a UUID".into(),
        details: serde_json::json!({ "field": "reservation_id" }),
    })
}

/// Looked up by a ready name: by `&str`, every request would parse (and,
/// for a non-standard header, allocate) the name again.
const IDEMPOTENCY_KEY: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("idempotency-key");

pub fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = |reason: &str| ApiError::InvalidRequest {
        message: format!("invalid Idempotency-Key: {reason}"),
        details: serde_json::json!({ "field": "Idempotency-Key" }),
    };
    let s = v.to_str().map_err(|_| bad("not ASCII"))?;
    IdempotencyKey::parse(s)
        .map(Some)
        .map_err(|e| bad(e.reason))
}
