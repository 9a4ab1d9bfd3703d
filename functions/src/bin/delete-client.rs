//! Lambda function for `DELETE /api/v1/operators/clients/{client_id}`.

use pigeonhole::http::Route;

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_route::<pigeonhole_functions::NoQueue>(Route::DeleteClient).await
}
