//! The gallery MCP App (SEP-1865, MCP Apps 2026-01-26): `ui://imagegen/gallery`, one
//! self-contained HTML file (no CDN, no fetches: it reaches the server only through the
//! host's `tools/call` and `resources/read`) that hosts render for the results of the image
//! tools, which link it through `_meta.ui.resourceUri`.

use rmcp::{
    handler::server::router::tool::ToolRouter,
    model::{MetaObject, ReadResourceResult, Resource, ResourceContents},
};
use serde_json::json;

/// The app's resource URI.
pub const URI: &str = "ui://imagegen/gallery";

/// The MIME type MCP Apps hosts render.
pub const MIME: &str = "text/html;profile=mcp-app";

/// The app itself.
pub const HTML: &str = include_str!("app.html");

/// The tools whose results the app shows.
pub const LINKED_TOOLS: [&str; 4] = [
    "generate_image",
    "generate_images",
    "edit_image",
    "create_variation",
];

/// The tools only the app calls: hosts keep them from the model (`_meta.ui.visibility`).
pub const APP_ONLY_TOOLS: [&str; 1] = ["gallery_page"];

/// The most images one `gallery_page` answers with.
pub const PAGE: u32 = 24;

/// The app's `_meta.ui`: no external origin of any kind (the host's restrictive default CSP
/// applies: inline script and style, `data:` images), and a border.
fn ui_meta() -> MetaObject {
    let value = json!({
        "ui": {
            "csp": {
                "connectDomains": [],
                "resourceDomains": [],
                "frameDomains": [],
                "baseUriDomains": [],
            },
            "prefersBorder": true,
        }
    });
    match value {
        serde_json::Value::Object(map) => MetaObject(map),
        _ => MetaObject::default(),
    }
}

/// The app's entry in `resources/list`.
pub fn resource() -> Resource {
    Resource::new(URI, "gallery")
        .with_mime_type(MIME)
        .with_description(
            "MCP App: the images of an image tool's result, their prompts and parameters, with re-run, new sample and edit",
        )
        .with_meta(ui_meta())
}

/// What `resources/read` of [`URI`] answers.
pub fn read() -> ReadResourceResult {
    ReadResourceResult::new(vec![ResourceContents::text(HTML, URI)
        .with_mime_type(MIME)
        .with_meta(ui_meta())])
}

/// Links the image tools of `router` to the app (`_meta.ui.resourceUri`), and marks the
/// tools only the app calls as such.
pub fn link_tools<S>(router: &mut ToolRouter<S>) {
    for route in router.map.values_mut() {
        let name = route.attr.name.as_ref();
        let ui = if LINKED_TOOLS.contains(&name) {
            json!({ "resourceUri": URI })
        } else if APP_ONLY_TOOLS.contains(&name) {
            json!({ "resourceUri": URI, "visibility": ["app"] })
        } else {
            continue;
        };
        let meta = route.attr.meta.get_or_insert_with(MetaObject::default);
        meta.0.insert("ui".into(), ui);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_self_contained() {
        for external in [
            "http://",
            "https://",
            "fetch(",
            "XMLHttpRequest",
            "WebSocket",
        ] {
            assert!(!HTML.contains(external), "{external} in app.html");
        }
        assert!(HTML.starts_with("<!DOCTYPE html>"));
    }
}
