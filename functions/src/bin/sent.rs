//! Lambda function for `GET /api/v1/clients/{client_id}/sent`.

use pigeonhole::http::Route;

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_route::<pigeonhole_functions::NoQueue>(Route::Sent).await
}
