//! Lambda function for `POST /api/v1/messages/publish`.

use pigeonhole::http::Route;

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_route::<pigeonhole_functions::FanoutQueue>(Route::Publish).await
}
