//! The OpenAPI 3 description of the v1 API, generated from the handlers'
//! annotations and served at `GET /openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, events, export, health, queue, reservations, sales, steer, views};

#[derive(OpenApi)]
#[openapi(
    info(title = "flashgate", description = "Flash-sale gatekeeper: atomic reservations in Redis, durable orders in Postgres. Every error has the body {\"error\": {\"code\", \"message\", \"details\"}}."),
    paths(
        sales::configure,
        sales::list,
        sales::get_sale,
        reservations::reserve,
        reservations::get_reservation,
        reservations::confirm,
        reservations::cancel,
        reservations::extend,
        events::events,
        queue::join_queue,
        queue::my_ticket,
        steer::pause,
        steer::resume,
        steer::close,
        admin::list_reservations,
        export::export_orders,
        admin::audit,
        health::healthz,
        health::readyz,
    ),
    components(schemas(views::SaleInput, views::SaleView, views::SaleList, views::ReserveInput, views::ExtendInput, views::ReservationView, views::ErrorBody, views::ErrorDetail, views::SaleStateName, views::StatusName, views::AdmissionName, views::QueueView, queue::TicketView, queue::TicketStateName, admin::ListStatus, admin::ReservationPage, admin::AuditList, admin::AuditView, events::SseEvent)),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("FLASHGATE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "buyer_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("HS256 JWT, sub = user id, exp required"))
                    .build(),
            ),
        );
    }
}

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
