//! Lambda function for `GET /api/v1/operators/clients`.

use pigeonhole::http::Route;

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_route::<pigeonhole_functions::NoQueue>(Route::ListClients).await
}
