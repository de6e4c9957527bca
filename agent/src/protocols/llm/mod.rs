//! LLM API calls, read from the HTTP calls that carry them (they ride on HTTP: the HTTP
//! session frames them and hands their bodies here). Recognised by method and path:
//! OpenAI-compatible chat, completions, embeddings and responses (also under a prefix, as
//! gateways mount them), Anthropic messages, Ollama chat and generate. Bodies are scanned
//! incrementally (`json`), plain JSON, SSE streams and NDJSON streams alike (`body`); the
//! scan keeps the few fields telemetry needs and never the prompt or completion text.
pub mod api;
pub mod body;
pub mod call;
pub mod json;
pub mod tail;

pub use api::{api_of, provider_of_header, provider_of_host, Api};
pub use body::{RequestReader, ResponseReader};
pub use call::LlmCall;
