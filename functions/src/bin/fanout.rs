//! Lambda function triggered by the fan-out queue: delivers each publish to
//! its recipients, reporting partial batch failures.

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_fanout().await
}
