//! Lambda function for `POST /api/v1/clients/register`.

use pigeonhole::http::Route;

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_route::<pigeonhole_functions::NoQueue>(Route::Register).await
}
