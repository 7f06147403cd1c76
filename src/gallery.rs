//! The gallery: the caller's stored images, newest first, with search, sidecars and
//! downloads, as server-rendered pages at `/gallery` in HTTP mode ([`web`]), and as an MCP App
//! (`ui://imagegen/gallery`, [`app`]) that hosts show for the image tools' results.

pub mod app;
pub mod cookie;
pub mod thumbs;
pub mod web;
