//! How fast the mock provider makes images: `cargo run --release -p imagegen-providers --example mock_speed`.

use std::time::Instant;

use imagegen_providers::{
    mock::{MockProvider, MockSettings, MOCK_MODEL},
    GenerateRequest, ImageFormat, ImageProviderExt,
};

#[tokio::main]
async fn main() {
    let provider = MockProvider::new(MockSettings::default());
    for format in ImageFormat::RASTER {
        let mut times = Vec::new();
        let mut bytes = 0;
        for i in 0..30 {
            let mut request = GenerateRequest::new(format!("a lighthouse at dusk {i}"), MOCK_MODEL);
            request.options.size = Some("1024x1024".into());
            request.options.output_format = Some(format);
            let start = Instant::now();
            let result = provider.generate(&request).await.expect("mock generates");
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            bytes += result.images[0].bytes.len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "1024x1024 {format}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, mean size {} KB ({:.0} images/s at p50)",
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() - 1],
            bytes / times.len() / 1024,
            1000.0 / times[times.len() / 2]
        );
    }
}
