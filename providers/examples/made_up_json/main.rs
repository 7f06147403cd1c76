//! A minimal provider for a made-up JSON API ("Pixie"), built only from the shared core:
//! see `provider.rs` and `docs/adding-a-provider.md`.
//!
//! Run against a Pixie-compatible server: `cargo run -p imagegen-providers --example
//! made_up_json -- http://127.0.0.1:8080/v1 "a lighthouse"` (the key is read from
//! `PIXIE_API_KEY`).

mod provider;

use std::{sync::Arc, time::Duration};

use imagegen_providers::{keys::KeyPool, GenerateRequest, ImageProviderExt as _};
use secrecy::SecretString;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(base), Some(prompt)) = (args.next(), args.next()) else {
        eprintln!("usage: made_up_json BASE_URL PROMPT");
        std::process::exit(2);
    };
    let base = match base.parse() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("BASE_URL: {e}");
            std::process::exit(2);
        }
    };
    let keys = std::env::var("PIXIE_API_KEY")
        .ok()
        .map(|k| (SecretString::from(k), "PIXIE_API_KEY".to_string()));
    let keys = Arc::new(KeyPool::new(keys, Duration::from_secs(600)));
    let settings = provider::PixieSettings::new(base, keys);
    let pixie = provider::PixieProvider::new(settings, reqwest::Client::new());
    match pixie
        .generate(&GenerateRequest::new(prompt, provider::MODEL))
        .await
    {
        Ok(result) => {
            for image in &result.images {
                println!("{}x{} {}", image.width, image.height, image.format.as_str());
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
