//! OpenAI Images API provider (to be written).
