//! Request extractors: who is calling, and ids checked before use.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use uuid::Uuid;

use super::AppState;
use crate::auth::{bearer, AuthError};
use crate::error::ApiError;
use crate::gate::Actor;
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

/// The admin (bearer = `FLASHGATE_ADMIN_TOKEN`).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let t = token(req)?;
            if state(req)?.auth.is_admin(t) {
                Ok(Admin)
            } else {
                Err(auth_error(AuthError::NotAdmin))
            }
        })())
    }
}

/// A buyer (bearer = HS256 JWT, user = `sub`).
pub struct Buyer(pub UserId);

impl FromRequest for Buyer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let t = token(req)?;
            state(req)?.auth.buyer(t).map(Buyer).map_err(auth_error)
        })())
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

    pub fn may_see(&self, owner: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Buyer(u) => u.as_str() == owner,
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let t = token(req)?;
            let st = state(req)?;
            if st.auth.is_admin(t) {
                return Ok(Caller::Admin);
            }
            st.auth.buyer(t).map(Caller::Buyer).map_err(auth_error)
        })())
    }
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

pub fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = req.headers().get("Idempotency-Key") else {
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
