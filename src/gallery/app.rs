//! The gallery MCP App (`ui://imagegen/gallery`).
