//! `output.embed_metadata` through the real binary: on, the stored PNG carries the prompt and
//! the sidecar both hashes; off (the default, in store.rs) the file is the upstream's bytes.

use std::process::Stdio;

use crate::common::{args, binary, VersionedClient};
use imagegen_testkit::{img, openai as testkit_openai, FakeUpstream, Reply};
use rmcp::{
    model::{CallToolRequestParams, ProtocolVersion},
    transport::ConfigureCommandExt as _,
    ServiceExt,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn with_embed_metadata_the_stored_png_carries_the_prompt_and_the_sidecar_both_hashes() {
    let upstream = img::png(48, 32);
    let fake = FakeUpstream::start(vec![Reply::json(&testkit_openai::b64_body(
        std::slice::from_ref(&upstream),
    ))])
    .await;
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let file = home.path().join("imagegen.toml");
    std::fs::write(
        &file,
        format!(
            "default_provider = \"openai\"\n[providers.openai]\nkind = \"openai\"\n\
             base_url = \"{}\"\napi_key = \"sk-embed-SENTINEL-0123456789\"\n\
             [output]\ndir = {:?}\nembed_metadata = true\n",
            fake.base(),
            out.to_str().unwrap()
        ),
    )
    .unwrap();
    let cmd = binary(home.path(), &[]).configure(|c| {
        c.arg("--config").arg(&file).arg("serve");
    });
    let transport = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn imagegen-mcp")
        .0;
    let client = VersionedClient(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .expect("MCP handshake");
    let prompt = "a lighthouse <at> dusk, café";
    let made = client
        .call_tool(
            CallToolRequestParams::new("generate_image")
                .with_arguments(args(json!({"prompt": prompt, "delivery": "link"}))),
        )
        .await
        .expect("a tool result");
    let _ = client.cancel().await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let image = &made.structured_content.as_ref().expect("structured")["images"][0];
    let name = image["uri"]
        .as_str()
        .unwrap()
        .trim_start_matches("imagegen://images/");
    let stored = std::fs::read(out.join(name)).unwrap();
    assert_ne!(stored, upstream, "nothing was embedded");
    assert_eq!(image["sha256"], hex_sha256(&stored), "the result's hash");

    let reader = png::Decoder::new(std::io::Cursor::new(&stored[..]))
        .read_info()
        .expect("the stored file is still a PNG");
    let description = reader
        .info()
        .utf8_text
        .iter()
        .find(|c| c.keyword == "Description")
        .map(|c| c.get_text().unwrap());
    assert_eq!(description.as_deref(), Some(prompt));
    let decoded = image::load_from_memory(&stored).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (48, 32));

    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json"))).unwrap()).unwrap();
    assert_eq!(sidecar["sha256"], hex_sha256(&stored));
    assert_eq!(sidecar["upstream_sha256"], hex_sha256(&upstream));
    assert_eq!(sidecar["bytes"], stored.len() as u64);
    let notes = sidecar["notes"].as_array().expect("notes");
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("metadata embedded")),
        "{notes:?}"
    );
    assert!(!String::from_utf8_lossy(&stored).contains("SENTINEL"));
}
